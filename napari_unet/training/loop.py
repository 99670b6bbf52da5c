"""finetune(): prepare → train (compiled steps, per-epoch validation, best weights) → finish."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.inference import precision
from napari_unet.labels.masks import IGNORE_LABEL, class_matrix, target_classes
from napari_unet.model import SegmentationModel
from napari_unet.training.adaptation import with_channels_of
from napari_unet.training.augment import PairAugmenter, resolve_for_model, symmetries_of
from napari_unet.training.config import TrainConfig, TrainHistory, TrainProgress
from napari_unet.training.inputs import check_foreground, prepare_pairs, split_pairs, split_validation
from napari_unet.training.losses import segmentation_loss
from napari_unet.training.sampling import PatchSampler, border_weight_maps
from napari_unet.training.validation import refit_output_offset, score_pairs


def learning_rate_schedule(config: TrainConfig, total_steps: int):
    """Adam's learning rate over a run of total_steps (config.lr_schedule); the experiments' extra heads train on it too."""
    import keras

    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, total_steps), alpha=0.01)
    if config.lr_schedule == "step":
        boundaries = [max(1, total_steps // 2), max(2, (3 * total_steps) // 4)]
        rates = [config.learning_rate, config.learning_rate * 0.1, config.learning_rate * 0.01]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, rates)
    return config.learning_rate


def make_train_step(keras_model, optimizer, n_classes: int, n_channels: int, dice_weight: float, classes=None):
    """One compiled step: loss, gradients, Adam update. Non-finite gradients are not applied.
    classes: the outputs each class sums (losses.segmentation_loss; masks.class_matrix), None: one per output."""
    import tensorflow as tf

    variables = keras_model.trainable_variables
    optimizer.build(variables)

    @tf.function(input_signature=[
        tf.TensorSpec((None, None, None, n_channels), tf.float32),
        tf.TensorSpec((None, None, None), tf.int32),
        tf.TensorSpec((None, None, None), tf.float32),
    ])
    def train_step(images, labels, weights):
        with tf.GradientTape() as tape:
            probabilities = keras_model(images, training=True)
            loss = segmentation_loss(probabilities, labels, weights, n_classes, dice_weight, classes)
        gradients = tape.gradient(loss, variables)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(tf.linalg.global_norm(gradients))
        gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
        optimizer.apply_gradients(zip(gradients, variables))
        return loss, finite

    return train_step




def resolve_config(model: SegmentationModel, config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """`config` (default TrainConfig()) with `overrides` applied, checked, and the model's symmetries resolved."""
    config = config or TrainConfig()
    if overrides:
        unknown = set(overrides) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise NapariUNetError(f"unknown training setting(s) {', '.join(sorted(unknown))}: see TrainConfig")
        config = TrainConfig(**{**asdict(config), "augmentation": config.augmentation, **overrides})
    config.check()
    # Fine-tuning keeps the model's symmetries unless told otherwise (AugmentConfig.rotations=None).
    return replace(config, augmentation=resolve_for_model(config.augmentation, model.metadata.symmetries))


class TrainingRun:
    """One training run's state: what prepare() built, what the loop changes, what finish() records."""

    def __init__(self, model: SegmentationModel, config: TrainConfig, images, masks, validation, names, progress,
                 focus: dict | None = None):
        import keras

        self.started = time.monotonic()
        self.parent, self.config, self.progress = model, config, progress
        n_classes, multiple = model.config.n_classes, model.config.size_multiple
        patch_size = int(config.patch_size or model.metadata.tile_size or 256)
        patch_size = max(multiple, int(math.ceil(patch_size / multiple)) * multiple)
        pairs = prepare_pairs(model, images, masks, names=names)
        check_foreground(pairs, n_classes)
        rng = np.random.default_rng(config.seed)
        if validation is not None:
            validation_images, validation_masks = validation if isinstance(validation, tuple) else split_pairs(validation)
            self.validation_pairs = prepare_pairs(model, validation_images, validation_masks, label="validation pair")
            training_pairs = pairs
        else:
            training_pairs, self.validation_pairs = split_validation(pairs, config.validation_fraction, rng)

        keras.utils.set_random_seed(config.seed)
        self.precision = precision.resolve(config.precision)
        self.trained = precision.copy_in(model, self.precision)
        if config.freeze_batch_norm:
            for layer in self.trained.keras_model.layers:
                if layer.__class__.__name__ == "BatchNormalization":
                    layer.trainable = False  # Keras 3: inference mode (moving statistics) even in training steps
        self.patch_size, self.rng = patch_size, rng
        self.augmenter = PairAugmenter(config.augmentation, seed=config.seed, mask_fill=IGNORE_LABEL) if config.augment else None
        self._sample_from(training_pairs, focus)
        self.total_steps = config.epochs * config.steps_per_epoch
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate_schedule(config, self.total_steps))
        self.train_step = make_train_step(self.trained.keras_model, self.optimizer, n_classes,
                                          model.config.n_channels, config.dice_weight, class_matrix(model.metadata))
        self.history = TrainHistory(settings={**asdict(config), "patch_size": patch_size, "precision": self.precision,
                                              "n_training_pairs": len(training_pairs),
                                              "n_validation_pairs": len(self.validation_pairs)})
        self.initial_weights = self.trained.keras_model.get_weights()  # a non-finite loss before any best epoch
        self.best_score, self.best_weights, self.best_metrics = None, None, {}
        self.weight_sum, self.averaged_epochs = None, 0  # config.average_last_epochs
        self.epochs_without_improvement = 0
        self.step_seconds: list[float] = []

    def _sample_from(self, training_pairs, focus: dict | None = None) -> None:
        config = self.config
        self.training_pairs = training_pairs
        # Keyed by the caller's pair names; a pair cut for a validation strip gets the same cut of its map.
        focus_maps = ([np.asarray(focus[pair.key])[pair.window] if pair.key in focus else None for pair in training_pairs]
                      if focus else None)
        self.sampler = PatchSampler(training_pairs, self.patch_size, rng=self.rng, augmenter=self.augmenter,
                                    foreground_fraction=config.foreground_fraction,
                                    weight_maps=border_weight_maps(self.parent, config, training_pairs),
                                    focus_maps=focus_maps,
                                    target_classes=target_classes(self.parent.metadata))

    def use_pairs(self, images, masks, names=None, focus: dict | None = None) -> None:
        """Train on these pairs from the next step on; the model, its optimizer state and the compiled step
        stay (live mode: the corrections change while training runs, and a re-trace would cost seconds).
        focus: {pair name: bool (Y, X) map} of pixels to centre patches on more often (the corrected ones)."""
        pairs = prepare_pairs(self.parent, images, masks, names=names)
        check_foreground(pairs, self.parent.config.n_classes)
        self._sample_from(pairs, focus)
        self.history.settings["n_training_pairs"] = len(pairs)

    def version(self, weights=None) -> tuple[SegmentationModel, TrainHistory]:
        """The current state (or `weights`) as a finished version, while this run goes on training."""
        from copy import copy, deepcopy

        snapshot = copy(self)
        snapshot.history = deepcopy(self.history)
        snapshot.trained = precision.copy_in(self.trained, "float32")
        if weights is not None:
            snapshot.trained.keras_model.set_weights(weights)
        snapshot.best_weights, snapshot.validation_pairs = None, []
        return _finish(snapshot, "live")

    def emit(self, **values) -> None:
        if self.progress is not None:
            self.progress(TrainProgress(total_steps=self.total_steps, epochs=self.config.epochs,
                                        seconds=time.monotonic() - self.started, **values))

    def learning_rate(self) -> float:
        return float(np.asarray(self.optimizer.learning_rate))

    def eta(self) -> float | None:
        recent = self.step_seconds[1:] or self.step_seconds  # the first step includes tracing
        return float(np.mean(recent[-20:])) * (self.total_steps - self.history.steps) if recent else None

    def step(self) -> float | None:
        """One training step; None when the loss was not finite (the best weights so far are restored)."""
        started = time.monotonic()
        batch_images, batch_labels, batch_weights = self.sampler.sample_batch(self.config.batch_size)
        loss, finite = self.train_step(batch_images, batch_labels, batch_weights)
        loss = float(loss)
        if not (bool(finite) and math.isfinite(loss)):  # the step applied no update
            self.trained.keras_model.set_weights(self.best_weights if self.best_weights is not None else self.initial_weights)
            return None
        self.history.steps += 1
        self.step_seconds.append(time.monotonic() - started)
        return loss

    def end_epoch(self, epoch: int, losses: list[float], epoch_started: float) -> None:
        """Score the validation pairs, keep the best weights, report."""
        mean_loss = float(np.mean(losses))
        scores = (score_pairs(self.trained, self.validation_pairs, self.config.threshold, precision=self.precision)
                  if self.validation_pairs else {})
        record = {"epoch": epoch, "loss": mean_loss, "steps": len(losses),
                  "val_iou": scores.get("iou"), "val_dice": scores.get("dice"),
                  "val_pixel_error": scores.get("pixel_error"),
                  "seconds": time.monotonic() - epoch_started, "learning_rate": self.learning_rate()}
        self.history.epochs.append(record)
        if self.config.average_last_epochs and epoch > self.config.epochs - self.config.average_last_epochs:
            weights = self.trained.keras_model.get_weights()
            self.weight_sum = weights if self.weight_sum is None else [a + b for a, b in zip(self.weight_sum, weights)]
            self.averaged_epochs += 1
        score = scores["iou"] if scores else -mean_loss
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_weights, self.best_metrics = score, self.trained.keras_model.get_weights(), scores
            self.history.best_epoch = epoch
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.emit(kind="epoch", step=self.history.steps, epoch=epoch, loss=mean_loss, val_iou=scores.get("iou"),
                  val_dice=scores.get("dice"), best_val_iou=self.best_metrics.get("iou"),
                  learning_rate=record["learning_rate"], eta_seconds=self.eta())


def _train(run: TrainingRun, cancel: Callable[[], bool] | None) -> str:
    """The loop: steps and epochs until done, cancelled, out of time, non-finite or stopped early; returns why."""
    config, deadline = run.config, None
    for epoch in range(1, config.epochs + 1):
        epoch_started, losses, stop = time.monotonic(), [], None
        for _ in range(config.steps_per_epoch):
            if cancel is not None and cancel():
                stop = "cancelled"
                break
            now = time.monotonic()
            if deadline is None and config.seconds is not None:
                deadline = now + config.seconds
            if deadline is not None and now >= deadline:
                stop = "time budget"
                break
            loss = run.step()
            if loss is None:
                stop = "non-finite loss"
                break
            losses.append(loss)
            run.emit(kind="step", step=run.history.steps, epoch=epoch, loss=loss, learning_rate=run.learning_rate(),
                     eta_seconds=run.eta(), best_val_iou=run.best_metrics.get("iou"))
        if losses:
            run.end_epoch(epoch, losses, epoch_started)
        if stop:
            return stop
        if config.early_stopping_patience and run.epochs_without_improvement >= config.early_stopping_patience:
            return "early stopping"
    return "completed"


def _finish(run: TrainingRun, stop: str) -> tuple[SegmentationModel, TrainHistory]:
    """Best weights, the re-fitted output offset, and what the model records about its training."""
    history, config = run.history, run.config
    if run.best_weights is not None:
        run.trained.keras_model.set_weights(run.best_weights)
    if stop == "completed" and run.averaged_epochs and run.averaged_epochs == config.average_last_epochs:
        _keep_average(run)
    # The version is a float32 model whatever the training precision: files stay portable, and prediction
    # picks its own precision.
    if precision.computes_in(run.trained.keras_model) != "float32":
        run.trained = precision.copy_in(run.trained, "float32")
    trained = run.trained
    for layer in trained.keras_model.layers:  # frozen batch norm was a training choice, not part of the version
        layer.trainable = True
    history.stopped_reason = stop
    history.cancelled = stop == "cancelled"
    history.final_loss = history.epochs[-1]["loss"] if history.epochs else None
    history.val_iou, history.val_dice = run.best_metrics.get("iou"), run.best_metrics.get("dice")
    if run.validation_pairs:  # also after Stop: the model kept is calibrated too
        refit_output_offset(trained, run.validation_pairs, config.threshold, history, run.precision)
    history.seconds = time.monotonic() - run.started
    _describe_version(run)
    trained.metadata.info["training"] = {
        "parent": run.parent.source or run.parent.name,
        "steps": history.steps,
        "best_epoch": history.best_epoch,
        "val_iou": history.val_iou,
        "stopped_reason": history.stopped_reason,
        "learning_rate": config.learning_rate,
        "output_offset": list(trained.metadata.output_offset),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if config.augment:
        trained.metadata.symmetries = symmetries_of(config.augmentation)
    trained.source = ""
    run.emit(kind="done", step=history.steps, epoch=len(history.epochs), loss=history.final_loss,
             val_iou=history.val_iou, val_dice=history.val_dice, best_val_iou=history.val_iou, eta_seconds=0.0)
    return trained, history


def _keep_average(run: TrainingRun) -> None:
    """Set the mean of the last epochs' weights (batch-norm statistics averaged alike), scored on validation."""
    run.trained.keras_model.set_weights([np.asarray(total / run.averaged_epochs, dtype=total.dtype)
                                         for total in run.weight_sum])
    run.history.averaged_epochs = run.averaged_epochs
    run.history.best_epoch_val_iou = run.best_metrics.get("iou")
    run.best_metrics = (score_pairs(run.trained, run.validation_pairs, run.config.threshold, precision=run.precision)
                        if run.validation_pairs else {})
    run.history.best_epoch = None


def _describe_version(run: TrainingRun) -> None:
    """The new version's own card: what its objects are (one-class models: from the training masks or the
    user's choice), a description of this version, no metrics or description copied from the parent."""
    from napari_unet.labels.instances import objects_in_masks

    trained, parent = run.trained, run.parent
    if parent.config.n_classes == 1:
        method = run.config.objects
        if method == "auto":
            method = objects_in_masks(pair.mask for pair in run.training_pairs)
        trained.metadata.instances = method
        trained.metadata.class_names = ["boundary" if method == "enclosed" else "object"]
    what = "boundaries between objects" if trained.metadata.instance_method == "enclosed" else "objects"
    if trained.metadata.instance_method == "classes":
        what = (f"classes; objects separated for {', '.join(trained.metadata.object_classes)}"
                if trained.metadata.object_classes else "classes")
    description = (f"Fine-tuned from '{parent.source or parent.name}' on {run.history.settings['n_training_pairs']} "
                   f"pair(s); output: {', '.join(trained.metadata.class_names)} ({what}).")
    # with_classes gave the parent a new head for this run (a re-headed model is no version yet): the card says so
    new_head = None if "fine_tuned_from" in parent.metadata.info else parent.metadata.info.get("new_output_layer")
    info = {"description": description, "fine_tuned_from": parent.source or parent.name}
    if new_head:
        info["description"] = (f"New output layer for {len(new_head['classes'])} classes "
                               f"({', '.join(new_head['classes'])}) on the encoder and decoder of '{new_head['from']}' "
                               f"(which had {', '.join(new_head['parent_classes'])}). " + description)
        info["new_output_layer"] = new_head
    trained.metadata.info = info


def finetune(
    model: SegmentationModel,
    images,
    masks=None,
    *,
    config: TrainConfig | None = None,
    validation=None,
    progress: Callable[[TrainProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    names: list[str] | None = None,
    focus: dict | None = None,
    **overrides,
) -> tuple[SegmentationModel, TrainHistory]:
    """Train a copy of `model` on image/mask pairs; returns (new model, TrainHistory).

    images, masks: lists of 2D (Y, X) or (Y, X, C) arrays (sizes may differ between pairs), (N, Y, X)
    arrays, or file paths; or one list of (image, mask) pairs with masks=None. Masks: the user's labels
    (masks.py: 0 = background, 255 = not annotated, other values objects or, for n-class models, class ids).
    validation: optional (images, masks) scored after every epoch; without it, validation_fraction
    of the data is held out (see split_validation). The returned model has the best weights (by
    validation IoU, else by training loss). Settings come from `config` and/or keyword overrides,
    e.g. finetune(model, images, masks, epochs=10, learning_rate=1e-3). names: optional pair names
    (e.g. file names) used in messages instead of "pair <index>". focus: {pair name: bool (Y, X) map} of
    pixels to centre half of that pair's patches on (e.g. where the start is wrong; needs names).
    Raises NapariUNetError for unusable input (message names the pair and the fix).
    """
    if not isinstance(model, SegmentationModel):
        from napari_unet.storage.registry import load_model

        model = load_model(model)
    config = resolve_config(model, config, overrides)
    images, masks = split_pairs(images, masks)
    model = with_channels_of(model, images)  # colour/multichannel pairs: the model reads every channel
    run = TrainingRun(model, config, images, masks, validation, names, progress, focus)
    stop = _train(run, cancel)
    return _finish(run, stop)

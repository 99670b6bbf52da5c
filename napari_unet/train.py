"""finetune(): train a U-Net on image/mask pairs — a user's corrections, or a whole data set from scratch.

Masks use 0 = background, 1 = foreground (class ids 0..n-1 for n-class models) and
IGNORE_LABEL = 255 = "not annotated": those pixels are left out of the loss and of the validation
scores, so a user can correct a few regions of a prediction and train on just those.

One call does: check the pairs -> normalise every image once with the model's percentiles (exactly
as prediction does) -> split off validation data -> per step, sample a batch of patches in numpy
(half centred on a foreground pixel so rare foreground is seen), augment them (augment.py) -> one
compiled tf.function step (BCE or softmax CE + soft Dice, optional U-Net border weights) with a fresh
Adam -> per epoch, score the validation images with the prediction engine and keep the best weights.
The input model is never changed: training runs on model.copy().

Callbacks: progress(TrainProgress) after every step and epoch; cancel() is polled between steps and
ends training with the best model so far (history.cancelled = True). A non-finite loss stops training
and restores the best weights so far, or the starting ones (history.stopped_reason = "non-finite loss").
TrainConfig.seconds bounds training in time (stopped_reason = "time budget"); validation still runs.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from napari_unet.augment import AugmentConfig, PairAugmenter, resolve_for_model, symmetries_of
from napari_unet.errors import NapariUNetError
from napari_unet.masks import IGNORE_LABEL, training_targets
from napari_unet.model import SegmentationModel
from napari_unet.normalize import apply_range, percentile_range

LR_SCHEDULES = ("constant", "cosine", "step")
MASK_FIX = "use 0 = background, 1 = foreground, 255 = not annotated; e.g. mask = (labels > 0)"


@dataclass
class TrainConfig:
    """Training settings. Defaults: a ~1 minute fine-tune on 2 CPU cores (F=16, 120 steps of 4 x 256²)."""

    epochs: int = 4
    steps_per_epoch: int = 30
    batch_size: int = 4
    patch_size: int | None = None  # None: the model's tile_size (256 by default)
    learning_rate: float = 1e-4  # fine-tuning; use ~1e-3 to train from scratch
    lr_schedule: str = "constant"  # "constant", "cosine" (to 1% at the end), "step" (x0.1 at 50% and 75%)
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    foreground_fraction: float = 0.5  # share of patches centred on a random foreground pixel
    # Held-out share when no validation set is given: whole pairs if that is >= 1 pair, else a strip
    # of that share of every pair (never sampled for training). 0 switches validation off.
    validation_fraction: float = 0.2
    early_stopping_patience: int = 10  # epochs without a better score before stopping; 0 = never stop early
    dice_weight: float = 1.0  # loss = cross-entropy + dice_weight * soft Dice loss
    border_weight: bool = False  # U-Net paper weight map: w_c + w0 * exp(-(d1 + d2)² / 2 sigma²)
    border_w0: float = 10.0
    border_sigma: float = 5.0
    threshold: float = 0.5  # for validation scores of 1-class models
    seed: int = 0
    # Time budget in seconds from the first step (None: no limit): training stops after the step that
    # crosses it, then validates and finishes, so a round's wall time is predictable.
    seconds: float | None = None

    def check(self) -> None:
        problems = []
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            problems.append("epochs, steps_per_epoch and batch_size must be >= 1")
        if not (self.learning_rate > 0):  # also catches NaN
            problems.append(f"learning_rate must be > 0, not {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), not {self.validation_fraction}")
        if not 0 <= self.foreground_fraction <= 1:
            problems.append(f"foreground_fraction must be in [0, 1], not {self.foreground_fraction}")
        if self.seconds is not None and not (self.seconds > 0):
            problems.append(f"seconds (the time budget) must be > 0, not {self.seconds}")
        if self.patch_size is not None and self.patch_size < 8:
            problems.append(f"patch_size must be at least 8 px, not {self.patch_size}")
        if problems:
            raise NapariUNetError("invalid training settings: " + "; ".join(problems))


@dataclass
class TrainProgress:
    """One progress event: kind "step" after each step, "epoch" after each epoch, "done" at the end."""

    kind: str
    step: int
    total_steps: int
    epoch: int
    epochs: int
    loss: float | None = None  # this step's loss ("step"), the epoch's mean loss ("epoch"/"done")
    val_iou: float | None = None
    val_dice: float | None = None
    eta_seconds: float | None = None
    best_val_iou: float | None = None
    learning_rate: float | None = None
    seconds: float = 0.0


@dataclass
class TrainHistory:
    """What happened: per-epoch dicts (epoch, loss, val_iou, val_dice, val_pixel_error, seconds, lr)."""

    epochs: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    best_epoch: int | None = None
    cancelled: bool = False
    stopped_reason: str = "completed"  # or "cancelled", "early stopping", "non-finite loss", "time budget"
    final_loss: float | None = None
    val_iou: float | None = None  # of the returned (best) weights
    val_dice: float | None = None
    # Re-fitted on the validation pairs after training (calibration.py); None when not re-fitted.
    output_offset: tuple[float, float] | None = None
    settings: dict = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [epoch["loss"] for epoch in self.epochs]


@dataclass
class _Pair:
    """One training or validation pair, ready to use."""

    name: str
    raw_image: np.ndarray  # (Y, X, C) as given, for validation through the prediction engine
    image: np.ndarray  # (Y, X, C) float32 normalised
    mask: np.ndarray  # (Y, X) uint8 with IGNORE_LABEL

    @property
    def n_annotated(self) -> int:
        return int(np.count_nonzero(self.mask != IGNORE_LABEL))


# --------------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------------


def _as_list(items, what: str) -> list:
    if items is None:
        return []
    if isinstance(items, np.ndarray) or type(items).__module__.startswith("dask."):
        if items.ndim == 2:
            return [items]
        return [items[i] for i in range(items.shape[0])]
    if isinstance(items, (str, os.PathLike)):
        return [items]
    try:
        return list(items)
    except TypeError:
        raise NapariUNetError(f"{what} must be an array or a list of arrays, not {type(items).__name__}") from None


def _load(item, default_name: str) -> tuple[np.ndarray, str]:
    if isinstance(item, (str, os.PathLike)):
        from napari_unet.io import read_image

        return read_image(item), os.path.basename(os.fspath(item))
    return np.asarray(item), default_name


def split_pairs(images, masks=None) -> tuple[list, list]:
    """Accept (images, masks) lists/arrays, or one list of (image, mask) pairs with masks=None."""
    if masks is None:
        pairs = _as_list(images, "images")
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise NapariUNetError(
                "give masks for the images: finetune(model, images, masks), or a list of (image, mask) pairs"
            )
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return _as_list(images, "images"), _as_list(masks, "masks")


def _shape_text(shape) -> str:
    return "×".join(str(n) for n in shape)


def check_mask(mask, name: str, n_classes: int = 1) -> np.ndarray:
    """A validated uint8 training mask (values 0..n_classes-1 and IGNORE_LABEL) or NapariUNetError."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise NapariUNetError(f"mask of {name} has shape {_shape_text(mask.shape)}: a 2D (Y, X) mask is needed")
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if mask.dtype.kind not in "uif":
        raise NapariUNetError(f"mask of {name} has dtype {mask.dtype}: a numeric or boolean mask is needed")
    if mask.dtype.kind == "f":
        if not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask)):
            raise NapariUNetError(
                f"mask of {name} has non-integer (float) values: masks hold labels, not probabilities — "
                f"{MASK_FIX} (threshold probabilities first, e.g. mask = (probabilities > 0.5))"
            )
    values = np.unique(mask)
    allowed = set(range(n_classes if n_classes > 1 else 2)) | {IGNORE_LABEL}
    unexpected = [v for v in values.tolist() if v not in allowed]
    if unexpected:
        listed = values.tolist() if values.size <= 12 else values[:8].tolist() + ["…"] + values[-3:].tolist()
        shown = ", ".join(str(v) if v == "…" else f"{v:g}" for v in listed)
        if values.size > 12:
            shown += f"; {values.size} distinct values"

        classes = "0 = background, 1 = foreground" if n_classes == 1 else f"class ids 0..{n_classes - 1}"
        raise NapariUNetError(
            f"mask of {name} has values {{{shown}}} but training needs {classes} and {IGNORE_LABEL} = not annotated: "
            + (MASK_FIX if n_classes == 1 else f"map your labels to 0..{n_classes - 1} (and {IGNORE_LABEL} for unlabelled pixels)")
        )
    mask = mask.astype(np.uint8)
    if not np.any(mask != IGNORE_LABEL):
        raise NapariUNetError(
            f"mask of {name} has no annotated pixels (all {IGNORE_LABEL} = not annotated): nothing to learn from — "
            "paint background (0) and foreground (1) somewhere, or leave this image out"
        )
    return mask


def _prepare_image(image, name: str, model: SegmentationModel) -> tuple[np.ndarray, np.ndarray]:
    """(raw (Y, X, C), normalised float32 (Y, X, C)) with the model's percentiles, as prediction does."""
    from napari_unet.prediction import _as_planes, _check_values

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1 and model.config.n_channels == 1:
        image = image[..., 0]  # (Y, X, 1): one grey channel, not a stack of 1-pixel-wide planes
    try:
        _check_values(image)
        planes = _as_planes(image, model.config.n_channels, None)
    except NapariUNetError as exc:
        raise NapariUNetError(f"{name}: {exc}") from None
    if planes.ndim != 3:
        raise NapariUNetError(
            f"{name} has shape {_shape_text(np.shape(image))}: training takes 2D images (Y, X) or (Y, X, C); "
            "pass the planes of a stack as separate images"
        )
    if np.dtype(planes.dtype).kind == "f" and not np.all(np.isfinite(planes)):
        raise NapariUNetError(f"{name} contains NaN or infinite values: replace them (e.g. numpy.nan_to_num) first")
    low, high = percentile_range(planes, model.metadata.normalization)
    return planes, apply_range(planes, low, high).astype(np.float32)


def prepare_pairs(model: SegmentationModel, images, masks, label: str = "pair", names=None) -> list[_Pair]:
    """Validated, normalised pairs; errors name the pair (`names`, file name or index) and the fix."""
    images, masks = split_pairs(images, masks)
    names = list(names) if names is not None else None
    if names is not None and len(names) != len(images):
        raise NapariUNetError(f"got {len(names)} names for {len(images)} images: give one name per pair")
    if len(images) != len(masks):
        raise NapariUNetError(f"got {len(images)} images but {len(masks)} masks: give one mask per image")
    if not images:
        raise NapariUNetError("no training pairs were given: pass at least one image with its mask")
    pairs = []
    for index, (image_item, mask_item) in enumerate(zip(images, masks)):
        default = f"{label} {index}" if names is None else f"{label} '{names[index]}'"
        image, image_name = _load(image_item, default)
        mask, mask_name = _load(mask_item, default)
        name = image_name if image_name == mask_name else f"{label} {index} ({image_name})"
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.dtype.kind in "uib":  # the one mask rule (masks.py): user labels -> this model's targets
            mask = training_targets(mask, model.config.n_classes, model.metadata.instance_method)
        mask = check_mask(mask, name, model.config.n_classes)
        raw, normalized = _prepare_image(image, name, model)
        if raw.shape[:2] != mask.shape:
            raise NapariUNetError(
                f"the mask of {name} is {_shape_text(mask.shape)} but its image is {_shape_text(raw.shape[:2])}: "
                "a mask must have exactly its image's Y×X shape"
            )
        pairs.append(_Pair(name, raw, normalized, mask))
    return pairs


def _check_foreground(pairs: list[_Pair], n_classes: int) -> None:
    """Refuse training without any foreground; warn about pairs that are all one class."""
    total_foreground = 0
    hint = ""
    for pair in pairs:
        annotated = pair.mask != IGNORE_LABEL
        foreground = int(np.count_nonzero(annotated & (pair.mask > 0)))
        total_foreground += foreground
        if foreground == 0:
            if np.any(~annotated):  # only 0 and 255: often a 0/255 binary mask, where 255 meant foreground
                hint = (f" (masks with only 0 and {IGNORE_LABEL}: if {IGNORE_LABEL} means foreground in your files, "
                        "convert them with mask = (mask > 0))")
            warnings.warn(f"the mask of {pair.name} has no foreground (all background){hint}", stacklevel=3)
        elif foreground == int(np.count_nonzero(annotated)):
            warnings.warn(f"the mask of {pair.name} is all foreground (no background)", stacklevel=3)
    if total_foreground == 0:
        raise NapariUNetError(
            "no foreground pixels in any training mask: the model would learn to predict nothing — "
            f"{MASK_FIX}, and annotate at least some foreground{hint}"
        )


# --------------------------------------------------------------------------------------------------
# Validation split and scoring
# --------------------------------------------------------------------------------------------------


def split_validation(pairs: list[_Pair], fraction: float, rng: np.random.Generator) -> tuple[list[_Pair], list[_Pair]]:
    """(training, validation): whole pairs when fraction * n >= 1, else a strip of every pair.

    A strip is the last `fraction` of the longer axis; the training part is cropped so the strip's
    pixels are never sampled. Pairs whose strip or remainder has no annotated pixels stay whole.
    """
    if fraction <= 0:
        return pairs, []
    n_held_out = int(round(fraction * len(pairs)))
    if len(pairs) >= 2 and n_held_out >= 1:
        n_held_out = min(n_held_out, len(pairs) - 1)
        has_foreground = [bool(np.any((p.mask > 0) & (p.mask != IGNORE_LABEL))) for p in pairs]
        held_out: set[int] = set()
        for index in rng.permutation(len(pairs)).tolist():  # random, but never all the foreground
            if len(held_out) == n_held_out:
                break
            if any(has_foreground[j] for j in range(len(pairs)) if j != index and j not in held_out):
                held_out.add(index)
        return ([p for i, p in enumerate(pairs) if i not in held_out], [p for i, p in enumerate(pairs) if i in held_out])
    training, validation = [], []
    for pair in pairs:
        axis = 0 if pair.mask.shape[0] >= pair.mask.shape[1] else 1
        length = pair.mask.shape[axis]
        cut = length - max(1, int(round(fraction * length)))
        keep, strip = (slice(None, cut), slice(cut, None))
        part = lambda array, s: array[s] if axis == 0 else array[:, s]  # noqa: E731
        train_part = _Pair(pair.name, part(pair.raw_image, keep), part(pair.image, keep), part(pair.mask, keep))
        strip_part = _Pair(f"{pair.name} (validation strip)", part(pair.raw_image, strip), part(pair.image, strip),
                           part(pair.mask, strip))
        if cut < 8 or train_part.n_annotated == 0 or strip_part.n_annotated == 0:
            training.append(pair)
        else:
            training.append(train_part)
            validation.append(strip_part)
    return training, validation


def validation_probabilities(model: SegmentationModel, raw_image: np.ndarray) -> np.ndarray:
    """(Y, X, n_classes) probabilities of one raw (Y, X, C) image, exactly as prediction computes them."""
    from napari_unet.prediction import predict_probabilities

    return predict_probabilities(model, raw_image)


def score_pairs(model: SegmentationModel, pairs: list[_Pair], threshold: float = 0.5,
                probability_maps: list[np.ndarray] | None = None) -> dict[str, float]:
    """Pooled IoU/Dice/pixel error over annotated pixels (mean over foreground classes for n > 1).

    probability_maps: the pairs' (Y, X, n_classes) maps if already predicted (else predicted here).
    """
    n_classes = model.config.n_classes
    classes = [1] if n_classes == 1 else list(range(1, n_classes))
    counts = {k: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for k in classes}
    wrong = total = 0
    from napari_unet.metrics import confusion_counts, scores_from_counts

    for index, pair in enumerate(pairs):
        if probability_maps is not None:
            probabilities = probability_maps[index]
        else:
            probabilities = validation_probabilities(model, pair.raw_image)
        if n_classes == 1:
            predicted = (probabilities[..., 0] >= threshold).astype(np.uint8)
        else:
            predicted = np.argmax(probabilities, axis=-1).astype(np.uint8)
        valid = pair.mask != IGNORE_LABEL
        wrong += int(np.count_nonzero((predicted != pair.mask) & valid))
        total += int(np.count_nonzero(valid))
        for k in classes:
            for key, value in confusion_counts(predicted == k, pair.mask == k, valid).items():
                counts[k][key] += value
    per_class = [scores_from_counts(counts[k]) for k in classes]
    return {
        "iou": float(np.mean([s["iou"] for s in per_class])),
        "dice": float(np.mean([s["dice"] for s in per_class])),
        "pixel_error": wrong / total if total else 0.0,
    }


def _refit_output_offset(trained: SegmentationModel, pairs: list[_Pair], threshold: float, history: TrainHistory) -> None:
    """Fit the output offset on the validation pairs: the annotations just trained on decide it, not
    the parent's (a shipped model's data-set offset would be wrong on the user's masks)."""
    from napari_unet.calibration import fit_output_offset, shift_probabilities

    trained.metadata.output_offset = (0.0, 0.0)
    maps = [validation_probabilities(trained, pair.raw_image) for pair in pairs]
    fit = fit_output_offset(maps, [pair.mask for pair in pairs], threshold=threshold, n_classes=trained.config.n_classes)
    trained.metadata.output_offset = fit.offset
    history.output_offset = fit.offset
    moved = [shift_probabilities(m, fit.offset) for m in maps]
    scores = score_pairs(trained, pairs, threshold, probability_maps=moved)
    history.val_iou, history.val_dice = scores.get("iou"), scores.get("dice")


# --------------------------------------------------------------------------------------------------
# Border weights (U-Net paper, eq. 2)
# --------------------------------------------------------------------------------------------------


def border_weight_map(mask: np.ndarray, *, objects_are_background: bool, w0: float = 10.0, sigma: float = 5.0,
                      n_classes: int = 1) -> np.ndarray:
    """w = w_c + w0 * exp(-(d1 + d2)² / (2 sigma²)), normalised to mean 1 over annotated pixels.

    d1, d2: distances to the nearest and second-nearest object; objects are the connected regions of
    background (membrane models: the cells the membranes enclose) or of foreground (e.g. nuclei).
    w_c balances classes (inverse frequency over annotated pixels). 0 on IGNORE_LABEL pixels.
    """
    from scipy import ndimage

    annotated = mask != IGNORE_LABEL
    class_weights = np.zeros(mask.shape, dtype=np.float32)
    n_annotated = max(1, int(np.count_nonzero(annotated)))
    present = [k for k in range(max(2, n_classes)) if np.any(annotated & (mask == k))]
    for k in present:
        selected = annotated & (mask == k)
        class_weights[selected] = n_annotated / (len(present) * np.count_nonzero(selected))
    objects = annotated & ((mask == 0) if objects_are_background else (mask > 0))
    labels, n_objects = ndimage.label(objects)
    reach = int(np.ceil(sigma * 4))  # beyond d1 + d2 > 4 sigma the term is < exp(-8)
    nearest = np.full(mask.shape, np.inf, dtype=np.float32)
    second = np.full(mask.shape, np.inf, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(slice(max(0, s.start - reach), min(n, s.stop + reach)) for s, n in zip(box, mask.shape))
        distance = ndimage.distance_transform_edt(labels[window] != index).astype(np.float32)
        near, sec = nearest[window], second[window]
        second[window] = np.where(distance < near, near, np.minimum(sec, distance))
        nearest[window] = np.minimum(near, distance)
    border = np.zeros(mask.shape, dtype=np.float32)
    if n_objects >= 2:
        total = nearest + second
        finite = np.isfinite(total)
        border[finite] = w0 * np.exp(-(total[finite] ** 2) / (2 * sigma**2))
    weights = np.where(annotated, class_weights + border, 0.0).astype(np.float32)
    mean = weights[annotated].mean() if np.any(annotated) else 1.0
    return weights / np.float32(mean if mean > 0 else 1.0)


# --------------------------------------------------------------------------------------------------
# Patch sampling
# --------------------------------------------------------------------------------------------------


class PatchSampler:
    """Random training batches from prepared pairs, in numpy so a step's time is the model's.

    Every image is padded once (reflect; masks with IGNORE_LABEL) to at least one patch plus the
    augmentation margin, so images smaller than a patch train fine. Pairs are drawn in proportion to
    their annotated pixels; a `foreground_fraction` of patches is centred on a random foreground
    pixel, the rest on a random annotated pixel (sparse corrections are never missed).
    """

    def __init__(self, pairs: list[_Pair], patch_size: int, *, rng: np.random.Generator,
                 augmenter: PairAugmenter | None = None, foreground_fraction: float = 0.5,
                 weight_maps: list[np.ndarray] | None = None):
        self.patch_size = patch_size
        self.rng = rng
        self.augmenter = augmenter
        self.foreground_fraction = foreground_fraction
        self.margin = augmenter.margin if augmenter is not None else 0
        self.images, self.masks, self.weights, self.offsets = [], [], [], []
        self.foreground, self.annotated = [], []
        for index, pair in enumerate(pairs):
            height, width = pair.mask.shape
            extra_y, extra_x = max(0, patch_size - height), max(0, patch_size - width)
            pad = ((self.margin + extra_y // 2, self.margin + extra_y - extra_y // 2),
                   (self.margin + extra_x // 2, self.margin + extra_x - extra_x // 2))
            self.images.append(np.pad(pair.image, pad + ((0, 0),), mode="reflect"))
            self.masks.append(np.pad(pair.mask, pad, mode="constant", constant_values=IGNORE_LABEL))
            weight = weight_maps[index] if weight_maps is not None else (pair.mask != IGNORE_LABEL).astype(np.float32)
            self.weights.append(np.pad(weight, pad, mode="constant", constant_values=0.0))
            self.offsets.append((pad[0][0], pad[1][0]))
            annotated = pair.mask != IGNORE_LABEL
            self.annotated.append(np.flatnonzero(annotated).astype(np.int64))
            self.foreground.append(np.flatnonzero(annotated & (pair.mask > 0)).astype(np.int64))
        counts = np.array([a.size for a in self.annotated], dtype=np.float64)
        self.pair_probabilities = counts / counts.sum()
        self.shapes = [pair.mask.shape for pair in pairs]

    def sample_patch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng
        index = int(rng.choice(len(self.images), p=self.pair_probabilities))
        use_foreground = self.foreground[index].size > 0 and rng.random() < self.foreground_fraction
        candidates = self.foreground[index] if use_foreground else self.annotated[index]
        centre = int(candidates[rng.integers(candidates.size)])
        cy, cx = divmod(centre, self.shapes[index][1])
        size, margin = self.patch_size, self.margin
        oy, ox = self.offsets[index]
        image = self.images[index]
        # top-left of the patch in padded coordinates, kept inside the (padded-to-patch) image
        top = min(max(cy + oy - size // 2, margin), image.shape[0] - margin - size)
        left = min(max(cx + ox - size // 2, margin), image.shape[1] - margin - size)
        window = (slice(top - margin, top + size + margin), slice(left - margin, left + size + margin))
        image_patch = image[window]
        mask_patch, weight_patch = self.masks[index][window], self.weights[index][window]
        if self.augmenter is not None:
            image_patch, (mask_patch, weight_patch) = self.augmenter(image_patch, [mask_patch, weight_patch])
        weight_patch = np.where(mask_patch == IGNORE_LABEL, 0.0, weight_patch).astype(np.float32)
        labels = np.where(mask_patch == IGNORE_LABEL, 0, mask_patch).astype(np.int32)
        return image_patch, labels, weight_patch

    def sample_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images (B, P, P, C) float32, labels (B, P, P) int32, weights (B, P, P) float32; 0 = ignored)."""
        patches = [self.sample_patch() for _ in range(batch_size)]
        return tuple(np.stack(parts) for parts in zip(*patches))


# --------------------------------------------------------------------------------------------------
# Loss and train step
# --------------------------------------------------------------------------------------------------


def segmentation_loss(probabilities, labels, weights, n_classes: int, dice_weight: float = 1.0):
    """Weighted cross-entropy over pixels with weight > 0, plus dice_weight x soft Dice loss.

    probabilities: (B, H, W, n_classes) model output (sigmoid or softmax); labels (B, H, W) int;
    weights (B, H, W) float32, 0 on IGNORE_LABEL pixels (they add nothing to either term).
    """
    import tensorflow as tf

    epsilon = 1e-7
    probabilities = tf.clip_by_value(tf.cast(probabilities, tf.float32), epsilon, 1.0 - epsilon)
    valid = tf.cast(weights > 0, tf.float32)
    if n_classes == 1:
        target = tf.cast(labels, tf.float32)
        predicted = probabilities[..., 0]
        cross_entropy = -(target * tf.math.log(predicted) + (1.0 - target) * tf.math.log(1.0 - predicted))
        targets, outputs = target[..., None], predicted[..., None]
    else:
        targets = tf.one_hot(labels, n_classes, dtype=tf.float32)
        cross_entropy = -tf.reduce_sum(targets * tf.math.log(probabilities), axis=-1)
        targets, outputs = targets[..., 1:], probabilities[..., 1:]  # Dice of the foreground classes
    loss = tf.reduce_sum(cross_entropy * weights) / tf.maximum(tf.reduce_sum(weights), epsilon)
    if dice_weight:
        mask = valid[..., None]
        intersection = tf.reduce_sum(outputs * targets * mask, axis=(0, 1, 2))
        total = tf.reduce_sum(outputs * mask, axis=(0, 1, 2)) + tf.reduce_sum(targets * mask, axis=(0, 1, 2))
        dice = (2.0 * intersection + 1.0) / (total + 1.0)
        if n_classes == 1:
            dice_loss = 1.0 - dice[0]  # with no foreground in the batch this still pushes predictions to 0
        else:  # mean over the classes present in the batch, so an absent class is left to cross-entropy
            present = tf.cast(tf.reduce_sum(targets * mask, axis=(0, 1, 2)) > 0, tf.float32)
            dice_loss = tf.reduce_sum((1.0 - dice) * present) / tf.maximum(tf.reduce_sum(present), 1.0)
        loss = loss + dice_weight * dice_loss
    return loss


def _learning_rate(config: TrainConfig, total_steps: int):
    import keras

    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, total_steps), alpha=0.01)
    if config.lr_schedule == "step":
        boundaries = [max(1, total_steps // 2), max(2, (3 * total_steps) // 4)]
        rates = [config.learning_rate, config.learning_rate * 0.1, config.learning_rate * 0.01]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, rates)
    return config.learning_rate


def make_train_step(keras_model, optimizer, n_classes: int, n_channels: int, dice_weight: float):
    """One compiled step: loss, gradients, Adam update. Non-finite gradients are not applied."""
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
            loss = segmentation_loss(probabilities, labels, weights, n_classes, dice_weight)
        gradients = tape.gradient(loss, variables)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(tf.linalg.global_norm(gradients))
        gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
        optimizer.apply_gradients(zip(gradients, variables))
        return loss, finite

    return train_step


# --------------------------------------------------------------------------------------------------
# finetune()
# --------------------------------------------------------------------------------------------------


def _settings(config: TrainConfig) -> dict:
    values = asdict(config)
    values["augmentation"] = asdict(config.augmentation)
    return values


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
    **overrides,
) -> tuple[SegmentationModel, TrainHistory]:
    """Train a copy of `model` on image/mask pairs; returns (new model, TrainHistory).

    images, masks: lists of 2D (Y, X) or (Y, X, C) arrays (sizes may differ between pairs), (N, Y, X)
    arrays, or file paths; or one list of (image, mask) pairs with masks=None. Masks: 0 = background,
    1 = foreground (class ids for n-class models), IGNORE_LABEL (255) = not annotated.
    validation: optional (images, masks) scored after every epoch; without it, validation_fraction
    of the data is held out (see split_validation). The returned model has the best weights (by
    validation IoU, else by training loss). Settings come from `config` and/or keyword overrides,
    e.g. finetune(model, images, masks, epochs=10, learning_rate=1e-3). names: optional pair names
    (e.g. file names) used in messages instead of "pair <index>".
    Raises NapariUNetError for unusable input (message names the pair and the fix).
    """
    import keras

    if not isinstance(model, SegmentationModel):
        from napari_unet.registry import load_model

        model = load_model(model)
    config = config or TrainConfig()
    if overrides:
        unknown = set(overrides) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise NapariUNetError(f"unknown training setting(s) {', '.join(sorted(unknown))}: see TrainConfig")
        config = TrainConfig(**{**asdict(config), "augmentation": config.augmentation, **overrides})
    config.check()
    # Fine-tuning keeps the model's symmetries unless told otherwise (AugmentConfig.rotations=None).
    config = replace(config, augmentation=resolve_for_model(config.augmentation, model.metadata.symmetries))
    started = time.monotonic()
    n_classes, multiple = model.config.n_classes, model.config.size_multiple
    patch_size = int(config.patch_size or model.metadata.tile_size or 256)
    patch_size = max(multiple, int(math.ceil(patch_size / multiple)) * multiple)

    pairs = prepare_pairs(model, images, masks, names=names)
    _check_foreground(pairs, n_classes)
    rng = np.random.default_rng(config.seed)
    if validation is not None:
        validation_images, validation_masks = validation if isinstance(validation, tuple) else split_pairs(validation)
        validation_pairs = prepare_pairs(model, validation_images, validation_masks, label="validation pair")
        training_pairs = pairs
    else:
        training_pairs, validation_pairs = split_validation(pairs, config.validation_fraction, rng)

    keras.utils.set_random_seed(config.seed)
    trained = model.copy()
    keras_model = trained.keras_model
    weight_maps = None
    if config.border_weight:
        from napari_unet.postprocess import objects_are_background

        background_objects = objects_are_background(trained.metadata.class_names)
        weight_maps = [border_weight_map(p.mask, objects_are_background=background_objects, w0=config.border_w0,
                                         sigma=config.border_sigma, n_classes=n_classes) for p in training_pairs]
    augmenter = PairAugmenter(config.augmentation, seed=config.seed, mask_fill=IGNORE_LABEL) if config.augment else None
    sampler = PatchSampler(training_pairs, patch_size, rng=rng, augmenter=augmenter,
                           foreground_fraction=config.foreground_fraction, weight_maps=weight_maps)

    total_steps = config.epochs * config.steps_per_epoch
    optimizer = keras.optimizers.Adam(learning_rate=_learning_rate(config, total_steps))
    train_step = make_train_step(keras_model, optimizer, n_classes, model.config.n_channels, config.dice_weight)

    history = TrainHistory(settings={**_settings(config), "patch_size": patch_size,
                                     "n_training_pairs": len(training_pairs),
                                     "n_validation_pairs": len(validation_pairs)})
    best_score, best_weights, best_metrics = None, None, {}
    initial_weights = keras_model.get_weights()  # what a non-finite loss falls back to before any best epoch
    epochs_without_improvement = 0
    step_seconds: list[float] = []

    def emit(**values) -> None:
        if progress is not None:
            progress(TrainProgress(total_steps=total_steps, epochs=config.epochs,
                                   seconds=time.monotonic() - started, **values))

    def current_lr() -> float:
        return float(np.asarray(optimizer.learning_rate))

    def finish_epoch(epoch: int, losses: list[float], epoch_started: float) -> None:
        nonlocal best_score, best_weights, best_metrics, epochs_without_improvement
        mean_loss = float(np.mean(losses))
        scores = score_pairs(trained, validation_pairs, config.threshold) if validation_pairs else {}
        record = {"epoch": epoch, "loss": mean_loss, "steps": len(losses),
                  "val_iou": scores.get("iou"), "val_dice": scores.get("dice"),
                  "val_pixel_error": scores.get("pixel_error"),
                  "seconds": time.monotonic() - epoch_started, "learning_rate": current_lr()}
        history.epochs.append(record)
        score = scores["iou"] if scores else -mean_loss
        if best_score is None or score > best_score:
            best_score, best_weights, best_metrics = score, keras_model.get_weights(), scores
            history.best_epoch = epoch
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
        emit(kind="epoch", step=history.steps, epoch=epoch, loss=mean_loss, val_iou=scores.get("iou"),
             val_dice=scores.get("dice"), best_val_iou=best_metrics.get("iou"), learning_rate=record["learning_rate"],
             eta_seconds=float(np.mean(step_seconds)) * (total_steps - history.steps) if step_seconds else None)

    stop = None
    deadline = None
    for epoch in range(1, config.epochs + 1):
        epoch_started, losses = time.monotonic(), []
        for _ in range(config.steps_per_epoch):
            if cancel is not None and cancel():
                stop = "cancelled"
                break
            step_started = time.monotonic()
            if deadline is None and config.seconds is not None:
                deadline = step_started + config.seconds
            if deadline is not None and step_started >= deadline:
                stop = "time budget"
                break
            batch_images, batch_labels, batch_weights = sampler.sample_batch(config.batch_size)
            loss, finite = train_step(batch_images, batch_labels, batch_weights)
            loss = float(loss)
            if not (bool(finite) and math.isfinite(loss)):  # the step applied no update; keep the best so far
                keras_model.set_weights(best_weights if best_weights is not None else initial_weights)
                stop = "non-finite loss"
                break
            losses.append(loss)
            history.steps += 1
            step_seconds.append(time.monotonic() - step_started)
            recent = step_seconds[1:] or step_seconds  # the first step includes tracing
            emit(kind="step", step=history.steps, epoch=epoch, loss=loss, learning_rate=current_lr(),
                 eta_seconds=float(np.mean(recent[-20:])) * (total_steps - history.steps),
                 best_val_iou=best_metrics.get("iou"))
        if losses:
            finish_epoch(epoch, losses, epoch_started)
        if stop:
            break
        if config.early_stopping_patience and epochs_without_improvement >= config.early_stopping_patience:
            stop = "early stopping"
            break

    if best_weights is not None:
        keras_model.set_weights(best_weights)
    history.stopped_reason = stop or "completed"
    history.cancelled = stop == "cancelled"
    history.final_loss = history.epochs[-1]["loss"] if history.epochs else None
    history.val_iou, history.val_dice = best_metrics.get("iou"), best_metrics.get("dice")
    if validation_pairs:  # also after Stop: the model kept is calibrated too
        _refit_output_offset(trained, validation_pairs, config.threshold, history)
    history.seconds = time.monotonic() - started
    trained.metadata.info["training"] = {
        "parent": model.source or model.name,
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
    emit(kind="done", step=history.steps, epoch=len(history.epochs), loss=history.final_loss,
         val_iou=history.val_iou, val_dice=history.val_dice, best_val_iou=history.val_iou, eta_seconds=0.0)
    return trained, history

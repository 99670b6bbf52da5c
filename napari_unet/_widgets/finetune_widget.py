"""Fine-tune tab: train the selected model on the training set in a worker, with live curves and Cancel.

When done: the new version is saved in the ModelStore, the current image is re-predicted into
'<image> prediction (<version>)' (the user's corrected layer is never touched), and held-out IoU
before/after is shown; the new version is selected only if it helped.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSpinBox,
    QVBoxLayout, QWidget,
)

from napari_unet._widgets._layers import LayerCombo, current_index, layer_array, stack_depth
from napari_unet._widgets._plot import TrainingPlot
from napari_unet._widgets._session import Session, prediction_layer_name
from napari_unet._widgets._workers import Job

DEFAULT_EPOCHS = 10
DEFAULT_STEPS_PER_EPOCH = 20
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_PATCH_SIZE = 256


def train_config(**values):
    """A train.TrainConfig from the widget's fields, skipping any the installed trainer does not know."""
    from napari_unet.train import TrainConfig

    known = {field.name for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{name: value for name, value in values.items() if name in known and value is not None})


def _field(record, name: str):
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


class FinetuneWidget(QWidget):
    def __init__(self, viewer, session: Session, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = session
        self.job: Job | None = None
        self.last_result = None

        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        self.pairs_label = QLabel("")
        self.image_combo = LayerCombo(viewer, Image, "(no image)")
        self.image_combo.setToolTip("after training, this image is predicted again with the new version")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(DEFAULT_EPOCHS)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 10000)
        self.steps_spin.setValue(DEFAULT_STEPS_PER_EPOCH)
        self.learning_rate_spin = QDoubleSpinBox()
        self.learning_rate_spin.setDecimals(6)
        self.learning_rate_spin.setRange(1e-6, 1e-2)
        self.learning_rate_spin.setSingleStep(1e-5)
        self.learning_rate_spin.setValue(DEFAULT_LEARNING_RATE)
        self.augment_check = QCheckBox("augmentation (flips, rotations as trained, elastic, intensity)")
        self.augment_check.setChecked(True)
        self.start_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Stop (keep best)")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.plot = TrainingPlot()
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Re-predict", self.image_combo)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Steps per epoch", self.steps_spin)
        form.addRow("Learning rate", self.learning_rate_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(self.pairs_label)
        layout.addLayout(form)
        layout.addWidget(self.augment_check)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.result_label)

        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        session.model_changed.connect(self._show_model)
        session.training_set_changed.connect(self._show_pairs)
        self._show_model()
        self._show_pairs()

    def _show_model(self, *args) -> None:
        self.model_label.setText(f"Starting model: <b>{self.session.model_label or '(none)'}</b> "
                                 "(choose it in the Predict or Models tab)")

    def _show_pairs(self, *args) -> None:
        count = len(self.session.training_set.pairs())
        root = self.session.training_set.root
        self.pairs_label.setText(f"Training set: {count} pair(s) in '{root.name}'")
        self.pairs_label.setToolTip(str(root))

    def start(self) -> Job | None:
        """Copy everything the worker needs now (GUI thread), then train in a worker."""
        if self.job is not None and not self.job.done:
            show_info("Fine-tuning is already running: wait for it or press Stop.")
            return None
        model_key = self.session.model_key
        model_label = self.session.model_label
        training_set = self.session.training_set
        session = self.session
        image_layer = self.image_combo.layer()
        image_plane, index = None, ()
        if image_layer is not None:
            index = current_index(self.viewer, image_layer) if stack_depth(image_layer) else ()
            image_plane = np.array(layer_array(image_layer)[index])  # a copy: the user may keep editing
        settings = dict(epochs=self.epochs_spin.value(), steps_per_epoch=self.steps_spin.value(),
                        learning_rate=float(self.learning_rate_spin.value()), augment=self.augment_check.isChecked())

        def work(report, is_cancelled):
            from napari_unet.prediction import predict
            from napari_unet.store import ModelStore
            from napari_unet.training_set import finetune_round

            model = session.load_model(model_key)
            patch = _patch_size(training_set, model)
            config = train_config(**settings, patch_size=patch)
            result = finetune_round(model, training_set, config=config, progress=report, cancel=is_cancelled)
            metrics = {"held_out_iou_before": (result.before or {}).get("iou"),
                       "held_out_iou": (result.after or {}).get("iou")}
            record = ModelStore().save_version(
                result.model, history=result.history, parent=model_key, training_pairs=result.pair_fingerprints,
                metrics=metrics, settings={**settings, "patch_size": patch, "improved": result.improved})
            version = str(_field(record, "name"))
            session.remember_model(version, result.model)
            labels = None
            if image_plane is not None:
                report(("predicting", 0))
                labels = np.asarray(predict(result.model, image_plane, output="labels",
                                            channel_axis=-1 if image_layer.rgb else None))
            return result, version, labels

        self.plot.clear(total_steps=settings["epochs"] * settings["steps_per_epoch"])
        self.progress_bar.setRange(0, 0)
        self.result_label.setText("Preparing (loading the model and the training set) …")
        self._set_running(True)
        self.job = Job(work, what=f"Fine-tuning '{model_label}'", on_progress=self._show_progress,
                       on_done=lambda result: self._done(image_layer, index, model_key, result),
                       on_finished=lambda: self._set_running(False))
        self.session.track(self.job)
        return self.job.start()

    def cancel(self) -> None:
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.result_label.setText("Stopping after this step; the best model so far is kept …")

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not running:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1 if self.job and self.job.error is None else 0)

    def _show_progress(self, event) -> None:
        if isinstance(event, tuple):  # ("predicting", 0): after training
            self.progress_bar.setRange(0, 0)
            self.result_label.setText("Scoring and predicting with the new version …")
            return
        kind = getattr(event, "kind", "step")
        step, total = int(getattr(event, "step", 0) or 0), int(getattr(event, "total_steps", 0) or 0)
        if total:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(step, total))
            self.plot.total_steps = total
        loss = getattr(event, "loss", None)
        if kind == "step" and loss is not None and math.isfinite(loss):
            self.plot.add_loss(step, loss)
        val_iou = getattr(event, "val_iou", None)
        if kind == "epoch" and val_iou is not None and math.isfinite(val_iou):
            self.plot.add_iou(step, val_iou)
        eta = getattr(event, "eta_seconds", None)
        epoch, epochs = getattr(event, "epoch", None), getattr(event, "epochs", None)
        text = f"Epoch {epoch}/{epochs}" if epoch is not None else "Training"
        if loss is not None:
            text += f" · loss {loss:.3f}"
        if eta is not None and math.isfinite(eta):
            text += f" · about {eta:.0f} s left"
        self.result_label.setText(text)

    def _done(self, image_layer, index, model_key: str, outcome) -> None:
        result, version, labels = outcome
        self.last_result = outcome
        self.session.versions_changed.emit()
        message = result.verdict
        if getattr(result.history, "cancelled", False):
            message = "Stopped early; the best model so far was kept. " + message
        if result.improved:
            self.session.select_model(version)
        if labels is not None:
            if image_layer in self.viewer.layers:
                from napari_unet._widgets.predict_widget import write_prediction

                layer = write_prediction(self.viewer, image_layer, index, labels,
                                         prediction_layer_name(image_layer.name, version), version)
                message += f" New prediction in '{layer.name}'."
            else:
                show_warning(f"Image '{image_layer.name}' was removed during fine-tuning: no new prediction shown "
                             f"(version '{version}' is saved).")
        self.result_label.setText(f"Saved as <b>{version}</b>. {message}")
        (show_info if result.improved else show_warning)(f"Version '{version}': {message}")


def _patch_size(training_set, model) -> int:
    """The default patch, shrunk to the smallest stored image (rounded down to the model's size multiple)."""
    sides = [min(pair.shape[:2]) for pair in training_set.pairs() if len(pair.shape) >= 2]
    multiple = model.config.size_multiple
    smallest = min(sides) if sides else DEFAULT_PATCH_SIZE
    return max(multiple, min(DEFAULT_PATCH_SIZE, smallest) // multiple * multiple)

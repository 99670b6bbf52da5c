"""Fine-tune tab: one round of the project (project.Project.round) in the worker process, and the evidence of every round.

The round itself — snapshot, fine-tune, score against the parent, guard, keep or roll back, record —
is the core's; this tab collects settings (defaults from TrainConfig), shows training progress, the
round's sentence, and IoU/Dice of every round on the project's evaluation set. After a round the image
is predicted again with the new version into a new layer; the user's corrected layer is never touched.
"""

from __future__ import annotations

import math

from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets._layers import LayerChooser, channels_last, current_index, image_data, stack_depth
from napari_unet._widgets._plot import RoundsPlot, TrainingPlot
from napari_unet._widgets._run_controls import RunControls
from napari_unet._widgets._session import Session, prediction_layer_name, settings
from napari_unet._widgets._workers import Job


def _train_defaults():
    """TrainConfig() without importing TensorFlow at dock start (train.py imports it lazily)."""
    from napari_unet.training import TrainConfig

    return TrainConfig()


class FinetuneWidget(QWidget):
    def __init__(self, viewer, session: Session, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = session
        self.job: Job | None = None
        self.last_outcome = None
        defaults = _train_defaults()
        saved = settings()

        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        self.suggest_button = QPushButton("Suggest a start")
        self.suggest_button.setToolTip("score every shipped model and kept version on your corrections (or, without "
                                       "any, by their uncertainty on the Re-predict image) and choose the best; "
                                       "pick another in the Predict tab to override")
        self.suggest_job: Job | None = None
        self.suggestion: dict | None = None
        self.pairs_label = QLabel("")
        self.pairs_label.setWordWrap(True)
        self.image_combo = LayerChooser(Image, "after the round, this image is predicted again with the new version")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(int(saved.value("epochs", defaults.epochs)))
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 10000)
        self.steps_spin.setValue(int(saved.value("steps_per_epoch", defaults.steps_per_epoch)))
        self.learning_rate_spin = QDoubleSpinBox()
        self.learning_rate_spin.setDecimals(6)
        self.learning_rate_spin.setRange(1e-6, 1e-2)
        self.learning_rate_spin.setSingleStep(1e-5)
        self.learning_rate_spin.setValue(float(saved.value("learning_rate", defaults.learning_rate)))
        self.seconds_spin = QSpinBox()
        self.seconds_spin.setRange(0, 24 * 3600)
        self.seconds_spin.setSpecialValueText("no limit")
        self.seconds_spin.setSuffix(" s")
        self.seconds_spin.setValue(int(saved.value("seconds", defaults.seconds or 0)))
        self.seconds_spin.setToolTip("time budget: train as many steps as fit, then score and finish")
        self.augment_check = QCheckBox("augmentation (flips, rotations as trained, elastic, intensity)")
        self.augment_check.setChecked(str(saved.value("augment", defaults.augment)).lower() in ("true", "1"))
        self.controls = RunControls("Fine-tune", "Stop (keep best)")
        self.plot = TrainingPlot()
        self.rounds_plot = RoundsPlot()
        self.rounds_label = QLabel("")
        self.rounds_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Re-predict", self.image_combo.native)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Steps per epoch", self.steps_spin)
        form.addRow("Learning rate", self.learning_rate_spin)
        form.addRow("Time budget", self.seconds_spin)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(self.suggest_button)
        layout.addWidget(self.pairs_label)
        layout.addLayout(form)
        layout.addWidget(self.augment_check)
        layout.addWidget(self.controls)
        layout.addWidget(self.plot, 1)
        layout.addWidget(QLabel("Every round on the evaluation set (hollow: rolled back)"))
        layout.addWidget(self.rounds_plot, 1)
        layout.addWidget(self.rounds_label)

        self.suggest_button.clicked.connect(self.suggest_start)
        self.controls.start_button.clicked.connect(self.start)
        self.controls.cancel_button.clicked.connect(self.cancel)
        session.model_changed.connect(self._show_model)
        session.training_set_changed.connect(self._show_pairs)
        session.training_set_changed.connect(self._show_model)
        session.rounds_changed.connect(self._show_rounds)
        self._show_model()
        self._show_pairs()
        self._show_rounds()

    # --- what the round will use --------------------------------------------------------------
    def parent_key(self) -> str:
        """The project's active version; for a project with no model yet, the dock's selected model."""
        return self.session.project.active or self.session.model_key

    def _show_model(self, *args) -> None:
        source = "the project's active version" if self.session.project.active else "chosen in the Predict tab"
        self.model_label.setText(f"Starting model: <b>{self.parent_key() or '(none)'}</b> ({source})")

    def suggest_start(self) -> Job | None:
        """Propose the model that fits the user's images best (adaptation.propose_start) and select it."""
        if self.suggest_job is not None and not self.suggest_job.done:
            return None
        session, project = self.session, self.session.project
        keys = [key for label, key in session.model_choices() if key and "rolled back" not in label]
        image_layer = self.image_combo.layer()
        plane = None
        if image_layer is not None:
            index = current_index(self.viewer, image_layer) if stack_depth(image_layer) else ()
            plane = image_data(self.viewer, image_layer, index)
        if not keys or (plane is None and not project.training.pairs()):
            show_info("Suggest a start: open an image (or add a corrected pair) and have at least one model.")
            return None

        def done(proposal) -> None:
            self.suggestion = proposal
            if project.active:
                show_info(f"{proposal['reason']}. The project goes on from its active version '{project.active}'; "
                          "revert to another in the Models tab to start elsewhere.")
            else:
                session.select_model(proposal["name"])
                show_info(f"{proposal['reason']}: selected it (pick another in the Predict tab to override).")
            self.model_label.setToolTip(proposal["reason"])

        self.controls.say("Scoring the models on your images …")
        self.suggest_job = Job(session.request("propose_start", str(project.root), keys, plane),
                               what="Suggesting a start", on_done=done)
        session.track(self.suggest_job)
        return self.suggest_job.start()

    def _show_pairs(self, *args) -> None:
        project = self.session.project
        training, evaluation = len(project.training.pairs()), len(project.evaluation.pairs())
        scored = f"{evaluation} evaluation pair(s)" if evaluation else "no evaluation pairs: the held-out stripes are scored"
        self.pairs_label.setText(f"Project '{project.root.name}': {training} training pair(s), {scored}")
        self.pairs_label.setToolTip(str(project.root))

    def _show_rounds(self, *args) -> None:
        rounds = self.session.project.rounds()
        self.rounds_plot.set_rounds(rounds)
        self.rounds_label.setText(rounds[-1].reason if rounds else "")

    def config(self):
        from dataclasses import replace

        seconds = self.seconds_spin.value()
        return replace(_train_defaults(), epochs=self.epochs_spin.value(), steps_per_epoch=self.steps_spin.value(),
                       learning_rate=float(self.learning_rate_spin.value()), augment=self.augment_check.isChecked(),
                       seconds=float(seconds) if seconds else None)

    def _remember_settings(self) -> None:
        saved = settings()
        for key, value in (("epochs", self.epochs_spin.value()), ("steps_per_epoch", self.steps_spin.value()),
                           ("learning_rate", self.learning_rate_spin.value()), ("seconds", self.seconds_spin.value()),
                           ("augment", self.augment_check.isChecked())):
            saved.setValue(key, value)

    # --- the round ----------------------------------------------------------------------------
    def start(self) -> Job | None:
        """Copy everything the worker needs now (GUI thread), then run the round in a worker."""
        if self.job is not None and not self.job.done:
            show_info("Fine-tuning is already running: wait for it or press Stop.")
            return None
        project, parent_key, config = self.session.project, self.parent_key(), self.config()
        self._remember_settings()
        image_layer = self.image_combo.layer()
        image_plane, index = None, ()
        if image_layer is not None:
            index = current_index(self.viewer, image_layer) if stack_depth(image_layer) else ()
            image_plane = image_data(self.viewer, image_layer, index)  # a copy, with its channel layers
        channel_axis = -1 if image_layer is not None and channels_last(self.viewer, image_layer) else None
        request = self.session.request("fine_tune_round", str(project.root), parent_key, config, image_plane, channel_axis)

        self.plot.clear(total_steps=config.epochs * config.steps_per_epoch)
        self.controls.say("Preparing (loading the model and the pairs, scoring the starting model) …")
        self.controls.running(True)
        self.job = Job(request, what=f"Fine-tuning '{parent_key}'", on_progress=self._show_progress,
                       on_done=lambda result: self._done(image_layer, index, result),
                       on_finished=lambda: self.controls.running(False, self.job is None or self.job.error is None))
        self.session.track(self.job)
        return self.job.start()

    def cancel(self) -> None:
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.controls.say("Stopping after this step; the best model so far is kept and scored …")

    def _show_progress(self, event) -> None:
        if isinstance(event, tuple):  # ("predicting", 0): after the round
            self.controls.busy()
            self.controls.say("Predicting the image again with the new version …")
            return
        if event.total_steps:
            self.controls.progress(event.step, event.total_steps)
            self.plot.total_steps = event.total_steps
        if event.kind == "step" and event.loss is not None and math.isfinite(event.loss):
            self.plot.add_loss(event.step, event.loss)
        if event.kind == "epoch" and event.val_iou is not None and math.isfinite(event.val_iou):
            self.plot.add_iou(event.step, event.val_iou)
        text = f"Epoch {event.epoch}/{event.epochs}"
        if event.loss is not None:
            text += f" · loss {event.loss:.3f}"
        if event.eta_seconds is not None and math.isfinite(event.eta_seconds):
            text += f" · about {event.eta_seconds:.0f} s left"
        if event.kind == "done":
            text = "Scoring the new version against its parent on the evaluation set …"
        self.controls.say(text)

    def _done(self, image_layer, index, result) -> None:
        outcome, labels = result
        self.last_outcome = outcome
        version = outcome.version
        self.session.mark_warm(version)  # the worker process keeps the new version loaded
        self.session.versions_changed.emit()
        self.session.rounds_changed.emit()
        if outcome.kept:
            self.session.select_model(version)
            twin = self.session.request("write_twin", self.session.model_reference(version))
            self.session.track(Job(twin, what=f"Preparing a quick start for '{version}'", on_done=lambda path: None).start())
        message = outcome.reason
        if labels is not None:
            if image_layer in self.viewer.layers:
                from napari_unet._widgets.predict_widget import write_prediction

                layer = write_prediction(self.viewer, image_layer, index, labels,
                                         prediction_layer_name(image_layer.name, version), version)
                message += f" New prediction in '{layer.name}'."
            else:
                show_warning(f"Image '{image_layer.name}' was removed during fine-tuning: no new prediction shown "
                             f"(version '{version}' is saved).")
        self.controls.say(f"Round {outcome.record.round}: saved as <b>{version}</b>. {message}")
        (show_info if outcome.kept else show_warning)(f"Round {outcome.record.round} ('{version}'): {outcome.reason}")
        self._show_model()


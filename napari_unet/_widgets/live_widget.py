"""Live tab: the model learns while the user paints (live.LiveTrainer in the worker process), shown in a layer.

GUI thread: listens to the prediction layer's `paint` events (one per finished stroke), collects the touched
pixels, and after a pause in painting (debounced) sends a copy of the plane's labels to the worker process.
Nothing on the GUI thread waits for training. Worker process (worker/tasks.live): writes the plane's pair into
the project, re-reads the pairs, trains in short bursts, predicts the visible region with the running model and
reports it; the dock writes it into '<image> live' — the user's layer is never written. Until the U-Net scores
better on the evaluation set than a random forest fitted on the same strokes (live.ForestPreview, ilastik's
approach, a second to fit), the forest's prediction is shown instead, so the first strokes give a useful answer at
once. Pause, Keep (a version through the project's guard) and Off (which keeps the best model so far, the same way)
are one click each.
"""

from __future__ import annotations

import time

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_unet._widgets._layers import LayerChooser, current_index, image_data, layer_array, stack_depth
from napari_unet._widgets._lazy_prediction import ViewTracker
from napari_unet._widgets._session import Session, prediction_layer_name
from napari_unet._widgets._workers import Job
from napari_unet.storage.records import RoundRecord

# A burst of strokes is one update: the pair is written this long after the last stroke, or — while the user
# keeps painting — at the latest this long after the first stroke not yet sent.
DEBOUNCE_MS = 600
MAX_WAIT_S = 2.0
# Context around the visible region when predicting it, so its edges see what a whole-image pass would.
CONTEXT = 32


def live_layer_name(image_name: str) -> str:
    return f"{image_name} live"


class LiveWidget(QWidget):
    def __init__(self, viewer, session: Session, parent=None):
        super().__init__(parent)
        self.viewer, self.session = viewer, session
        self.job: Job | None = None
        self.paused = False
        self.updates_sent = 0  # corrections sent to the worker process since Live was switched on
        self.labels_layer = None
        self.image_layer = None
        self.plane_index: tuple[int, ...] = ()  # the plane of a stack being painted (and learned from)
        self.image_plane: np.ndarray | None = None  # a copy of the image's plane_index plane
        self.touched: np.ndarray | None = None  # the touched pixels of plane_index (one of touched_planes)
        # {plane: touched pixels} of every plane painted since Live was switched on, and the planes whose new
        # strokes are not sent yet: a stroke's event may come after the user moved on to another plane.
        self.touched_planes: dict[tuple[int, ...], np.ndarray] = {}
        self.unsent_planes: set[tuple[int, ...]] = set()
        self.last_burst = None
        self.last_record = None
        self.live_layer = None
        self.showing_preview = False
        self.view = None  # a ViewTracker of the visible region while Live is on
        self._pending_since: float | None = None  # when the oldest stroke not yet sent to training came

        self.image_combo = LayerChooser(Image, "the image whose prediction you correct")
        self.live_check = QCheckBox("Live: learn while I paint")
        self.live_check.setToolTip("every stroke in '<image> prediction' trains the model in the background; "
                                   "its prediction appears in '<image> live'")
        self.whole_plane_check = QCheckBox("I checked the whole plane (train on all of it, not only my strokes)")
        self.pause_button = QPushButton("Pause")
        self.keep_button = QPushButton("Keep")
        self.keep_button.setToolTip("save the best live model so far as a version (scored like a round, rolled back if worse)")
        for button in (self.pause_button, self.keep_button):
            button.setEnabled(False)
        self.status_label = QLabel("Predict an image, switch Live on, then correct the prediction with the brush.")
        self.status_label.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.keep_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.image_combo.native)
        layout.addWidget(self.live_check)
        layout.addWidget(self.whole_plane_check)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self.debounce = QTimer(self)
        self.debounce.setSingleShot(True)
        self.debounce.setInterval(DEBOUNCE_MS)
        self.debounce.timeout.connect(self._send_update)
        # napari emits a stroke's paint event before it writes the stroke into the layer: what is sent at once is
        # sent from the event loop's next turn, when the layer holds it.
        self.send_soon = QTimer(self)
        self.send_soon.setSingleShot(True)
        self.send_soon.setInterval(0)
        self.send_soon.timeout.connect(self._send_update)
        self.live_check.toggled.connect(self._toggled)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.keep_button.clicked.connect(self.keep)
        self.whole_plane_check.toggled.connect(lambda *args: self.debounce.start() if self.running else None)

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done

    # --- on / off -------------------------------------------------------------------------------
    def _toggled(self, on: bool) -> None:
        if on and not self.running:
            if not self.start():
                self.live_check.blockSignals(True)
                self.live_check.setChecked(False)
                self.live_check.blockSignals(False)
        elif not on and self.running:
            self.stop()

    def start(self) -> bool:
        """Check the input (GUI thread), then start the worker. False when refused (with a notification)."""
        image_layer = self.image_combo.layer()
        if image_layer is None:
            show_error("Live: there is no image layer. Open an image, press Predict, then switch Live on.")
            return False
        name = prediction_layer_name(image_layer.name)
        labels_layer = next((layer for layer in self.viewer.layers if layer.name == name), None)
        if labels_layer is None:
            show_error(f"Live: there is no prediction of '{image_layer.name}' to correct. Press Predict first "
                       f"(it makes the layer '{name}'), then switch Live on and paint in that layer.")
            return False
        self.image_layer, self.labels_layer = image_layer, labels_layer
        self.plane_index = current_index(self.viewer, image_layer) if stack_depth(image_layer) else ()
        image_plane = image_data(self.viewer, image_layer, self.plane_index)  # a copy, with its channel layers
        plane_shape = image_plane.shape[:2]
        if np.shape(layer_array(labels_layer))[-2:] != plane_shape:
            show_error(f"Live: '{labels_layer.name}' does not match '{image_layer.name}' in Y×X: predict again.")
            return False
        if self.plane_index:
            show_info(f"Live learns from the plane you paint in '{image_layer.name}' (now plane {self.plane_index}); "
                      "each painted plane becomes a pair of its own.")
        self.touched = np.zeros(plane_shape, dtype=bool)
        self.touched_planes, self.unsent_planes = {self.plane_index: self.touched}, set()
        self.paused, self.updates_sent = False, 0
        self._show_live_layer(plane_shape)
        labels_layer.events.paint.connect(self._painted)
        self.image_plane = image_plane
        # The Labels layer: Y, X last. Where the user looks goes to the worker process, which predicts that region.
        self.view = ViewTracker(self.viewer, labels_layer, lambda: self.plane_index,
                                on_change=lambda visible: self.job.send(("view", visible)))
        request = self.session.request("live", str(self.session.project.root), self.parent_key(), image_plane,
                                       self.view.current, CONTEXT)
        self.job = Job(request, what="Live training", on_progress=self._show_progress,
                       on_done=self._stopped, on_finished=self._finished)
        self.session.track(self.job)
        self.job.start()
        self.pause_button.setEnabled(True)
        self.keep_button.setEnabled(True)
        self.status_label.setText(f"Live on: paint corrections in '{labels_layer.name}'; the model learns after each "
                                  "pause in painting and shows its prediction in "
                                  f"'{live_layer_name(image_layer.name)}'.")
        return True

    def stop(self) -> None:
        """Live off: training stops after the current step; the best model so far goes through Keep."""
        self._disconnect()
        if self.running:
            self.job.cancel()
            self.status_label.setText("Stopping: keeping the best live model so far (scored like a round) …")

    def pair_name(self, plane_index: tuple[int, ...] | None = None) -> str:
        """The project pair of a painted plane (default: the one being painted; one pair per plane, updated as the
        user paints)."""
        plane_index = self.plane_index if plane_index is None else plane_index
        return f"{self.image_layer.name} live" + "".join(f" {i}" for i in plane_index)

    def parent_key(self) -> str:
        return self.session.project.active or self.session.model_key

    def _disconnect(self) -> None:
        self.debounce.stop()
        self.send_soon.stop()
        if self.view is None:
            return
        self.view.stop()
        self.view = None
        self.labels_layer.events.paint.disconnect(self._painted)

    # --- painting (GUI thread, cheap) -------------------------------------------------------------
    def _painted(self, event) -> None:
        from napari_unet.training.live import painted_planes, touched_by

        if self.touched is None:
            return
        planes = painted_planes(event.value, len(self.plane_index)) if self.plane_index else {()}
        for plane in planes:  # each plane's strokes count for that plane's pair, whichever plane Live follows now
            touched = self.touched_planes.setdefault(plane, np.zeros(self.touched.shape, dtype=bool))
            touched |= touched_by(event.value, touched.shape, plane)
            self.unsent_planes.add(plane)
        followed = bool(self.plane_index and planes and self.plane_index not in planes)
        if followed:
            self._follow_plane(min(planes))
        now = time.monotonic()
        if self._pending_since is None:
            self._pending_since = now
        if followed or now - self._pending_since >= MAX_WAIT_S:  # another plane, or painting without a pause
            self.send_soon.start()
        else:
            self.debounce.start()  # restarts: a burst of strokes is one update

    def _follow_plane(self, plane_index: tuple[int, ...]) -> None:
        """The user paints another plane of the stack: learn from this one too (the last plane's strokes are sent
        with it, _send_update)."""
        self.plane_index = plane_index
        self.image_plane = image_data(self.viewer, self.image_layer, plane_index)
        self.touched = self.touched_planes.setdefault(plane_index, np.zeros(self.touched.shape, dtype=bool))
        if self.view is not None:
            self.job.send(("view", self.view.current))
        self.status_label.setText(f"Live: learning from plane {plane_index} of '{self.image_layer.name}' too.")

    def _send_update(self) -> None:
        """Send copies of the labels and touched pixels of every plane with unsent strokes, the plane being painted
        last, to the worker process (which makes the training masks); a newer update of a plane replaces one not
        yet trained on."""
        self.debounce.stop()
        self.send_soon.stop()
        self._pending_since = None
        whole_plane = self.whole_plane_check.isChecked()
        if not self.running or self.touched is None:
            return
        others = sorted(plane for plane in self.unsent_planes if plane != self.plane_index)
        self.unsent_planes.clear()
        for plane in [*others, self.plane_index]:
            touched = self.touched_planes.get(plane)
            current = plane == self.plane_index
            if touched is None or not (touched.any() or (whole_plane and current)):
                continue
            labels = np.array(layer_array(self.labels_layer)[plane])
            image = self.image_plane if current else image_data(self.viewer, self.image_layer, plane)
            self.job.send(("update", labels, touched.copy(), whole_plane and current, image, self.pair_name(plane)))
            self.updates_sent += 1

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.running:
            self.job.send(("pause", self.paused))
        self.pause_button.setText("Resume" if self.paused else "Pause")
        self.status_label.setText("Live paused: corrections are still collected; press Resume to train on them."
                                  if self.paused else "Live resumed.")

    def keep(self) -> None:
        if self.running:
            self.job.send(("keep",))
            self.status_label.setText("Keeping the best live model so far (scored like a round) …")

    # --- results (GUI thread) ---------------------------------------------------------------------
    def _show_live_layer(self, plane_shape) -> None:
        name = live_layer_name(self.image_layer.name)
        existing = next((layer for layer in self.viewer.layers if layer.name == name), None)
        if existing is None or np.shape(existing.data) != tuple(plane_shape):
            if existing is not None:
                self.viewer.layers.remove(existing)
            existing = self.viewer.add_labels(np.zeros(plane_shape, dtype=np.uint8), name=name, opacity=0.5,
                                              translate=self.image_layer.translate[-2:],
                                              scale=self.image_layer.scale[-2:])
        self.live_layer = existing

    def _show_progress(self, value) -> None:
        kind = value[0]
        if kind == "pairs":
            self.status_label.setText(f"Live: training on {value[1]} corrected plane(s) …")
        elif kind == "message":
            show_info(f"Live: {value[1]}")
            self.status_label.setText(f"Live: {value[1]}")
        elif kind == "kept":
            self.last_record = value[1]
            self._announce(value[1])
        elif kind == "burst":
            _, burst, ((y0, y1), (x0, x1)), labels, preview_iou = value
            self.last_burst, self.showing_preview = burst, preview_iou is not None
            if self.live_layer in self.viewer.layers:
                self.live_layer.data[y0:y1, x0:x1] = labels
                self.live_layer.refresh()
            score = (f"IoU {burst.iou:.3f} on the evaluation set (best {burst.best_iou:.3f})" if burst.iou is not None
                     else "no evaluation set yet")
            text = f"Live: U-Net {burst.total_steps} steps, {score}."
            if self.showing_preview:
                text += (f" Showing the instant preview (a random forest on your strokes, IoU {preview_iou:.3f}) "
                         "until the U-Net scores better.")
            self.status_label.setText(text)

    def _announce(self, record: RoundRecord) -> None:
        show_info(f"Live: {record.reason}")
        self.status_label.setText(record.reason)
        self.session.versions_changed.emit()
        self.session.rounds_changed.emit()
        if record.kept:
            self.session.select_model(record.version)

    def _stopped(self, record) -> None:
        if record is not None:
            self.last_record = record
            self._announce(record)
        else:
            self.status_label.setText("Live off: no correction was trained on, nothing to keep.")

    def _finished(self) -> None:
        self._disconnect()
        self.pause_button.setEnabled(False)
        self.pause_button.setText("Pause")
        self.keep_button.setEnabled(False)
        self.live_check.blockSignals(True)
        self.live_check.setChecked(False)
        self.live_check.blockSignals(False)

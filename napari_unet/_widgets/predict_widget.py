"""Predict tab: image layer + model → a Labels layer '<image> prediction' (and optional probabilities)."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets import _lazy_prediction, _live_threshold
from napari_unet._widgets._layers import (
    LayerChooser,
    channel_layers,
    channel_partners,
    current_index,
    describe_index,
    image_data,
    layer_array,
    set_channel_layers,
    stack_depth,
)
from napari_unet._widgets._live_threshold import SLIDER_THRESHOLDS, ThresholdCache
from napari_unet._widgets._next_tile import NEXT_SHORTCUT, NextTile
from napari_unet._widgets._run_controls import RunControls
from napari_unet._widgets._session import PAINTED_PLANES_KEY, PREDICTION_KEY, SOURCE_KEY, Session, prediction_layer_name
from napari_unet._widgets._workers import Job
from napari_unet.errors import NapariUNetError

PREDICT_SHORTCUT = "Shift+U"
# (views averaged by test-time augmentation, label);
# membranes card, held-out pixel error: 1 view 0.0719, 2 views 0.0691, 8 views 0.0684.
TTA_CHOICES = ((1, "1 (fastest)"), (2, "2: also turned 180° (2× time)"), (4, "4: also mirrored (4× time)"),
               (8, "8: all flips and rotations (8× time)"))
# What the leading axis of a stack is, for 'separate objects' on all slices (stacks.STACK_KINDS; "names": the layer's
# axis names say it).
STACK_CHOICES = (("as the layer's axis names say (z or t)", "names"), ("a volume (Z): 3-D objects", "z"),
                 ("a time-lapse (T): ids kept over time", "t"), ("unrelated planes", "planes"))
THRESHOLD_DEBOUNCE_MS = 150  # re-threshold once the slider rests, not at every step of a drag
# What computed the last prediction (PredictWidget.engine): a model's first Predict runs on its ONNX twin in napari's
# process while the worker process is still loading it (onnx_engine.py, Session.onnx_twin_for).
TENSORFLOW, ONNX_RUNTIME = "TensorFlow", "ONNX Runtime"


def model_channels(session: Session, key: str) -> int:
    """How many channels the model reads, from its file's metadata (no TensorFlow); 1 if unreadable (the worker
    then reports what is wrong with the file)."""
    metadata = session.model_metadata(key)
    return int(metadata.config.n_channels) if metadata is not None else 1


def layer_channels(layer, n_model_channels: int) -> int:
    """How many channels one plane of an image layer has, by the engine's rule (channel_axis_for, then
    channels.image_channels), so the Channels menu says what Predict will read."""
    from napari_unet.inference.channels import image_channels

    data = layer_array(layer)
    axis = channel_axis_for(layer, n_model_channels)
    return int(data.shape[axis]) if axis is not None else image_channels(data)


def channel_choices(n_image: int, channel_names: list[str], image_names: list[str] | None = None
                    ) -> list[tuple[str, object]]:
    """(text, channels= value) for the Channels menu: the image's channels as they are first when the model reads
    that many, else nothing is preselected that converts: grey and single channels only by the user's choice.
    image_names: what the image calls its channels (its channel layers' names), else the model's or defaults."""
    from napari_unet.inference.channels import channel_names as default_names

    n_model = len(channel_names)
    names = list(image_names or (channel_names if n_image == n_model else default_names(n_image)))
    choices = []
    if n_image == n_model:
        choices.append((f"as they are: {', '.join(names)}", None))
    else:
        choices.append((f"the image has {n_image}, the model reads {n_model}: choose", None))
    if n_model == 1 and n_image > 1:
        choices.append(("grey (converted from all channels)", "grey"))
        choices += [(f"{name} only", [i]) for i, name in enumerate(names)]
    return choices


def channel_layers_choices(partners: list) -> list[tuple[str, list]]:
    """(text, layers) for the Channel layers menu from channel_partners (the image's layer first): the layer alone,
    with each other layer, and with all of them."""
    if len(partners) < 2:
        return [("this layer only", partners)]
    layer, others = partners[0], partners[1:]
    groups = [[layer, other] for other in others] + ([partners] if len(others) > 1 else [])
    return [("this layer only", [layer])] + [
        (f"{len(group)} layers as channels: {', '.join(other.name for other in group)}", group) for group in groups]


def channel_axis_for(layer, n_model_channels: int):
    """Where the channels are in a layer's array, for the engine (None: let it decide)."""
    if layer.rgb:
        return -1
    data = layer_array(layer)
    if n_model_channels > 1 and data.ndim == 3 and data.shape[0] == n_model_channels:
        return 0  # (C, Y, X) kept in one layer
    return None


class PredictWidget(QWidget):
    """Choose an image layer and a model; Predict runs the engine in a worker with progress and Cancel."""

    def __init__(self, viewer, session: Session, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = session
        self.job: Job | None = None
        self.engine = ""  # TENSORFLOW or ONNX_RUNTIME: what computed the last prediction
        # The layer the threshold slider re-thresholds live (the last prediction), and its worker.
        self.live_layer: Labels | None = None
        self.threshold_job: Job | None = None
        self._threshold_note = ""  # what the slider says when there is nothing to re-threshold
        self.threshold_timer = QTimer(self)
        self.threshold_timer.setSingleShot(True)
        self.threshold_timer.setInterval(THRESHOLD_DEBOUNCE_MS)

        self.image_combo = LayerChooser(Image, "the image to segment")
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("shipped models, your fine-tuned versions, or a .keras file")
        self.browse_button = QPushButton("File…")
        self.browse_button.setToolTip("use a .keras model file or a bioimage.io package (.zip) with Keras weights")
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(1, 99)
        self.threshold_slider.setValue(50)
        self.threshold_label = QLabel("0.50")
        self.instances_check = QCheckBox("separate objects (instances)")
        self.instances_check.setToolTip("label each object with its own number instead of 0/1")
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(1, 1_000_000)
        self.min_size_spin.setSuffix(" px")
        self.min_size_spin.setEnabled(False)  # with 'separate objects' only (its toggled signal, below)
        self.min_size_spin.setToolTip("separate objects smaller than this are dropped; the model's own value was "
                                      "chosen on its validation images (lower it for small nuclei)")
        self.probabilities_check = QCheckBox("also show the probability map")
        self.uncertainty_check = QCheckBox("also show uncertainty (where to correct first)")
        self.uncertainty_check.setToolTip("an Image layer, 0-1, bright = the model is unsure; then Next shows "
                                          "the most uncertain tile you have not corrected yet")
        self.next_button = QPushButton(f"Next uncertain tile  [{NEXT_SHORTCUT}]")
        self.next_button.setToolTip("move to the least certain tile of the last prediction that you have not "
                                    "corrected (painted) or added to the training set yet")
        self.next_tile = NextTile(viewer, lambda: session.training_set)
        self.views_combo = QComboBox()
        for views, text in TTA_CHOICES:
            self.views_combo.addItem(text, views)
        self.views_combo.setToolTip(
            "test-time augmentation: predict each tile also flipped/rotated and average (the model's own "
            "symmetries only); costs that many times the time, a little more accurate"
        )
        self.layers_combo, self.layers_label = QComboBox(), QLabel("Channel layers")
        self.layers_combo.setToolTip("an image whose channels napari opened as separate layers (channel_axis): read "
                                     "these layers as one image's channels, in this order")
        self.channels_combo = QComboBox()
        self.channels_combo.setToolTip("which of the image's channels the model reads; grey conversion happens only "
                                       "when you choose it here. A fine-tuning round on colour pairs gives the model "
                                       "all of the image's channels")
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(["current slice", "all slices"])
        self.scope_combo.setToolTip("for stacks: predict the displayed slice or every slice")
        self.stack_combo = QComboBox()
        for text, kind in STACK_CHOICES:
            self.stack_combo.addItem(text, kind)
        self.stack_combo.setToolTip("with 'separate objects' on all slices: a volume's objects get one id across "
                                    "planes, a time-lapse's objects keep their id from frame to frame")
        self.anisotropy_spin = QDoubleSpinBox()
        self.anisotropy_spin.setRange(0.05, 100.0)
        self.anisotropy_spin.setDecimals(2)
        self.anisotropy_spin.setSingleStep(0.1)
        self.anisotropy_spin.setValue(1.0)
        self.anisotropy_spin.setToolTip("Z step / XY pixel size of a volume, read from the layer's scale when the image "
                                        "is chosen; change it if the scale is not set. Up to 2 the volume is also seen "
                                        "from its XZ and YZ planes (about 3x the time); above, planes are stitched")
        self.controls = RunControls(f"Predict  [{PREDICT_SHORTCUT}]", "Cancel")
        self.predict_button, self.cancel_button = self.controls.start_button, self.controls.cancel_button
        self.progress_bar, self.status_label = self.controls.progress_bar, self.controls.status_label

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.threshold_slider, 1)
        threshold_row.addWidget(self.threshold_label)
        form = QFormLayout()
        form.addRow("Image", self.image_combo.native)
        form.addRow("Model", model_row)
        form.addRow(self.layers_label, self.layers_combo)
        form.addRow("Channels", self.channels_combo)
        form.addRow("Threshold", threshold_row)
        form.addRow("Stacks", self.scope_combo)
        form.addRow("Stack is", self.stack_combo)
        form.addRow("Z step / pixel", self.anisotropy_spin)
        form.addRow("Views", self.views_combo)
        form.addRow("Smallest object", self.min_size_spin)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.instances_check)
        layout.addWidget(self.probabilities_check)
        layout.addWidget(self.uncertainty_check)
        layout.addWidget(self.controls)
        layout.addWidget(self.next_button)
        layout.addStretch(1)

        self.threshold_slider.setToolTip("used by the next Predict; moving it also re-thresholds the last "
                                         "prediction at once (unless you corrected it)")
        self.threshold_slider.valueChanged.connect(self._threshold_moved)
        self.threshold_timer.timeout.connect(self.apply_threshold)
        self.browse_button.clicked.connect(self.choose_model_file)
        self.model_combo.activated.connect(self._model_chosen)
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button.clicked.connect(self.cancel)
        self.next_button.clicked.connect(self.next_tile.go)
        self.instances_check.toggled.connect(self.min_size_spin.setEnabled)
        session.model_changed.connect(self.refresh_models)
        session.model_changed.connect(self._use_the_models_defaults)
        session.model_changed.connect(self.refresh_channels)
        self.image_combo.changed.connect(self.refresh_channel_layers)
        self.image_combo.changed.connect(self.refresh_anisotropy)
        self.stack_combo.currentIndexChanged.connect(self.refresh_anisotropy)
        self.layers_combo.activated.connect(self._channel_layers_chosen)
        session.versions_changed.connect(self.refresh_models)
        self.refresh_models()
        self._use_the_models_defaults()
        self.refresh_channel_layers()
        self.refresh_anisotropy()

    def refresh_anisotropy(self, *args) -> None:
        """The Z step / pixel box from the chosen image's scale (stacks.anisotropy_from_scale); the user may
        change it afterwards. Disabled for an image without a Z axis: a plane, or a (T, Y, X) time-lapse."""
        from napari_unet.labels.stacks import anisotropy_from_scale, stack_kind_from_axis_names

        layer = self.image_combo.layer()
        depth = stack_depth(layer) if layer is not None else 0
        kind = self.stack_combo.currentData()
        if depth and kind == "names":
            kind = stack_kind_from_axis_names(tuple(getattr(layer, "axis_labels", ()))[:depth], depth)
        has_z = depth > 1 or (depth == 1 and kind != "t")
        anisotropy = anisotropy_from_scale(layer.scale) if has_z else None
        self.anisotropy_spin.setEnabled(anisotropy is not None)
        if anisotropy is not None:
            self.anisotropy_spin.setValue(anisotropy)

    def stack_settings(self, image_layer, leading_shape: tuple) -> dict | None:
        """predict's stack= and anisotropy= for 'separate objects' on every slice of a stack with `leading_shape`
        stack axes ({} for unrelated planes); None after telling the user in one line what to choose."""
        from napari_unet.labels.stacks import stack_kind_from_axis_names

        kind = self.stack_combo.currentData()
        shape = "×".join(str(n) for n in leading_shape)
        if kind == "names":
            names = tuple(getattr(image_layer, "axis_labels", ()))[: len(leading_shape)]
            kind = stack_kind_from_axis_names(names, len(leading_shape))
            if kind is None:
                show_error(f"Predict: the stack axes of '{image_layer.name}' ({shape}, named {', '.join(names)}) do not "
                           "say Z or T: choose in 'Stack is' a volume (Z), a time-lapse (T) or unrelated planes.")
                return None
        if kind == "planes":
            return {}
        if kind == "z" and len(leading_shape) != 1:
            show_error(f"Predict: '{image_layer.name}' has {len(leading_shape)} stack axes ({shape}) and a volume has one "
                       "(Z): choose 'a time-lapse (T)' in 'Stack is' for a (T, Z, Y, X) time-lapse of volumes.")
            return None
        if len(leading_shape) > 2:
            show_error(f"Predict: '{image_layer.name}' has {len(leading_shape)} stack axes ({shape}): objects get ids "
                       "across a (Z, Y, X) volume or a (T, Y, X) or (T, Z, Y, X) time-lapse; choose 'unrelated planes'.")
            return None
        has_depth = kind == "z" or len(leading_shape) == 2
        return {"stack": kind, "anisotropy": self.anisotropy_spin.value() if has_depth else None}

    def _use_the_models_defaults(self, *args) -> None:
        """A model that separates touching objects itself (e.g. `nuclei`) predicts instances by default, and
        each model brings its own smallest object size."""
        from napari_unet.labels.postprocess import smallest_object

        metadata = self.session.model_metadata()
        self.instances_check.setChecked(metadata is not None and metadata.instance_method == "boundary_watershed")
        if metadata is not None:
            self.min_size_spin.setValue(smallest_object(metadata))

    def refresh_channel_layers(self, *args) -> None:
        """The Channel layers menu: shown when other grey layers of the image's shape could be its channels
        (channel_layers_choices); the layer's current grouping preselected. Then the Channels menu."""
        layer = self.image_combo.layer()
        self.layers_combo.clear()
        choices = channel_layers_choices(channel_partners(self.viewer, layer)) if layer is not None else []
        current = [other.name for other in channel_layers(self.viewer, layer)] if layer is not None else []
        for text, group in choices:
            self.layers_combo.addItem(text, group)
            if [other.name for other in group] == current:
                self.layers_combo.setCurrentIndex(self.layers_combo.count() - 1)
        visible = len(choices) > 1
        self.layers_combo.setVisible(visible)
        self.layers_label.setVisible(visible)
        if not visible and layer is not None:
            set_channel_layers(layer, [layer])
        self.refresh_channels()

    def _channel_layers_chosen(self, index: int) -> None:
        layer, group = self.image_combo.layer(), self.layers_combo.itemData(index)
        if layer is not None and group:
            set_channel_layers(layer, group)
        self.refresh_channels()

    def refresh_channels(self, *args) -> None:
        """The Channels menu for the chosen image (with its channel layers) and model (channel_choices)."""
        layer, metadata = self.image_combo.layer(), self.session.model_metadata()
        self.channels_combo.clear()
        if layer is None or metadata is None:
            self.channels_combo.addItem("as they are", None)
            return
        model_names = metadata.input_channel_names
        group = channel_layers(self.viewer, layer)
        n_image = len(group) if len(group) > 1 else layer_channels(layer, len(model_names))
        names = [other.name for other in group] if len(group) > 1 else None
        for text, value in channel_choices(n_image, model_names, names):
            self.channels_combo.addItem(text, value)

    def channels(self):
        """The Channels menu's choice (channels= of predict)."""
        return self.channels_combo.currentData()

    # --- model menu ---------------------------------------------------------------------------
    def refresh_models(self, *args) -> None:
        choices = self.session.model_choices()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for label, key in choices:
            self.model_combo.addItem(label, key)
        index = self.model_combo.findData(self.session.model_key)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)
        if not choices:
            self.model_combo.addItem("(no model: choose a .keras file)", "")
        self.model_combo.blockSignals(False)

    def _model_chosen(self, index: int) -> None:
        key = self.model_combo.itemData(index)
        if key:
            self.session.select_model(key)

    def choose_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model file", "",
                                              "Keras model or bioimage.io package (*.keras *.zip)")
        if path:
            self.session.select_model(path)

    # --- prediction ---------------------------------------------------------------------------
    def predict(self) -> Job | None:
        """Start predicting the chosen image; returns the job (None if input was refused)."""
        if self.job is not None and not self.job.done:
            show_info("A prediction is already running: wait for it or press Cancel.")
            return None
        image_layer = self.image_combo.layer()
        if image_layer is None:
            show_error("Predict: there is no image layer. Open an image (File ▸ Open, or drag it onto the "
                       "viewer, or File ▸ Open Sample ▸ napari U-Net) and press Predict again.")
            return None
        model_key = self.session.model_key
        if not model_key:
            show_error("Predict: no model is chosen. Pick one in the Model menu or load a .keras file.")
            return None
        if _lazy_prediction.is_lazy(image_layer):
            return self.predict_lazy(image_layer, model_key)
        depth = stack_depth(image_layer)
        all_slices = self.scope_combo.currentText() == "all slices"
        index = () if (depth == 0 or all_slices) else current_index(self.viewer, image_layer)
        settings = dict(instances=self.instances_check.isChecked(), threshold=self.threshold(),
                        with_probabilities=self.probabilities_check.isChecked(),
                        with_uncertainty=self.uncertainty_check.isChecked(),
                        test_time_augmentation=int(self.views_combo.currentData()),
                        min_size=self.min_size_spin.value(), channels=self.channels())
        session = self.session
        if len(channel_layers(self.viewer, image_layer)) > 1:  # one layer per channel, stacked on a last axis
            axis, plane_index = -1, index
        else:
            axis = channel_axis_for(image_layer, model_channels(session, model_key))
            plane_index = () if axis == 0 else index  # (C, Y, X) in one layer: the leading axis is channels
        plane = image_data(self.viewer, image_layer, plane_index)
        stack = {}
        if settings["instances"] and all_slices and depth and axis != 0:
            stack = self.stack_settings(image_layer, tuple(layer_array(image_layer).shape[:depth]))
            if stack is None:
                return None
        settings = dict(settings, channel_axis=axis, slider_thresholds=SLIDER_THRESHOLDS, **stack)
        note = describe_stack(stack)
        # the objects come from the whole stack at once (three views or stitching): there is no map to show
        skipped = (" No probability map with objects across planes: they come from the whole stack at once (predict "
                   "without 'separate objects' to see it)." if stack.get("stack") and settings["with_probabilities"]
                   else "")
        reference = session.model_reference(model_key)
        twin_of = session.onnx_twin_for(model_key)

        def on_twin(report, is_cancelled):
            """The model's ONNX twin in napari's process while the worker process is not ready for the model."""
            from napari_unet.model import with_renamed_classes
            from napari_unet.worker.tasks import plane_prediction

            model = session.load_onnx_twin(twin_of)
            if model is None:  # a stale twin (onnx_engine.py): the worker process serves after all
                return session.worker.call("predict_plane", (reference, plane, settings), report, is_cancelled), TENSORFLOW
            model = with_renamed_classes(model, list(reference.renamed()))  # as the worker process names them
            return plane_prediction(model, np.asarray(plane), settings, report, is_cancelled), ONNX_RUNTIME

        def shown(result) -> None:
            prediction, engine = result if twin_of is not None else (result, TENSORFLOW)
            if engine == TENSORFLOW:
                session.mark_warm(model_key)
            self._show_result(image_layer, model_key, plane_index, prediction, settings["threshold"], engine, note,
                              skipped)

        self.status_label.setText(f"Predicting '{image_layer.name}'{describe_index(index)} with {self.session.model_label} …")
        self._set_running(True)  # busy until the first tile reports
        what = f"Prediction of '{image_layer.name}'"
        self.job = Job(
            session.request("predict_plane", reference, plane, settings) if twin_of is None else on_twin, what=what,
            on_progress=self._show_progress,
            on_done=shown,
            on_finished=lambda: self._set_running(False),
            on_cancelled=lambda: self.status_label.setText("Prediction cancelled."),
        )
        self.session.track(self.job)
        return self.job.start()

    def predict_lazy(self, image_layer, model_key: str) -> Job | None:
        """A lazy (zarr/dask) image: labels into a zarr store in the project's predictions/ folder, region by
        region, what the canvas shows first; every slice of a stack, the displayed one first."""
        folder = self.session.project.root / "predictions"
        if len(channel_layers(self.viewer, image_layer)) > 1:
            show_error(f"Predict: '{image_layer.name}' is larger than memory, and its channel layers cannot be read "
                       "together: choose 'this layer only' under Channel layers, or save the channels as one "
                       "(Y, X, C) zarr and open that.")
            return None
        axis = channel_axis_for(image_layer, model_channels(self.session, model_key))
        if self.instances_check.isChecked() and axis != 0 and stack_depth(image_layer) == 1:
            stack = self.stack_settings(image_layer, tuple(layer_array(image_layer).shape[:1]))
            if stack is None:
                return None
            if stack:  # a volume or time-lapse: objects with ids across planes, plane by plane into zarr
                return self.predict_lazy_objects(image_layer, model_key, stack, axis)
        try:
            layer = _lazy_prediction.add_lazy_labels(self.viewer, image_layer, folder, model_key)
        except NapariUNetError as exc:
            show_error(f"Predict: {exc}")
            return None
        painted = _lazy_prediction.PaintedBoxes(layer)
        display = _lazy_prediction.DisplayRefresher(layer)
        writer = _lazy_prediction.RegionWriter(layer, painted, display, lambda: layer in self.viewer.layers)
        view = _lazy_prediction.ViewTracker(self.viewer, layer, lambda: current_index(self.viewer, image_layer),
                                            on_change=lambda visible: self.job.send(("view", visible)))
        threshold, views = self.threshold(), int(self.views_combo.currentData())
        data, session = layer_array(image_layer), self.session
        request = session.request("predict_regions", session.model_reference(model_key), data, view.current, threshold,
                                  axis, views)
        store_path = layer.metadata[_lazy_prediction.LAZY_KEY]

        def show_region(result) -> None:
            writer.add(result)
            self.controls.progress(result.tiles_done, result.tiles_total)

        skipped = [text for text, checked in (("instances", self.instances_check.isChecked()),
                                               ("the probability map", self.probabilities_check.isChecked())) if checked]
        note = f" ({' and '.join(skipped)}: not for lazy images)" if skipped else ""
        self.status_label.setText(f"Predicting '{image_layer.name}' into '{layer.name}' (on disk: "
                                  f"{layer.metadata[_lazy_prediction.LAZY_KEY]}), the visible part first{note} …")
        self._set_running(True)
        self.live_layer = None
        self.job = Job(
            request, what=f"Prediction of '{image_layer.name}'", on_progress=show_region,
            on_done=lambda result: self.status_label.setText(
                f"Prediction in '{layer.name}' (saved in {store_path}). Paint to correct it, then 'Add to training set' "
                "in the Correct tab adds the region you see."),
            on_finished=lambda: (view.stop(), writer.flush(), display.refresh_now(), self._set_running(False)),
            on_cancelled=lambda: self.status_label.setText(f"Prediction cancelled: '{layer.name}' keeps the regions "
                                                           "done so far."),
        )
        self.session.track(self.job)
        return self.job.start()

    def predict_lazy_objects(self, image_layer, model_key: str, stack: dict, axis) -> Job | None:
        """A lazy (zarr) volume or time-lapse with 'separate objects': its objects, one id across planes (or frames),
        into an int32 zarr store in the project's predictions/ folder, plane by plane in the worker process
        (prediction.predict_stack_into), never the whole stack in memory. Three views need the volume in memory, so
        its planes are stitched. The layer is shown as planes finish and is not editable until the ids are final."""
        from napari_unet.labels.stacks import uses_three_views

        try:
            layer = _lazy_prediction.add_lazy_labels(self.viewer, image_layer, self.session.project.root / "predictions",
                                                     model_key, dtype=np.int32)
        except NapariUNetError as exc:
            show_error(f"Predict: {exc}")
            return None
        layer.editable = False  # the worker writes the store; ids change in its last pass
        display = _lazy_prediction.DisplayRefresher(layer)
        session, store_path = self.session, layer.metadata[_lazy_prediction.LAZY_KEY]
        kind = stack["stack"]
        stitched = " (planes stitched: three views need the volume in memory)" if uses_three_views(
            stack.get("anisotropy")) and kind == "z" else ""
        what = "3-D objects, one id across planes" if kind == "z" else "objects with ids kept from frame to frame"
        skipped = " No probability map: objects of a large stack come plane by plane." if (
            self.probabilities_check.isChecked() or self.uncertainty_check.isChecked()) else ""
        request = session.request("predict_objects_into", session.model_reference(model_key), layer_array(image_layer),
                                  store_path, kind, self.threshold(), axis, int(self.views_combo.currentData()),
                                  self.min_size_spin.value())

        def progress(value) -> None:
            self.controls.progress(*value)
            if layer in self.viewer.layers:
                display.request()

        def done(result) -> None:
            if layer in self.viewer.layers:
                layer.editable = True
                display.refresh_now()
            self.status_label.setText(f"Prediction in '{layer.name}' (saved in {store_path}): {what}{stitched}. Paint "
                                      "to correct it." + skipped)

        def cancelled() -> None:
            if layer in self.viewer.layers:
                layer.editable = True
            self.status_label.setText(f"Prediction cancelled: '{layer.name}' holds the planes done so far, their ids "
                                      "not yet joined across planes.")

        self.status_label.setText(f"Predicting '{image_layer.name}' into '{layer.name}' (on disk: {store_path}), "
                                  f"plane by plane: {what}{stitched} …{skipped}")
        self._set_running(True)
        self.live_layer = None
        self.job = Job(request, what=f"Prediction of '{image_layer.name}'", on_progress=progress, on_done=done,
                       on_finished=lambda: (display.refresh_now() if layer in self.viewer.layers else None,
                                            self._set_running(False)),
                       on_cancelled=cancelled)
        self.session.track(self.job)
        return self.job.start()

    def cancel(self) -> None:
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.status_label.setText("Cancelling …")

    def _set_running(self, running: bool) -> None:
        self.controls.running(running, succeeded=self.job is None or self.job.error is None)

    def _show_progress(self, value) -> None:
        self.controls.progress(*value)

    def _show_result(self, image_layer, model_key: str, index: tuple, prediction, threshold: float, engine: str,
                     stack_note: str = "", skipped: str = "") -> None:
        self.engine = engine
        labels, probabilities, uncertainty = prediction.labels, prediction.probabilities, prediction.uncertainty
        threshold_cache = (None if prediction.ranks is None
                           else ThresholdCache(prediction.ranks, tuple(index), threshold, prediction.objects))
        if image_layer not in self.viewer.layers:
            show_warning(f"Image '{image_layer.name}' was removed while it was being predicted: "
                         "the prediction was discarded.")
            self.status_label.setText("Prediction discarded (image removed).")
            return
        layer = write_prediction(self.viewer, image_layer, index, labels, prediction_layer_name(image_layer.name),
                                 model_key)
        if probabilities is not None and prediction.class_names:  # several classes: a map per class
            for channel, class_name in enumerate(prediction.class_names):
                write_map(self.viewer, image_layer, index, probabilities[..., channel],
                          f"{image_layer.name} probability {class_name}", colormap="magma")
        elif probabilities is not None:
            write_probabilities(self.viewer, image_layer, index, probabilities)
        if uncertainty is not None:
            uncertainty_layer = write_map(self.viewer, image_layer, index, uncertainty, f"{image_layer.name} uncertainty",
                                          colormap="inferno")
            self.next_tile.follow(image_layer, layer, uncertainty_layer)
        elif self.next_tile.labels is layer:  # re-predicted without uncertainty: the old map no longer fits
            self.next_tile.forget()
        self.live_layer = layer
        if threshold_cache is None:
            self._threshold_note = (f"{stack_note}: a new threshold applies at the next Predict." if stack_note else
                                    "This model has several classes: each pixel takes its most probable class, "
                                    "so the threshold does not change its prediction.")
        else:
            _live_threshold.attach(layer, threshold_cache)
            self._threshold_note = ""
        engine = (" (computed on ONNX Runtime while the model was still loading; later predictions use TensorFlow)"
                  if self.engine == ONNX_RUNTIME else "")
        self.status_label.setText(f"Prediction in '{layer.name}'{engine}. Correct it with the brush/eraser, then "
                                  "'Add to training set' in the Correct tab. " + self._threshold_note + skipped)
        if threshold_cache is not None and threshold_cache.threshold != self.threshold():
            self.threshold_timer.start()  # the slider moved while the model ran

    # --- live threshold -----------------------------------------------------------------------
    def threshold(self) -> float:
        """The slider's threshold: for the next Predict, and live for the last prediction."""
        return self.threshold_slider.value() / 100

    def _threshold_moved(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        self.threshold_timer.start()  # (re)starts the debounce

    def apply_threshold(self) -> Job | None:
        """Re-threshold the last prediction from its cached probabilities (no model run).

        Runs inline for small maps and in a worker for large ones (see ThresholdCache.is_quick);
        returns that worker's job.
        A layer the user corrected since it was predicted is left as it is.
        """
        layer = self.live_layer
        if layer is not None and layer not in self.viewer.layers:
            self.live_layer = layer = None
        cache = _live_threshold.cache_of(layer) if layer is not None else None
        threshold = self.threshold()
        if cache is None:
            if self._threshold_note:
                self.status_label.setText(self._threshold_note)
            return None
        if cache.threshold == threshold:
            return None
        if _belongs_to_user(layer, cache.index):
            self._say_corrections_kept(layer, threshold)
            return None
        if self.threshold_job is not None and not self.threshold_job.done:
            self.threshold_timer.start()  # try again once the running one is done
            return None
        if cache.is_quick():
            self._write_threshold(layer, cache, threshold, cache.labels_at(threshold))
            return None
        self.status_label.setText(f"Applying threshold {threshold:.2f} to '{layer.name}' …")
        self.threshold_job = Job(
            lambda report, is_cancelled: cache.labels_at(threshold), what=f"Re-thresholding '{layer.name}'",
            on_done=lambda labels: self._write_threshold(layer, cache, threshold, labels),
        )
        self.session.track(self.threshold_job)
        return self.threshold_job.start()

    def _write_threshold(self, layer, cache: ThresholdCache, threshold: float, labels: np.ndarray) -> None:
        """Write re-thresholded labels unless the layer changed meanwhile (removed, re-predicted, corrected)."""
        if layer not in self.viewer.layers or _live_threshold.cache_of(layer) is not cache:
            return
        if _belongs_to_user(layer, cache.index):  # painted in while the worker ran
            self._say_corrections_kept(layer, threshold)
            return
        store_prediction(layer, cache.index, labels)
        cache.threshold = threshold
        self.status_label.setText(f"'{layer.name}' at threshold {threshold:.2f} (from the last prediction's "
                                  "probabilities; Predict uses it too).")

    def _say_corrections_kept(self, layer, threshold: float) -> None:
        self.status_label.setText(f"Your corrections in '{layer.name}' are kept: the threshold is not applied "
                                  f"to it. Press Predict to get threshold {threshold:.2f} in a new layer.")


def describe_stack(stack: dict) -> str:
    """What a stack prediction made, in words ("" for plane-by-plane labels)."""
    from napari_unet.labels.stacks import uses_three_views

    kind, anisotropy = stack.get("stack"), stack.get("anisotropy")
    if kind is None:
        return ""
    how = ""
    if anisotropy is not None:
        how = (f", seen from three views at Z step / pixel {anisotropy:g}" if uses_three_views(anisotropy)
               else f", planes stitched (Z step / pixel {anisotropy:g})")
    return ("3-D objects, one id across planes" if kind == "z" else "ids kept from frame to frame") + how


def _belongs_to_user(layer, index: tuple = ()) -> bool:
    """Must `layer` be left alone? Yes if napari-unet did not make it, or the user painted in it (in
    plane `index`, or anywhere) since napari-unet wrote it. The one rule every overwrite checks."""
    stored = layer.metadata.get(PREDICTION_KEY)
    if stored is None:
        return True
    if stored.shape != layer.data.shape:
        return False
    return not np.array_equal(stored[index], np.asarray(layer.data[index]))


def write_prediction(viewer, image_layer, index: tuple, labels: np.ndarray, name: str, model_key: str):
    """Put labels into the Labels layer `name` (created if absent), at `index` for one slice of a stack.

    A layer the user has corrected since it was predicted (or a layer napari-unet did not make) is
    never overwritten: the new prediction goes into a new layer and a notification says so.
    """
    # A slice goes into a layer as deep as the stack; a whole prediction defines the shape itself
    # (for a (C, Y, X) multichannel layer that is (Y, X)).
    full_shape = tuple(layer_array(image_layer).shape[: image_layer.ndim]) if index else tuple(labels.shape)
    layer = next((candidate for candidate in viewer.layers
                  if candidate.name == name and isinstance(candidate, Labels)), None)
    if layer is not None and _belongs_to_user(layer, index):
        new_name = _free_name(viewer, name)
        show_info(f"Your labels in '{layer.name}' were kept; the new prediction is in '{new_name}'.")
        name, layer = new_name, None
    if layer is not None and tuple(layer.data.shape) != full_shape:
        layer.metadata.pop(PREDICTION_KEY, None)
        layer.data = np.zeros(full_shape, dtype=labels.dtype)
    if layer is None:
        layer = viewer.add_labels(np.zeros(full_shape, dtype=labels.dtype), name=name, opacity=0.5,
                                  **_placement(image_layer, len(full_shape)))
    _live_threshold.forget(layer)  # its cached probabilities belong to the prediction being replaced
    store_prediction(layer, index, labels)
    layer.metadata[SOURCE_KEY] = {"image": image_layer.name, "model": model_key}
    return layer


def store_prediction(layer, index: tuple, labels: np.ndarray) -> None:
    """Write labels (a plane at `index`, or the whole layer) and remember them as what was predicted.

    The caller has made sure the layer may be overwritten (see write_prediction) and has the right shape.
    """
    full_shape = tuple(layer.data.shape)
    data = layer.data
    if data.dtype != labels.dtype:
        data = data.astype(np.result_type(data.dtype, labels.dtype))
    if index:
        data[index] = labels
        stored = layer.metadata.get(PREDICTION_KEY)
        if stored is None or stored.shape != full_shape:
            stored = np.zeros(full_shape, dtype=data.dtype)
        else:
            stored = stored.astype(data.dtype)
        stored[index] = labels
    else:
        data = labels
        stored = labels.copy()
        layer.metadata.pop(PAINTED_PLANES_KEY, None)  # painted in a prediction that is replaced
    layer.data = data
    layer.metadata[PREDICTION_KEY] = stored
    layer.refresh()


def write_probabilities(viewer, image_layer, index: tuple, probabilities: np.ndarray):
    return write_map(viewer, image_layer, index, probabilities, f"{image_layer.name} probability", colormap="magma")


def write_map(viewer, image_layer, index: tuple, values: np.ndarray, name: str, colormap: str):
    """Show a float map in [0, 1] over the image in the Image layer `name` (a slice at `index` of a stack)."""
    full_shape = tuple(layer_array(image_layer).shape[: image_layer.ndim]) if index else tuple(values.shape)
    existing = next((layer for layer in viewer.layers if layer.name == name and isinstance(layer, Image)), None)
    if existing is None or tuple(existing.data.shape) != full_shape:
        if existing is not None:
            viewer.layers.remove(existing)
        existing = viewer.add_image(np.zeros(full_shape, dtype=np.float32), name=name, colormap=colormap,
                                    blending="additive", contrast_limits=(0, 1), visible=True, opacity=0.6,
                                    **_placement(image_layer, len(full_shape)))
    if index:
        existing.data[index] = values
    else:
        existing.data = values
    existing.metadata[SOURCE_KEY] = {"image": image_layer.name, "map": name}  # never read as a channel layer
    existing.refresh()
    return existing


def _placement(image_layer, ndim: int) -> dict:
    """Scale and translate of the image's last `ndim` axes, so the result overlays the image."""
    return {"scale": tuple(image_layer.scale)[-ndim:], "translate": tuple(image_layer.translate)[-ndim:]}


def _free_name(viewer, name: str) -> str:
    names = {layer.name for layer in viewer.layers}
    counter = 2
    candidate = f"{name} [{counter}]"
    while candidate in names:
        counter += 1
        candidate = f"{name} [{counter}]"
    return candidate

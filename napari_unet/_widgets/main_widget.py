"""The one dock: tabs Predict · Correct · Fine-tune · Live · Models sharing a Session, plus keyboard shortcuts.

Shortcuts are bound on the viewer (viewer.bind_key), so they work wherever the canvas has focus,
also while painting in a Labels layer: Shift+U = Predict, Shift+T = Add to training set, Shift+N = Next
uncertain tile.
"""

from __future__ import annotations

import atexit
import contextlib
import weakref

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QTabWidget, QVBoxLayout, QWidget

from napari_unet._widgets._next_tile import NEXT_SHORTCUT
from napari_unet._widgets._session import Session
from napari_unet._widgets._workers import Job
from napari_unet._widgets.finetune_widget import FinetuneWidget
from napari_unet._widgets.live_widget import LiveWidget
from napari_unet._widgets.models_widget import ModelsWidget
from napari_unet._widgets.predict_widget import PREDICT_SHORTCUT, PredictWidget
from napari_unet._widgets.training_set_widget import ADD_SHORTCUT, TrainingSetWidget

# The worker process loads and traces the selected model this long after the dock opens: a script or test that
# picks another model right after opening gets that one ready (TensorFlow's import, the longest part and the same
# for every model, starts with the process).
WARM_UP_DELAY_MS = 500


class UNetWidget(QWidget):
    """Predict → correct → fine-tune → predict again, in one dock."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session(napari_viewer)  # starts the worker process: TensorFlow loads while the user looks
        self.predict_tab = PredictWidget(napari_viewer, self.session)
        self.training_set_tab = TrainingSetWidget(napari_viewer, self.session)
        self.finetune_tab = FinetuneWidget(napari_viewer, self.session)
        self.live_tab = LiveWidget(napari_viewer, self.session)
        self.models_tab = ModelsWidget(napari_viewer, self.session)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.predict_tab, "Predict")
        self.tabs.addTab(self.training_set_tab, "Correct")
        self.tabs.addTab(self.finetune_tab, "Fine-tune")
        self.tabs.addTab(self.live_tab, "Live")
        self.tabs.addTab(self.models_tab, "Models")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.setMinimumWidth(320)
        self._bind_keys()
        # A model with an ONNX twin predicts in napari's process until the worker process has it ready
        # (onnx_engine.py): the twin is opened now, in a thread of napari's process.
        twin_of = self.session.onnx_twin_for(self.session.model_key)
        self.session.track(Job(_prepare(self.session, twin_of), what="Preparing the quick start",
                               on_done=lambda result: None).start())
        self._warm_up_timer = QTimer(self)  # owned by the dock: never fires after it is gone
        self._warm_up_timer.setSingleShot(True)
        self._warm_up_timer.timeout.connect(self._warm_up)
        self._warm_up_timer.start(WARM_UP_DELAY_MS)
        self.session.worker_restarted.connect(self._warm_up)  # a new worker process: the selected model again
        closer = _closer(self.session, napari_viewer, [self.training_set_tab.follow_new_layers])
        self.reset_choices()
        self.destroyed.connect(closer)
        # Also when napari quits without deleting the dock first (and as a last resort at interpreter exit): the
        # worker process is ended once its tasks have (a round saves its version first).
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(closer)
        atexit.register(closer)

    def _warm_up(self, *args) -> Job:
        """The worker process loads the selected model and traces it (worker/tasks.warm_up). Silent: a broken
        install or model surfaces, worded, at the first Predict."""
        session, key = self.session, self.session.model_key
        job = Job(session.request("warm_up", session.model_reference(key)), what="Preparing the model",
                  on_done=lambda result: session.mark_warm(key), quiet=True)
        return session.track(job.start())

    def reset_choices(self, *args) -> None:
        """napari calls this when layers are added, removed, moved or renamed: the layer choosers follow."""
        for chooser in (self.predict_tab.image_combo, self.training_set_tab.image_combo,
                        self.training_set_tab.labels_combo, self.finetune_tab.image_combo, self.live_tab.image_combo):
            chooser.reset_choices()
        self.predict_tab.refresh_channel_layers()  # a new layer may be one of the image's channels

    def _bind_keys(self) -> None:
        """Bind through a weak reference: the viewer must not keep a closed dock alive."""
        me = weakref.ref(self)

        def predict(viewer):
            widget = me()
            if widget is not None:
                widget.predict_tab.predict()

        def add_to_training_set(viewer):
            widget = me()
            if widget is not None:
                widget.training_set_tab.add_current()

        def next_tile(viewer):
            widget = me()
            if widget is not None:
                widget.predict_tab.next_tile.go()

        self.viewer.bind_key(PREDICT_SHORTCUT, predict, overwrite=True)
        self.viewer.bind_key(ADD_SHORTCUT, add_to_training_set, overwrite=True)
        self.viewer.bind_key(NEXT_SHORTCUT, next_tile, overwrite=True)


def _closer(session: Session, viewer, layer_listeners):
    """On dock deletion: stop jobs (their results are dropped) and the worker process, unbind keys, stop listening
    to layers."""

    closed = []

    def close(*args):
        if closed:
            return
        closed.append(True)
        session.close()
        for key in (PREDICT_SHORTCUT, ADD_SHORTCUT, NEXT_SHORTCUT):
            with contextlib.suppress(Exception):
                viewer.bind_key(key, None, overwrite=True)
        for listener in layer_listeners:
            with contextlib.suppress(Exception):
                viewer.layers.events.inserted.disconnect(listener)

    return close


def _prepare(session: Session, keras_path):
    """A job function: the model's ONNX twin opened and cached (Session.load_onnx_twin) if it has one, then what
    napari's first Labels layer (the first prediction) would otherwise do on the GUI thread (imports: 0.1 s of the
    0.3 s it took; vispy's dash patterns, computed once per process: 0.07 s)."""

    def work(report, is_cancelled):
        if keras_path is not None:
            session.load_onnx_twin(keras_path)
        import scipy.linalg  # noqa: F401
        import skimage.color  # noqa: F401
        import skimage.exposure  # noqa: F401
        import skimage.segmentation  # noqa: F401

        with contextlib.suppress(Exception):  # a vispy internal (its lru_cache): no harm if it moves
            from vispy.visuals.line.dash_atlas import DashAtlas

            DashAtlas()

    return work

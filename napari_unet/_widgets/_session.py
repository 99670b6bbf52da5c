"""State shared by the tabs of one dock: the project, the chosen model, the worker process, running jobs, settings.

Widgets stay thin: everything here is bookkeeping; segmentation, training and rounds live in the core, run by the
worker process (napari_unet/worker/) that the session starts and owns.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QSettings, Signal

from napari_unet._widgets._workers import WorkerRequest
from napari_unet.project import Project
from napari_unet.storage.records import VersionRecord, headline_iou
from napari_unet.training.training_set import default_training_set_dir
from napari_unet.worker.client import WorkerClient
from napari_unet.worker.tasks import ModelReference

# Where a prediction remembers the model's raw output, for "train only where I corrected".
PREDICTION_KEY = "napari_unet_prediction"
# The planes of a stack's Labels layer the user painted since it was predicted (a set of plane indices): a plane
# painted back to what was predicted was still checked, so it is a correction too.
PAINTED_PLANES_KEY = "napari_unet_painted_planes"
# Which image and model a prediction layer came from.
SOURCE_KEY = "napari_unet_source"
# Widget settings that survive napari restarts (QSettings: the platform's own settings store).
SETTINGS_ORGANISATION, SETTINGS_APPLICATION = "napari-unet", "dock"
# How long closing napari waits for a running round to stop, score and save (it stops within one step).
CLOSE_WAIT_SECONDS = 120.0


def prediction_layer_name(image_name: str, version: str | None = None) -> str:
    """'<image> prediction', or '<image> prediction (<version>)' for a fine-tuned model's re-prediction."""
    return f"{image_name} prediction" + (f" ({version})" if version else "")


def settings() -> QSettings:
    """The platform's settings store; with $NAPARI_UNET_HOME set (tests, portable setups) a file inside it."""
    import os

    if os.environ.get("NAPARI_UNET_HOME"):
        from napari_unet.storage.files import user_data_dir

        return QSettings(str(user_data_dir() / "dock-settings.ini"), QSettings.Format.IniFormat)
    return QSettings(SETTINGS_ORGANISATION, SETTINGS_APPLICATION)


class Session(QObject):
    """One per dock (so one per viewer)."""

    model_changed = Signal(str)
    versions_changed = Signal()
    training_set_changed = Signal()  # the project's pairs or the project itself changed
    rounds_changed = Signal()
    worker_restarted = Signal(str)  # why the worker process was lost; a new one is starting

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        saved_folder = settings().value("project", "", type=str)
        self.project = Project(saved_folder or default_training_set_dir())
        self._model_key: str = self.project.active or _first_shipped_model()
        self._warm: set[str] = set()  # models the worker process has loaded and traced (onnx_twin_for)
        self._twins: dict[Path, object] = {}  # ONNX Runtime models by .keras path (onnx_twin_for)
        self._lock = threading.Lock()
        self._twin_loading = threading.Lock()
        self.jobs: list = []
        # The worker process, where TensorFlow and the models live: started now, so that TensorFlow's import
        # happens while the user looks around.
        self.worker_restarted.connect(self._say_worker_lost)
        self.worker = WorkerClient(on_lost=self._worker_lost).start()

    # --- project ------------------------------------------------------------------------------
    @property
    def training_set(self):
        return self.project.training

    @property
    def store(self):
        """The versions made in this project (the Models tab's store)."""
        return self.project.store

    def set_project(self, folder: str | Path) -> None:
        folder = Path(folder).expanduser()
        if folder == self.project.root:
            return
        self.project = Project(folder)
        settings().setValue("project", str(folder))
        self.training_set_changed.emit()
        self.versions_changed.emit()
        self.rounds_changed.emit()
        active = self.project.active
        if active:
            self.select_model(active)

    # --- models -------------------------------------------------------------------------------
    @property
    def model_key(self) -> str:
        return self._model_key

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, key) for the model menu: shipped models, then this project's versions and stored ones."""
        from napari_unet.storage.registry import list_models

        choices = []
        for entry in list_models(self.store, self._global_store()):
            if entry.is_shipped:
                choices.append((f"{entry.name} (shipped)", entry.name))
                continue
            iou = headline_iou(entry.metrics)
            state = "rolled back" if not entry.kept else "fine-tuned"
            label = f"{entry.name} ({state}{f', IoU {iou:.2f}' if iou is not None else ''})"
            choices.append((label, entry.name))
        if self.model_key and self.model_key not in {key for _, key in choices}:
            choices.append((Path(self.model_key).name, self.model_key))
        return choices

    def list_versions(self) -> list[VersionRecord]:
        """Records of this project's versions, newest first."""
        return self.store.list_versions()

    @staticmethod
    def _global_store():
        from napari_unet.storage.store import ModelStore

        return ModelStore()

    @property
    def model_label(self) -> str:
        """The selected model as users know it: a name, or a file's name (not its whole path)."""
        key = self.model_key
        return Path(key).name if key.endswith((".keras", ".zip")) else key

    def select_model(self, key: str) -> None:
        if key != self._model_key:
            self._model_key = key
            self.model_changed.emit(key)

    def model_metadata(self, key: str | None = None):
        """The chosen model's metadata, read from its file without loading the network (None if unreadable)."""
        from napari_unet.storage.registry import read_model_metadata, resolve

        try:
            return read_model_metadata(resolve(key or self.model_key, self.store, self._global_store())[0])
        except Exception:  # missing or damaged: the Predict button reports it properly
            return None

    def rename_model(self, old: str, new: str) -> None:
        """After a rename in the store: the selection follows without announcing a different model."""
        self.forget_model(old)
        if self._model_key == old:
            self._model_key = new

    # --- the worker process --------------------------------------------------------------------
    def model_reference(self, key: str | None = None) -> ModelReference:
        """How the worker process finds `key` (default: the selected model): with this project's versions."""
        return ModelReference(key if key is not None else self.model_key, str(self.project.root))

    def request(self, task: str, *args) -> WorkerRequest:
        """A task of the worker process (worker/tasks.py) for a Job to run."""
        return WorkerRequest(self.worker, task, args)

    def _worker_lost(self, reason: str) -> None:
        """The worker process died or stopped answering; a new one is starting (called off the GUI thread)."""
        with self._lock:
            self._warm.clear()
        self.worker_restarted.emit(reason)

    def _say_worker_lost(self, reason: str) -> None:
        show_error(f"The compute process {reason} and was restarted: your project, its pairs and versions, and your "
                   "layers are intact, so start the interrupted task again.")

    def onnx_twin_for(self, key: str) -> Path | None:
        """The .keras to predict on its ONNX twin (onnx_engine.py) in napari's process while the worker process is
        not ready for `key` (loaded and traced: the dock's warm-up, mark_warm): the first Predict then waits for
        neither TensorFlow's import nor a trace. None once it is, for a model without a twin (the user's own
        versions), or without ONNX Runtime. Cheap: called on the GUI thread."""
        from napari_unet.inference.onnx_engine import onnx_runtime_available, twin_path
        from napari_unet.storage.registry import resolve

        with self._lock:
            if key in self._warm:
                return None
        if not onnx_runtime_available():
            return None
        try:
            path = resolve(key, self.store, self._global_store())[0]
        except Exception:  # missing or damaged: the Keras path reports it properly
            return None
        with self._lock:
            if path in self._twins and self._twins[path] is None:  # found stale before: the worker process serves
                return None
        return path if twin_path(path).is_file() else None

    def load_onnx_twin(self, keras_path: Path):
        """The model of `keras_path` on ONNX Runtime (cached), or None if its twin is stale. Call from a worker."""
        from napari_unet.inference.onnx_engine import load_onnx_twin

        with self._twin_loading:  # the dock's opening job and a Predict clicked at once open it once
            with self._lock:
                if keras_path in self._twins:
                    return self._twins[keras_path]
            model = load_onnx_twin(keras_path)  # not under self._lock: the GUI thread asks onnx_twin_for meanwhile
            with self._lock:
                return self._twins.setdefault(keras_path, model)

    def mark_warm(self, key: str) -> None:
        """The worker process has predicted with `key`: from now on it serves (onnx_twin_for)."""
        with self._lock:
            self._warm.add(key)

    def is_warm(self, key: str) -> bool:
        with self._lock:
            return key in self._warm

    def forget_model(self, key: str) -> None:
        with self._lock:
            self._warm.discard(key)

    # --- jobs ---------------------------------------------------------------------------------
    def track(self, job):
        self.jobs = [j for j in self.jobs if not j.done] + [job]
        return job

    def close(self, wait_seconds: float = CLOSE_WAIT_SECONDS) -> None:
        """The dock or napari closes: running work stops at its next check, its results are dropped, and this
        waits (GUI thread) until it has ended, then ends the worker process.

        A fine-tuning round stops training at its next step and still scores and saves its version, so closing
        napari mid-round keeps every pair and saved version intact.
        """
        for job in self.jobs:
            job.detach()
        deadline = time.monotonic() + wait_seconds
        for job in self.jobs:
            job.wait(max(0.0, deadline - time.monotonic()))
        self.worker.stop(max(5.0, deadline - time.monotonic()))


def _first_shipped_model() -> str:
    """The model a new user starts with: 'membranes' (the first shipped model), else none."""
    from napari_unet.storage.shipped import shipped_model_names

    names = shipped_model_names()
    return "membranes" if "membranes" in names else (names[0] if names else "")

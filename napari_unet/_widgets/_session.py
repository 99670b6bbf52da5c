"""State shared by the tabs of one dock: the project, the chosen model, loaded models, running jobs, settings.

Widgets stay thin: everything here is bookkeeping; segmentation, training and rounds live in the core.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from qtpy.QtCore import QObject, QSettings, Signal

from napari_unet.project import Project
from napari_unet.training_set import default_training_set_dir

# Where a prediction remembers the model's raw output, for "train only where I corrected".
PREDICTION_KEY = "napari_unet_prediction"
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
        from napari_unet._files import user_data_dir

        return QSettings(str(user_data_dir() / "dock-settings.ini"), QSettings.Format.IniFormat)
    return QSettings(SETTINGS_ORGANISATION, SETTINGS_APPLICATION)


class Session(QObject):
    """One per dock (so one per viewer)."""

    model_changed = Signal(str)
    versions_changed = Signal()
    training_set_changed = Signal()  # the project's pairs or the project itself changed
    rounds_changed = Signal()

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        saved_folder = settings().value("project", "", type=str)
        self.project = Project(saved_folder or default_training_set_dir())
        self._model_key: str = self.project.active or _first_shipped_model()
        self._models: dict[str, object] = {}
        self._warm: set[str] = set()  # models whose TensorFlow forward pass is traced (onnx_twin_for)
        self._twins: dict[Path, object] = {}  # ONNX Runtime models by .keras path (onnx_twin_for)
        self._lock = threading.Lock()
        self._twin_loading = threading.Lock()
        self._model_loading = threading.Lock()
        self.jobs: list = []

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
        from napari_unet.registry import list_models

        choices = []
        for entry in list_models(self.store, self._global_store()):
            if entry["kind"] == "shipped":
                choices.append((f"{entry['name']} (shipped)", entry["name"]))
                continue
            metrics = entry["metrics"]
            iou = metrics.get("eval_iou", metrics.get("held_out_iou", metrics.get("val_iou")))
            state = "rolled back" if not entry["kept"] else "fine-tuned"
            label = f"{entry['name']} ({state}{f', IoU {iou:.2f}' if isinstance(iou, (int, float)) else ''})"
            choices.append((label, entry["name"]))
        if self.model_key and self.model_key not in {key for _, key in choices}:
            choices.append((Path(self.model_key).name, self.model_key))
        return choices

    def list_versions(self) -> list[dict]:
        """Records of this project's versions, newest first."""
        return self.store.list_versions()

    @staticmethod
    def _global_store():
        from napari_unet.store import ModelStore

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
        from napari_unet.registry import read_model_metadata, resolve

        try:
            return read_model_metadata(resolve(key or self.model_key, self.store, self._global_store())[0])
        except Exception:  # missing or damaged: the Predict button reports it properly
            return None

    def rename_model(self, old: str, new: str) -> None:
        """After a rename in the store: the selection follows without announcing a different model."""
        self.forget_model(old)
        if self._model_key == old:
            self._model_key = new

    def load_model(self, key: str | None = None):
        """The SegmentationModel for `key` (default: the selected one), cached. Call from a worker."""
        from napari_unet._widgets._tensorflow import ensure_tensorflow

        ensure_tensorflow()
        key = key or self.model_key
        if not key:
            from napari_unet.errors import NapariUNetError

            raise NapariUNetError("no model is selected: choose one in the Predict tab (or a .keras file)")
        with self._model_loading:  # one load at a time; the GUI thread only ever takes self._lock, briefly
            with self._lock:
                model = self._models.get(key)
            if model is None:
                model = self.project.load_model(key)
                with self._lock:
                    model = self._models.setdefault(key, model)
            return model

    def onnx_twin_for(self, key: str) -> Path | None:
        """The .keras to predict on its ONNX twin (onnx_engine.py) while TensorFlow is not ready for `key` (its
        forward pass traced: warm_up, mark_warm): the first Predict then needs neither TensorFlow nor Keras, and
        waits for no trace. None once it is, for a model without a twin (the user's own versions), or without
        ONNX Runtime. Cheap: called on the GUI thread."""
        from napari_unet.onnx_engine import onnx_runtime_available, twin_path
        from napari_unet.registry import resolve

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
            if path in self._twins and self._twins[path] is None:  # found stale before: straight to TensorFlow
                return None
        return path if twin_path(path).is_file() else None

    def load_onnx_twin(self, keras_path: Path):
        """The model of `keras_path` on ONNX Runtime (cached), or None if its twin is stale. Call from a worker."""
        from napari_unet.onnx_engine import load_onnx_twin

        with self._twin_loading:  # the dock's opening job and a Predict clicked at once open it once
            with self._lock:
                if keras_path in self._twins:
                    return self._twins[keras_path]
            model = load_onnx_twin(keras_path)  # not under self._lock: the GUI thread asks onnx_twin_for meanwhile
            with self._lock:
                return self._twins.setdefault(keras_path, model)

    def warm_up(self, key: str | None = None, is_cancelled=lambda: False):
        """Load `key` (default: the selected model) and trace its forward pass on a small image (the compiled
        function serves any size), so that the next Predict only predicts. Call from a worker."""
        import numpy as np

        from napari_unet.prediction import predict

        key = key or self.model_key
        model = self.load_model(key)
        if is_cancelled():  # the dock closed meanwhile
            return model
        n_channels = model.config.n_channels
        noise = np.random.default_rng(0).random((64, 64) if n_channels == 1 else (64, 64, n_channels))
        predict(model, noise.astype(np.float32), output="probabilities", cancel=is_cancelled)
        self.mark_warm(key)
        return model

    def write_twin(self, key: str, *, only_if_missing: bool = False) -> Path | None:
        """The ONNX twin of the project version `key` (onnx_engine.write_twin), so the next napari's first Predict
        with it needs no TensorFlow; None for shipped models (they carry theirs), files opened by path (their
        folders are the user's), an existing twin with `only_if_missing`, or a failure. Best effort: a version
        without a twin simply starts on TensorFlow. Call from a worker."""
        from napari_unet.onnx_engine import twin_path, write_twin

        records = (store.record(key) for store in (self.store, self._global_store()))
        record = next((found for found in records if found is not None), None)
        if record is None:
            return None
        path = Path(record["path"])
        if only_if_missing and twin_path(path).is_file():
            return None
        try:
            return write_twin(path)
        except Exception as exc:  # never the user's problem: log it, keep working
            print(f"napari-unet: no ONNX twin for '{key}' ({type(exc).__name__}: {exc})")
            return None

    def mark_warm(self, key: str) -> None:
        """TensorFlow has predicted with `key`: from now on it serves (onnx_twin_for)."""
        with self._lock:
            self._warm.add(key)

    def remember_model(self, key: str, model) -> None:
        """A model made in this session (a fine-tuned version, already used to predict)."""
        with self._lock:
            self._models[key] = model
            self._warm.add(key)

    def forget_model(self, key: str) -> None:
        with self._lock:
            self._models.pop(key, None)
            self._warm.discard(key)

    # --- jobs ---------------------------------------------------------------------------------
    def track(self, job):
        self.jobs = [j for j in self.jobs if not j.done] + [job]
        return job

    def close(self, wait_seconds: float = CLOSE_WAIT_SECONDS) -> None:
        """The dock or napari closes: running work stops at its next check, its results are dropped, and
        this waits (GUI thread) until no worker is inside TensorFlow any more.

        A fine-tuning round stops training at its next step and still scores and saves its version, so
        closing napari mid-round keeps every pair and saved version intact; leaving the interpreter with
        a thread inside TensorFlow would crash the process instead.
        """
        for job in self.jobs:
            job.detach()
        deadline = time.monotonic() + wait_seconds
        for job in self.jobs:
            job.wait(max(0.0, deadline - time.monotonic()))


def _first_shipped_model() -> str:
    """The model a new user starts with: 'membranes' (the first shipped model), else none."""
    from napari_unet.shipped import shipped_model_names

    names = shipped_model_names()
    return "membranes" if "membranes" in names else (names[0] if names else "")

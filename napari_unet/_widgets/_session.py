"""State shared by the tabs of one dock: the chosen model, loaded models, the training set, running jobs.

Widgets stay thin: everything here is bookkeeping; segmentation and training live in the core.
"""

from __future__ import annotations

import threading
from pathlib import Path

from qtpy.QtCore import QObject, Signal

from napari_unet.training_set import TrainingSet

# Where a prediction remembers the model's raw output, for "train only where I corrected".
PREDICTION_KEY = "napari_unet_prediction"
# Which image and model a prediction layer came from.
SOURCE_KEY = "napari_unet_source"


def prediction_layer_name(image_name: str, version: str | None = None) -> str:
    """'<image> prediction', or '<image> prediction (<version>)' for a fine-tuned model's re-prediction."""
    return f"{image_name} prediction" + (f" ({version})" if version else "")


class Session(QObject):
    """One per dock (so one per viewer)."""

    model_changed = Signal(str)
    versions_changed = Signal()
    training_set_changed = Signal()

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        self.model_key: str = ""
        self.training_set = TrainingSet()
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()
        self.jobs: list = []

    # --- models -------------------------------------------------------------------------------
    def model_choices(self) -> list[tuple[str, str]]:
        """(label, key) for the model menu: shipped models, then stored versions (newest first)."""
        from napari_unet.shipped import shipped_model_names

        choices = [(f"{name} (shipped)", name) for name in shipped_model_names()]
        for record in self.list_versions():
            name = _field(record, "name")
            iou = (_field(record, "metrics") or {}).get("held_out_iou") or (_field(record, "metrics") or {}).get("val_iou")
            label = f"{name} (fine-tuned{f', IoU {iou:.2f}' if isinstance(iou, (int, float)) else ''})"
            choices.append((label, name))
        if self.model_key and self.model_key not in {key for _, key in choices}:
            choices.append((Path(self.model_key).name, self.model_key))
        return choices

    def list_versions(self) -> list:
        try:
            from napari_unet.store import ModelStore
        except ImportError:  # the store module is not installed yet
            return []
        return list(ModelStore().list_versions())

    @property
    def model_label(self) -> str:
        """The selected model as users know it: a name, or a file's name (not its whole path)."""
        key = self.model_key
        return Path(key).name if key.endswith(".keras") else key

    def select_model(self, key: str) -> None:
        if key != self.model_key:
            self.model_key = key
            self.model_changed.emit(key)

    def load_model(self, key: str | None = None):
        """The SegmentationModel for `key` (default: the selected one), cached. Call from a worker."""
        from napari_unet._widgets._tensorflow import ensure_tensorflow

        ensure_tensorflow()
        from napari_unet.registry import load_model

        key = key or self.model_key
        if not key:
            from napari_unet.errors import NapariUNetError

            raise NapariUNetError("no model is selected: choose one in the Predict tab (or a .keras file)")
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = load_model(key)
                self._models[key] = model
            return model

    def remember_model(self, key: str, model) -> None:
        with self._lock:
            self._models[key] = model

    def forget_model(self, key: str) -> None:
        with self._lock:
            self._models.pop(key, None)

    # --- jobs ---------------------------------------------------------------------------------
    def track(self, job):
        self.jobs = [j for j in self.jobs if not j.done] + [job]
        return job

    def close(self) -> None:
        """The dock closes: running work stops at its next check and its results are dropped."""
        for job in self.jobs:
            job.detach()


def _field(record, name: str):
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)

"""Find a model by shipped name, stored version or file path; the one place names are resolved."""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet.errors import ModelLoadError
from napari_unet.model import SegmentationModel, load_model_file
from napari_unet.shipped import shipped_model_names, shipped_model_path
from napari_unet.store import ModelStore


def load_model(name_or_path: str | os.PathLike | SegmentationModel) -> SegmentationModel:
    """A shipped model's name ('membranes'), a stored version's name, or a path to a .keras file."""
    if isinstance(name_or_path, SegmentationModel):
        return name_or_path
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix == ".keras" or os.sep in text or path.exists():
        return load_model_file(path)
    if text in shipped_model_names():
        model = load_model_file(shipped_model_path(text))
        model.source = text
        return model
    store = ModelStore()
    if store.has(text):
        return store.load(text)
    known = shipped_model_names() + store.names()
    raise ModelLoadError(
        f"no model named '{text}': use a path to a .keras file or one of: {', '.join(known) or '(none installed)'}"
    )

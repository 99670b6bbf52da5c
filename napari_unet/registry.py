"""Find a model by shipped name, stored version or file path; the one place names are resolved."""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet.errors import ModelLoadError
from napari_unet.model import SegmentationModel, load_model_file

SHIPPED_MODELS_DIR = Path(__file__).parent / "models"


def shipped_model_names() -> list[str]:
    """Names of the read-only models that come with the package (e.g. 'membranes')."""
    return sorted(p.stem for p in SHIPPED_MODELS_DIR.glob("*.keras"))


def shipped_model_path(name: str) -> Path:
    return SHIPPED_MODELS_DIR / f"{name}.keras"


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
    from napari_unet.store import ModelStore

    store = ModelStore()
    if store.has(text):
        return store.load(text)
    known = shipped_model_names() + store.names()
    raise ModelLoadError(
        f"no model named '{text}': use a path to a .keras file or one of: {', '.join(known) or '(none installed)'}"
    )

"""Find a model by shipped name, stored version or file path; the one place names are resolved."""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet.errors import ModelLoadError
from napari_unet.model import ModelMetadata, SegmentationModel, load_model_file, read_metadata
from napari_unet.storage.bioimageio import load_package, read_package_metadata
from napari_unet.storage.records import ModelEntry
from napari_unet.storage.shipped import shipped_model_names, shipped_model_path
from napari_unet.storage.store import ModelStore

# The files a model can come in: napari-unet's .keras, and a bioimage.io package holding a Keras U-Net.
MODEL_FILE_SUFFIXES = (".keras", ".zip")


def resolve(name_or_path: str | os.PathLike, *stores: ModelStore) -> tuple[Path, str]:
    """(file, source name) of a shipped model's name ('membranes'), a version's name in `stores` (default:
    the user's model store) or a path to a .keras file or a bioimage.io package (.zip). The one place names are
    resolved."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in MODEL_FILE_SUFFIXES or os.sep in text or path.exists():
        return path, str(path)
    if text in shipped_model_names():
        return shipped_model_path(text), text
    stores = stores or (ModelStore(),)
    for store in stores:
        record = store.record(text)
        if record is not None:
            return Path(record.path), text
    known = shipped_model_names() + [name for store in stores for name in store.names()]
    raise ModelLoadError(
        f"no model named '{text}': use a path to a .keras file, a bioimage.io .zip package or one of: "
        f"{', '.join(known) or '(none installed)'}"
    )


def load_model(name_or_path: str | os.PathLike | SegmentationModel, *stores: ModelStore) -> SegmentationModel:
    """The model `name_or_path` names (see resolve); a SegmentationModel is returned as it is."""
    if isinstance(name_or_path, SegmentationModel):
        return name_or_path
    path, source = resolve(name_or_path, *stores)
    model = load_package(path) if path.suffix == ".zip" else load_model_file(path)
    model.source = source
    return model


# A job of at most this many images predicts on the model's ONNX twin when it has one (onnx_engine.py): one
# 520x696 image gets its instances in 0.6 s instead of 4 s (TensorFlow's import, the .keras, the trace); the twin
# is ~1.3x slower per image once running, so about even at four images of 4096^2 (benchmarks/bench_onnx.py).
QUICK_START_IMAGES = 4


def quick_twin(name_or_path: str | os.PathLike, n_images: int, precision: str | None = None,
               *stores: ModelStore) -> SegmentationModel | None:
    """The model's ONNX twin for predicting `n_images` images, when the job is small (QUICK_START_IMAGES), in
    float32 or the default precision, and the model has a current twin; else None (use load_model)."""
    if n_images > QUICK_START_IMAGES or precision not in (None, "auto", "float32"):
        return None
    from napari_unet.inference.onnx_engine import load_onnx_twin

    path, source = resolve(name_or_path, *stores)
    twin = load_onnx_twin(path) if path.suffix == ".keras" else None
    if twin is not None:
        twin.source = source
    return twin


def read_model_metadata(path: str | os.PathLike) -> ModelMetadata | None:
    """The metadata stored in a model file (.keras or bioimage.io .zip) without loading the network; None if absent."""
    return read_package_metadata(path) if Path(path).suffix == ".zip" else read_metadata(path)


def list_models(*stores: ModelStore) -> list[ModelEntry]:
    """Every model a user can pick, in one listing: shipped models, then each store's versions (newest first)."""
    entries = []
    for name in shipped_model_names():
        metadata = read_metadata(shipped_model_path(name))
        info = metadata.info if metadata is not None else {}
        held_out = info.get("metrics_held_out", {})
        entries.append(ModelEntry(name=name, kind="shipped", path=str(shipped_model_path(name)),
                                  description=info.get("description", ""),
                                  metrics=held_out.get("at_threshold_0.5", held_out)))
    seen = {entry.name for entry in entries}
    for store in stores or (ModelStore(),):
        for record in store.list_versions():
            if record.name in seen:
                continue
            seen.add(record.name)
            entries.append(ModelEntry(name=record.name, kind="version", path=record.path, metrics=record.metrics,
                                      parent=record.parent, created=record.created, kept=not record.rolled_back,
                                      store=str(store.root)))
    return entries

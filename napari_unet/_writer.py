"""npe2 writer: a Labels layer → a compressed TIFF (atomically, via io.write_labels)."""

from __future__ import annotations

from pathlib import Path


def write_labels_tif(path: str, data, attributes: dict) -> list[str]:
    """Save one Labels layer; a path without .tif/.tiff gets '.tif' appended."""
    import numpy as np

    from napari_unet.storage.io import write_labels

    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_name(target.name + ".tif")
    labels = np.asarray(data)
    if labels.dtype.kind in "iu" and labels.size and int(labels.max()) <= 255 and int(labels.min()) >= 0:
        labels = labels.astype(np.uint8)  # keeps 0/1/255 masks small and readable everywhere
    write_labels(target, labels)
    return [str(target)]

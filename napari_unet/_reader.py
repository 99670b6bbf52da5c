"""npe2 reader: a folder with images/ and masks/ subfolders opens as Image + Labels layer pairs.

Only such folders are claimed (the reader returns None for anything else), so napari's builtin
reader keeps opening plain .tif/.png files. This is also the layout of a training-set folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet.errors import NapariUNetError


def _pair_folder(path) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    folder = Path(os.fspath(path))
    if folder.is_dir() and (folder / "images").is_dir() and (folder / "masks").is_dir():
        return folder
    return None


def get_reader(path):
    """napari asks: can you open `path`? Yes only for a folder holding images/ and masks/."""
    folder = _pair_folder(path)
    if folder is None:
        return None
    return read_pair_folder


def read_pair_folder(path) -> list[tuple]:
    """Each image/mask pair (matched by file stem) as an Image layer and a Labels layer named after it."""
    import numpy as np

    from napari_unet.storage.io import find_pairs, read_image

    folder = _pair_folder(path)
    if folder is None:
        raise NapariUNetError(f"'{path}' is not a folder with images/ and masks/ subfolders")
    layers = []
    for image_path, mask_path in find_pairs(folder / "images", folder / "masks"):
        image = read_image(image_path)
        mask = read_image(mask_path)
        if mask.ndim == 3 and mask.shape[-1] in (3, 4):  # a mask saved as RGB(A) PNG: use one channel
            mask = mask[..., 0]
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[:2] == mask.shape[:2]
        layers.append((image, {"name": image_path.stem, "rgb": rgb}, "image"))
        layers.append((np.asarray(mask).astype(np.int32, copy=False),
                       {"name": f"{image_path.stem} mask", "opacity": 0.5}, "labels"))
    return layers

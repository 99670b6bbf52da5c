"""Reading and writing images and masks; the one reader used by the CLI, the reader plugin and scripts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.storage.files import atomic_write_tiff

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF (tifffile) or PNG/JPEG/BMP (scikit-image) into a numpy array.

    Raises NapariUNetError naming the file when it is missing, empty or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise NapariUNetError(f"cannot read '{path}': no such file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            import skimage.io

            image = skimage.io.imread(path)
    except Exception as exc:  # each library raises its own types for corrupt files
        raise NapariUNetError(f"cannot read '{path}': not a readable image ({type(exc).__name__}: {exc})") from exc
    image = np.asarray(image)
    if image.size == 0:
        raise NapariUNetError(f"cannot read '{path}': the image is empty")
    return image


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label image as a compressed TIFF via a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    try:
        return atomic_write_tiff(path, labels)
    except OSError as exc:
        raise NapariUNetError(
            f"cannot write '{path}': {exc.strerror or exc} — choose an output folder you can write to"
        ) from exc


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in a folder (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NapariUNetError(f"'{folder}' is not a folder: give a folder of images")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def find_pairs(images_dir: str | os.PathLike, masks_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Match images to masks by file stem (e.g. 'cells_03.tif' with 'cells_03.png').

    Images without a mask are an error, since silently skipping them would hide a mistake.
    """
    images = list_images(images_dir)
    masks = {p.stem: p for p in list_images(masks_dir)}
    if not images:
        raise NapariUNetError(f"no images (.tif, .png, .jpg) found in '{images_dir}'")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise NapariUNetError(
            f"no mask in '{masks_dir}' for image(s) {', '.join(missing[:5])}"
            f"{' …' if len(missing) > 5 else ''}: masks are matched to images by file name without extension"
        )
    return [(p, masks[p.stem]) for p in images]

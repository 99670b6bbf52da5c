"""npe2 sample-data contributions: the images in sample_data/ with their ground truth (a synthetic EM
section; two real fluorescence nuclei fields from the 2018 Data Science Bowl, CC0).

Each function returns napari LayerData tuples (data, kwargs, layer_type): the image, then its
ground truth as a Labels layer, so a user can compare a prediction against the truth at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_unet.errors import NapariUNetError

SAMPLE_DATA_DIRNAME = "sample_data"


def sample_data_dir() -> Path:
    """The folder of sample files: inside the package in a wheel, beside it in an editable install."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / SAMPLE_DATA_DIRNAME, package_dir.parent / SAMPLE_DATA_DIRNAME):
        if candidate.is_dir():
            return candidate
    raise NapariUNetError(
        f"the sample data folder is missing (looked in {package_dir / SAMPLE_DATA_DIRNAME} and "
        f"{package_dir.parent / SAMPLE_DATA_DIRNAME}): reinstall napari-unet, or regenerate it with "
        "'python scripts/make_sample_data.py' in a source checkout"
    )


def sample_path(filename: str) -> Path:
    """Path of one sample file, with an error naming the file if it is absent."""
    path = sample_data_dir() / filename
    if not path.is_file():
        raise NapariUNetError(
            f"sample file '{path}' is missing: regenerate it with 'python scripts/make_sample_data.py'"
        )
    return path


def _read(filename: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(sample_path(filename))


def load_em_membranes() -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (512, 512), membrane mask uint8 with 1 = membrane) — for scripts and the demo."""
    return _read("em_membranes.tif"), _read("em_membranes_mask.tif")


def load_nuclei(stem: str = "nuclei") -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, instance labels uint16 with 0 = background) of a real nuclei sample ('nuclei': a dense
    520×696 field; 'nuclei_sparse': 256×256)."""
    return _read(f"{stem}.tif"), _read(f"{stem}_labels.tif")


def em_membranes_sample() -> list[tuple]:
    """EM-like membranes: an Image layer and its 'ground truth' Labels layer (1 = membrane)."""
    image, mask = load_em_membranes()
    return [
        (image, {"name": "em_membranes"}, "image"),
        (mask, {"name": "em_membranes ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]


def _nuclei_layers(stem: str) -> list[tuple]:
    image, labels = load_nuclei(stem)
    return [
        (image, {"name": stem, "colormap": "gray"}, "image"),
        (labels, {"name": f"{stem} ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]


def nuclei_sample() -> list[tuple]:
    """Real fluorescence nuclei, a dense field with many touching nuclei: Image + instance ground truth."""
    return _nuclei_layers("nuclei")


def nuclei_sparse_sample() -> list[tuple]:
    """Real fluorescence nuclei, a sparse field: Image + instance ground truth."""
    return _nuclei_layers("nuclei_sparse")

"""napari-unet: U-Net segmentation with a human-in-the-loop fine-tuning loop.

The public API is imported lazily so that napari's plugin discovery and `napari-unet --help`
do not pay for importing TensorFlow.
"""

from napari_unet._version import __version__

_API = {
    "load_model": "napari_unet.storage.registry",
    "predict": "napari_unet.inference.prediction",
    "evaluate": "napari_unet.scoring.evaluation",
    "finetune": "napari_unet.training",
    "TrainConfig": "napari_unet.training",
    "IGNORE_LABEL": "napari_unet.training",
    "ModelStore": "napari_unet.storage.store",
    "Project": "napari_unet.project",
    "UNetConfig": "napari_unet.model",
    "build_unet": "napari_unet.model",
    "new_model": "napari_unet.model",
    "widen_input": "napari_unet.inference.channels",
    "save_model": "napari_unet.model",
    "NapariUNetError": "napari_unet.errors",
    "export_bioimageio": "napari_unet.storage.bioimageio",
    "PackageAuthorship": "napari_unet.storage.bioimageio",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")

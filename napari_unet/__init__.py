"""napari-unet: U-Net segmentation with a human-in-the-loop fine-tuning loop."""

from napari_unet._version import __version__

__all__ = ["__version__"]

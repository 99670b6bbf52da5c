"""The napari dock: Predict · Correct · Fine-tune · Models tabs over the core API (see each module)."""

from napari_unet._widgets.main_widget import UNetWidget

__all__ = ["UNetWidget"]

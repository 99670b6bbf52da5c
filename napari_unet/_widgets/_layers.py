"""Small helpers between napari layers and the core's plain arrays (all run on the GUI thread)."""

from __future__ import annotations

import contextlib

import numpy as np
from qtpy.QtWidgets import QComboBox

from napari_unet.errors import NapariUNetError


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of one type by name, kept up to date."""

    def __init__(self, viewer, layer_type, placeholder: str = "(none)", parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        self.placeholder = placeholder
        self.setMinimumContentsLength(12)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        self.refresh()

    def disconnect_viewer(self) -> None:
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                        self.viewer.layers.events.moved):
            emitter.disconnect(self.refresh)

    def layers(self) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, self.layer_type)]

    def refresh(self, event=None) -> None:
        current = self.currentText()
        for layer in self.layers():
            with contextlib.suppress(Exception):
                layer.events.name.connect(self.refresh)  # napari de-duplicates repeated connections
        names = [layer.name for layer in reversed(self.layers())]  # top layer first, as in the layer list
        self.blockSignals(True)
        self.clear()
        self.addItems(names or [self.placeholder])
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if current not in names:
            self.currentTextChanged.emit(self.currentText())

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        for layer in self.layers():
            if layer.name == name:
                return layer
        return None

    def select(self, name: str) -> None:
        if name in [layer.name for layer in self.layers()]:
            self.setCurrentText(name)


def layer_array(layer):
    """The full-resolution data of a layer (the first level of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def stack_depth(layer) -> int:
    """Number of spatial (non-channel) axes in front of Y, X: 0 for a 2D image (grey or RGB)."""
    return max(layer.ndim - 2, 0)


def current_index(viewer, layer) -> tuple[int, ...]:
    """The index of the displayed (Y, X) plane in the layer's leading axes (e.g. (z,) for a Z stack)."""
    depth = stack_depth(layer)
    if depth == 0:
        return ()
    point = layer.world_to_data(viewer.dims.point)
    shape = layer_array(layer).shape
    return tuple(int(np.clip(round(float(p)), 0, shape[axis] - 1)) for axis, p in enumerate(point[:depth]))


def describe_index(index: tuple[int, ...]) -> str:
    return "" if not index else " slice " + ",".join(str(i) for i in index)


def check_same_plane_shape(image_layer, labels_layer) -> None:
    """Raise a worded error when a Labels layer cannot belong to an image."""
    image_shape = tuple(layer_array(image_layer).shape[: image_layer.ndim])
    labels_shape = tuple(layer_array(labels_layer).shape)
    if image_shape != labels_shape:
        raise NapariUNetError(
            f"Labels layer '{labels_layer.name}' is {'×'.join(map(str, labels_shape))} but image "
            f"'{image_layer.name}' is {'×'.join(map(str, image_shape))}: choose the Labels layer that was "
            "predicted for (or painted on) this image"
        )

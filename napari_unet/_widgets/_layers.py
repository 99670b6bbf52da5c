"""Small helpers between napari layers and the core's plain arrays (all run on the GUI thread)."""

from __future__ import annotations

import numpy as np

from napari_unet.errors import NapariUNetError


class LayerChooser:
    """napari's own layer chooser (magicgui's combo box for a layer type), as the plugin template uses it.

    Its choices are the viewer's layers of that type (top layer first); the dock's reset_choices(),
    which napari calls whenever layers are added, removed, moved or renamed, keeps it current.
    """

    def __init__(self, layer_type, tooltip: str = ""):
        from magicgui.widgets import create_widget

        self.widget = create_widget(annotation=layer_type, options={"nullable": False})
        self.widget.tooltip = tooltip or None
        self.changed = self.widget.changed  # emits the chosen layer (or None)

    @property
    def native(self):
        return self.widget.native

    def reset_choices(self, *args) -> None:
        self.widget.reset_choices()

    def layer(self):
        """The chosen layer, or None."""
        return self.widget.value

    def currentText(self) -> str:  # noqa: N802 (the Qt-style name tests and scripts read)
        layer = self.layer()
        return layer.name if layer is not None else ""

    def select(self, name: str) -> None:
        for layer in self.widget.choices:
            if layer is not None and layer.name == name:
                self.widget.value = layer
                return


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

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


# An image layer's channels kept as separate layers (napari's channel_axis splits a multichannel image into one
# layer per channel): the names of the layers, in channel order, that the dock reads as one image's channels.
CHANNEL_LAYERS_KEY = "napari_unet_channel_layers"
MAX_CHANNEL_LAYERS = 4  # the most channels one image may have (channels.MAX_GUESSED_CHANNELS)


def channel_partners(viewer, layer) -> list:
    """Image layers that can be `layer`'s channels: same data shape, grey, not the dock's own outputs (probability
    and uncertainty maps), in the viewer's order; `layer` first. At most MAX_CHANNEL_LAYERS."""
    from napari.layers import Image

    from napari_unet._widgets._session import SOURCE_KEY

    shape = np.shape(layer_array(layer))

    def fits(other) -> bool:
        return (isinstance(other, Image) and other is not layer and not other.rgb and SOURCE_KEY not in other.metadata
                and np.shape(layer_array(other)) == shape)

    return [layer, *[other for other in viewer.layers if fits(other)]][:MAX_CHANNEL_LAYERS]


def channel_layers(viewer, layer) -> list:
    """The layers the dock reads as `layer`'s channels (set_channel_layers), `layer` first; [layer] when none are
    set or one of them is gone or changed shape."""
    names = layer.metadata.get(CHANNEL_LAYERS_KEY) or []
    by_name = {other.name: other for other in viewer.layers}
    group = [by_name.get(name) for name in names]
    shape = np.shape(layer_array(layer))
    if len(group) < 2 or any(other is None or np.shape(layer_array(other)) != shape for other in group):
        return [layer]
    return group


def set_channel_layers(layer, layers: list) -> None:
    """Read `layers` (`layer` first) as the channels of `layer`'s image from now on; [layer] alone undoes it."""
    if len(layers) > 1:
        layer.metadata[CHANNEL_LAYERS_KEY] = [other.name for other in layers]
    else:
        layer.metadata.pop(CHANNEL_LAYERS_KEY, None)


def channels_last(viewer, layer) -> bool:
    """Does image_data give `layer`'s planes with channels on a last axis (an RGB layer, or channel layers)?"""
    return bool(layer.rgb) or len(channel_layers(viewer, layer)) > 1


def image_data(viewer, layer, index: tuple = (), region: tuple = ()) -> np.ndarray:
    """A copy of `layer`'s image at `index` (+ `region`), with its channel layers (channel_layers) stacked on a
    last axis: (..., Y, X, C). One layer: its own data as it is. A copy: the user may keep editing."""
    group = channel_layers(viewer, layer)
    if len(group) == 1:
        return np.array(layer_array(layer)[index + region])
    return np.stack([np.asarray(layer_array(other)[index + region]) for other in group], axis=-1)

"""How an image's channels become what a model reads: colour and fluorescence channels are kept, not
collapsed to grey, unless the caller asks for it.

A model reads `config.n_channels` channels (UNetConfig). An image with more or fewer is refused with a
message that names the three fixes: pick channels (`channels=[0, 2]`, CLI `--channels 0,2`), convert to
grey (`channels="grey"`, CLI `--channels grey`), or give the model the image's channels with
`widen_input`, which a project does by itself when its images have more channels than its start model.

widen_input copies a one-channel (or any N-channel) model into an M-channel one whose first convolution
reads every channel with the old kernel divided by M (the usual way to reuse pretrained weights with more
input channels, as for RGB ImageNet weights on multispectral data): an image whose channels are all the
same grey plane normalises to the same values in each channel, so the widened model's output is the old
model's on that plane, and training then learns what colour adds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_unet.errors import NapariUNetError

GREY = "grey"
# Luminance weights of skimage.color.rgb2gray (ITU-R BT.709), for a colour image turned grey by request.
LUMINANCE = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
# A 3-D array with this many entries on its last axis and both other sides >= MIN_COLOUR_SIDE is read as
# one (Y, X, C) plane, not as a stack of tiny planes.
MAX_GUESSED_CHANNELS = 4
MIN_COLOUR_SIDE = 16
RGB_NAMES = ("red", "green", "blue")

ChannelChoice = str | Sequence[int] | None


def _describe(shape) -> str:
    return "×".join(str(n) for n in shape)


def parse_channels(text: str | None) -> ChannelChoice:
    """The CLI's --channels: "grey", or channel indices "0", "0,2"; None or "" = as the image is."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip().lower()
    if text in (GREY, "gray"):
        return GREY
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise NapariUNetError(f"--channels {text!r}: give 'grey' or channel numbers separated by commas, "
                              "e.g. --channels 0 or --channels 0,2") from None


def channel_names(n_channels: int) -> list[str]:
    """Default names of a model's input channels: red/green/blue for three, else "channel i"."""
    if n_channels == 1:
        return ["grey"]
    if n_channels == 3:
        return list(RGB_NAMES)
    return [f"channel {i}" for i in range(n_channels)]


def image_channels(image, channel_axis: int | None = None) -> int:
    """How many channels one 2D plane of `image` has: (Y, X) 1; (Y, X, C) C when C <= 4 and the plane is not
    tiny; with channel_axis, the length of that axis."""
    shape = tuple(np.shape(image))
    if channel_axis is not None:
        return int(shape[channel_axis])
    if len(shape) >= 3 and shape[-1] <= MAX_GUESSED_CHANNELS and min(shape[-3:-1]) >= MIN_COLOUR_SIDE:
        return int(shape[-1])
    return 1


def _mismatch(n_image: int, n_channels: int, shape) -> NapariUNetError:
    what = "colour" if n_image in (3, 4) else "channels"
    picks = ",".join(str(i) for i in range(min(n_channels, n_image))) if n_channels <= n_image else None
    fixes = []
    if picks is not None:
        fixes.append(f"pick {n_channels} of them (channels=[{picks.replace(',', ', ')}], CLI --channels {picks})")
    if n_channels == 1:
        fixes.append(f"convert to grey (channels='{GREY}', CLI --channels {GREY})")
    fixes.append(f"or use a model that reads {n_image} channels (napari_unet.widen_input(model, {n_image}); "
                 "a project on such images makes one by itself)")
    return NapariUNetError(f"the image of shape {_describe(shape)} has {n_image} {what} channel(s) but the model "
                           f"reads {n_channels}: " + ", ".join(fixes))


def as_planes(image, n_channels: int, channel_axis: int | None = None, channels: ChannelChoice = None):
    """`image` as (*leading, Y, X, C) with the C channels the model reads (numpy or dask, not copied when
    nothing changes).

    channel_axis: where the channels are (None: the last axis when it has 2-4 entries and the plane is not
    tiny, or exactly n_channels entries). channels: None (the image's channels as they are), "grey"
    (colour by luminance, other channels by their mean) or a list of channel indices to keep, in order.
    RGBA into a 3-channel model drops alpha. Raises NapariUNetError naming the fix on any mismatch.
    """
    shape = tuple(image.shape)
    if len(shape) < 2:
        raise NapariUNetError(f"the image has shape {shape}: a 2D (Y, X) image or a stack of them is needed")
    if channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape):
            raise NapariUNetError(f"channel_axis={channel_axis} does not exist in an image of shape {shape}")
        image = np.moveaxis(image, channel_axis, -1)
        has_channels = True
    else:
        last = shape[-1]
        guessed = image_channels(image) > 1
        has_channels = len(shape) >= 3 and ((n_channels > 1 and last == n_channels) or guessed)
    if not has_channels:
        if channels is not None and channels != GREY and list(channels) != [0]:
            raise NapariUNetError(f"channels={channels!r}: the image of shape {_describe(shape)} has one channel; "
                                  "pass channel_axis= to say which axis holds channels")
        if n_channels != 1:
            raise NapariUNetError(
                f"the model reads {n_channels} channels but the image of shape {_describe(shape)} has none "
                f"with {n_channels} entries on its last axis: pass channel_axis= to say which axis holds channels"
            )
        image = image[..., None]
    else:
        image = select_channels(image, channels, shape)
    n_image = image.shape[-1]
    if n_image == 4 and n_channels == 3 and channels is None:
        image = image[..., :3]  # RGBA: alpha is not a measurement
        n_image = 3
    if n_image != n_channels:
        raise _mismatch(n_image, n_channels, shape)
    if image.ndim - 3 > 2:
        raise NapariUNetError(
            f"the image has shape {_describe(shape)}: at most (T, Z, Y, X) plus channels is supported; "
            "predict one time point or one position at a time"
        )
    return image


def select_channels(image, channels: ChannelChoice, shape=None):
    """(..., C) -> (..., C') by the choice (see as_planes); None returns the image itself."""
    if channels is None:
        return image
    n_image = image.shape[-1]
    if channels == GREY:
        if n_image in (3, 4):
            return (image[..., :3].astype(np.float32) * LUMINANCE).sum(axis=-1)[..., None]
        return image.astype(np.float32).mean(axis=-1)[..., None]
    if isinstance(channels, str):
        raise NapariUNetError(f"channels={channels!r}: use '{GREY}' or a list of channel numbers")
    indices = [int(i) for i in channels]
    bad = [i for i in indices if not 0 <= i < n_image]
    if not indices or bad:
        raise NapariUNetError(f"channels={list(channels)!r}: the image of shape {_describe(shape or image.shape)} has "
                              f"channels 0 to {n_image - 1}; pick among those")
    return image[..., indices]


def widen_input(model, n_channels: int, names: Sequence[str] | None = None,
                channel_weights: Sequence[float] | None = None):
    """A copy of `model` (a SegmentationModel) that reads `n_channels` channels; see the module docstring.

    The same grey plane in every channel gives the old model's output (to float rounding). The copy's card
    records what was widened; its metadata lists the channel names (default: channel_names).
    channel_weights: how much each new channel contributes (default 1/n each; summing to 1, equal channels still
    give the old output), e.g. a mix of the channels that separates the objects (adaptation.fitted_channel_mix),
    as colour deconvolution picks a stain; with as many channels as the model reads already, the first
    convolution's channels are re-weighed so."""
    from dataclasses import replace

    from napari_unet.model import SegmentationModel, build_unet

    old = model.config.n_channels
    if n_channels < 1:
        raise NapariUNetError(f"a model reads at least 1 channel, not {n_channels}")
    weights_given = channel_weights is not None
    if n_channels == old and not weights_given:
        return model.copy()
    channel_weights = np.asarray(channel_weights if weights_given else [1.0 / n_channels] * n_channels, np.float64)
    if channel_weights.shape != (n_channels,) or not np.all(np.isfinite(channel_weights)):
        raise NapariUNetError(f"channel_weights needs {n_channels} finite numbers, not {channel_weights.tolist()}")
    config = replace(model.config, n_channels=int(n_channels))
    widened = build_unet(config)
    source = {layer.name: layer for layer in model.keras_model.layers}
    first = _first_convolution(widened)
    for layer in widened.layers:
        weights = source[layer.name].get_weights() if layer.name in source else []
        if layer.name == first.name:
            kernel, *rest = weights
            # Every new channel reads what the old channels read on average: a grey plane repeated gives the
            # old pre-activation (sum over the new channels of kernel_mean / n = kernel summed over old / old).
            summed = kernel.mean(axis=2, keepdims=True) * old
            weights = [(summed * channel_weights.reshape(1, 1, -1, 1)).astype(kernel.dtype), *rest]
        if weights:
            layer.set_weights(weights)
    metadata = replace(model.metadata, config=config, channel_names=list(names or channel_names(n_channels)),
                       info=dict(model.metadata.info))
    metadata.info["widened"] = {"from_channels": old, "to_channels": int(n_channels),
                                "rule": "first convolution's kernel summed over its input channels, then each new "
                                        "channel given its weight of it: weights summing to 1 give equal channels "
                                        "the old output",
                                "channel_weights": [round(float(w), 4) for w in channel_weights]}
    return SegmentationModel(widened, metadata, model.source)


def _first_convolution(keras_model):
    """The convolution that reads the input image."""
    for layer in keras_model.layers:
        if layer.__class__.__name__ == "Conv2D":
            return layer
    raise NapariUNetError("the model has no convolution reading its input: only U-Nets built by napari-unet can be widened")

"""Percentile normalisation, shared by training and prediction so both see the same numbers."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from napari_unet.errors import NapariUNetError

# Percentiles of very large images are estimated from at most this many pixels (a regular stride),
# which keeps normalisation of a 32k x 32k dask image cheap and deterministic.
MAX_PIXELS_FOR_PERCENTILES = 4_000_000


@dataclass(frozen=True)
class NormalizationConfig:
    """Robust min/max: the `low` and `high` percentiles map to 0 and 1 (values outside are kept).

    invert: the other way round (`high` to 0, `low` to 1), so that dark objects on a bright background
    (brightfield, stained tissue) reach the model as bright on dark, as a fluorescence-trained parent saw
    them. Chosen per version from the user's corrections (adaptation.py) and saved with the model.
    """

    low: float = 1.0
    high: float = 99.8
    invert: bool = False

    def to_dict(self) -> dict:
        return {"method": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "NormalizationConfig":
        return cls(low=float(values.get("low", 1.0)), high=float(values.get("high", 99.8)),
                   invert=bool(values.get("invert", False)))


def _subsample(image) -> np.ndarray:
    """A strided view of at most MAX_PIXELS_FOR_PERCENTILES pixels per channel (numpy or dask)."""
    n_pixels = int(np.prod(image.shape[:2]))
    step = max(1, int(np.ceil(np.sqrt(n_pixels / MAX_PIXELS_FOR_PERCENTILES))))
    sample = image[::step, ::step]
    return np.asarray(sample)


def percentile_range(image, config: NormalizationConfig = NormalizationConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(value mapped to 0, value mapped to 1) per channel of a (Y, X) or (Y, X, C) image: the low and high
    percentiles, swapped when config.invert. NaN/inf are rejected."""
    sample = _subsample(image).astype(np.float32, copy=False)
    if not np.all(np.isfinite(sample)):
        raise NapariUNetError(
            "the image contains NaN or infinite values: replace them (e.g. numpy.nan_to_num) before segmenting"
        )
    if sample.ndim == 2:
        sample = sample[..., None]
    flat = sample.reshape(-1, sample.shape[-1])
    low, high = np.percentile(flat, [config.low, config.high], axis=0)
    if config.invert:
        low, high = high, low
    return low.astype(np.float32), high.astype(np.float32)


def is_flat(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per channel: no contrast between the two percentiles (such a channel normalises to zeros)."""
    return np.asarray(low) == np.asarray(high)


def apply_range(image: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map `low` to 0 and `high` to 1 as float32 (high < low inverts); a flat channel becomes all zeros."""
    image = np.asarray(image, dtype=np.float32)
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    flat = is_flat(low, high)
    span = np.where(flat, 1.0, np.asarray(high) - np.asarray(low)).astype(np.float32)
    normalized = (image - low) / span
    normalized[..., flat] = 0.0
    return normalized[..., 0] if squeeze else normalized


def normalize(image, config: NormalizationConfig = NormalizationConfig()) -> np.ndarray:
    """Normalise a whole (Y, X) or (Y, X, C) image to float32 with robust percentiles."""
    if image.dtype == bool:
        image = np.asarray(image, dtype=np.uint8)
    low, high = percentile_range(image, config)
    if np.any(is_flat(low, high)):
        warnings.warn(
            "the image is constant (no contrast between the 1st and 99.8th percentile): "
            "the model sees a blank image and will likely predict nothing",
            stacklevel=2,
        )
    return apply_range(image, low, high)

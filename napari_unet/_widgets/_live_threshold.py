"""What a prediction layer keeps so the threshold slider can re-threshold it without the model.

Plain numpy and a layer's metadata dict (no Qt): the Predict tab attaches a ThresholdCache to the
Labels layer it wrote, and reads it back only while it still describes that layer's data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.labels.postprocess import instances_per_plane, labels_from_ranks, threshold_ranks

# The Predict tab's slider steps (0.01 … 0.99): the grid the cached ranks are exact for.
SLIDER_THRESHOLDS = tuple(step / 100 for step in range(1, 100))
# Where a prediction layer keeps its ThresholdCache.
LIVE_THRESHOLD_KEY = "napari_unet_live_threshold"
# Above these many cached pixels re-thresholding runs in a worker, not on the GUI thread. A threshold
# costs ~1 ms per Mpx; instances (labelling + watershed) ~0.2-0.4 s per Mpx on a busy 2-core CPU.
INLINE_PIXELS = 4_000_000
INLINE_INSTANCE_PIXELS = 250_000


@dataclass
class ThresholdCache:
    """One prediction's probabilities as ranks on the slider grid (1 byte per pixel, exact; see
    postprocess.threshold_ranks), where it went in the layer and how its labels were made."""

    ranks: np.ndarray  # uint8, shape of layer.data[index]
    index: tuple[int, ...]  # the predicted plane of a stack; () = the whole layer
    threshold: float  # the threshold the layer's labels were last made with
    objects: str | None = None  # None: 0/1 labels; "foreground"/"background": instances of those pixels

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, index: tuple, threshold: float,
                           objects: str | None = None) -> "ThresholdCache":
        return cls(threshold_ranks(probabilities, SLIDER_THRESHOLDS), tuple(index), threshold, objects)

    @property
    def n_pixels(self) -> int:
        return int(self.ranks.size)

    def is_quick(self) -> bool:
        """Cheap enough to re-threshold on the GUI thread without a visible stall."""
        return self.n_pixels <= (INLINE_PIXELS if self.objects is None else INLINE_INSTANCE_PIXELS)

    def fits(self, data_shape: tuple[int, ...]) -> bool:
        """Does it still describe a layer whose data has this shape (same plane count and size)?"""
        depth = len(self.index)
        return (len(data_shape) == depth + self.ranks.ndim
                and tuple(data_shape[depth:]) == self.ranks.shape
                and all(0 <= i < n for i, n in zip(self.index, data_shape[:depth])))

    def labels_at(self, threshold: float) -> np.ndarray:
        """The layer's content at `threshold` (a slider step): uint8 0/1, or int32 instances."""
        labels = labels_from_ranks(self.ranks, SLIDER_THRESHOLDS, threshold)
        return labels if self.objects is None else instances_per_plane(labels, self.objects)


def attach(layer, cache: ThresholdCache) -> None:
    layer.metadata[LIVE_THRESHOLD_KEY] = cache


def cache_of(layer) -> ThresholdCache | None:
    """The layer's cache if it still matches the layer's shape; a stale one is dropped."""
    cache = layer.metadata.get(LIVE_THRESHOLD_KEY)
    if cache is None:
        return None
    if not isinstance(cache, ThresholdCache) or not cache.fits(tuple(layer.data.shape)):
        layer.metadata.pop(LIVE_THRESHOLD_KEY, None)
        return None
    return cache


def forget(layer) -> None:
    layer.metadata.pop(LIVE_THRESHOLD_KEY, None)

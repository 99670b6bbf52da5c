"""Output offset: where a data set's annotators drew relative to what the image shows.

Some ground truth sits consistently off the structure: the ISBI 2012 masks lie ~0.5 px above the
dark membranes, on every slice. A model trained with flips and 90° rotations cannot learn a one-sided
offset (rotated pairs contradict each other), so it predicts centred on the membrane and scores
worse against those masks. Prediction therefore moves the probability map by the model's
`ModelMetadata.output_offset` (after test-time augmentation, so the views stay symmetric), and this
module fits that offset on validation data. Moving away from (0, 0) needs a clear gain (more than
TOLERANCE of the wrong pixels and more than 3 standard deviations of their count), so noise in a
small validation set does not invent an offset.

The move is linear interpolation between a pixel and its neighbour, with the edge repeated; the
prediction engine does exactly the same in TensorFlow (prediction.forward_function).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_OFFSET = 1.0
OFFSET_STEP = 0.25
# An offset is kept only if it has fewer wrong pixels than every smaller one by more than this
# fraction (and by more than 3 sqrt(count), the noise of a count).
TOLERANCE = 0.01
from napari_unet.labels.masks import IGNORE_LABEL  # noqa: E402  (the one definition)


def shift_probabilities(probabilities: np.ndarray, offset) -> np.ndarray:
    """Probabilities (Y, X) or (Y, X, C) moved by offset = (dy, dx) px, |dy|, |dx| <= 1.

    output[y, x] = probabilities[y - dy, x - dx], interpolated linearly, border pixels repeated.
    """
    moved = np.asarray(probabilities, dtype=np.float32)
    for axis, amount in enumerate(offset):
        amount = float(amount)
        if amount == 0.0:
            continue
        if abs(amount) > MAX_OFFSET:
            raise ValueError(f"offset {amount} px is outside [-{MAX_OFFSET}, {MAX_OFFSET}]")
        length = moved.shape[axis]
        # The neighbour a pixel takes from: the next pixel for a move towards 0 (amount < 0).
        source = np.arange(length) + (1 if amount < 0 else -1)
        neighbour = np.take(moved, np.clip(source, 0, length - 1), axis=axis)
        moved = (1.0 - abs(amount)) * moved + abs(amount) * neighbour
    return moved.astype(np.float32, copy=False)


@dataclass
class OffsetFit:
    """The chosen offset and the validation pixel errors behind the choice."""

    offset: tuple[float, float]
    pixel_error: float
    pixel_error_at_zero: float
    tried: dict[tuple[float, float], float] = field(default_factory=dict)


def _wrong_pixels(probability_maps, masks, offset, threshold: float, n_classes: int) -> tuple[int, int]:
    """(wrong, annotated) pixel counts with the maps moved by offset."""
    wrong = total = 0
    for probabilities, mask in zip(probability_maps, masks):
        moved = shift_probabilities(probabilities, offset)
        if n_classes == 1:
            predicted = (moved[..., 0] if moved.ndim == 3 else moved) >= threshold
            predicted = predicted.astype(np.uint8)
        else:
            predicted = np.argmax(moved, axis=-1).astype(np.uint8)
        annotated = mask != IGNORE_LABEL
        truth = mask if n_classes > 1 else (mask > 0).astype(np.uint8)
        wrong += int(np.count_nonzero((predicted != truth) & annotated))
        total += int(np.count_nonzero(annotated))
    return wrong, total


def fit_output_offset(probability_maps, masks, *, threshold: float = 0.5, n_classes: int = 1,
                      tolerance: float = TOLERANCE) -> OffsetFit:
    """The (dy, dx) that minimises pixel error of un-moved probability maps against masks.

    probability_maps: (Y, X) or (Y, X, n_classes) float arrays predicted with no offset; masks: same
    Y x X, class ids, IGNORE_LABEL = not annotated. Searches dy then dx on a 0.25 px grid in [-1, 1];
    among the offsets not clearly worse than the best (see TOLERANCE), the smallest one wins.
    """
    probability_maps, masks = list(probability_maps), [np.asarray(m) for m in masks]
    grid = [round(float(v), 2) for v in np.arange(-MAX_OFFSET, MAX_OFFSET + 1e-9, OFFSET_STEP)]
    wrong_counts: dict[tuple[float, float], int] = {}
    annotated = 0

    def wrong(offset) -> int:
        nonlocal annotated
        if offset not in wrong_counts:
            wrong_counts[offset], annotated = _wrong_pixels(probability_maps, masks, offset, threshold, n_classes)
        return wrong_counts[offset]

    def best_along(candidates):
        counts = {c: wrong(c) for c in candidates}
        fewest = min(counts.values())
        margin = max(tolerance * fewest, 3.0 * np.sqrt(fewest))
        close = [c for c, count in counts.items() if count <= fewest + margin]
        return min(close, key=lambda c: (abs(c[0]) + abs(c[1]), c))

    dy = best_along([(v, 0.0) for v in grid])[0]
    offset = best_along([(dy, v) for v in grid])
    error = {c: count / annotated if annotated else 0.0 for c, count in wrong_counts.items()}
    return OffsetFit(offset=offset, pixel_error=error[offset], pixel_error_at_zero=error[(0.0, 0.0)], tried=error)

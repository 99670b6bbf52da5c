"""The one "did it help?" rule: a change in IoU counts only when the evaluation set can resolve it.

Both models are scored on the same evaluation pixels, cut into units (tiles of `TILE` px of every
evaluation region). A paired bootstrap resamples those units (with replacement, `RESAMPLES` times,
fixed seed) and recomputes the pooled IoU of both models on each resample; the 95 % interval of the
difference (after − before) decides:

- above zero → "helped";  below zero → "hurt";  containing zero → "no measurable change".

So IoU moving by 0.001 on a few hundred pixels is "no measurable change", while a consistent gain
over many tiles is "helped" even when small. Neighbouring tiles are correlated, so the interval is
somewhat optimistic for a single image; more evaluation images make it honest.
No TensorFlow, no Qt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from napari_unet.metrics import scores_from_counts

TILE = 64
RESAMPLES = 2000
CONFIDENCE = 0.95
_KEYS = ("tp", "fp", "fn", "tn")


def unit_counts(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, tile: int = TILE) -> np.ndarray:
    """(units, 4) int64 tp/fp/fn/tn counts of one image, one row per tile holding valid pixels."""
    predicted = np.asarray(predicted) > 0
    truth = np.asarray(truth) > 0
    valid = np.ones(truth.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    rows = []
    for top in range(0, truth.shape[0], tile):
        for left in range(0, truth.shape[1], tile):
            window = (slice(top, top + tile), slice(left, left + tile))
            p, t, v = predicted[window], truth[window], valid[window]
            if not v.any():
                continue
            rows.append((np.count_nonzero(p & t & v), np.count_nonzero(p & ~t & v),
                         np.count_nonzero(~p & t & v), np.count_nonzero(~p & ~t & v)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def pooled(units: np.ndarray) -> dict[str, float]:
    """IoU, Dice and pixel error of all units together."""
    return scores_from_counts(dict(zip(_KEYS, (int(v) for v in np.asarray(units).sum(axis=0)))))


@dataclass
class Comparison:
    """Scores of two models on the same evaluation units, and what the difference means."""

    before: dict
    after: dict
    delta_iou: float
    interval: tuple[float, float]  # 95 % bootstrap interval of delta_iou
    units: int
    verdict: str  # "helped", "hurt" or "no measurable change"

    def to_dict(self) -> dict:
        values = asdict(self)
        values["interval"] = [round(v, 4) for v in self.interval]
        return values


def _iou(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    union = tp + fp + fn
    return np.where(union > 0, tp / np.maximum(union, 1), 1.0)


def compare(before_units: np.ndarray, after_units: np.ndarray, seed: int = 0) -> Comparison:
    """The rule in the module docstring, on paired (units, 4) counts of the same units."""
    before_units, after_units = np.asarray(before_units), np.asarray(after_units)
    if before_units.shape != after_units.shape or before_units.ndim != 2:
        raise ValueError("before and after need counts of the same units")
    before, after = pooled(before_units), pooled(after_units)
    delta = after["iou"] - before["iou"]
    n = len(before_units)
    if n < 2:
        interval = (-np.inf, np.inf)
    else:
        picks = np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))
        deltas = _iou(after_units[picks].sum(axis=1)) - _iou(before_units[picks].sum(axis=1))
        tail = (1 - CONFIDENCE) / 2 * 100
        interval = (float(np.percentile(deltas, tail)), float(np.percentile(deltas, 100 - tail)))
    verdict = "helped" if interval[0] > 0 else "hurt" if interval[1] < 0 else "no measurable change"
    return Comparison(before, after, float(delta), interval, n, verdict)

"""The one "did it help?" rule: a change in IoU counts only when the evaluation set can resolve it.

Both models are scored on the same evaluation pixels, cut into units (tiles of `TILE` px of every
evaluation region). A paired bootstrap resamples those units (with replacement, `RESAMPLES` times,
fixed seed) and recomputes the pooled IoU of both models on each resample; the 95 % interval of the
difference (after − before) decides:

- above zero → "helped";  below zero → "hurt";  containing zero → "no measurable change".

Several classes: the units hold counts per class (background first) and the rule decides on the mean IoU of
the classes (background left out); every class gets its own interval and verdict from the same resamples.

So IoU moving by 0.001 on a few hundred pixels is "no measurable change", while a consistent gain
over many tiles is "helped" even when small. Neighbouring tiles are correlated, so the interval is
somewhat optimistic for a single image; more evaluation images make it honest.
No TensorFlow, no Qt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from napari_unet.scoring.metrics import scores_from_counts

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


def class_unit_counts(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None, n_classes: int,
                      tile: int = TILE) -> np.ndarray:
    """(units, n_classes + 1, 4) int64 tp/fp/fn/tn counts of each class (0 = background, then label values
    1..n_classes) of one image, one row per tile holding valid pixels."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    per_class = [unit_counts(predicted == value, truth == value, valid, tile) for value in range(n_classes + 1)]
    return np.stack(per_class, axis=1)


def pooled(units: np.ndarray) -> dict[str, float]:
    """IoU, Dice and pixel error of all units together; per-class units: the mean IoU and Dice of the classes
    (background left out) and the share of pixels given a wrong class."""
    units = np.asarray(units)
    if units.ndim == 3:
        per_class = [pooled(units[:, value]) for value in range(1, units.shape[1])]
        totals = units.sum(axis=0)
        wrong, total = int(totals[:, 1].sum()), int(totals[0].sum())
        return {"iou": float(np.mean([c["iou"] for c in per_class])),
                "dice": float(np.mean([c["dice"] for c in per_class])),
                "pixel_error": wrong / total if total else 0.0}
    return scores_from_counts(dict(zip(_KEYS, (int(v) for v in units.sum(axis=0)))))


@dataclass
class Comparison:
    """Scores of two models on the same evaluation units, and what the difference means."""

    before: dict
    after: dict
    delta_iou: float
    interval: tuple[float, float]  # 95 % bootstrap interval of delta_iou
    units: int
    verdict: str  # "helped", "hurt" or "no measurable change"
    # Several classes: per class (label value 1, 2 …) its before/after IoU and Dice, interval and verdict.
    per_class: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["interval"] = stored_interval(self.interval)
        return values


def stored_interval(interval) -> tuple[float, float] | None:
    """An interval as records keep it: rounded, or None when there was none (fewer than two units: its bounds are
    infinite, which strict JSON cannot hold)."""
    if not np.all(np.isfinite(interval)):
        return None
    return tuple(round(float(v), 4) for v in interval)


def _iou(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    union = tp + fp + fn
    return np.where(union > 0, tp / np.maximum(union, 1), 1.0)


def _interval(deltas: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    return (float(np.percentile(deltas, tail)), float(np.percentile(deltas, 100 - tail)))


def _verdict(interval: tuple[float, float]) -> str:
    return "helped" if interval[0] > 0 else "hurt" if interval[1] < 0 else "no measurable change"


def compare(before_units: np.ndarray, after_units: np.ndarray, seed: int = 0) -> Comparison:
    """The rule in the module docstring, on paired (units, 4) counts of the same units, or (units, classes + 1, 4)
    per-class counts (class_unit_counts)."""
    before_units, after_units = np.asarray(before_units), np.asarray(after_units)
    if before_units.shape != after_units.shape or before_units.ndim not in (2, 3):
        raise ValueError("before and after need counts of the same units")
    before, after = pooled(before_units), pooled(after_units)
    delta = after["iou"] - before["iou"]
    n = len(before_units)
    n_classes = before_units.shape[1] - 1 if before_units.ndim == 3 else 0
    class_intervals = [(-np.inf, np.inf)] * n_classes
    if n < 2:
        interval = (-np.inf, np.inf)
    else:
        picks = np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))
        deltas = _iou(after_units[picks].sum(axis=1)) - _iou(before_units[picks].sum(axis=1))
        if n_classes:  # (RESAMPLES, classes + 1): the mean leaves background out
            class_intervals = [_interval(deltas[:, value]) for value in range(1, n_classes + 1)]
            deltas = deltas[:, 1:].mean(axis=1)
        interval = _interval(deltas)
    per_class = []
    for value in range(1, n_classes + 1):
        was, now = pooled(before_units[:, value]), pooled(after_units[:, value])
        per_class.append({"before": {"iou": was["iou"], "dice": was["dice"]},
                          "after": {"iou": now["iou"], "dice": now["dice"]},
                          "delta_iou": now["iou"] - was["iou"], "interval": class_intervals[value - 1],
                          "verdict": _verdict(class_intervals[value - 1])})
    return Comparison(before, after, float(delta), interval, n, _verdict(interval), per_class)

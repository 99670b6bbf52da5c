"""Segmentation scores of a predicted mask against ground truth (foreground = value > 0).

Binary IoU/Dice/pixel error are three sums over a confusion count; computing them with numpy
keeps them exact for huge images and lets us skip "not annotated" pixels.
"""

from __future__ import annotations

import numpy as np

from napari_unet.errors import NapariUNetError


def confusion_counts(predicted, truth, valid=None) -> dict[str, int]:
    """True/false positive/negative pixel counts; `valid` (bool) restricts which pixels count."""
    predicted = np.asarray(predicted) > 0
    truth = np.asarray(truth) > 0
    if predicted.shape != truth.shape:
        raise NapariUNetError(
            f"prediction is {'×'.join(map(str, predicted.shape))} but the mask is "
            f"{'×'.join(map(str, truth.shape))}: a mask must have exactly its image's shape"
        )
    if valid is None:
        valid = np.ones(truth.shape, dtype=bool)
    return {
        "tp": int(np.count_nonzero(predicted & truth & valid)),
        "fp": int(np.count_nonzero(predicted & ~truth & valid)),
        "fn": int(np.count_nonzero(~predicted & truth & valid)),
        "tn": int(np.count_nonzero(~predicted & ~truth & valid)),
    }


def scores_from_counts(counts: dict[str, int]) -> dict[str, float]:
    """IoU and Dice of the foreground, and pixel error = 1 - accuracy.

    When neither prediction nor truth has foreground, IoU and Dice are 1 (perfect agreement).
    """
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    total = tp + fp + fn + tn
    union = tp + fp + fn
    return {
        "iou": tp / union if union else 1.0,
        "dice": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
        "pixel_error": (fp + fn) / total if total else 0.0,
    }


def pooled_scores(pairs) -> dict[str, float]:
    """Scores over many (predicted, truth[, valid]) pairs, pooling pixel counts (not averaging ratios)."""
    total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for pair in pairs:
        for key, value in confusion_counts(*pair).items():
            total[key] += value
    return scores_from_counts(total)

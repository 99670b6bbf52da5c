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


# Instance metrics as the 2018 Data Science Bowl and StarDist define them: objects match when their
# IoU exceeds a threshold; at thresholds >= 0.5 a match is unique, so no assignment step is needed.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, … 0.95


def as_instances(mask) -> np.ndarray:
    """Instance ids of a truth mask: a label image as it is, a 0/1 (or bool) mask split into its components."""
    from scipy import ndimage

    mask = np.asarray(mask)
    if mask.dtype == bool or (mask.size and int(mask.max()) <= 1):
        labels, _ = ndimage.label(mask > 0)
        return labels
    return mask.astype(np.int64, copy=False)


def instance_ious(truth, predicted) -> np.ndarray:
    """(n_truth, n_predicted) IoU of every truth object with every predicted object (ids relabelled 1..n)."""
    from skimage.segmentation import relabel_sequential

    truth, _, _ = relabel_sequential(np.asarray(truth).astype(np.int64, copy=False))
    predicted, _, _ = relabel_sequential(np.asarray(predicted).astype(np.int64, copy=False))
    if truth.shape != predicted.shape:
        raise NapariUNetError(f"instances are {'×'.join(map(str, predicted.shape))} but the truth is "
                              f"{'×'.join(map(str, truth.shape))}: a mask must have its image's shape")
    n_truth, n_predicted = int(truth.max()), int(predicted.max())
    overlap = np.bincount((truth * (n_predicted + 1) + predicted).ravel(),
                          minlength=(n_truth + 1) * (n_predicted + 1)).reshape(n_truth + 1, n_predicted + 1)
    truth_sizes, predicted_sizes = overlap.sum(axis=1), overlap.sum(axis=0)
    intersection = overlap[1:, 1:].astype(np.float64)
    union = truth_sizes[1:, None] + predicted_sizes[None, 1:] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def instance_counts(truth, predicted, thresholds=IOU_THRESHOLDS) -> np.ndarray:
    """(len(thresholds), 3) int64 rows of (TP, FP, FN) of one image at each IoU threshold (> t matches)."""
    ious = instance_ious(truth, predicted)
    n_truth, n_predicted = ious.shape
    rows = []
    for threshold in thresholds:
        matched = ious > threshold
        true_positives = int(np.count_nonzero(matched.any(axis=1)))
        rows.append((true_positives, n_predicted - true_positives, n_truth - true_positives))
    return np.asarray(rows, dtype=np.int64).reshape(len(thresholds), 3)


def instance_scores(counts: np.ndarray, thresholds=IOU_THRESHOLDS) -> dict[str, float]:
    """ap50 = TP/(TP+FP+FN) at IoU > 0.5, map = its mean over the thresholds, f1_50; from (pooled) counts."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    total = tp + fp + fn
    precision_by_threshold = np.divide(tp, total, out=np.ones_like(tp), where=total > 0)
    at_half = list(thresholds).index(0.5)
    f1_denominator = 2 * tp[at_half] + fp[at_half] + fn[at_half]
    return {"ap50": float(precision_by_threshold[at_half]), "map": float(precision_by_threshold.mean()),
            "f1_50": float(2 * tp[at_half] / f1_denominator) if f1_denominator else 1.0,
            "n_true": int(tp[at_half] + fn[at_half]), "n_predicted": int(tp[at_half] + fp[at_half])}

"""The one "did it help?" rule (evidence.py): a paired bootstrap over evaluation tiles, no TensorFlow."""

from __future__ import annotations

import numpy as np

from napari_unet.scoring.evidence import compare, pooled, unit_counts


def _truth_and_prediction(seed=0, size=256, wrong=0.1):
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), bool)
    for _ in range(40):
        y, x = rng.integers(0, size - 12, 2)
        truth[y:y + 12, x:x + 12] = True
    predicted = truth ^ (rng.random(truth.shape) < wrong)
    return truth, predicted


def test_units_are_tiles_of_valid_pixels_and_pool_to_the_whole_image():
    truth, predicted = _truth_and_prediction()
    valid = np.zeros(truth.shape, bool)
    valid[:, 128:] = True  # only the right half counts
    units = unit_counts(predicted, truth, valid, tile=64)
    assert units.shape == (8, 4) and units.sum() == valid.sum()
    tp = np.count_nonzero(predicted & truth & valid)
    fp = np.count_nonzero(predicted & ~truth & valid)
    fn = np.count_nonzero(~predicted & truth & valid)
    assert pooled(units)["iou"] == tp / (tp + fp + fn)


def test_a_change_within_the_noise_is_no_measurable_change():
    truth, predicted = _truth_and_prediction()
    before = unit_counts(predicted, truth)
    flipped = predicted.copy()
    flipped[5, 5] = ~flipped[5, 5]  # one pixel: IoU moves by ~0.0003
    comparison = compare(before, unit_counts(flipped, truth))
    assert comparison.verdict == "no measurable change"
    assert comparison.interval[0] <= 0 <= comparison.interval[1] and abs(comparison.delta_iou) < 1e-3


def test_a_consistent_gain_helps_and_a_consistent_loss_hurts():
    truth, worse = _truth_and_prediction(wrong=0.12)
    _, better = _truth_and_prediction(wrong=0.08)
    assert compare(unit_counts(worse, truth), unit_counts(better, truth)).verdict == "helped"
    comparison = compare(unit_counts(better, truth), unit_counts(worse, truth))
    assert comparison.verdict == "hurt" and comparison.interval[1] < 0 < comparison.before["iou"] - comparison.after["iou"]


def test_one_unit_cannot_resolve_anything():
    truth, worse = _truth_and_prediction(size=64, wrong=0.3)
    _, better = _truth_and_prediction(size=64, wrong=0.01)
    assert compare(unit_counts(worse, truth), unit_counts(better, truth)).verdict == "no measurable change"

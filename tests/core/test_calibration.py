"""Output offset: the numpy move, the fit on validation maps, and that prediction applies it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.labels.calibration import IGNORE_LABEL, fit_output_offset, shift_probabilities


def smooth_field(shape=(96, 112), seed=0) -> np.ndarray:
    field = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 2.5)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def test_a_move_by_half_a_pixel_interpolates_between_neighbours_and_repeats_the_border():
    ramp = np.tile(np.arange(6, dtype=np.float32)[:, None], (1, 4))  # value = row index
    up = shift_probabilities(ramp, (-0.5, 0.0))
    np.testing.assert_allclose(up[:-1, 0], np.arange(5) + 0.5)  # output[y] = input[y + 0.5]
    assert up[-1, 0] == 5.0  # the last row has no neighbour below: it is repeated
    down_right = shift_probabilities(ramp.T.copy(), (0.0, 1.0))
    np.testing.assert_allclose(down_right[0], [0, 0, 1, 2, 3, 4])  # a whole pixel is a plain move


def test_a_move_keeps_class_probabilities_summing_to_one():
    field = smooth_field()
    probabilities = np.stack([field, 1 - field], axis=-1)
    moved = shift_probabilities(probabilities, (0.25, -0.75))
    np.testing.assert_allclose(moved.sum(axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("true_offset", [(-0.5, 0.0), (0.75, -0.25), (0.0, 1.0)])
def test_the_fit_finds_the_offset_of_the_annotations(true_offset):
    maps = [smooth_field(seed=s) for s in (1, 2)]
    masks = [(shift_probabilities(m, true_offset) >= 0.5).astype(np.uint8) for m in maps]
    fit = fit_output_offset(maps, masks)
    assert fit.offset == true_offset
    assert fit.pixel_error < fit.pixel_error_at_zero


def test_aligned_or_unrelated_annotations_give_no_offset():
    maps = [smooth_field(seed=s) for s in (3, 4)]
    aligned = [(m >= 0.5).astype(np.uint8) for m in maps]
    assert fit_output_offset(maps, aligned).offset == (0.0, 0.0)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 2, m.shape).astype(np.uint8) for m in maps]
    assert fit_output_offset(maps, noise).offset == (0.0, 0.0)  # no clear gain: stays at zero


def test_pixels_that_are_not_annotated_do_not_count():
    field = smooth_field(seed=5)
    mask = (shift_probabilities(field, (0.5, 0.0)) >= 0.5).astype(np.uint8)
    lying = mask.copy()
    lying[:, :80] = (shift_probabilities(field, (-1.0, 0.0)) >= 0.5)[:, :80]  # most of the image
    assert fit_output_offset([field], [lying]).offset == (-1.0, 0.0)
    lying[:, :80] = IGNORE_LABEL
    assert fit_output_offset([field], [lying]).offset == (0.5, 0.0)


def test_multiclass_maps_are_fitted_on_the_argmax():
    field = smooth_field(seed=6)
    probabilities = np.stack([1 - field, np.zeros_like(field), field], axis=-1)  # class 2 where field > 0.5
    truth = np.where(shift_probabilities(field, (0.0, -0.5)) >= 0.5, 2, 0).astype(np.uint8)
    assert fit_output_offset([probabilities], [truth], n_classes=3).offset == (0.0, -0.5)


def test_prediction_moves_its_output_by_the_models_offset_after_test_time_augmentation():
    from dataclasses import replace

    from tiny_models import contrasty_tiny_model

    from napari_unet.inference.prediction import predict

    model = contrasty_tiny_model(seed=1)
    image = (smooth_field((96, 80), seed=7) * 3000).astype(np.uint16)
    moved_model = model.copy()
    moved_model.metadata = replace(moved_model.metadata, output_offset=(-0.5, 0.25))
    for tta in (False, True):
        plain = predict(model, image, output="probabilities", tile_size=64, overlap=16, test_time_augmentation=tta)
        moved = predict(moved_model, image, output="probabilities", tile_size=64, overlap=16,
                        test_time_augmentation=tta)
        expected = shift_probabilities(plain, (-0.5, 0.25))
        assert np.abs(moved - plain).max() > 0.01  # the move is visible
        # Tiles are moved one by one (edge repeated at tile borders, where blending weights are small).
        assert np.abs(moved - expected).mean() < 1e-3
        np.testing.assert_allclose(moved[20:-20, 20:-20], expected[20:-20, 20:-20], atol=0.02)

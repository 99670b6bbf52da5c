"""Paired augmentation keeps masks' values and image/mask alignment."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.training.augment import SYMMETRIES, AugmentConfig, PairAugmenter, resolve_for_model, symmetries_of

IGNORE = 255


def _blobs(size: int = 96, seed: int = 0) -> np.ndarray:
    """A 0/1 mask of a few random rectangles: asymmetric, so a wrong flip/rotation is visible."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, size - 20, 2)
        h, w = rng.integers(5, 20, 2)
        mask[y : y + h, x : x + w] = 1
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_augmented_masks_keep_only_original_values(seed):
    config = AugmentConfig(elastic_probability=1.0)
    augmenter = PairAugmenter(config, seed=seed, mask_fill=IGNORE)
    mask = _blobs(64 + 2 * config.margin, seed)
    mask[:5] = IGNORE
    image = np.random.default_rng(seed).random((*mask.shape, 1)).astype(np.float32)
    _, (out_mask,) = augmenter(image, [mask])
    assert out_mask.shape == (64, 64)
    assert out_mask.dtype == np.uint8
    assert set(np.unique(out_mask).tolist()) <= {0, 1, IGNORE}


@pytest.mark.parametrize("seed", range(6))
def test_image_and_mask_stay_aligned(seed):
    """Augment an image equal to its mask: geometry must move both identically."""
    config = AugmentConfig(elastic_probability=1.0, intensity_probability=0.0)
    margin = config.margin
    mask = _blobs(64 + 2 * margin, seed)
    image = mask.astype(np.float32)[..., None]
    out_image, (out_mask,) = PairAugmenter(config, seed=seed, mask_fill=IGNORE)(image, [mask])
    annotated = out_mask != IGNORE
    # linear interpolation blurs edges by < 1 px; away from edges image and mask must agree exactly
    agree = (out_image[..., 0] > 0.5) == (out_mask == 1)
    assert np.mean(agree[annotated]) > 0.98
    assert not np.array_equal(out_mask, mask[margin:-margin, margin:-margin])  # something moved


def test_geometry_is_not_identity_over_many_draws():
    config = AugmentConfig(elastic_probability=0.0, intensity_probability=0.0)
    augmenter = PairAugmenter(config, seed=1, mask_fill=IGNORE)
    mask = _blobs(64)
    results = {augmenter(mask.astype(np.float32)[..., None], [mask])[1][0].tobytes() for _ in range(40)}
    assert len(results) >= 6  # the 8 flips/rotations of the square


def test_intensity_jitter_keeps_out_of_range_values_finite():
    """Normalised images hold values < 0 and > 1; gamma must not produce NaN there."""
    config = AugmentConfig(flips=False, elastic_probability=0.0, intensity_probability=1.0)
    augmenter = PairAugmenter(config, seed=0)
    image = np.random.default_rng(0).normal(0.5, 1.0, (32, 32, 1)).astype(np.float32)
    changed = 0
    for _ in range(10):
        out, _ = augmenter(image.copy(), [np.zeros((32, 32), np.uint8)])
        assert np.all(np.isfinite(out))
        changed += not np.allclose(out, image)
    assert changed >= 5


def test_same_seed_same_augmentation():
    mask = _blobs(64 + 2 * AugmentConfig().margin)
    image = np.random.default_rng(3).random((*mask.shape, 1)).astype(np.float32)
    first = [PairAugmenter(seed=7)(image, [mask]) for _ in range(1)][0]
    second = PairAugmenter(seed=7)(image, [mask])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1][0], second[1][0])


def test_without_rotations_only_the_left_right_mirror_happens():
    """For annotations offset along Y (ISBI): no transform may turn or flip the Y axis."""
    config = AugmentConfig(rotations=False, elastic_probability=0.0, intensity_probability=0.0)
    augmenter = PairAugmenter(config, seed=3, mask_fill=IGNORE)
    mask = _blobs(64)
    allowed = {mask.tobytes(), np.ascontiguousarray(mask[:, ::-1]).tobytes()}
    results = {augmenter(mask.astype(np.float32)[..., None], [mask])[1][0].tobytes() for _ in range(30)}
    assert results == allowed  # both occur, nothing else does


def test_symmetries_follow_the_augmentation_and_unset_rotations_follow_the_model():
    assert symmetries_of(AugmentConfig()) == "dihedral"
    assert symmetries_of(AugmentConfig(rotations=False)) == "mirror"
    assert symmetries_of(AugmentConfig(flips=False, rotations=False)) == "none"
    assert resolve_for_model(AugmentConfig(), "mirror").rotations is False
    assert resolve_for_model(AugmentConfig(), "dihedral").rotations is True
    assert resolve_for_model(AugmentConfig(rotations=True), "mirror").rotations is True
    assert len(SYMMETRIES["dihedral"]) == len(set(SYMMETRIES["dihedral"])) == 8


@pytest.mark.parametrize("seed", range(4))
def test_zoom_keeps_mask_values_and_alignment(seed):
    """scale > 1 zooms image and masks together; masks keep their exact values (nearest neighbour)."""
    config = AugmentConfig(elastic_probability=0.0, intensity_probability=0.0, scale=1.5)
    mask = _blobs(64, seed)
    image = mask.astype(np.float32)[..., None]
    augmenter = PairAugmenter(config, seed=seed, mask_fill=IGNORE)
    areas = []
    for _ in range(12):
        out_image, (out_mask,) = augmenter(image, [mask])
        assert set(np.unique(out_mask).tolist()) <= {0, 1, IGNORE}
        annotated = out_mask != IGNORE
        assert np.mean(((out_image[..., 0] > 0.5) == (out_mask == 1))[annotated]) > 0.97
        areas.append(int((out_mask == 1).sum()))
    assert len(set(areas)) > 2  # object sizes vary: flips and rotations alone keep the area


def test_noise_is_added_only_when_asked():
    flat = np.full((64, 64, 1), 0.5, np.float32)
    quiet = PairAugmenter(AugmentConfig(elastic_probability=0.0, intensity_probability=1.0), seed=0)
    noisy = PairAugmenter(AugmentConfig(elastic_probability=0.0, intensity_probability=1.0, noise=0.1), seed=0)
    assert max(float(quiet(flat, [])[0].std()) for _ in range(5)) < 1e-6
    assert max(float(noisy(flat, [])[0].std()) for _ in range(5)) > 0.01


def test_object_brightness_scales_each_object_by_its_own_factor_and_leaves_background():
    """Two separate blobs on a background of 0.1: each comes out dimmed or brightened by its own factor around
    that level, the background and the not-annotated border untouched, the mask unchanged."""
    config = AugmentConfig(flips=False, rotations=False, elastic_probability=0.0, intensity_probability=0.0,
                           object_brightness_probability=1.0, object_brightness=(0.25, 1.5))
    mask = np.zeros((64, 64), np.uint8)
    mask[10:25, 10:25] = 1
    mask[40:55, 35:50] = 2  # another class still counts as an object
    mask[:, :3] = IGNORE
    image = np.where((mask[..., None] > 0) & (mask[..., None] != IGNORE), 0.9, 0.1).astype(np.float32)
    factors = set()
    for seed in range(5):
        out, (out_mask,) = PairAugmenter(config, seed=seed, mask_fill=IGNORE)(image, [mask])
        np.testing.assert_array_equal(out_mask, mask)
        np.testing.assert_allclose(out[20:35, 28:36], 0.1, atol=1e-6)  # background between the objects
        np.testing.assert_allclose(out[:, :3], 0.1, atol=1e-6)
        first, second = ((out[13:22, 13:22] - 0.1) / 0.8).mean(), ((out[43:52, 38:47] - 0.1) / 0.8).mean()
        assert 0.25 - 1e-3 <= first <= 1.5 + 1e-3 and 0.25 - 1e-3 <= second <= 1.5 + 1e-3
        factors.add((round(float(first), 3), round(float(second), 3)))
    assert len(factors) == 5 and any(abs(a - b) > 0.1 for a, b in factors)  # objects vary apart, seeds differ


def test_object_brightness_off_by_default_leaves_the_random_stream_alone():
    """A config without it draws exactly the augmentations it drew before the option existed."""
    mask = _blobs(64)
    image = np.random.default_rng(3).random((64, 64, 1)).astype(np.float32)
    plain = AugmentConfig(elastic_probability=0.0)
    off = AugmentConfig(elastic_probability=0.0, object_brightness_probability=0.0, object_brightness=(0.1, 0.2))
    first = PairAugmenter(plain, seed=4, mask_fill=IGNORE)(image, [mask])[0]
    second = PairAugmenter(off, seed=4, mask_fill=IGNORE)(image, [mask])[0]
    np.testing.assert_array_equal(first, second)

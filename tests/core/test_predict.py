"""The prediction engine: layouts, dtypes, sizes, tiling without seams, lazy dask input, callbacks, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from tiny_models import contrasty_tiny_model

from napari_unet.errors import Cancelled, NapariUNetError
from napari_unet.inference.prediction import forward_function, predict
from napari_unet.model import UNetConfig, save_model


@pytest.fixture(scope="module")
def model():
    return contrasty_tiny_model(seed=0)


@pytest.fixture(scope="module")
def three_class_model():
    return contrasty_tiny_model(UNetConfig(base_width=4, n_classes=3))


@pytest.fixture(scope="module")
def two_channel_model():
    return contrasty_tiny_model(UNetConfig(n_channels=2, base_width=4))


def smooth_image(shape, seed=0, scale=2000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndi.gaussian_filter(rng.random(shape), 3)
    image = (image - image.min()) / (image.max() - image.min())
    return (image * scale).astype(np.uint16)


def test_tiled_prediction_matches_whole_image(model):
    image = smooth_image((256, 192))
    whole = predict(model, image, output="probabilities", tile_size=512)
    tiled = predict(model, image, output="probabilities", tile_size=128, overlap=32)
    assert whole.std() > 0.02  # the comparison means something only if the output varies
    # Tiles see zero padding at their borders; blending must keep that away from the result.
    assert np.abs(whole - tiled).max() < 0.03
    assert np.abs(whole - tiled).mean() < 0.002


def test_blending_beats_cutting_tiles_without_overlap(model):
    image = smooth_image((256, 192))
    whole = predict(model, image, output="probabilities", tile_size=512)
    blended = predict(model, image, output="probabilities", tile_size=128, overlap=32)
    no_overlap = predict(model, image, output="probabilities", tile_size=128, overlap=0)
    assert np.abs(whole - blended).max() < np.abs(whole - no_overlap).max()


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (130, 67), (3, 200), (200, 5)])
def test_output_has_exactly_the_input_shape(model, shape):
    image = smooth_image(shape)
    labels = predict(model, image)
    probabilities = predict(model, image, output="probabilities", tile_size=64)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1}
    assert probabilities.shape == shape and probabilities.dtype == np.float32


def test_image_smaller_than_a_tile_is_padded_not_refused(model):
    image = smooth_image((20, 30))
    probabilities = predict(model, image, output="probabilities", tile_size=256)
    assert probabilities.shape == (20, 30)
    assert np.all(np.isfinite(probabilities))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.float32, np.float64])
def test_any_numeric_dtype_gives_the_same_probabilities(model, dtype):
    image = smooth_image((64, 80), scale=250)
    reference = predict(model, image.astype(np.uint16), output="probabilities")
    result = predict(model, image.astype(dtype), output="probabilities")
    np.testing.assert_allclose(result, reference, atol=1e-5)


def test_percentile_normalisation_makes_prediction_independent_of_gain_and_offset(model):
    image = smooth_image((64, 64)).astype(np.float64)
    reference = predict(model, image, output="probabilities")
    np.testing.assert_allclose(predict(model, image * 7.5 - 300.0, output="probabilities"), reference, atol=1e-4)


def test_stack_is_predicted_plane_by_plane(model):
    planes = [smooth_image((48, 40), seed=seed) for seed in range(3)]
    stacked = predict(model, np.stack(planes), output="probabilities")
    assert stacked.shape == (3, 48, 40)
    for plane, result in zip(planes, stacked):
        np.testing.assert_allclose(result, predict(model, plane, output="probabilities"), atol=1e-6)
    assert predict(model, np.stack([np.stack(planes[:2])] * 2)).shape == (2, 2, 48, 40)


def test_last_axis_of_three_is_a_stack_when_planes_are_tiny(model):
    # (10, 12, 3): Y, X would be 10 × 12 if it were colour; too small, so it is 10 planes of 12 × 3.
    assert predict(model, smooth_image((10, 12, 3))).shape == (10, 12, 3)
    # (3, 64, 64) is three planes, never colour.
    assert predict(model, smooth_image((3, 64, 64))).shape == (3, 64, 64)


def test_multichannel_image_uses_last_axis_or_the_given_channel_axis(two_channel_model):
    image = np.stack([smooth_image((40, 48), seed=1), smooth_image((40, 48), seed=2)], axis=-1)
    channels_last = predict(two_channel_model, image, output="probabilities")
    channels_first = predict(two_channel_model, np.moveaxis(image, -1, 0), output="probabilities", channel_axis=0)
    assert channels_last.shape == (40, 48)
    np.testing.assert_allclose(channels_first, channels_last, atol=1e-6)


def test_channel_count_mismatch_is_a_clear_error(model, two_channel_model):
    with pytest.raises(NapariUNetError, match="2 channels"):
        predict(two_channel_model, smooth_image((40, 48)))
    with pytest.raises(NapariUNetError, match="channel"):
        predict(model, np.zeros((40, 48, 2), np.uint8), channel_axis=-1)


def test_three_class_model_gives_class_ids_and_a_class_axis(three_class_model):
    image = smooth_image((48, 56))
    probabilities = predict(three_class_model, image, output="probabilities")
    labels = predict(three_class_model, image)
    assert probabilities.shape == (48, 56, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=-1))
    assert labels.dtype == np.uint8


def test_threshold_and_instances(model):
    image = smooth_image((96, 96))
    probabilities = predict(model, image, output="probabilities")
    threshold = float(np.median(probabilities))
    labels = predict(model, image, threshold=threshold)
    np.testing.assert_array_equal(labels, probabilities > threshold)
    instances = predict(model, image, output="instances", threshold=threshold, min_size=1)
    assert instances.dtype == np.int32 and instances.shape == image.shape
    assert instances.max() >= 1
    np.testing.assert_array_equal(instances > 0, labels > 0)  # "foreground" objects for a non-membrane model


def test_progress_counts_tiles_over_the_whole_stack(model):
    calls = []
    predict(
        model, smooth_image((2, 150, 150)), tile_size=64, overlap=16, progress=lambda done, total: calls.append((done, total))
    )
    totals = {total for _, total in calls}
    assert len(totals) == 1
    total = totals.pop()
    assert total == 2 * 3 * 3  # 150 px with 64 px tiles and 16 px overlap: 3 tiles per axis, 2 planes
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1][0] == total


def test_the_tile_grid_is_the_one_predict_runs_on(model):
    from napari_unet.inference.prediction import tile_grid_for

    for shape, tile_size, overlap in (((150, 150), 64, 16), ((300, 90), None, None)):
        totals = []
        predict(model, smooth_image(shape), tile_size=tile_size, overlap=overlap,
                progress=lambda done, total, totals=totals: totals.append(total))
        rows, cols = tile_grid_for(model, shape, tile_size, overlap)
        assert totals[-1] == len(rows.starts) * len(cols.starts)
        assert rows.length == shape[0] and cols.length == shape[1]


def test_probabilities_with_the_views_mean_of_squares_come_from_one_pass(model):
    from napari_unet.inference.prediction import predict_probabilities

    plane = smooth_image((96, 96))[..., None]
    alone = predict_probabilities(model, plane, test_time_augmentation=2)
    probabilities, squares = predict_probabilities(model, plane, test_time_augmentation=2, with_squares=True)
    np.testing.assert_allclose(probabilities, alone, atol=1e-6)
    assert squares.shape == probabilities.shape
    assert np.all(squares >= probabilities**2 - 1e-5)  # the mean of squares is never below the square of the mean
    assert np.any(squares > probabilities**2 + 1e-4)  # and the two views disagree somewhere


def test_cancel_between_tile_batches_raises_cancelled(model):
    checks = []

    def cancel():
        checks.append(1)
        return len(checks) > 1  # let the first batch run, stop before the second

    calls = []
    with pytest.raises(Cancelled):
        predict(model, smooth_image((150, 150)), tile_size=64, overlap=16, batch_size=2, cancel=cancel,
                progress=lambda done, total: calls.append(done))
    assert calls == [2]


def test_forward_pass_is_one_cached_tf_function_not_model_predict(model, monkeypatch):
    forward = forward_function(model)
    assert forward_function(model) is forward
    monkeypatch.setattr(model.keras_model, "predict", lambda *args, **kwargs: pytest.fail("model.predict used"))
    predict(model, smooth_image((70, 90)), tile_size=64)
    predict(model, smooth_image((33, 41)))
    assert forward_function(model) is forward
    assert len(forward.get_concrete_function().graph.inputs) >= 1
    assert forward.experimental_get_tracing_count() == 1


def test_model_can_be_given_as_a_path(model, tmp_path):
    path = save_model(model, tmp_path / "tiny.keras")
    image = smooth_image((40, 40))
    np.testing.assert_allclose(
        predict(str(path), image, output="probabilities"), predict(model, image, output="probabilities"), atol=1e-6
    )


def test_dask_input_gives_a_lazy_result_equal_to_numpy(model):
    import dask.array as da

    image = smooth_image((300, 260))
    expected = predict(model, image, output="probabilities", tile_size=64, overlap=16)
    calls = []
    lazy = predict(model, da.from_array(image, chunks=(70, 90)), output="probabilities", tile_size=64, overlap=16,
                   block_size=100, progress=lambda done, total: calls.append((done, total)))
    assert isinstance(lazy, da.Array) and calls == []  # nothing computed yet
    np.testing.assert_allclose(lazy.compute(scheduler="threads"), expected, atol=1e-5)
    assert calls[-1][0] == calls[-1][1]
    labels = predict(model, da.from_array(image, chunks=128), tile_size=64, overlap=16, block_size=128)
    np.testing.assert_array_equal(labels.compute(), expected > 0.5)


def test_dask_prediction_can_be_written_block_by_block_to_zarr(model, tmp_path):
    import dask.array as da
    import zarr

    image = smooth_image((2, 130, 150))
    source = zarr.open_array(tmp_path / "image.zarr", mode="w", shape=image.shape, chunks=(1, 64, 64), dtype=image.dtype)
    source[:] = image
    labels = predict(model, da.from_zarr(source), tile_size=64, block_size=64)
    labels.to_zarr(str(tmp_path / "labels.zarr"))
    written = zarr.open_array(tmp_path / "labels.zarr", mode="r")
    np.testing.assert_array_equal(written[:], predict(model, image, tile_size=64))


def test_dask_percentiles_are_computed_once_for_the_whole_plane(model):
    import dask.array as da

    # Left half dark, right half bright: per-block normalisation would make both halves look alike.
    image = smooth_image((64, 256), scale=100)
    image[:, 128:] += 1000
    expected = predict(model, image, output="probabilities", tile_size=64)
    lazy = predict(model, da.from_array(image, chunks=64), output="probabilities", tile_size=64, block_size=64)
    np.testing.assert_allclose(lazy.compute(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((1, 50), np.uint8), "too small"),
        (np.ones((4, 4, 4, 40, 40), np.uint8), "at most"),
        (np.ones((40, 40), bool), "boolean"),
        (np.array([[1.0, np.nan], [3.0, 4.0]] * 20), "NaN"),
        (np.array([[1.0, np.inf], [3.0, 4.0]] * 20), "infinite"),
        (np.zeros(40, np.uint8), "2D"),
        (np.zeros((30, 30), complex), "numeric"),
    ],
    ids=["empty", "one-pixel-row", "5d", "bool", "nan", "inf", "1d", "complex"],
)
def test_bad_input_is_a_clear_error(model, image, message):
    with pytest.raises(NapariUNetError, match=message):
        predict(model, image)


def test_constant_image_warns_and_returns_background(model, three_class_model):
    image = np.full((50, 60), 7, np.uint16)
    with pytest.warns(UserWarning, match="constant"):
        labels = predict(model, image)
    assert labels.shape == (50, 60) and not labels.any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probabilities = predict(three_class_model, image, output="probabilities")
    np.testing.assert_array_equal(probabilities[..., 0], 1.0)


def test_unknown_output_kind_is_refused(model):
    with pytest.raises(NapariUNetError, match="output"):
        predict(model, smooth_image((32, 32)), output="mask")


def test_instances_of_a_membrane_model_are_the_enclosed_regions(model):
    from dataclasses import replace

    from napari_unet.labels.postprocess import instances_from_labels
    from napari_unet.model import SegmentationModel

    membrane_model = SegmentationModel(model.keras_model, replace(model.metadata, class_names=["membrane"]))
    image = smooth_image((96, 96))
    labels = predict(membrane_model, image)
    instances = predict(membrane_model, image, output="instances", min_size=1)
    assert np.all(instances[labels > 0] == 0)  # membranes are never part of an object
    np.testing.assert_array_equal(instances, instances_from_labels(labels, objects="background", min_size=1))
    forced = predict(membrane_model, image, output="instances", instances_of="foreground", min_size=1)
    np.testing.assert_array_equal(forced > 0, labels > 0)


def test_public_api_predict_is_callable_even_after_importing_the_submodule(model):
    import napari_unet
    import napari_unet.inference.prediction  # binds napari_unet.inference.prediction, not napari_unet.predict

    image = smooth_image((40, 40))
    np.testing.assert_array_equal(napari_unet.predict(model, image), predict(model, image))
    np.testing.assert_array_equal(napari_unet.predict(model, image), predict(model, image))


def _dihedral(image, quarter_turns: int, mirrored: bool):
    image = image[:, ::-1] if mirrored else image
    return np.rot90(image, quarter_turns)


def _undo_dihedral(image, quarter_turns: int, mirrored: bool):
    image = np.rot90(image, -quarter_turns)
    return image[:, ::-1] if mirrored else image


def test_test_time_augmentation_averages_the_eight_flips_and_rotations(model):
    image = smooth_image((64, 64), seed=3)  # one tile: no blending between tiles
    averaged = predict(model, image, output="probabilities", test_time_augmentation=True)
    by_hand = np.mean([
        _undo_dihedral(predict(model, _dihedral(image, k, m).copy(), output="probabilities"), k, m)
        for k in range(4) for m in (False, True)
    ], axis=0)
    plain = predict(model, image, output="probabilities")
    assert np.abs(plain - by_hand).max() > 0.05  # a random model is far from rotation invariant
    np.testing.assert_allclose(averaged, by_hand, atol=1e-4)


def test_test_time_augmented_prediction_is_flip_and_rotation_equivariant(model):
    image = smooth_image((96, 80), seed=4)  # not square, several tiles
    result = predict(model, image, output="probabilities", tile_size=64, overlap=16, test_time_augmentation=True)
    mirrored = predict(model, image[:, ::-1].copy(), output="probabilities", tile_size=64, overlap=16,
                       test_time_augmentation=True)
    rotated = predict(model, np.rot90(image).copy(), output="probabilities", tile_size=64, overlap=16,
                      test_time_augmentation=True)
    assert result.shape == image.shape
    # Tile borders are not symmetric, so equality holds away from them only approximately.
    assert np.abs(mirrored[:, ::-1] - result).mean() < 0.01
    assert np.abs(np.rot90(rotated, -1) - result).mean() < 0.01


def test_test_time_augmentation_uses_only_the_models_symmetries(model):
    """A model trained with left-right flips only is averaged over 2 views, not 8."""
    from dataclasses import replace

    image = smooth_image((64, 64), seed=5)
    mirror_model = model.copy()
    mirror_model.metadata = replace(mirror_model.metadata, symmetries="mirror")
    averaged = predict(mirror_model, image, output="probabilities", test_time_augmentation=True)
    plain = predict(mirror_model, image, output="probabilities")
    mirrored = predict(mirror_model, image[:, ::-1].copy(), output="probabilities")[:, ::-1]
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, atol=1e-4)


def test_test_time_augmentation_with_two_or_four_views_averages_a_symmetric_subset(model):
    image = smooth_image((64, 64), seed=6)
    views = {(k, m): _undo_dihedral(predict(model, _dihedral(image, k, m).copy(), output="probabilities"), k, m)
             for k in range(4) for m in (False, True)}
    two = predict(model, image, output="probabilities", test_time_augmentation=2)
    np.testing.assert_allclose(two, (views[(0, False)] + views[(2, False)]) / 2, atol=1e-4)  # identity + half turn
    four = predict(model, image, output="probabilities", test_time_augmentation=4)
    np.testing.assert_allclose(four, np.mean([views[(k, m)] for k in (0, 2) for m in (False, True)], axis=0), atol=1e-4)
    assert np.abs(two - four).max() > 0.01
    with pytest.raises(NapariUNetError, match="views=3"):
        predict(model, image, test_time_augmentation=3)

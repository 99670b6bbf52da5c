"""Predicting a lazy (zarr) image region by region into a zarr labels array, the visible part first."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from napari_unet.errors import Cancelled, NapariUNetError
from napari_unet.inference.lazy_labels import (
    RegionLabels,
    chunk_pieces,
    create_labels_store,
    fill_labels,
    labels_store_path,
    next_region,
    open_zarr_image,
    predict_regions,
    work_regions,
)
from napari_unet.inference.prediction import RegionPredictor, predict
from tests.tiny_models import contrasty_tiny_model


@pytest.fixture(scope="module")
def model():
    return contrasty_tiny_model(seed=3)


def smooth_image(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ndi.gaussian_filter(rng.random(shape), 3) * 60000).astype(np.uint16)


def test_regions_into_zarr_equal_the_whole_image_prediction(model, tmp_path):
    image = smooth_image((300, 260))
    source = zarr.open_array(str(tmp_path / "image.zarr"), mode="w", shape=image.shape, chunks=(64, 64),
                             dtype=image.dtype)
    source[:] = image
    lazy = open_zarr_image(tmp_path / "image.zarr")
    labels = create_labels_store(tmp_path / "labels.zarr", image.shape, chunk=64)
    fill_labels(labels, predict_regions(model, lazy, region_size=128, tile_size=64))
    expected = predict(model, image, tile_size=64)
    assert 0.05 < expected.mean() < 0.95
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[:], expected)


def test_the_visible_region_comes_first_every_pixel_once_and_every_tile_once(model):
    image = smooth_image((256, 256))
    visible = ((), ((60, 200), (10, 60)))  # across the regions that start at (0, 0) and (128, 0)
    results = list(predict_regions(model, image, region_size=128, visible=lambda: visible, tile_size=64))
    returned = [np.zeros(image.shape, dtype=bool) for _ in results]
    for result, pixels in zip(results, returned):
        (y0, y1), (x0, x1) = result.region
        pixels[y0:y1, x0:x1] = True if result.mask is None else result.mask
    assert returned[0][60:200, 10:60].all()  # the view, whole, in the first result
    assert (returned[0] | returned[1])[128:256, 0:128].all()  # then the region nearest its centre
    assert (np.sum(returned, axis=0) == 1).all()
    assert [r.tiles_done for r in results] == sorted(r.tiles_done for r in results)
    rows, cols = RegionPredictor(model, image, tile_size=64).plan.grid
    assert results[-1].tiles_done == results[-1].tiles_total == len(rows.starts) * len(cols.starts)


def test_regions_in_any_order_equal_the_whole_image_prediction(model):
    """Each tile is computed once: what a region's tiles leave unfinished is kept for later regions."""
    image = smooth_image((300, 260), seed=2)
    predictor = RegionPredictor(model, image, tile_size=64)
    labels = np.full(image.shape, 255, dtype=np.uint8)
    regions = [region for _, region in work_regions((), image.shape, 100)]
    for region in np.random.default_rng(1).permutation(len(regions)):
        finished = predictor.finish((), regions[region])
        if finished is not None:
            (y0, y1), (x0, x1) = finished.region
            target = labels[y0:y1, x0:x1]
            written = np.ones(target.shape, dtype=bool) if finished.mask is None else finished.mask
            assert (target[written] == 255).all()  # never returned twice
            target[written] = finished.labels[written]
    np.testing.assert_array_equal(labels, predict(model, image, tile_size=64))
    assert predictor.tiles_done == predictor.tiles_total
    assert predictor.kept_bytes == 0  # nothing kept once all is done


def test_a_stack_with_a_constant_plane_fills_like_the_whole_stack_prediction(model, tmp_path):
    stack = np.stack([smooth_image((150, 140), seed=5), np.full((150, 140), 7, np.uint16), smooth_image((150, 140))])
    labels = create_labels_store(tmp_path / "labels.zarr", stack.shape, chunk=64)
    with pytest.warns(UserWarning, match="constant"):
        fill_labels(labels, predict_regions(model, stack, region_size=64, tile_size=64,
                                            visible=lambda: ((2,), ((0, 10), (0, 10)))))
        expected = predict(model, stack, tile_size=64)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[:], expected)
    assert not expected[1].any() and expected[0].any()


def test_a_result_cut_along_the_chunks_writes_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 4, (70, 90)).astype(np.uint8)
    mask = np.zeros((70, 90), dtype=bool)
    mask[:, :40] = True  # the chunks of columns 64-95 get nothing
    result = RegionLabels((), ((10, 80), (5, 95)), labels, 1, 1, mask)
    pieces = chunk_pieces(result, (32, 32))
    assert all(y0 // 32 == (y1 - 1) // 32 and x0 // 32 == (x1 - 1) // 32 for (y0, y1), (x0, x1) in
               (piece.region for piece in pieces))
    assert len(pieces) == 3 * 2  # rows 10-31, 32-63, 64-79; columns 5-31, 32-44 (45-95: nothing to write)
    whole = create_labels_store(tmp_path / "whole.zarr", (96, 96), chunk=32)
    cut = create_labels_store(tmp_path / "cut.zarr", (96, 96), chunk=32)
    fill_labels(whole, iter([result]))
    fill_labels(cut, iter(pieces))
    np.testing.assert_array_equal(cut[:], whole[:])
    assert whole[10:80, 5:45].all() and not whole[:, 45:].any()


def test_next_region_prefers_the_visible_plane_then_distance():
    remaining = work_regions((3,), (200, 200), 100)
    assert next_region(remaining, None) == remaining[0]
    assert next_region(remaining, ((2,), ((120, 130), (20, 30)))) == ((2,), ((100, 200), (0, 100)))
    remaining = [item for item in remaining if item[0] != (1,)]
    assert next_region(remaining, ((1,), ((0, 10), (190, 200))))[0] != (1,)


def test_cancel_stops_between_regions(model):
    calls = []
    with pytest.raises(Cancelled):
        for _ in predict_regions(model, smooth_image((256, 256)), region_size=128, tile_size=64,
                                 cancel=lambda: calls.append(1) or len(calls) > 3):
            pass


def test_labels_store_never_reuses_a_users_file(tmp_path):
    (tmp_path / "cells prediction.zarr").mkdir()
    path = labels_store_path(tmp_path, "cells prediction")
    assert path.name == "cells prediction 2.zarr"
    with pytest.raises(NapariUNetError, match="never written over"):
        create_labels_store(tmp_path / "cells prediction.zarr", (10, 10))


def test_ome_zarr_with_the_wrong_axes_is_refused_with_the_fix(tmp_path):
    group = zarr.open_group(str(tmp_path / "wrong.ome.zarr"), mode="w")
    group.create_array("0", shape=(64, 64, 2), chunks=(32, 32, 2), dtype=np.uint8)
    group.attrs["multiscales"] = [{"axes": [{"name": "y"}, {"name": "x"}, {"name": "c"}],
                                   "datasets": [{"path": "0"}]}]
    with pytest.raises(NapariUNetError, match=r"axes \(y, x, c\): its last two must be y, x"):
        open_zarr_image(tmp_path / "wrong.ome.zarr")
    group.attrs["multiscales"] = [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]
    with pytest.raises(NapariUNetError, match="declares axes"):
        open_zarr_image(tmp_path / "wrong.ome.zarr")


def test_a_five_axis_array_is_refused(model):
    with pytest.raises(NapariUNetError, match="select one time point"):
        next(predict_regions(model, np.zeros((2, 2, 2, 32, 32), np.uint8)))


def test_a_model_with_boundary_outputs_reads_its_classes_region_by_region():
    """A several-class model's boundary outputs count as their class: the regions' labels equal predict()."""
    import keras

    from napari_unet.model import UNetConfig, new_model

    keras.utils.set_random_seed(2)
    model = new_model(UNetConfig(base_width=4, depth=2, n_classes=4), tile_size=64, name="boundaries",
                      class_names=["background", "disc", "square", "disc boundary"], instances="classes", object_classes=["disc"],
                      object_boundaries=True)
    layer = model.keras_model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 100, bias])  # outputs spread over (0, 1)
    assert model.metadata.boundary_outputs == [3]
    image = smooth_image((200, 180), seed=6)
    predictor = RegionPredictor(model, image, tile_size=64)
    labels = np.full(image.shape, 255, dtype=np.uint8)
    for _, region in work_regions((), image.shape, 90):
        finished = predictor.finish((), region)
        if finished is not None:
            (y0, y1), (x0, x1) = finished.region
            written = np.ones(finished.labels.shape, dtype=bool) if finished.mask is None else finished.mask
            labels[y0:y1, x0:x1][written] = finished.labels[written]
    expected = predict(model, image, tile_size=64)
    assert set(np.unique(expected)) <= {0, 1, 2} and len(np.unique(expected)) > 1
    assert (predict(model, image, tile_size=64, output="raw").argmax(-1) == 3).any()  # the boundary output counts
    np.testing.assert_array_equal(labels, expected)

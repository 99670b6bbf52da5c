"""Predicting a lazy (zarr) image region by region into a zarr labels array, the visible part first."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from napari_unet.errors import Cancelled, NapariUNetError
from napari_unet.inference.lazy_labels import (
    create_labels_store,
    fill_labels,
    labels_store_path,
    next_region,
    open_zarr_image,
    predict_regions,
    work_regions,
)
from napari_unet.inference.prediction import predict
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


def test_the_visible_region_comes_first_and_progress_counts_tiles(model):
    image = smooth_image((256, 256))
    visible = ((), ((150, 200), (10, 60)))  # inside the region that starts at (128, 0)
    results = list(predict_regions(model, image, region_size=128, visible=lambda: visible, tile_size=64))
    assert results[0].region == ((128, 256), (0, 128))
    assert [r.tiles_done for r in results] == sorted(r.tiles_done for r in results)
    assert results[-1].tiles_done == results[-1].tiles_total
    assert {r.region for r in results} == {region for _, region in work_regions((), (256, 256), 128)}


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

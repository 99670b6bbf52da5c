"""The Predict tab on a lazy (zarr-backed dask) image: a Labels layer on a zarr store, paintable, and its
visible region goes to the training set."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from dock_fixtures import errors, model_of, wait_for
from scipy import ndimage as ndi

from napari_unet._widgets._lazy_prediction import (
    LAZY_KEY,
    DisplayRefresher,
    PaintedBoxes,
    RegionWriter,
    ViewTracker,
    write_region,
)
from napari_unet.inference.lazy_labels import RegionLabels, open_zarr_image


def lazy_image(folder, shape=(300, 260)):
    rng = np.random.default_rng(4)
    image = (ndi.gaussian_filter(rng.random(shape), 3) * 60000).astype(np.uint16)
    store = zarr.open_array(str(folder / "big.zarr"), mode="w", shape=shape, chunks=(128, 128), dtype=image.dtype)
    store[:] = image
    return image, open_zarr_image(folder / "big.zarr")


def test_lazy_image_predicts_into_a_paintable_zarr_layer_and_its_visible_region_is_added(
        qtbot, contrasty_dock, notifications, tmp_path):
    viewer, widget = contrasty_dock
    image, lazy = lazy_image(tmp_path)
    viewer.add_image(lazy, name="big")
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    layer = viewer.layers["big prediction"]
    assert isinstance(layer.data, zarr.Array)
    store_path = layer.metadata[LAZY_KEY]
    assert store_path.startswith(str(widget.session.project.root / "predictions"))
    from napari_unet.inference.prediction import predict

    expected = predict(model_of(widget), image)
    assert 0.05 < expected.mean() < 0.95
    np.testing.assert_array_equal(zarr.open_array(store_path, mode="r")[:], expected)
    assert widget.predict_tab.progress_bar.value() == widget.predict_tab.progress_bar.maximum()
    layer.undo()  # the prediction is not an edit the user can undo
    np.testing.assert_array_equal(zarr.open_array(store_path, mode="r")[:], expected)
    np.testing.assert_array_equal(np.asarray(layer._slice.image.raw), expected)  # shown, not only stored

    layer.brush_size = 5
    layer.paint((150, 100), 7)  # a brush stroke, through the layer's paint API
    assert zarr.open_array(store_path, mode="r")[150, 100] == 7  # reached the store on disk

    layer.corner_pixels = np.array([[140, 90], [171, 139]])  # what the canvas sets when zoomed in
    job = wait_for(qtbot, widget.training_set_tab.add_current())
    assert job.error is None, errors(notifications)
    (pair,) = widget.session.training_set.pairs()
    assert pair.name.endswith("_y140_x90")
    stored_image, stored_mask = widget.session.training_set.load(pair.name)
    assert stored_image.shape[:2] == stored_mask.shape == (32, 50)
    np.testing.assert_array_equal(np.squeeze(stored_image), image[140:172, 90:140])
    assert stored_mask[10, 10] == 7


@pytest.fixture(params=[True, False], ids=["napari's brush (up to 0.9)", "public API"])
def zarr_labels(request, make_napari_viewer, tmp_path, monkeypatch):
    """(store, layer, PaintedBoxes) of an empty 64² zarr Labels layer with a 3-px brush, regions written both ways
    (_lazy_prediction.PRIVATE_PAINT_API)."""
    from napari_unet._widgets import _lazy_prediction

    monkeypatch.setattr(_lazy_prediction, "PRIVATE_PAINT_API", request.param and _lazy_prediction.PRIVATE_PAINT_API)
    viewer = make_napari_viewer()
    store = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=(64, 64), chunks=(32, 32), dtype=np.uint8)
    layer = viewer.add_labels(store)
    layer.brush_size = 3
    return store, layer, PaintedBoxes(layer)


def test_a_region_arriving_late_keeps_what_the_user_painted(zarr_labels):
    """Both ways of writing a region: the user's pixels kept, nothing to undo."""
    store, layer, painted = zarr_labels
    layer.paint((10, 10), 3)
    write_region(layer, RegionLabels((), ((0, 64), (0, 64)), np.ones((64, 64), np.uint8), 1, 1), painted)
    assert store[10, 10] == 3 and store[40, 40] == 1
    layer.undo()  # only the user's stroke is in the undo history, not the region
    assert store[10, 10] == 0 and store[40, 40] == 1
    layer.undo()
    assert store[40, 40] == 1


def test_a_region_writes_only_the_pixels_it_finished(zarr_labels):
    """Pixels outside a result's mask belong to a later result: left as they are, and so are the user's."""
    store, layer, painted = zarr_labels
    layer.paint((40, 50), 3)
    finished = np.zeros((48, 64), dtype=bool)
    finished[:, 32:] = True  # the right half of rows 16-63
    labels = np.where(np.arange(64) % 2, 2, 1).astype(np.uint8)[None, :].repeat(48, axis=0)
    write_region(layer, RegionLabels((), ((16, 64), (0, 64)), labels, 1, 2, finished), painted)
    assert not store[:16].any() and not store[16:, :32].any()  # outside the mask: untouched
    assert store[40, 50] == 3  # the user's
    np.testing.assert_array_equal(store[20, 32:40], [1, 2, 1, 2, 1, 2, 1, 2])
    write_region(layer, RegionLabels((), ((16, 64), (0, 64)), labels, 2, 2, ~finished), painted)
    np.testing.assert_array_equal(store[20, :4], [1, 2, 1, 2])
    assert store[40, 50] == 3
    np.testing.assert_array_equal(np.asarray(layer._slice.image.raw), store[:])  # shown as stored


def test_results_are_written_a_chunk_per_turn_of_the_event_loop_and_flushed_at_the_end(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr(RegionWriter, "TURN_MS", 0)  # one chunk per turn
    viewer = make_napari_viewer()
    store = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=(128, 128), chunks=(32, 32), dtype=np.uint8)
    layer = viewer.add_labels(store)
    writer = RegionWriter(layer, PaintedBoxes(layer), DisplayRefresher(layer), lambda: layer in viewer.layers)
    writer.add(RegionLabels((), ((0, 128), (0, 128)), np.ones((128, 128), np.uint8), 1, 3))
    assert len(writer.pieces) == 16 and not store[:].any()  # queued, nothing written on the spot
    qtbot.waitUntil(lambda: not writer.pieces, timeout=5_000)
    assert store[:].all()
    writer.add(RegionLabels((), ((0, 64), (0, 128)), np.full((64, 128), 2, np.uint8), 2, 3))
    writer.flush()  # the job ended: the rest at once
    assert (store[:64] == 2).all() and not writer.pieces
    viewer.layers.remove(layer)
    writer.add(RegionLabels((), ((64, 128), (0, 128)), np.full((64, 128), 3, np.uint8), 3, 3))
    writer.flush()
    assert (store[64:] == 1).all()  # a removed layer gets nothing more


def test_the_tracked_view_follows_the_camera(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    store = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=(3, 500, 400), chunks=(1, 100, 100),
                            dtype=np.uint8)
    layer = viewer.add_labels(store)
    viewer.dims.set_current_step(0, 0)
    tracker = ViewTracker(viewer, layer, lambda: (int(viewer.dims.current_step[0]),))
    assert tracker.current == ((0,), ((0, 500), (0, 400)))  # headless: the whole plane
    layer.corner_pixels = np.array([[0, 100, 50], [0, 199, 149]])  # what the canvas sets once it has drawn
    viewer.camera.center = (0, 150, 100)
    qtbot.waitUntil(lambda: tracker.current == ((0,), ((100, 200), (50, 150))), timeout=5_000)
    viewer.dims.set_current_step(0, 2)
    qtbot.waitUntil(lambda: tracker.current[0] == (2,), timeout=5_000)
    tracker.stop()

"""The Predict tab's uncertainty option and *Next* button in a real viewer (under Xvfb).

The ranking itself is tested on the core (test_uncertainty.py); here: the layer appears, the camera
and the highlight go to the tile the core names, painting and training pairs count as corrected.
"""

from __future__ import annotations

import numpy as np
import pytest
from dock_fixtures import errors, model_of, wait_for
from qtpy.QtCore import Qt

from napari_unet.inference.uncertainty import NEXT_TILE_SIZE, next_tile


@pytest.fixture
def field():
    """256×256 discs on noise: 2×2 tiles of NEXT_TILE_SIZE with different contents."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:256, :256]
    image = rng.normal(40, 10, (256, 256))
    for cy, cx, radius in ((40, 50, 12), (60, 200, 25), (190, 70, 6), (170, 180, 15), (220, 230, 9)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] += 120
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def uncertain_dock(contrasty_dock):
    """The dock with a tiny model whose probabilities spread, so tiles differ in uncertainty."""
    contrasty_dock[1].predict_tab.uncertainty_check.setChecked(True)
    return contrasty_dock


def _shown_tile(viewer) -> tuple[slice, slice]:
    """The tile outlined by the highlight rectangle, from its corners."""
    corners = viewer.layers["next tile"].data[0][:, -2:]
    (y0, x0), (y1, x1) = np.round(corners.min(axis=0) + 0.5).astype(int), np.round(corners.max(axis=0) + 0.5).astype(int)
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def _assert_camera_on(viewer, tile) -> None:
    rows, cols = tile
    centre = np.array([(rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2]) - 0.5
    np.testing.assert_allclose(viewer.camera.center[-2:], centre, atol=1.0)


def test_uncertainty_option_adds_the_map_and_next_walks_uncorrected_tiles(qtbot, uncertain_dock, field,
                                                                            notifications):
    from napari_unet.inference.prediction import predict

    viewer, widget = uncertain_dock
    tab = widget.predict_tab
    viewer.add_image(field, name="cells")
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    layer = viewer.layers["cells uncertainty"]
    assert layer.data.shape == field.shape and layer.data.dtype == np.float32
    _, expected = predict(model_of(widget), field, with_uncertainty=True)
    np.testing.assert_allclose(layer.data, expected, atol=1e-6)

    first = tab.next_tile.go()
    assert first == next_tile(expected, tile_size=NEXT_TILE_SIZE)
    assert _shown_tile(viewer) == first
    _assert_camera_on(viewer, first)
    labels = viewer.layers["cells prediction"]
    assert viewer.layers.selection.active is labels  # ready to paint the correction

    labels.paint(((first[0].start + first[0].stop) // 2, (first[1].start + first[1].stop) // 2), 1)  # a stroke
    canvas = viewer.window._qt_viewer.canvas.native  # noqa: SLF001 (the widget napari reads keys from)
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    second = _shown_tile(viewer)
    corrected = np.zeros(field.shape, bool)
    corrected[first] = True
    assert second != first and second == next_tile(expected, corrected, NEXT_TILE_SIZE)
    _assert_camera_on(viewer, second)


def test_tiles_already_in_the_training_set_count_as_corrected(qtbot, uncertain_dock, field, notifications):
    viewer, widget = uncertain_dock
    viewer.add_image(field, name="cells")
    assert wait_for(qtbot, widget.predict_tab.predict()).error is None, errors(notifications)
    assert wait_for(qtbot, widget.training_set_tab.add_current()).error is None, errors(notifications)
    assert widget.predict_tab.next_tile.go() is None  # the whole plane is a training pair now
    assert "every tile of 'cells prediction' is corrected" in notifications[-1][1]


def test_next_without_a_prediction_says_what_to_do(qtbot, uncertain_dock, field, notifications):
    viewer, widget = uncertain_dock
    viewer.add_image(field, name="cells")
    assert widget.predict_tab.next_tile.go() is None
    assert "no uncertainty map" in notifications[-1][1] and "Predict" in notifications[-1][1]
    assert "next tile" not in [layer.name for layer in viewer.layers]


def test_next_ranks_the_displayed_slice_of_a_stack(qtbot, uncertain_dock, field, notifications):
    viewer, widget = uncertain_dock
    viewer.add_image(np.stack([field[::-1], field]), name="stack")
    viewer.dims.set_current_step(0, 1)
    assert wait_for(qtbot, widget.predict_tab.predict()).error is None, errors(notifications)
    uncertainty = viewer.layers["stack uncertainty"].data
    assert uncertainty.shape == (2, *field.shape) and not uncertainty[0].any()
    tile = widget.predict_tab.next_tile.go()
    assert tile == next_tile(uncertainty[1], tile_size=NEXT_TILE_SIZE) == _shown_tile(viewer)
    assert (viewer.layers["next tile"].data[0][:, 0] == 1).all()  # outlined on the predicted slice
    viewer.dims.set_current_step(0, 0)
    assert widget.predict_tab.next_tile.go() is None
    assert "slice 0 has no uncertainty map" in notifications[-1][1]

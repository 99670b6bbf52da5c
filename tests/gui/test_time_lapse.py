"""Time-lapses of planes and of volumes, in both faces: objects keep their id from frame to frame with --link on the
command line and with 'Stack is: a time-lapse (T)' (or axes named t) in the Predict tab; a (T, Z, Y, X) stack is
segmented volume by volume with its Z step, then linked."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from dock_fixtures import errors, model_of, wait_for

from napari_unet.cli import main
from napari_unet.inference.prediction import predict
from napari_unet.model import UNetConfig, save_model


def moving_balls(frames: int = 2, depth: int = 6, side: int = 32) -> np.ndarray:
    """uint8 (T, Z, Y, X): two bright balls drifting 2 px per frame along X on a noisy background."""
    rng = np.random.default_rng(2)
    grid = np.indices((depth, side, side))
    movie = rng.normal(40, 8, (frames, depth, side, side))
    for t in range(frames):
        for centre in ((2, 10, 8 + 2 * t), (3, 20, 18 + 2 * t)):
            movie[t][sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= 30] += 150
    return np.clip(movie, 0, 255).astype(np.uint8)


@pytest.fixture
def model(tmp_path):
    from tiny_models import contrasty_tiny_model

    return contrasty_tiny_model(UNetConfig(base_width=4, depth=2), seed=0)


def test_cli_links_a_time_lapse_of_volumes_with_their_z_step(model, tmp_path, capsys):
    model_path = str(save_model(model, tmp_path / "tiny.keras"))
    movie = moving_balls()
    tifffile.imwrite(tmp_path / "movie.tif", movie)
    for extra, anisotropy in (([], None), (["--anisotropy", "1.5"], 1.5)):
        out = tmp_path / f"out{len(extra)}"
        assert main(["predict", "-m", model_path, str(tmp_path / "movie.tif"), "-o", str(out), "--instances",
                     "--link", *extra]) == 0
        linked = tifffile.imread(out / "movie.tif")
        np.testing.assert_array_equal(linked, predict(model, movie, output="instances", stack="t",
                                                      anisotropy=anisotropy))
    assert linked.shape == movie.shape and linked.max() >= 1
    assert not np.array_equal(linked, predict(model, movie, output="instances"))  # not plane by plane


def test_the_dock_links_a_time_lapse_of_volumes_with_the_z_step_of_its_scale(qtbot, stack_dock, notifications):
    viewer, widget, tab = stack_dock
    movie = moving_balls()
    viewer.add_image(movie, name="movie", scale=(1.0, 1.5, 1.0, 1.0), axis_labels=("t", "z", "y", "x"))
    viewer.add_image(movie[:, 2], name="flat movie", axis_labels=("t", "y", "x"))
    tab.image_combo.reset_choices()
    tab.image_combo.select("flat movie")
    assert not tab.anisotropy_spin.isEnabled()  # frames of planes have no Z step
    tab.image_combo.select("movie")
    assert tab.anisotropy_spin.isEnabled() and tab.anisotropy_spin.value() == pytest.approx(1.5)
    assert tab.stack_settings(viewer.layers["movie"], (2, 6)) == {"stack": "t", "anisotropy": 1.5}
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    expected = predict(model_of(widget), movie, output="instances", stack="t", anisotropy=1.5)
    np.testing.assert_array_equal(viewer.layers["movie prediction"].data, expected)
    assert "frame to frame" in tab.status_label.text() and "three views" in tab.status_label.text()

    # The same stack without axis names: the menu says what it is, as the refusal tells the user.
    viewer.add_image(movie, name="unnamed", scale=(1.0, 1.5, 1.0, 1.0))
    tab.image_combo.reset_choices()
    tab.image_combo.select("unnamed")
    assert tab.predict() is None and "do not say Z or T" in errors(notifications)[-1]
    tab.stack_combo.setCurrentIndex(tab.stack_combo.findData("t"))
    assert tab.anisotropy_spin.isEnabled()
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    np.testing.assert_array_equal(viewer.layers["unnamed prediction"].data, expected)

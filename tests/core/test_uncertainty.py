"""Uncertainty maps (napari_unet/inference/uncertainty.py, predict(with_uncertainty=True)) and the tile to correct next."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from tiny_models import contrasty_tiny_model

from napari_unet.cli import main
from napari_unet.errors import NapariUNetError
from napari_unet.inference.prediction import predict
from napari_unet.inference.uncertainty import disagreement, entropy, next_tile, tiles, uncertainty_map
from napari_unet.model import UNetConfig, save_model


@pytest.fixture(scope="module")
def model():
    return contrasty_tiny_model(seed=0)


def smooth_image(shape, seed=0) -> np.ndarray:
    image = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 3)
    return ((image - image.min()) / (image.max() - image.min()) * 2000).astype(np.uint16)


# --- the maths ---------------------------------------------------------------------------------
def test_entropy_is_zero_when_sure_and_one_when_undecided():
    binary = np.array([[[0.0], [1.0], [0.5]]], dtype=np.float32)
    np.testing.assert_allclose(entropy(binary), [[0.0, 0.0, 1.0]], atol=1e-4)
    three = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]], dtype=np.float32)
    values = entropy(three)
    assert values[0] == pytest.approx(0.0, abs=1e-4) and values[1] == pytest.approx(1.0, abs=1e-4)
    assert 0.0 < values[2] < 1.0


def test_disagreement_is_twice_the_views_spread():
    # Views 0 and 1 for one pixel (mean 0.5, mean of squares 0.5): std 0.5 -> 1; identical views -> 0.
    mean = np.array([[0.5], [0.3]], dtype=np.float32)
    squares = np.array([[0.5], [0.09]], dtype=np.float32)
    np.testing.assert_allclose(disagreement(mean, squares), [1.0, 0.0], atol=1e-4)


def test_methods_need_views_except_entropy():
    probabilities = np.full((4, 4, 1), 0.3, np.float32)
    np.testing.assert_allclose(uncertainty_map(probabilities), entropy(probabilities))
    with pytest.raises(ValueError, match="several"):
        uncertainty_map(probabilities, method="disagreement")
    with pytest.raises(ValueError, match="not one of"):
        uncertainty_map(probabilities, probabilities ** 2, method="variance")


# --- the engine --------------------------------------------------------------------------------
@pytest.mark.parametrize("views", [1, 4])
def test_uncertainty_has_the_image_shape_and_float32(model, views):
    image = smooth_image((70, 53))
    labels, uncertainty = predict(model, image, with_uncertainty=True, test_time_augmentation=views)
    assert labels.shape == uncertainty.shape == image.shape
    assert uncertainty.dtype == np.float32
    assert uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0 and np.ptp(uncertainty) > 0.01
    np.testing.assert_array_equal(labels, predict(model, image, test_time_augmentation=views))


def test_stack_uncertainty_is_one_map_per_plane(model):
    stack = np.stack([smooth_image((40, 48), seed) for seed in range(3)])
    _, uncertainty = predict(model, stack, output="probabilities", with_uncertainty=True)
    assert uncertainty.shape == stack.shape and uncertainty.dtype == np.float32
    _, first = predict(model, stack[1], output="probabilities", with_uncertainty=True)
    np.testing.assert_allclose(uncertainty[1], first, atol=1e-5)


@pytest.mark.parametrize(("views", "method"), [(1, "entropy"), (4, "combined")])
def test_tiled_uncertainty_matches_whole_image(model, views, method):
    image = smooth_image((256, 192))
    _, whole = predict(model, image, output="probabilities", tile_size=512, with_uncertainty=method,
                       test_time_augmentation=views)
    _, tiled = predict(model, image, output="probabilities", tile_size=128, overlap=32, with_uncertainty=method,
                       test_time_augmentation=views)
    assert np.ptp(whole) > 0.1  # the comparison means something only if the map varies
    assert np.abs(whole - tiled).max() < 0.05
    assert np.abs(whole - tiled).mean() < 0.003


def test_default_is_entropy_and_disagreement_needs_views(model):
    image = smooth_image((96, 96))
    probabilities, default = predict(model, image, output="probabilities", with_uncertainty=True)
    np.testing.assert_allclose(default, entropy(probabilities[..., None]), atol=1e-5)
    _, spread = predict(model, image, output="probabilities", with_uncertainty="disagreement",
                        test_time_augmentation=4)
    assert spread.max() > 0.01  # the random tiny model is far from symmetric: its views disagree
    with pytest.raises(NapariUNetError, match="test_time_augmentation=2 or more"):
        predict(model, image, with_uncertainty="combined")
    with pytest.raises(NapariUNetError, match="use True or one of"):
        predict(model, image, with_uncertainty="variance")


def test_lazy_input_with_uncertainty_is_refused(model):
    import dask.array as da

    with pytest.raises(NapariUNetError, match="dask"):
        predict(model, da.from_array(smooth_image((64, 64))), with_uncertainty=True)


@pytest.mark.shared_data
def test_uncertainty_is_higher_where_the_shipped_model_is_wrong(isbi_dir):
    """Held-out ISBI slice 22, not trained on by the shipped `membranes` model (its card's split)."""
    from napari_unet.storage.io import read_image

    image = read_image(isbi_dir / "images" / "22.png")[:256, :256]
    truth = read_image(isbi_dir / "masks" / "22.png")[:256, :256] > 0
    labels, uncertainty = predict("membranes", image, with_uncertainty=True)
    wrong = (labels > 0) != truth
    assert 0.01 < wrong.mean() < 0.5
    assert uncertainty[wrong].mean() > 2 * uncertainty[~wrong].mean()


# --- the next tile -----------------------------------------------------------------------------
def test_tiles_cover_the_plane_once():
    covered = np.zeros((130, 70), int)
    for tile in tiles((130, 70), 64):
        covered[tile] += 1
    assert (covered == 1).all()


def test_next_tile_is_the_most_uncertain_uncorrected_one():
    uncertainty = np.zeros((256, 256), np.float32)
    uncertainty[140:150, 10:20] = 1.0  # tile (row 1, col 0) at 128 px
    uncertainty[5:8, 200:202] = 1.0  # tile (row 0, col 1), less of it
    first = next_tile(uncertainty, tile_size=128)
    assert first == (slice(128, 256), slice(0, 128))
    corrected = np.zeros(uncertainty.shape, bool)
    corrected[200, 100] = True  # one painted pixel makes the tile corrected
    assert next_tile(uncertainty, corrected, tile_size=128) == (slice(0, 128), slice(128, 256))
    assert next_tile(uncertainty, np.ones_like(corrected), tile_size=128) is None
    with pytest.raises(ValueError, match="shape"):
        next_tile(uncertainty, corrected[:10])


# --- the command line --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(model, tmp_path_factory):
    return str(save_model(model, tmp_path_factory.mktemp("models") / "tiny.keras"))


def test_cli_uncertainty_writes_float32_with_the_image_shape(model_path, tmp_path, capsys):
    image = smooth_image((50, 70))
    tifffile.imwrite(tmp_path / "cells.tif", image)
    out = tmp_path / "out"
    assert main(["predict", "-m", model_path, str(tmp_path / "cells.tif"), "-o", str(out), "--uncertainty",
                 "--tta", "2"]) == 0
    written = tifffile.imread(out / "cells_uncertainty.tif")
    assert written.dtype == np.float32 and written.shape == image.shape
    _, expected = predict(model_path, image, with_uncertainty=True, test_time_augmentation=2)
    np.testing.assert_allclose(written, expected, atol=1e-6)
    assert tifffile.imread(out / "cells.tif").shape == image.shape
    assert "wrote 2 file(s)" in capsys.readouterr().err


def test_cli_uncertainty_name_clash_is_one_line_and_exit_2(model_path, tmp_path, capsys):
    for name in ("cells", "cells_uncertainty"):
        tifffile.imwrite(tmp_path / f"{name}.tif", smooth_image((40, 40)))
    out = tmp_path / "out"
    code = main(["predict", "-m", model_path, str(tmp_path / "cells.tif"), str(tmp_path / "cells_uncertainty.tif"),
                 "-o", str(out), "--uncertainty"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1
    assert "cells_uncertainty.tif" in error[0] and "rename one" in error[0]
    assert not (out / "cells.tif").exists()  # refused before anything was written


def test_three_class_uncertainty_in_unit_range():
    model = contrasty_tiny_model(UNetConfig(base_width=4, n_classes=3))
    labels, uncertainty = predict(model, smooth_image((64, 64)), with_uncertainty="combined",
                                  test_time_augmentation=2)
    assert uncertainty.shape == labels.shape == (64, 64)
    assert uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0 and np.ptp(uncertainty) > 0.01

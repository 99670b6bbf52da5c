"""`napari-unet predict` and `napari-unet evaluate`, run in-process through cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_unet.cli import main
from napari_unet.model import UNetConfig, new_model, save_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(2)
    model = new_model(UNetConfig(base_width=4), tile_size=64)
    layer = model.keras_model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 30, bias])
    return str(save_model(model, tmp_path_factory.mktemp("models") / "tiny.keras"))


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name, shape in [("a", (50, 70)), ("b", (64, 33))]:
        tifffile.imwrite(folder / f"{name}.tif", (ndi.gaussian_filter(rng.random(shape), 3) * 60000).astype(np.uint16))
    return folder


def test_predict_writes_labels_with_the_input_shape(model_path, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", "-m", model_path, str(image_dir / "a.tif"), str(image_dir / "b.tif"), "-o", str(out)]) == 0
    labels = tifffile.imread(out / "a.tif")
    assert labels.shape == (50, 70) and labels.dtype == np.uint8
    assert tifffile.imread(out / "b.tif").shape == (64, 33)
    assert "tiles" in capsys.readouterr().err  # progress line


@pytest.mark.parametrize("flag,dtype", [("--probabilities", np.float32), ("--instances", np.int32)])
def test_predict_folder_with_probabilities_or_instances(model_path, image_dir, tmp_path, flag, dtype):
    out = tmp_path / "out"
    assert main(["predict", "-m", model_path, str(image_dir), "-o", str(out), flag]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a.tif", "b.tif"]
    assert tifffile.imread(out / "a.tif").dtype == dtype


def test_predict_threshold_changes_the_labels(model_path, image_dir, tmp_path):
    main(["predict", "-m", model_path, str(image_dir / "a.tif"), "-o", str(tmp_path / "p"), "--probabilities"])
    probabilities = tifffile.imread(tmp_path / "p" / "a.tif")
    threshold = float(np.quantile(probabilities, 0.3))
    main(["predict", "-m", model_path, str(image_dir / "a.tif"), "-o", str(tmp_path / "l"), "--threshold", str(threshold)])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l" / "a.tif"), probabilities > threshold)


def test_predict_refuses_to_overwrite_its_input(model_path, image_dir, capsys):
    before = tifffile.imread(image_dir / "a.tif")
    assert main(["predict", "-m", model_path, str(image_dir / "a.tif"), "-o", str(image_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overwrite" in err[0] and "a.tif" in err[0]
    np.testing.assert_array_equal(tifffile.imread(image_dir / "a.tif"), before)


def test_unreadable_input_is_one_stderr_line_naming_the_file(model_path, tmp_path, capsys):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"this is not a tiff")
    code = main(["predict", "-m", model_path, str(broken), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and "broken.tif" in err[0]


def test_missing_input_and_missing_model_are_named(model_path, image_dir, tmp_path, capsys):
    assert main(["predict", "-m", model_path, str(tmp_path / "nope.tif"), "-o", str(tmp_path / "out")]) == 2
    assert "nope.tif" in capsys.readouterr().err
    assert main(["predict", "-m", str(tmp_path / "gone.keras"), str(image_dir), "-o", str(tmp_path / "out")]) == 2
    assert "gone.keras" in capsys.readouterr().err


@pytest.fixture
def mask_dir(model_path, image_dir, tmp_path):
    """Masks equal to the model's own prediction of a.tif, and its inverse for b.tif."""
    main(["predict", "-m", model_path, str(image_dir), "-o", str(tmp_path / "masks")])
    b = tmp_path / "masks" / "b.tif"
    tifffile.imwrite(b, (1 - tifffile.imread(b)).astype(np.uint8))
    return tmp_path / "masks"


def test_evaluate_json_prints_one_object(model_path, image_dir, mask_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", "-m", model_path, "--images", str(image_dir), "--masks", str(mask_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 2
    per_image = {row["name"]: row for row in result["per_image"]}
    assert per_image["a"]["iou"] == 1.0 and per_image["a"]["pixel_error"] == 0.0
    assert per_image["b"]["pixel_error"] == 1.0
    assert result["pixel_error"] == pytest.approx(64 * 33 / (50 * 70 + 64 * 33))
    assert set(result) >= {"iou", "dice", "pixel_error", "n_images", "per_image"}


def test_evaluate_table_and_missing_mask(model_path, image_dir, mask_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", "-m", model_path, "--images", str(image_dir), "--masks", str(mask_dir)]) == 0
    table = capsys.readouterr().out
    assert "IoU" in table and "pooled" in table and "\na " in table
    (mask_dir / "b.tif").unlink()
    assert main(["evaluate", "-m", model_path, "--images", str(image_dir), "--masks", str(mask_dir)]) == 2
    assert "b.tif" in capsys.readouterr().err


def test_tta_flag_reaches_the_engine(model_path, image_dir, tmp_path):
    main(["predict", "-m", model_path, str(image_dir / "a.tif"), "-o", str(tmp_path / "plain"), "--probabilities"])
    main(["predict", "-m", model_path, str(image_dir / "a.tif"), "-o", str(tmp_path / "tta"), "--probabilities", "--tta"])
    plain = tifffile.imread(tmp_path / "plain" / "a.tif")
    augmented = tifffile.imread(tmp_path / "tta" / "a.tif")
    assert plain.shape == augmented.shape == (50, 70)
    assert np.abs(plain - augmented).max() > 0.01


def test_tta_views_count_reaches_the_engine_and_a_bad_count_is_refused(model_path, image_dir, tmp_path, capsys):
    from napari_unet import load_model, predict
    from napari_unet.storage.io import read_image

    assert main(["predict", "-m", model_path, str(image_dir / "a.tif"), "-o", str(tmp_path / "two"), "--probabilities",
                 "--tta", "2"]) == 0
    expected = predict(load_model(model_path), read_image(image_dir / "a.tif"), output="probabilities",
                       test_time_augmentation=2)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "two" / "a.tif"), expected, atol=1e-6)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-m", model_path, str(image_dir / "a.tif"), "-o", str(tmp_path / "three"), "--tta", "3"])
    assert exit_info.value.code == 2 and "--tta" in capsys.readouterr().err


def test_a_small_job_with_a_shipped_model_runs_on_its_onnx_twin(tmp_path, capsys):
    """Up to QUICK_START_IMAGES images: the twin (no TensorFlow start-up), the same objects as TensorFlow float32;
    a bigger job, or bfloat16 asked for, runs on TensorFlow."""
    pytest.importorskip("onnxruntime")
    from napari_unet._sample_data import load_nuclei
    from napari_unet.inference.prediction import predict
    from napari_unet.storage.registry import QUICK_START_IMAGES, load_model

    image = load_nuclei("nuclei_sparse")[0]
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(QUICK_START_IMAGES + 1):
        tifffile.imwrite(folder / f"n{index}.tif", image)
    assert main(["predict", "-m", "nuclei", str(folder / "n0.tif"), "-o", str(tmp_path / "one"), "--instances"]) == 0
    assert "ONNX twin" in capsys.readouterr().err
    expected = predict(load_model("nuclei"), image, output="instances", precision="float32")
    assert (tifffile.imread(tmp_path / "one" / "n0.tif") == expected).mean() > 0.999
    assert main(["predict", "-m", "nuclei", str(folder), "-o", str(tmp_path / "all"), "--instances"]) == 0
    assert "ONNX twin" not in capsys.readouterr().err
    assert main(["predict", "-m", "nuclei", str(folder / "n0.tif"), "-o", str(tmp_path / "bf"), "--precision",
                 "bfloat16"]) == 0
    assert "ONNX twin" not in capsys.readouterr().err


def test_min_size_decides_which_small_objects_the_instances_keep(tmp_path, capsys):
    """--min-size overrides the model's own minimum object size (e.g. 32 px for nuclei) in predict and evaluate;
    without --instances, or with a size that is no pixel count, it is refused in one line before anything runs."""
    from napari_unet._sample_data import load_nuclei
    from napari_unet.inference.prediction import predict
    from napari_unet.storage.registry import load_model

    image, mask = load_nuclei("nuclei_sparse")
    folder, masks = tmp_path / "images", tmp_path / "masks"
    folder.mkdir(), masks.mkdir()
    tifffile.imwrite(folder / "n.tif", image)
    tifffile.imwrite(masks / "n.tif", mask)
    model = load_model("nuclei")
    default = predict(model, image, output="instances")
    median = int(np.median(np.bincount(default.ravel())[1:]))  # about half the objects are bigger
    assert main(["predict", "-m", "nuclei", str(folder), "-o", str(tmp_path / "big"), "--instances",
                 "--min-size", str(median)]) == 0
    big = tifffile.imread(tmp_path / "big" / "n.tif")
    assert 0 < big.max() < default.max() and np.bincount(big.ravel())[1:].min() >= median
    capsys.readouterr()
    assert main(["evaluate", "-m", "nuclei", "--images", str(folder), "--masks", str(masks), "--instances",
                 "--min-size", str(median), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_predicted"] == big.max()
    assert main(["predict", "-m", "nuclei", str(folder), "-o", str(tmp_path / "sem"), "--min-size", "8"]) == 2
    assert "add --instances" in capsys.readouterr().err and not (tmp_path / "sem").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-m", "nuclei", str(folder), "-o", str(tmp_path / "zero"), "--instances", "--min-size", "0"])
    assert exit_info.value.code == 2 and "whole number >= 1" in capsys.readouterr().err


def _zarr_volume(path, rng_seed: int = 3):
    """A (12, 40, 48) uint16 zarr volume of blurred blobs, one plane per chunk; and the array itself."""
    import zarr

    volume = (ndi.gaussian_filter(np.random.default_rng(rng_seed).random((12, 40, 48)), 2) * 60000).astype(np.uint16)
    array = zarr.open_array(str(path), mode="w", shape=volume.shape, chunks=(1, 40, 48), dtype=volume.dtype)
    array[:] = volume
    return volume


@pytest.mark.parametrize("stack", ["z", "t"])
def test_a_zarr_stack_is_predicted_into_a_zarr_of_objects_equal_to_the_stack_in_memory(model_path, tmp_path, stack):
    import zarr

    from napari_unet.inference.prediction import predict

    volume = _zarr_volume(tmp_path / "volume.zarr")
    threshold = float(np.quantile(predict(model_path, volume, output="probabilities"), 0.6))  # objects, whatever
    out = tmp_path / "out"  # the untrained model's probabilities
    assert main(["predict", "-m", model_path, str(tmp_path / "volume.zarr"), "-o", str(out), "--instances",
                 "--stack", stack, "--threshold", str(threshold)]) == 0
    objects = zarr.open_array(str(out / "volume.zarr"), mode="r")
    assert objects.dtype == np.int32 and objects.chunks[0] == 1 and objects.shape == volume.shape
    expected = predict(model_path, volume, output="instances", stack=stack, threshold=threshold)
    assert expected.max() > 1  # objects to join or link
    np.testing.assert_array_equal(objects[:], expected)


@pytest.mark.parametrize("extra,words", [
    ([], "--instances --stack z"),  # labels of a zarr are the dock's (region by region)
    (["--instances", "--stack", "z", "--anisotropy", "1"], "need the whole volume in memory"),
    (["--instances", "--stack", "z", "--uncertainty"], "drop --uncertainty"),
])
def test_a_zarr_input_the_plane_by_plane_path_cannot_serve_is_one_line(model_path, tmp_path, capsys, extra, words):
    _zarr_volume(tmp_path / "volume.zarr")
    out = tmp_path / "out"
    assert main(["predict", "-m", model_path, str(tmp_path / "volume.zarr"), "-o", str(out), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and words in error
    assert not (out / "volume.zarr").exists()


def test_a_zarr_output_is_never_written_over(model_path, tmp_path, capsys):
    _zarr_volume(tmp_path / "volume.zarr")
    (tmp_path / "out" / "volume.zarr").mkdir(parents=True)
    assert main(["predict", "-m", model_path, str(tmp_path / "volume.zarr"), "-o", str(tmp_path / "out"),
                 "--instances", "--stack", "z"]) == 2
    assert "never written over" in capsys.readouterr().err

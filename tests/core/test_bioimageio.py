"""bioimage.io packages: `napari-unet export --bioimageio` passes the spec's own test_model, and a package runs in
`napari-unet predict` exactly like the .keras it came from; bad packages and missing authorship are refused."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
import yaml
from scipy import ndimage as ndi
from tiny_models import contrasty_tiny_model

from napari_unet.cli import main
from napari_unet.errors import NapariUNetError
from napari_unet.inference.normalize import NormalizationConfig
from napari_unet.model import save_model
from napari_unet.storage.bioimageio import ONNX_OPSET, UNET_DOI, PackageAuthorship, export_bioimageio, load_package


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(tiny .keras path, its bioimage.io package) written through the CLI; the model normalises 2–98 %."""
    folder = tmp_path_factory.mktemp("bioimageio")
    model = contrasty_tiny_model(seed=3)
    model.metadata.normalization = NormalizationConfig(low=2.0, high=98.0)
    model.metadata.info["description"] = "tiny test model"
    keras_path = save_model(model, folder / "tiny.keras")
    package = folder / "tiny.zip"
    code = main(["export", "-m", str(keras_path), "--bioimageio", str(package), "--author", "Ada Lovelace",
                 "--author", "Alan Turing", "--license", "MIT"])
    assert code == 0
    return keras_path, package


@pytest.fixture
def image_path(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, (ndi.gaussian_filter(rng.random((70, 90)), 3) * 60000).astype(np.uint16))
    return path


def test_exported_package_passes_the_spec_libraries_test_model(exported, tmp_path, monkeypatch):
    from bioimageio.core import test_model

    monkeypatch.chdir(tmp_path)  # bioimageio.core unpacks the SavedModel into the working directory
    summary = test_model(exported[1])
    failed = [detail.name for detail in summary.details if detail.status == "failed"]
    assert summary.status == "passed", failed
    # What bioimage.io asks of a FAIR package is there: a '# Validation' section and sample tensors it can show.
    # (A maintainer's GitHub user is left to the uploader: the spec checks it online, and the tests run offline.)
    warned = [(".".join(map(str, warning.loc)), warning.msg) for detail in summary.details for warning in detail.warnings]
    assert not [(where, message) for where, message in warned if "documentation" in where or "sample_tensor" in where]


def test_package_describes_weights_citation_authorship_and_normalisation(exported):
    with zipfile.ZipFile(exported[1]) as archive:
        description = yaml.safe_load(archive.read("rdf.yaml"))
        names = archive.namelist()
    weights = description["weights"]
    assert set(weights) == {"keras_v3", "onnx", "tensorflow_saved_model_bundle"}
    assert weights["onnx"]["opset_version"] == ONNX_OPSET and weights["onnx"]["parent"] == "keras_v3"
    assert all(weights[key]["source"] in names for key in weights)
    assert [author["name"] for author in description["authors"]] == ["Ada Lovelace", "Alan Turing"]
    assert description["license"] == "MIT"
    assert UNET_DOI in [entry.get("doi") for entry in description["cite"]]
    (preprocessing,) = _scale_range_steps(description)
    assert (preprocessing["kwargs"]["min_percentile"], preprocessing["kwargs"]["max_percentile"]) == (2.0, 98.0)
    assert "tiny test model" in description["description"]


def test_onnx_weights_compute_what_keras_computes(exported):
    import onnxruntime

    with zipfile.ZipFile(exported[1]) as archive:
        description = yaml.safe_load(archive.read("rdf.yaml"))
        session = onnxruntime.InferenceSession(archive.read(description["weights"]["onnx"]["source"]))
    model = load_package(exported[1])
    batch = np.random.default_rng(0).random((1, 32, 48, 1), dtype=np.float32)
    (onnx_output,) = session.run(None, {session.get_inputs()[0].name: batch})
    np.testing.assert_allclose(onnx_output, np.asarray(model.keras_model(batch)), atol=1e-5)


def test_package_round_trips_into_predict_with_the_keras_models_output(exported, image_path, tmp_path):
    keras_path, package = exported
    for source, folder in ((keras_path, "from_keras"), (package, "from_package")):
        assert main(["predict", "-m", str(source), str(image_path), "-o", str(tmp_path / folder), "--probabilities"]) == 0
    from_keras = tifffile.imread(tmp_path / "from_keras" / "cells.tif")
    from_package = tifffile.imread(tmp_path / "from_package" / "cells.tif")
    assert from_keras.std() > 0.01  # not a constant map, so the comparison means something
    np.testing.assert_allclose(from_package, from_keras, atol=1e-6)
    assert load_package(package).metadata.normalization == NormalizationConfig(low=2.0, high=98.0)


def test_package_normalisation_comes_from_its_description(exported, tmp_path):
    """Edit the percentiles in rdf.yaml only: the loaded model follows the description, not the .keras inside."""
    edited = _rewrite_description(exported[1], tmp_path / "edited.zip", lambda description: _scale_range_steps(
        description)[0]["kwargs"].update(min_percentile=5.0, max_percentile=95.0))
    assert load_package(edited).metadata.normalization == NormalizationConfig(low=5.0, high=95.0)


def test_package_without_keras_weights_is_refused_in_one_line(exported, image_path, tmp_path, capsys):
    def drop_keras(description):
        weights = description["weights"]
        del weights["keras_v3"]
        del weights["onnx"]["parent"]
        weights["tensorflow_saved_model_bundle"]["parent"] = "onnx"

    package = _rewrite_description(exported[1], tmp_path / "onnx_only.zip", drop_keras)
    capsys.readouterr()
    code = main(["predict", "-m", str(package), str(image_path), "-o", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and "no Keras weights" in error and "onnx" in error, error


def test_metadata_of_a_package_is_read_without_loading_it(exported):
    from napari_unet.model import read_metadata
    from napari_unet.storage.registry import read_model_metadata

    assert read_model_metadata(exported[1]) == read_metadata(exported[0])
    assert read_model_metadata(exported[1]).info["description"] == "tiny test model"


def test_zip_that_is_no_package_is_refused(tmp_path):
    not_a_package = tmp_path / "photos.zip"
    with zipfile.ZipFile(not_a_package, "w") as archive:
        archive.writestr("a.txt", "hello")
    with pytest.raises(NapariUNetError, match="not a bioimage.io model package"):
        load_package(not_a_package)


@pytest.mark.parametrize("flags,message", [
    (["--license", "MIT"], "needs its authors"),
    (["--author", "Ada Lovelace"], "needs a licence"),
    (["--author", "Ada Lovelace", "--license", "my own licence"], "not an SPDX licence identifier"),
])
def test_export_without_authorship_is_refused_in_one_line(exported, tmp_path, capsys, flags, message):
    target = tmp_path / "refused.zip"
    code = main(["export", "-m", str(exported[0]), "--bioimageio", str(target), *flags])
    error = capsys.readouterr().err.strip()
    assert code == 2 and not target.exists()
    assert len(error.splitlines()) == 1 and message in error, error


def test_export_keeps_an_existing_file(exported, tmp_path):
    target = tmp_path / "mine.zip"
    target.write_bytes(b"the user's file")
    model = load_package(exported[1])
    with pytest.raises(NapariUNetError, match="already exists"):
        export_bioimageio(model, target, PackageAuthorship(["Ada Lovelace"], "MIT"))
    assert target.read_bytes() == b"the user's file"


def _scale_range_steps(description: dict) -> list[dict]:
    return [step for step in description["inputs"][0]["preprocessing"] if step["id"] == "scale_range"]


def _rewrite_description(package, target, edit):
    """A copy of `package` whose rdf.yaml went through `edit(description_dict)`."""
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(target, "w") as copy:
        for name in source.namelist():
            data = source.read(name)
            if name == "rdf.yaml":
                description = yaml.safe_load(data)
                edit(description)
                data = yaml.safe_dump(description).encode()
            copy.writestr(name, data)
    return target


def test_keras_package_not_made_by_napari_unet_takes_channels_classes_and_step_from_its_description(exported, tmp_path):
    """A keras_v3 package whose .keras has no napari-unet metadata (as from another program)."""
    import keras

    from napari_unet.model import UNetConfig, build_unet

    plain = tmp_path / "plain.keras"
    build_unet(UNetConfig(n_channels=1, base_width=4, depth=3)).save(plain)
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(exported[1]) as source, zipfile.ZipFile(foreign, "w") as copy:
        description = yaml.safe_load(source.read("rdf.yaml"))
        for name in source.namelist():
            data = plain.read_bytes() if name == description["weights"]["keras_v3"]["source"] else source.read(name)
            copy.writestr(name, data)
    model = load_package(foreign)
    assert isinstance(model.keras_model, keras.Model)
    assert model.config.depth == 3 and model.config.n_channels == 1  # ParameterizedSize step 8 = 2**3
    assert model.metadata.class_names == description["outputs"][0]["axes"][-1]["channel_names"]
    assert model.metadata.normalization == NormalizationConfig(low=2.0, high=98.0)


def test_test_input_is_a_centre_crop_in_multiples_of_the_models_size_step():
    from napari_unet.storage.bioimageio import _test_tensors

    model = contrasty_tiny_model(seed=5)  # depth 3: sides in multiples of 8
    image = np.arange(100 * 300, dtype=np.float32).reshape(100, 300)
    test_input, test_output = _test_tensors(model, image)
    assert test_input.shape == test_output.shape == (1, 96, 256, 1)
    np.testing.assert_array_equal(test_input[0, ..., 0], image[2:98, 22:278])
    with pytest.raises(NapariUNetError, match="1 channel"):
        _test_tensors(model, np.zeros((64, 64, 3)))
    with pytest.raises(NapariUNetError, match="at least 8"):
        _test_tensors(model, np.zeros((5, 64)))


def test_a_colour_model_that_reads_its_input_inverted_round_trips_through_a_package(tmp_path):
    """Channel names and the inversion (scale_range, then scale_linear 1 - x) travel in the description."""
    from dataclasses import replace

    from napari_unet.inference.channels import widen_input

    model = widen_input(contrasty_tiny_model(seed=4), 3)
    model.metadata = replace(model.metadata, normalization=NormalizationConfig(invert=True))
    keras_path = save_model(model, tmp_path / "colour.keras")
    package = tmp_path / "colour.zip"
    assert main(["export", "-m", str(keras_path), "--bioimageio", str(package), "--author", "Ada Lovelace",
                 "--license", "MIT"]) == 0
    loaded = load_package(package)
    assert loaded.metadata.normalization == NormalizationConfig(invert=True)
    assert loaded.config.n_channels == 3
    image_path = tmp_path / "colour.tif"
    rng = np.random.default_rng(2)
    tifffile.imwrite(image_path, (ndi.gaussian_filter(rng.random((64, 80, 3)), (3, 3, 0)) * 255).astype(np.uint8))
    for source, folder in ((keras_path, "from_keras"), (package, "from_package")):
        assert main(["predict", "-m", str(source), str(image_path), "-o", str(tmp_path / folder), "--probabilities"]) == 0
    from_keras = tifffile.imread(tmp_path / "from_keras" / "colour.tif")
    assert from_keras.std() > 0.01
    np.testing.assert_allclose(tifffile.imread(tmp_path / "from_package" / "colour.tif"), from_keras, atol=1e-5)


def test_a_model_of_several_classes_names_them_in_the_package(tmp_path):
    from napari_unet.model import with_classes

    model = with_classes(contrasty_tiny_model(seed=3), ["nucleus", "cytoplasm"], ["nucleus"])
    package = tmp_path / "two.zip"
    export_bioimageio(model, package, PackageAuthorship(authors=["Ada Lovelace"], license="MIT",
                                                        description="two-class test model"))
    with zipfile.ZipFile(package) as archive:
        description = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
    sentence = "Classes: 1 nucleus, 2 cytoplasm (label values; output channel 0 is background); objects separated for nucleus."
    assert description["description"].startswith("two-class test model") and sentence in description["description"]
    assert sentence in readme
    assert description["outputs"][0]["axes"][-1]["channel_names"] == ["background", "nucleus", "cytoplasm"]
    loaded = load_package(package)
    assert loaded.metadata.classes == ["nucleus", "cytoplasm"] and loaded.metadata.object_classes == ["nucleus"]

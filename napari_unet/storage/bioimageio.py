"""bioimage.io model packages (spec 0.5): export a U-Net for other programs, and read a Keras U-Net package back.

A package carries the `.keras` file (keras_v3, with napari-unet's metadata inside), the same network as ONNX
(opset 17: DeepImageJ and other ONNX consumers) and as a zipped TensorFlow SavedModel, a test input and its
expected output, the model card as documentation, the U-Net citation, the authors and the licence the user gives,
and the percentile normalisation the model needs as the input's pre-processing.

The bioimage.io libraries, tf2onnx and onnxruntime come with the `bioimageio` extra and are imported inside the
functions here: the rest of napari-unet imports without them, and a missing extra is named in the error.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from napari_unet.errors import ModelLoadError, NapariUNetError
from napari_unet.inference.normalize import NormalizationConfig
from napari_unet.inference.onnx_engine import ONNX_OPSET
from napari_unet.model import ModelMetadata, SegmentationModel, UNetConfig

UNET_CITATION = ("Ronneberger O., Fischer P., Brox T. (2015). U-Net: Convolutional Networks for Biomedical Image "
                 "Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241.")
UNET_DOI = "10.1007/978-3-319-24574-4_28"
INPUT_ID, OUTPUT_ID = "image", "probabilities"
INSTALL_HINT = "pip install \"napari-unet-loop[bioimageio]\""
# Largest side of the default test image (a centre crop of a shipped sample, a multiple of 2**depth).
TEST_IMAGE_SIDE = 256


@dataclass(frozen=True)
class PackageAuthorship:
    """What only the user can say about a package: who made the model and under which licence it may be used."""

    authors: list[str] = field(default_factory=list)
    license: str = ""  # an SPDX identifier, e.g. "CC-BY-4.0", "MIT"
    description: str = ""  # default: the model's own description

    def check(self) -> None:
        if not [name for name in self.authors if name.strip()]:
            raise NapariUNetError("a bioimage.io package needs its authors: give at least one (--author 'First Last')")
        if not self.license.strip():
            raise NapariUNetError("a bioimage.io package needs a licence: give its SPDX identifier "
                                  "(--license CC-BY-4.0, MIT, BSD-3-Clause ...)")


def _import_bioimageio():
    """bioimageio.spec, after making sure Keras stays on TensorFlow (bioimageio.core would switch it to torch)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import bioimageio.spec as spec
    except ImportError as exc:
        raise NapariUNetError(f"bioimage.io packages need the bioimageio extra: {INSTALL_HINT}") from exc
    return spec


def is_package(path: str | os.PathLike) -> bool:
    """Is `path` a .zip holding a bioimage.io description (rdf.yaml or *.bioimageio.yaml)?"""
    path = Path(path)
    if path.suffix.lower() != ".zip" or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name == "rdf.yaml" or name.endswith("bioimageio.yaml") for name in archive.namelist())


# --- export ---------------------------------------------------------------------------------------------------


def export_bioimageio(model: SegmentationModel, path: str | os.PathLike, authorship: PackageAuthorship, *,
                   test_image: np.ndarray | None = None, overwrite: bool = False,
                   progress: Callable[[str], None] | None = None, is_cancelled: Callable[[], bool] | None = None) -> Path:
    """Write `model` as a bioimage.io package (spec 0.5) to `path` (.zip); returns the path.

    `test_image` (Y, X) or (Y, X, C) becomes the package's test input (default: a crop of a shipped sample, or
    smooth noise for multi-channel models). The file appears only when complete; an existing file is kept
    unless `overwrite`. `progress(stage)` names each stage; `is_cancelled()` is polled between stages.
    """
    from napari_unet.errors import Cancelled

    authorship.check()
    target = Path(path)
    if target.suffix.lower() != ".zip":
        raise NapariUNetError(f"a bioimage.io package is a .zip file, not '{target.name}': e.g. '{target.stem}.zip'")
    if target.exists() and not overwrite:
        raise NapariUNetError(f"'{target}' already exists: choose another file or allow overwriting (--force)")
    if not target.parent.is_dir():
        raise NapariUNetError(f"the folder '{target.parent}' does not exist: create it or choose another place")
    spec = _import_bioimageio()
    license_id = _license_id(authorship.license)  # before the slow conversions
    report = progress or (lambda stage: None)

    def stage(text: str) -> None:
        if is_cancelled is not None and is_cancelled():
            raise Cancelled()
        report(text)

    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as scratch:
        work = Path(scratch)
        stage("saving the Keras weights")
        keras_path = _write_keras(model, work)
        stage("converting to ONNX")
        onnx_path = _write_onnx(model, work)
        stage("exporting a TensorFlow SavedModel")
        saved_model_path = _write_saved_model(model, work)
        stage("computing the test output")
        test_input, test_output = _test_tensors(model, test_image)
        np.save(work / "test_input.npy", test_input)
        np.save(work / "test_output.npy", test_output)
        _write_sample_tensors(test_input, test_output, work)
        _write_cover(test_input, test_output, work / "cover.png")
        (work / "README.md").write_text(model_card_markdown(model), encoding="utf-8")
        stage("writing the package")
        description = _describe(model, authorship, license_id, work, keras_path, onnx_path, saved_model_path)
        partial = target.with_name(f".{target.name}.partial")
        try:
            spec.save_bioimageio_package(description, output_path=partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _write_keras(model: SegmentationModel, work: Path) -> Path:
    from napari_unet.model import save_model

    # The package describes one network: a version's own network for a volume's side views stays in napari-unet.
    return save_model(SegmentationModel(model.keras_model, model.metadata, model.source), work / "weights.keras")


def _write_onnx(model: SegmentationModel, work: Path) -> Path:
    from napari_unet.inference.onnx_engine import export_onnx

    return export_onnx(model, work / "weights.onnx", input_name=INPUT_ID)


def _write_saved_model(model: SegmentationModel, work: Path) -> Path:
    """A SavedModel whose 'serve' signature returns {OUTPUT_ID: probabilities} for (None, None, None, C) inputs
    (bioimageio.core expects a dict output; Keras' plain model.export() gives a bare tensor), zipped."""
    import keras

    folder = work / "saved_model"
    keras_model = model.keras_model
    archive = keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint(
        name="serve", fn=lambda image: {OUTPUT_ID: keras_model(image, training=False)},
        input_signature=[keras.InputSpec(shape=(None, None, None, model.config.n_channels), dtype="float32")],
    )
    archive.write_out(str(folder), verbose=False)
    return Path(shutil.make_archive(str(work / "weights_saved_model"), "zip", root_dir=folder))


def default_test_image(model: SegmentationModel) -> np.ndarray:
    """The shipped EM sample for one-channel models (nuclei sample for a model whose name says nuclei), smooth noise
    for more channels: what the package's test input is made from when the user gives none."""
    from napari_unet.storage.io import read_image

    n_channels = model.config.n_channels
    if n_channels == 1:
        from napari_unet._sample_data import sample_data_dir

        sample = "nuclei.tif" if "nuclei" in f"{model.name} {model.source}".lower() else "em_membranes.tif"
        image = read_image(sample_data_dir() / sample)
        return image if image.ndim == 2 else image[..., 0]
    from scipy import ndimage as ndi

    noise = np.random.default_rng(0).random((TEST_IMAGE_SIDE, TEST_IMAGE_SIDE, n_channels))
    return (ndi.gaussian_filter(noise, (4, 4, 0)) * 255).astype(np.float32)


def _test_tensors(model: SegmentationModel, image: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) as (1, Y, X, C) float32: a centre crop of `image` whose sides are multiples of 2**depth, and
    what the network gives for it after the package's pre-processing (percentiles over the crop, as bioimage.io
    computes them)."""
    from napari_unet.inference.normalize import normalize

    image = default_test_image(model) if image is None else np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    n_channels = model.config.n_channels
    if image.ndim != 3 or image.shape[-1] != n_channels:
        raise NapariUNetError(f"the test image has shape {image.shape} but the model takes {n_channels} channel(s): "
                              f"give a (Y, X{', C' if n_channels > 1 else ''}) image with {n_channels} channel(s)")
    multiple = model.config.size_multiple
    sides = [min(TEST_IMAGE_SIDE, side) // multiple * multiple for side in image.shape[:2]]
    if min(sides) < multiple:
        raise NapariUNetError(f"the test image is {image.shape[0]}×{image.shape[1]}: it must be at least "
                              f"{multiple}×{multiple} px for this model")
    top, left = ((side - crop) // 2 for side, crop in zip(image.shape[:2], sides))
    crop = image[top:top + sides[0], left:left + sides[1]].astype(np.float32)
    normalized = normalize(crop, model.metadata.normalization)
    output = np.asarray(model.keras_model(normalized[None], training=False), dtype=np.float32)
    return crop[None], output


def _write_sample_tensors(test_input: np.ndarray, test_output: np.ndarray, work: Path) -> None:
    """The test tensors as TIFF (Y, X[, C]): the images bioimage.io shows people (it reads no .npy there)."""
    import tifffile

    tifffile.imwrite(work / "sample_input.tif", np.squeeze(test_input[0], axis=-1) if test_input.shape[-1] == 1
                     else test_input[0])
    tifffile.imwrite(work / "sample_output.tif", np.squeeze(test_output[0], axis=-1) if test_output.shape[-1] == 1
                     else test_output[0])


def _write_cover(test_input: np.ndarray, test_output: np.ndarray, path: Path) -> None:
    """Test input beside the first output channel, 2:1 as bioimage.io shows covers."""
    import imageio.v3 as iio

    image = test_input[0, ..., 0]
    low, high = np.percentile(image, (1, 99.8))
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    probabilities = np.clip(test_output[0, ..., -1], 0, 1)
    iio.imwrite(path, (np.concatenate([image, probabilities], axis=1) * 255).astype(np.uint8))


def classes_sentence(metadata: ModelMetadata) -> str:
    """For a model of several classes: what each output channel after background is, and which are objects."""
    if metadata.instance_method != "classes":
        return ""
    objects = [name for name in metadata.classes if name in metadata.object_classes]
    boundaries = metadata.boundary_outputs
    return (f"Classes: {', '.join(f'{value} {name}' for value, name in enumerate(metadata.classes, start=1))} "
            f"(label values; output channel 0 is background)"
            + (f"; objects separated for {', '.join(objects)}" if objects else "")
            + (f", from their cores (the class's channel) and their boundaries (channels {boundaries[0]}–"
               f"{boundaries[-1]}, added to the class for its probability)" if boundaries else "") + ".")


def model_card_markdown(model: SegmentationModel) -> str:
    """The package's documentation: what the model segments, its input and output, how it was made and scored."""
    from napari_unet._version import __version__

    metadata = model.metadata
    info = dict(metadata.info)
    normalization = metadata.normalization
    lines = [
        f"# {metadata.name}",
        "",
        str(info.pop("description", "") or "A U-Net segmentation model made with napari-unet."),
        "",
        *([classes_sentence(metadata), ""] if classes_sentence(metadata) else []),
        "## Use",
        f"- Input `{INPUT_ID}`: batch × y × x × {metadata.config.n_channels} channel(s) "
        f"({', '.join(metadata.input_channel_names)}); height and width multiples of "
        f"{metadata.config.size_multiple}. Pre-processing: percentile normalisation per channel "
        f"({normalization.low:g}th → 0, {normalization.high:g}th → 1)"
        + (", then inverted (1 - x: dark objects on a bright background)." if normalization.invert else "."),
        f"- Output `{OUTPUT_ID}`: per-pixel probabilities of {', '.join(metadata.class_names)} "
        f"({'sigmoid' if metadata.config.n_classes == 1 else 'softmax'}).",
        "- napari-unet (the napari plugin and `napari-unet predict -m this.zip`) also applies what a package cannot "
        f"describe: tiled prediction (tile {metadata.tile_size} px), optional test-time augmentation "
        f"({metadata.symmetries}), an output offset of {tuple(metadata.output_offset)} px and instance "
        f"post-processing ({metadata.instance_method}).",
        "",
        "## Architecture",
        f"The classic U-Net (Ronneberger et al. 2015): `{json.dumps(metadata.to_dict()['config'])}`.",
        "",
        "## Weights",
        f"Keras 3 (`.keras`, with napari-unet's metadata), ONNX (opset {ONNX_OPSET}) and a TensorFlow SavedModel, "
        f"all exported by napari-unet {__version__} from the same network.",
    ]
    if model.side_views is not None:
        lines += ["", "In napari-unet this version predicts the XZ and YZ planes of a volume seen from three views with "
                  "another network (its `side_views` record below), which the package does not hold: volumes predicted "
                  "from this package alone use this network for all three views."]
    lines += ["", "## Validation",
              "The package's test input and output were computed with the Keras weights; the ONNX and SavedModel "
              "weights reproduce them (`bioimageio test <package>.zip`). Accuracy on held-out data, where napari-unet "
              "measured it, is in the record below."]
    if info:
        lines += ["", "## Training and evaluation (as recorded by napari-unet)", "", "```json",
                  json.dumps(info, indent=2, default=str), "```"]
    lines += ["", "## Citation", f"{UNET_CITATION} doi:{UNET_DOI}", ""]
    return "\n".join(lines)


def _identifier(text: str) -> str:
    """`text` as a bioimage.io channel name / tag (letters, digits, _)."""
    cleaned = "".join(char if char.isalnum() else "_" for char in text.strip()).strip("_")
    return cleaned or "channel"


def _license_id(text: str):
    """`text` as the spec's LicenseId, else an error naming the licence and what to give instead."""
    import pydantic
    from bioimageio.spec.model import v0_5 as bio

    try:
        return bio.LicenseId(text.strip())
    except (pydantic.ValidationError, ValueError) as exc:
        raise NapariUNetError(f"'{text}' is not an SPDX licence identifier: use one such as CC-BY-4.0, MIT or "
                              "BSD-3-Clause (https://spdx.org/licenses/)") from exc


def _describe(model: SegmentationModel, authorship: PackageAuthorship, license_id, work: Path, keras_path: Path,
              onnx_path: Path, saved_model_path: Path):
    """The ModelDescr (spec 0.5); a description the spec refuses becomes one clear error."""
    import keras
    import pydantic
    import tensorflow as tf
    from bioimageio.spec.model import v0_5 as bio

    metadata = model.metadata
    multiple = metadata.config.size_multiple
    space = [bio.SpaceInputAxis(id=bio.AxisId(axis), size=bio.ParameterizedSize(min=multiple, step=multiple))
             for axis in ("y", "x")]
    space_out = [bio.SpaceOutputAxis(id=bio.AxisId(axis), size=bio.SizeReference(
        tensor_id=bio.TensorId(INPUT_ID), axis_id=bio.AxisId(axis))) for axis in ("y", "x")]
    normalization = metadata.normalization
    try:
        return bio.ModelDescr(
            name=_package_name(metadata.name),
            description=" ".join(part for part in (
                authorship.description or str(metadata.info.get("description", ""))
                or f"U-Net segmentation of {', '.join(metadata.class_names)} (napari-unet)",
                classes_sentence(metadata)) if part)[:1024],
            authors=[bio.Author(name=name.strip()) for name in authorship.authors if name.strip()],
            license=license_id,
            cite=[bio.CiteEntry(text=UNET_CITATION, doi=bio.Doi(UNET_DOI))],
            documentation=bio.FileDescr(source=work / "README.md"),
            covers=[bio.FileDescr(source=work / "cover.png")],
            tags=["unet", "segmentation", "2d", "napari-unet", "keras", "tensorflow", "onnx",
                  *[_identifier(name).lower() for name in metadata.class_names]],
            inputs=[bio.InputTensorDescr(
                id=bio.TensorId(INPUT_ID),
                axes=[bio.BatchAxis(), *space, bio.ChannelAxis(
                    channel_names=[bio.Identifier(_identifier(name)) for name in metadata.input_channel_names])],
                test_tensor=bio.FileDescr(source=work / "test_input.npy"),
                sample_tensor=bio.FileDescr(source=work / "sample_input.tif"),
                preprocessing=[bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
                    axes=[bio.AxisId("y"), bio.AxisId("x")],
                    min_percentile=normalization.low, max_percentile=normalization.high)),
                    # dark objects on a bright background: the model reads the image inverted (1 - x)
                    *([bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=-1.0, offset=1.0))]
                      if normalization.invert else [])],
            )],
            outputs=[bio.OutputTensorDescr(
                id=bio.TensorId(OUTPUT_ID),
                axes=[bio.BatchAxis(), *space_out, bio.ChannelAxis(
                    channel_names=[bio.Identifier(_identifier(name)) for name in metadata.class_names])],
                test_tensor=bio.FileDescr(source=work / "test_output.npy"),
                sample_tensor=bio.FileDescr(source=work / "sample_output.tif"),
            )],
            weights=bio.WeightsDescr(
                keras_v3=bio.KerasV3WeightsDescr(source=keras_path, keras_version=bio.Version(keras.__version__),
                                                 backend=("tensorflow", bio.Version(tf.__version__))),
                onnx=bio.OnnxWeightsDescr(source=onnx_path, opset_version=ONNX_OPSET, parent="keras_v3"),
                tensorflow_saved_model_bundle=bio.TensorflowSavedModelBundleWeightsDescr(
                    source=saved_model_path, tensorflow_version=bio.Version(tf.__version__), parent="keras_v3"),
            ),
        )
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise NapariUNetError(f"the bioimage.io description was refused at '{where}': {first.get('msg')}") from exc


def _package_name(name: str) -> str:
    """A bioimage.io model name (letters, digits, space, - _ ( ), at least 5 characters)."""
    cleaned = "".join(char if char.isalnum() or char in " -_()" else "-" for char in name).strip() or "unet"
    return cleaned if len(cleaned) >= 5 else f"U-Net {cleaned}"


# --- import ---------------------------------------------------------------------------------------------------


def load_package(path: str | os.PathLike) -> SegmentationModel:
    """The Keras U-Net in a bioimage.io package (.zip), normalised as its description says.

    Only Keras (keras_v3) weights run in napari-unet; inputs must be batch × y × x × channel with one percentile
    (scale_range) pre-processing step. Anything else is refused with a message naming what the package holds.
    """
    from napari_unet.model import load_model_file, read_metadata

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model package '{path}' does not exist: check the path")
    if not is_package(path):
        raise ModelLoadError(f"'{path}' is not a bioimage.io model package (no rdf.yaml inside): give a .keras file "
                             "or a package from bioimage.io / 'napari-unet export --bioimageio'")
    spec = _import_bioimageio()
    description = spec.load_model_description(path, format_version="latest", perform_io_checks=False)
    if not isinstance(description, spec.ModelDescr):
        raise ModelLoadError(f"'{path}' does not hold a valid bioimage.io model description: "
                             f"{_first_validation_error(description)}")
    weights = description.weights.keras_v3
    if weights is None:
        present = [name for name, entry in description.weights if entry is not None]
        raise ModelLoadError(f"'{path}' holds no Keras weights (it has: {', '.join(present) or 'none'}): napari-unet "
                             "runs Keras/TensorFlow U-Nets only; use a package with keras_v3 weights")
    normalization = _normalization_of(description, path)
    with tempfile.TemporaryDirectory(prefix="napari-unet-package-") as scratch:
        keras_file = Path(scratch) / "weights.keras"
        with zipfile.ZipFile(path) as archive:
            member = str(weights.source.path) if hasattr(weights.source, "path") else str(weights.source)
            if member not in archive.namelist():
                raise ModelLoadError(f"'{path}' names Keras weights '{member}' but does not contain them: re-export it")
            keras_file.write_bytes(archive.read(member))
        metadata = read_metadata(keras_file)
        model = load_model_file(keras_file)
    if metadata is None:
        model.metadata = _metadata_from_description(description, model)
    model.metadata = replace(model.metadata, normalization=normalization)
    model.source = str(path)
    return model


def read_package_metadata(path: str | os.PathLike) -> ModelMetadata | None:
    """napari-unet's metadata from the .keras inside a package, read without the bioimage.io libraries or the network
    (for the dock's per-model defaults); None for a package napari-unet did not make. Prediction uses load_package,
    whose normalisation comes from the description."""
    import yaml

    from napari_unet.model import METADATA_ENTRY

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        description_name = "rdf.yaml" if "rdf.yaml" in names else next(
            (name for name in names if name.endswith("bioimageio.yaml")), None)
        if description_name is None:
            return None
        weights = (yaml.safe_load(archive.read(description_name)) or {}).get("weights") or {}
        source = (weights.get("keras_v3") or {}).get("source")
        if source not in names:
            return None
        with archive.open(source) as keras_file, zipfile.ZipFile(keras_file) as keras_archive:
            if METADATA_ENTRY not in keras_archive.namelist():
                return None
            return ModelMetadata.from_dict(json.loads(keras_archive.read(METADATA_ENTRY)))


def _first_validation_error(description) -> str:
    summary = getattr(description, "validation_summary", None)
    errors = [detail.errors for detail in getattr(summary, "details", []) if getattr(detail, "errors", None)]
    if errors:
        first = errors[0][0]
        return f"{'.'.join(str(part) for part in first.loc)}: {first.msg}"
    return "it is not a model description"


def _normalization_of(description, path: Path) -> NormalizationConfig:
    """The percentiles of the input's scale_range step; other pre-processing cannot be reproduced here."""
    (tensor, *others) = description.inputs
    if others:
        raise ModelLoadError(f"'{path}' has {len(description.inputs)} inputs: napari-unet runs single-input U-Nets")
    axes = [str(axis.type) for axis in tensor.axes]
    if axes != ["batch", "space", "space", "channel"]:
        raise ModelLoadError(f"'{path}' takes its input as {' × '.join(str(axis.id) for axis in tensor.axes)}: "
                             "napari-unet runs Keras U-Nets taking batch × y × x × channel")
    steps = [step for step in tensor.preprocessing if step.id != "ensure_dtype"]
    invert = (len(steps) == 2 and steps[1].id == "scale_linear"
              and float(np.ravel(steps[1].kwargs.gain)[0]) == -1.0 and float(np.ravel(steps[1].kwargs.offset)[0]) == 1.0)
    if invert:
        steps = steps[:1]
    if len(steps) != 1 or steps[0].id != "scale_range":
        names = ", ".join(step.id for step in steps) or "none"
        raise ModelLoadError(f"'{path}' pre-processes its input with: {names}; napari-unet applies one percentile "
                             "normalisation (scale_range), optionally inverted, so it cannot run this package faithfully")
    kwargs = steps[0].kwargs
    return NormalizationConfig(low=float(kwargs.min_percentile), high=float(kwargs.max_percentile), invert=invert)


def _metadata_from_description(description, model: SegmentationModel) -> ModelMetadata:
    """Metadata for a Keras package not made by napari-unet: channels, classes and size step from the description."""
    (tensor,) = description.inputs
    y_size = tensor.axes[1].size
    step = int(getattr(y_size, "step", 0) or getattr(y_size, "min", 0) or 8)
    depth = max(1, int(round(math.log2(step)))) if step > 0 else 3
    output = description.outputs[0]
    class_names = [str(name) for name in output.axes[-1].channel_names] if output.axes[-1].type == "channel" \
        else ["foreground"]
    config = UNetConfig(n_channels=model.config.n_channels, n_classes=model.config.n_classes, depth=depth)
    return ModelMetadata(config=config, class_names=class_names, name=str(description.name),
                         info={"description": description.description, "source": "bioimage.io package"})

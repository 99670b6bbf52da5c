"""The U-Net's forward pass on ONNX Runtime, with no TensorFlow: what makes a freshly opened napari predict at once.

Importing TensorFlow and Keras, loading a .keras and tracing its forward pass take 3-4 s on a 2-core CPU
before the first tile is computed; ONNX Runtime imports and opens the same network in ~0.2 s, but then runs
it 1.3-5x slower than TensorFlow (benchmarks/bench_onnx.py). So ONNX Runtime serves only where start-up
dominates: the dock's predictions while its worker process has not loaded the model yet (Session.onnx_twin_for), and
`napari-unet predict` of a few images (registry.quick_twin). Both need the model's ONNX twin, `<name>.onnx`
beside `<name>.keras`: the recipe script writes the shipped models' twins, and the dock writes one for each
version a fine-tuning round keeps (write_twin). Everything else runs on TensorFlow.

A twin records the SHA-256 of the .keras it was converted from; a twin that does not match its .keras
(the model was retrained, the twin not rewritten) is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.model import SegmentationModel, has_side_views, read_metadata

ONNX_OPSET = 17  # what DeepImageJ and bioimage.io's ONNX runners accept
# ONNX metadata key holding the SHA-256 of the .keras file a twin was converted from.
SOURCE_DIGEST_KEY = "napari_unet_keras_sha256"
INPUT_NAME = "input0"


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def twin_path(keras_path: str | os.PathLike) -> Path:
    return Path(keras_path).with_suffix(".onnx")


def export_onnx(model: SegmentationModel, path: str | os.PathLike, source: str | os.PathLike | None = None,
                input_name: str = INPUT_NAME) -> Path:
    """Convert the model's network to ONNX (opset 17, input (None, None, None, C) float32, output its
    probabilities; tf2onnx). `source`: the .keras file it came from, whose digest a twin records."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    path = Path(path)
    signature = (tf.TensorSpec((None, None, None, model.config.n_channels), tf.float32, name=input_name),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model.keras_model, input_signature=signature, opset=ONNX_OPSET)
    except Exception as exc:  # the converter raises many kinds; the user needs to know which step failed
        raise NapariUNetError(f"converting '{model.name}' to ONNX failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}): please report this") from exc
    if source is not None:
        onnx.helper.set_model_props(proto, {SOURCE_DIGEST_KEY: file_digest(source)})
    onnx.save(proto, str(path))
    return path


def write_twin(keras_path: str | os.PathLike) -> Path | None:
    """Give a saved .keras (e.g. a project's new version) its ONNX twin, so a freshly opened napari predicts with
    it at once; None when the converter (tf2onnx: the [gui] and [bioimageio] extras) is missing. Written atomically:
    a half-written twin would only be refused, but it would cost a failed session each time."""
    if importlib.util.find_spec("tf2onnx") is None or has_side_views(keras_path):  # one network per twin
        return None
    from napari_unet.model import load_model_file
    from napari_unet.storage.files import atomic_write

    model = load_model_file(keras_path)  # the saved float32 network, whatever precision trained it
    return atomic_write(twin_path(keras_path), lambda name: export_onnx(model, name, source=keras_path), ".onnx")


def onnx_runtime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxNetwork:
    """Stands where a Keras model stands in a SegmentationModel (keras_model): an ONNX Runtime session."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.input_shape = tuple(session.get_inputs()[0].shape)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def _twin_session(keras_path):
    import onnxruntime

    path = twin_path(keras_path)
    if not path.is_file() or not Path(keras_path).is_file():
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # damaged or from another ONNX version: TensorFlow serves instead
        return None
    if session.get_modelmeta().custom_metadata_map.get(SOURCE_DIGEST_KEY) != file_digest(keras_path):
        return None
    return session


def load_onnx_twin(keras_path: str | os.PathLike) -> SegmentationModel | None:
    """The model of `keras_path` running on its ONNX twin (metadata read from the .keras without Keras),
    or None when there is no current twin or ONNX Runtime is missing."""
    if not onnx_runtime_available():
        return None
    session = _twin_session(keras_path)
    if session is not None and has_side_views(keras_path):  # a twin holds one network: not the side views'
        session = None
    metadata = read_metadata(keras_path) if session is not None else None
    if metadata is None:
        return None
    return SegmentationModel(OnnxNetwork(session), metadata, source=str(keras_path))


def is_onnx(model: SegmentationModel) -> bool:
    return isinstance(model.keras_model, OnnxNetwork)


def onnx_forward(model: SegmentationModel, test_time_augmentation: bool | int = False, with_squares: bool = False):
    """numpy twin of prediction.forward_function for a model on ONNX Runtime (always float32)."""
    from napari_unet.labels.calibration import shift_probabilities
    from napari_unet.training.augment import tta_views

    network = model.keras_model
    try:
        transforms = tta_views(model.metadata.symmetries, test_time_augmentation)
    except ValueError as error:
        raise NapariUNetError(str(error)) from None
    offset = tuple(float(v) for v in model.metadata.output_offset)

    def with_square(output):
        return np.concatenate([output, np.square(output)], axis=-1) if with_squares else output

    def forward(batch: np.ndarray) -> np.ndarray:
        if len(transforms) <= 1:
            total = with_square(network(batch))
        else:
            total = 0.0
            for quarter_turns, mirrored in transforms:
                moved = np.rot90(batch[:, :, ::-1] if mirrored else batch, quarter_turns, axes=(1, 2))
                output = np.rot90(network(moved), (4 - quarter_turns) % 4, axes=(1, 2))
                total = total + with_square(output[:, :, ::-1] if mirrored else output)
            total = total / float(len(transforms))
        if offset == (0.0, 0.0):
            return np.asarray(total, dtype=np.float32)
        return np.stack([shift_probabilities(tile, offset) for tile in total])

    return forward

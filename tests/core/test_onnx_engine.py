"""The shipped models' ONNX twins: the same predictions as TensorFlow, refused when stale, and no TensorFlow import."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_unet._sample_data import load_em_membranes, load_nuclei
from napari_unet.inference.onnx_engine import is_onnx, load_onnx_twin, twin_path
from napari_unet.inference.prediction import predict
from napari_unet.storage.registry import load_model
from napari_unet.storage.shipped import shipped_model_names, shipped_model_path

pytest.importorskip("onnxruntime")


def _sample(name: str) -> np.ndarray:
    return load_em_membranes()[0] if name == "membranes" else load_nuclei("nuclei_sparse")[0]


@pytest.mark.parametrize("name", shipped_model_names())
def test_every_shipped_model_has_a_current_twin_that_predicts_as_tensorflow(name):
    twin = load_onnx_twin(shipped_model_path(name))
    assert twin is not None and is_onnx(twin), f"{name}.onnx is missing or stale: scripts/train_shipped_models.py --onnx"
    keras_model, image = load_model(name), _sample(name)
    assert twin.metadata == keras_model.metadata  # read from the .keras itself
    # Two views: the flips and the output offset (membranes) go through the numpy twin of forward_function.
    for views in (1, 2):
        expected = predict(keras_model, image, output="probabilities", precision="float32", test_time_augmentation=views)
        got = predict(twin, image, output="probabilities", test_time_augmentation=views)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    output = "instances" if name == "nuclei" else "labels"
    same = predict(twin, image, output=output) == predict(keras_model, image, output=output, precision="float32")
    assert same.mean() > 0.999


def test_a_twin_of_another_keras_file_is_refused(tmp_path):
    keras_path = tmp_path / "nuclei.keras"
    shutil.copy(shipped_model_path("nuclei"), keras_path)
    shutil.copy(twin_path(shipped_model_path("membranes")), twin_path(keras_path))  # the wrong network
    assert load_onnx_twin(keras_path) is None
    shutil.copy(twin_path(shipped_model_path("nuclei")), twin_path(keras_path))
    assert load_onnx_twin(keras_path) is not None
    twin_path(keras_path).unlink()
    assert load_onnx_twin(keras_path) is None


def test_predicting_on_a_twin_imports_no_tensorflow():
    """What makes the first Predict fast: neither TensorFlow nor Keras is imported on this path."""
    code = (
        "import sys\n"
        "from napari_unet._sample_data import load_nuclei\n"
        "from napari_unet.inference.onnx_engine import load_onnx_twin\n"
        "from napari_unet.inference.prediction import predict\n"
        "from napari_unet.storage.shipped import shipped_model_path\n"
        "labels = predict(load_onnx_twin(shipped_model_path('nuclei')), load_nuclei('nuclei_sparse')[0], output='instances')\n"
        "print(int(labels.max()), 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    objects, tensorflow, keras = result.stdout.split()
    assert int(objects) > 5 and tensorflow == "False" and keras == "False"


def test_a_saved_version_gets_a_twin_that_follows_renames_and_deletions(tmp_path):
    pytest.importorskip("tf2onnx")
    from napari_unet.inference.onnx_engine import write_twin
    from napari_unet.model import UNetConfig, new_model
    from napari_unet.storage.store import ModelStore

    store = ModelStore(tmp_path / "models")
    model = new_model(UNetConfig(base_width=4, depth=2), tile_size=64, name="tiny")
    name = store.save_version(model).name
    keras_path = store.root / f"{name}.keras"
    assert load_onnx_twin(keras_path) is None  # none yet
    assert write_twin(keras_path) == twin_path(keras_path)
    image = np.random.default_rng(0).random((48, 80)).astype(np.float32)
    expected = predict(store.load(name), image, output="probabilities", precision="float32")
    np.testing.assert_allclose(predict(load_onnx_twin(keras_path), image, output="probabilities"), expected, atol=1e-5)
    store.rename(name, "renamed")
    assert not twin_path(keras_path).exists() and load_onnx_twin(store.root / "renamed.keras") is not None
    store.delete("renamed")
    assert not list(store.root.glob("*.onnx"))

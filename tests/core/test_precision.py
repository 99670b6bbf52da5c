"""bfloat16 where the CPU has it: detected, overridable, as accurate as float32, and never leaking into files."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import contrasty_tiny_model

from napari_unet.errors import NapariUNetError
from napari_unet.inference import precision
from napari_unet.inference.prediction import predict
from napari_unet.model import UNetConfig, load_model_file, save_model


def _image(size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(1)
    image = np.zeros((size, size), dtype=np.float32)
    image[20:50, 30:70] = 1.0
    return image + 0.1 * rng.random((size, size), dtype=np.float32)


def test_default_follows_the_cpu_and_the_environment_variable_wins(monkeypatch):
    monkeypatch.delenv(precision.ENVIRONMENT_VARIABLE, raising=False)
    native = bool(precision.cpu_features() & {"amx_bf16", "avx512_bf16"})
    assert precision.default_precision() == ("bfloat16" if native else "float32")
    for chosen in precision.PRECISIONS:
        monkeypatch.setenv(precision.ENVIRONMENT_VARIABLE, chosen)
        assert precision.default_precision() == chosen
        assert precision.resolve("auto") == chosen
    assert precision.resolve("float32") == "float32"


def test_an_unknown_precision_is_refused_with_the_choices():
    model = contrasty_tiny_model(seed=0)
    with pytest.raises(NapariUNetError, match="float16.*auto, float32, bfloat16"):
        predict(model, _image(), precision="float16")


def test_bfloat16_twin_shares_weights_and_metadata_and_is_cached():
    model = contrasty_tiny_model(seed=0)
    assert precision.computes_in(model.keras_model) == "float32"
    assert precision.with_precision(model, "float32") is model
    twin = precision.with_precision(model, "bfloat16")
    assert precision.computes_in(twin.keras_model) == "bfloat16"
    assert twin.metadata is model.metadata
    assert precision.with_precision(model, "bfloat16") is twin
    for ours, theirs in zip(model.keras_model.get_weights(), twin.keras_model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_bfloat16_prediction_is_close_to_float32_and_returns_float32():
    model = contrasty_tiny_model(seed=0)
    image = _image()
    exact = predict(model, image, output="probabilities", precision="float32")
    reduced = predict(model, image, output="probabilities", precision="bfloat16")
    assert reduced.dtype == np.float32 and reduced.shape == exact.shape
    # an 8-bit mantissa: probabilities move by a few 1e-3, not more
    assert np.abs(reduced - exact).max() < 0.05
    assert np.mean((reduced >= 0.5) == (exact >= 0.5)) > 0.99


def test_training_in_bfloat16_gives_a_float32_version(tmp_path):
    from napari_unet.training import finetune

    model = contrasty_tiny_model(UNetConfig(base_width=4, depth=2), seed=0)
    image = _image(64)
    mask = (image > 0.5).astype(np.uint8)
    tuned, history = finetune(model, [image], [mask], epochs=1, steps_per_epoch=3, batch_size=2, patch_size=32,
                              validation_fraction=0.0, precision="bfloat16")
    assert history.settings["precision"] == "bfloat16"
    assert precision.computes_in(tuned.keras_model) == "float32"
    path = save_model(tuned, tmp_path / "tuned.keras")
    assert precision.computes_in(load_model_file(path).keras_model) == "float32"
    # training moved the weights away from the parent's
    assert any(not np.array_equal(a, b) for a, b in zip(model.keras_model.get_weights(), tuned.keras_model.get_weights()))


def test_float32_training_is_repeatable_with_a_seed():
    from napari_unet.training import finetune

    model = contrasty_tiny_model(UNetConfig(base_width=4, depth=2), seed=0)
    image = _image(64)
    mask = (image > 0.5).astype(np.uint8)
    runs = [finetune(model, [image], [mask], epochs=1, steps_per_epoch=3, batch_size=2, patch_size=32,
                     validation_fraction=0.0, precision="float32", seed=3)[0] for _ in range(2)]
    for first, second in zip(runs[0].keras_model.get_weights(), runs[1].keras_model.get_weights()):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("frozen", [True, False])
def test_fine_tuning_keeps_the_parents_batch_norm_statistics_unless_told(frozen):
    from napari_unet.training import finetune

    model = contrasty_tiny_model(UNetConfig(base_width=4, depth=2, batch_norm=True), seed=0)
    image = _image(64)
    mask = (image > 0.5).astype(np.uint8)
    tuned, _ = finetune(model, [image], [mask], epochs=1, steps_per_epoch=3, batch_size=2, patch_size=32,
                        validation_fraction=0.0, freeze_batch_norm=frozen, precision="float32")
    before = model.keras_model.get_layer("enc0_bn1").get_weights()  # gamma, beta, moving mean, moving variance
    after = tuned.keras_model.get_layer("enc0_bn1").get_weights()
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, after))
    assert unchanged == frozen
    conv_before = model.keras_model.get_layer("enc0_conv1").get_weights()[0]
    assert not np.array_equal(conv_before, tuned.keras_model.get_layer("enc0_conv1").get_weights()[0])
    assert all(layer.trainable for layer in tuned.keras_model.layers)  # the saved version is an ordinary model


def test_a_bfloat16_twin_of_any_keras_architecture_keeps_float32_output():
    """A bioimage.io package may hold another network than ours: the twin is a clone, not a rebuilt U-Net."""
    import keras

    from napari_unet.model import ModelMetadata, SegmentationModel

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1))
    hidden = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(inputs)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="out")(hidden)
    foreign = SegmentationModel(keras.Model(inputs, outputs), ModelMetadata())
    twin = precision.with_precision(foreign, "bfloat16")
    assert precision.computes_in(twin.keras_model) == "bfloat16"
    x = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    exact, reduced = foreign.keras_model(x).numpy(), twin.keras_model(x).numpy()
    assert reduced.dtype == np.float32 and np.abs(reduced - exact).max() < 0.02
    back = precision.copy_in(twin, "float32")
    np.testing.assert_allclose(back.keras_model(x).numpy(), exact, atol=1e-6)

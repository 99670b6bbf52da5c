"""The U-Net builder (layer shapes, parameter counts worked out by hand) and .keras save/load."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from napari_unet.errors import ModelLoadError
from napari_unet.model import UNetConfig, build_unet, inference_function, load_model_file, new_model, save_model


def conv_params(kernel: int, c_in: int, c_out: int, bias: bool = True) -> int:
    """Weights of a kernel×kernel convolution (also a transposed one) plus one bias per output channel."""
    return kernel * kernel * c_in * c_out + (c_out if bias else 0)


def expected_layer_params(config: UNetConfig) -> dict[str, int]:
    """Per-layer parameter counts of the U-Net as the paper describes it, level by level."""
    bias = not config.batch_norm
    params: dict[str, int] = {}
    c_in = config.n_channels
    for level in range(config.depth):
        width = config.base_width * 2**level
        params[f"enc{level}_conv1"] = conv_params(3, c_in, width, bias)
        params[f"enc{level}_conv2"] = conv_params(3, width, width, bias)
        if config.batch_norm:  # gamma, beta, moving mean, moving variance
            params[f"enc{level}_bn1"] = params[f"enc{level}_bn2"] = 4 * width
        c_in = width
    width = config.base_width * 2**config.depth
    params["bottleneck_conv1"] = conv_params(3, c_in, width, bias)
    params["bottleneck_conv2"] = conv_params(3, width, width, bias)
    if config.batch_norm:
        params["bottleneck_bn1"] = params["bottleneck_bn2"] = 4 * width
    c_in = width
    for level in reversed(range(config.depth)):
        width = config.base_width * 2**level
        if config.upsampling == "transpose":
            params[f"dec{level}_up"] = conv_params(2, c_in, width)  # 2x2 stride-2 transposed conv
        else:
            params[f"dec{level}_upconv"] = conv_params(2, c_in, width)  # 2x2 conv after bilinear x2
        params[f"dec{level}_conv1"] = conv_params(3, 2 * width, width, bias)  # skip ++ upsampled
        params[f"dec{level}_conv2"] = conv_params(3, width, width, bias)
        if config.batch_norm:
            params[f"dec{level}_bn1"] = params[f"dec{level}_bn2"] = 4 * width
        c_in = width
    params["probabilities"] = conv_params(1, c_in, config.n_classes)
    return params


def test_reference_unet_parameter_count_matches_hand_arithmetic():
    config = UNetConfig(n_channels=1, base_width=64, depth=3, n_classes=1, upsampling="transpose")
    keras_model = build_unet(config)
    expected = expected_layer_params(config)
    # The first and last layers written out: 3·3·1·64 + 64 and 1·1·64·1 + 1.
    assert expected["enc0_conv1"] == 640
    assert expected["bottleneck_conv2"] == 3 * 3 * 512 * 512 + 512
    assert expected["dec2_up"] == 2 * 2 * 512 * 256 + 256
    assert expected["probabilities"] == 65
    actual = {layer.name: layer.count_params() for layer in keras_model.layers if layer.count_params()}
    assert actual == expected
    assert sum(expected.values()) == 7_696_193
    assert keras_model.count_params() == sum(expected.values())


def _layer_shapes(keras_model, height: int, width: int) -> dict[str, tuple]:
    import keras

    names = [layer.name for layer in keras_model.layers[1:]]
    probe = keras.Model(keras_model.input, [keras_model.get_layer(name).output for name in names])
    outputs = probe(np.zeros((1, height, width, keras_model.input_shape[-1]), np.float32))
    return {name: tuple(output.shape) for name, output in zip(names, outputs)}


def test_reference_unet_layer_shapes_halve_and_double_per_level():
    config = UNetConfig(n_channels=1, base_width=64, depth=3)
    shapes = _layer_shapes(build_unet(config), 24, 16)
    assert shapes["enc0_conv2"] == (1, 24, 16, 64)
    assert shapes["enc0_pool"] == (1, 12, 8, 64)
    assert shapes["enc1_conv2"] == (1, 12, 8, 128)
    assert shapes["enc2_conv2"] == (1, 6, 4, 256)
    assert shapes["bottleneck_conv2"] == (1, 3, 2, 512)
    assert shapes["dec2_up"] == (1, 6, 4, 256)
    assert shapes["dec2_concat"] == (1, 6, 4, 512)
    assert shapes["dec1_conv2"] == (1, 12, 8, 128)
    assert shapes["dec0_conv2"] == (1, 24, 16, 64)
    assert shapes["probabilities"] == (1, 24, 16, 1)


@pytest.mark.parametrize(
    "config",
    [
        UNetConfig(base_width=4, upsampling="bilinear"),
        UNetConfig(base_width=4, batch_norm=True),
        UNetConfig(n_channels=2, base_width=4, depth=2, n_classes=3),
    ],
    ids=["bilinear", "batch_norm", "2ch-depth2-3classes"],
)
def test_variant_parameter_counts_match_hand_arithmetic(config):
    keras_model = build_unet(config)
    actual = {layer.name: layer.count_params() for layer in keras_model.layers if layer.count_params()}
    assert actual == expected_layer_params(config)


def test_bilinear_and_batchnorm_models_keep_input_size():
    for config in (UNetConfig(base_width=4, upsampling="bilinear"), UNetConfig(base_width=4, batch_norm=True)):
        output = build_unet(config)(np.random.default_rng(0).random((2, 32, 40, 1)).astype(np.float32))
        assert tuple(output.shape) == (2, 32, 40, 1)
        assert np.all((np.asarray(output) >= 0) & (np.asarray(output) <= 1))


def test_three_class_model_outputs_softmax_per_pixel():
    keras_model = build_unet(UNetConfig(base_width=4, n_classes=3))
    output = np.asarray(keras_model(np.random.default_rng(1).random((1, 16, 24, 1)).astype(np.float32)))
    assert output.shape == (1, 16, 24, 3)
    np.testing.assert_allclose(output.sum(axis=-1), 1.0, rtol=1e-5)


def _randomised(keras_model, seed: int):
    """Weights and batch-norm statistics far from their initial values, so a wrong fold shows."""
    rng = np.random.default_rng(seed)
    keras_model.set_weights([
        (rng.random(w.shape) + 0.5 if "variance" in v.path else rng.normal(0, 0.3, w.shape)).astype(np.float32)
        for v, w in zip(keras_model.weights, keras_model.get_weights())
    ])


@pytest.mark.parametrize(
    "config",
    [
        UNetConfig(base_width=4, depth=2, batch_norm=True),
        UNetConfig(base_width=4, depth=3, n_classes=3, batch_norm=True),
        UNetConfig(base_width=4, depth=2, upsampling="bilinear", n_channels=2, dropout=0.3),
    ],
    ids=["batch_norm", "3classes", "bilinear-dropout"],
)
def test_inference_graph_computes_what_keras_computes_and_follows_weights_changed_in_place(config):
    import tensorflow as tf

    keras_model = build_unet(config)
    _randomised(keras_model, 0)
    network = tf.function(inference_function(keras_model, config))
    batch = np.random.default_rng(2).random((2, 32, 40, config.n_channels)).astype(np.float32)
    np.testing.assert_allclose(network(batch), keras_model(batch, training=False), atol=2e-5)
    _randomised(keras_model, 1)  # what a training step does: the same variables, new values
    np.testing.assert_allclose(network(batch), keras_model(batch, training=False), atol=2e-5)


def test_other_architectures_are_not_rearranged():
    import keras

    config = UNetConfig(base_width=4, depth=2)
    inputs = keras.Input((None, None, 1))
    plain = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs))
    assert inference_function(plain, config) is None
    unet = build_unet(config)
    extended = keras.Model(unet.inputs, keras.layers.Activation("linear", name="extra")(unet.outputs[0]))
    assert inference_function(extended, config) is None
    assert inference_function(unet, UNetConfig(base_width=4, depth=3)) is None  # metadata not the graph's


def test_save_load_round_trip_keeps_metadata_and_weights(tmp_path):
    model = new_model(UNetConfig(base_width=4, n_classes=2), tile_size=128, name="cells", class_names=["bg", "cell"],
                      info={"trained_on": ["a.tif"]})
    model.metadata.symmetries = "mirror"
    model.metadata.output_offset = (-0.5, 0.25)
    path = save_model(model, tmp_path / "cells.keras")
    loaded = load_model_file(path)
    assert loaded.metadata.to_dict() == model.metadata.to_dict()
    assert loaded.metadata.symmetries == "mirror"
    assert loaded.metadata.output_offset == (-0.5, 0.25)
    assert loaded.source == str(path)
    batch = np.random.default_rng(2).random((1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded.keras_model(batch)), np.asarray(model.keras_model(batch)))


def test_keras_file_with_lambda_layer_is_refused(tmp_path):
    import keras

    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "unsafe.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelLoadError, match="Lambda") as error:
        load_model_file(path)
    assert "unsafe.keras" in str(error.value)


def test_missing_model_file_names_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere.keras"):
        load_model_file(tmp_path / "nowhere.keras")


def test_corrupt_model_file_names_the_file(tmp_path):
    garbage = tmp_path / "broken.keras"
    garbage.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(ModelLoadError, match="broken.keras"):
        load_model_file(garbage)
    truncated = tmp_path / "truncated.keras"
    with zipfile.ZipFile(truncated, "w") as archive:
        archive.writestr("config.json", "{ this is not json")
    with pytest.raises(ModelLoadError, match="truncated.keras"):
        load_model_file(truncated)


def test_metadata_without_symmetries_means_all_eight():
    """Files saved before the field existed were trained with flips and rotations."""
    from napari_unet.model import ModelMetadata

    values = ModelMetadata().to_dict()
    del values["symmetries"]
    assert ModelMetadata.from_dict(values).symmetries == "dihedral"


def test_unknown_symmetries_from_a_newer_file_fall_back_to_none_with_a_warning():
    from napari_unet.model import ModelMetadata

    values = {**ModelMetadata().to_dict(), "symmetries": "octahedral"}
    with pytest.warns(UserWarning, match="octahedral"):
        assert ModelMetadata.from_dict(values).symmetries == "none"


def test_the_stored_metadata_of_the_shipped_models_reads_back_unchanged():
    """Every field is read and written by its declared rule, so a file's JSON survives a load and a save."""
    import json
    import zipfile

    from napari_unet.model import METADATA_ENTRY, ModelMetadata
    from napari_unet.storage.shipped import shipped_model_names, shipped_model_path

    for name in shipped_model_names():
        stored = json.loads(zipfile.ZipFile(shipped_model_path(name)).read(METADATA_ENTRY))
        written = ModelMetadata.from_dict(stored).to_dict()
        assert ModelMetadata.from_dict(written).to_dict() == written
        # as stored, but for fields newer than the file, which are written with their defaults
        assert {key: value for key, value in written.items() if key in stored} == {
            **stored, "normalization": {**ModelMetadata().normalization.to_dict(), **stored["normalization"]}}


def test_a_damaged_value_names_the_field_the_value_and_the_rule():
    from napari_unet.model import ModelMetadata

    values = {**ModelMetadata().to_dict(), "min_seed_size": -3, "instances": "watershed"}
    with pytest.warns(UserWarning) as caught:
        metadata = ModelMetadata.from_dict(values)
    assert metadata.min_seed_size is None and metadata.instances == ""
    assert sorted(str(warning.message) for warning in caught) == [
        "ignoring instances 'watershed' in the model's metadata: it must be one of 'components', 'enclosed', "
        "'boundary_watershed', 'classes' (or empty); instances will be taken from the class names",
        "ignoring min_seed_size -3 in the model's metadata: it must be a whole number of pixels >= 1; using the default",
    ]


def test_a_damaged_architecture_is_an_error_not_a_default():
    """The weights cannot be used with another architecture, so its config has no fallback."""
    from napari_unet.model import ModelMetadata

    values = {**ModelMetadata().to_dict(), "config": {"n_channels": 1, "upsampling": "nearest"}}
    with pytest.raises(ModelLoadError, match="damaged config .*upsampling must be one of"):
        ModelMetadata.from_dict(values)


@pytest.mark.parametrize("offset", [[3.0, 0.0], ["up", 0], [0.5], None])
def test_an_output_offset_that_is_not_two_numbers_within_one_pixel_is_ignored_with_a_warning(offset):
    from napari_unet.model import ModelMetadata

    values = {**ModelMetadata().to_dict(), "output_offset": offset}
    with pytest.warns(UserWarning, match="output_offset"):
        assert ModelMetadata.from_dict(values).output_offset == (0.0, 0.0)
    del values["output_offset"]  # files saved before the field existed: no move
    assert ModelMetadata.from_dict(values).output_offset == (0.0, 0.0)


def test_instance_method_and_seed_threshold_travel_with_the_model(tmp_path):
    """What the objects are and how sure a seed must be are in the file, so no face has to guess."""
    from napari_unet.model import ModelMetadata, load_model_file

    model = new_model(UNetConfig(base_width=4, depth=2, n_classes=3), instances="boundary_watershed",
                      seed_threshold=0.7, class_names=["background", "nucleus", "boundary"])
    loaded = load_model_file(save_model(model, tmp_path / "m.keras"))
    assert loaded.metadata.instance_method == "boundary_watershed" and loaded.metadata.seed_threshold == 0.7
    values = {**ModelMetadata().to_dict(), "seed_threshold": 3.0}
    with pytest.warns(UserWarning, match="seed_threshold"):
        assert ModelMetadata.from_dict(values).seed_threshold is None
    membranes = ModelMetadata(class_names=["membrane"])
    assert membranes.instance_method == "enclosed" and ModelMetadata().instance_method == "components"


def test_minimum_sizes_travel_with_the_model_and_decide_its_instances(tmp_path):
    """The recipe's minimum object and seed sizes are in the file; predict's instances use them."""
    from napari_unet.labels.postprocess import model_instances
    from napari_unet.model import ModelMetadata, load_model_file

    model = new_model(UNetConfig(base_width=4, depth=2, n_classes=3), instances="boundary_watershed",
                      class_names=["background", "nucleus", "boundary"])
    model.metadata.min_size, model.metadata.min_seed_size, model.metadata.merge_threshold = 50, 9, 0.25
    model.metadata.touching_width, model.metadata.core_fraction = 2, 0.5
    loaded = load_model_file(save_model(model, tmp_path / "m.keras"))
    assert (loaded.metadata.min_size, loaded.metadata.min_seed_size, loaded.metadata.merge_threshold) == (50, 9, 0.25)
    assert loaded.metadata.touching_width == 2 and ModelMetadata.from_dict({}).touching_width == 1
    assert loaded.metadata.core_fraction == 0.5 and ModelMetadata.from_dict({}).core_fraction == 0.0
    with pytest.warns(UserWarning, match="core_fraction"):
        assert ModelMetadata.from_dict({**ModelMetadata().to_dict(), "core_fraction": 1.0}).core_fraction == 0.0
    with pytest.warns(UserWarning, match="merge_threshold"):
        assert ModelMetadata.from_dict({**ModelMetadata().to_dict(), "merge_threshold": 1.5}).merge_threshold is None
    for bad in (0, 2.5, "big", True):
        with pytest.warns(UserWarning, match="min_size"):
            assert ModelMetadata.from_dict({**ModelMetadata().to_dict(), "min_size": bad}).min_size is None
    probabilities = np.zeros((40, 40, 3), np.float32)
    probabilities[..., 0] = 1.0
    probabilities[5:10, 5:10] = (0.0, 1.0, 0.0)  # 25 px: kept by default (16), dropped at min_size 50
    probabilities[20:30, 20:30] = (0.0, 1.0, 0.0)  # 100 px: kept either way
    assert model_instances(probabilities, ModelMetadata(instances="boundary_watershed"), 3).max() == 2
    assert model_instances(probabilities, loaded.metadata, 3).max() == 1
    assert model_instances(probabilities, loaded.metadata, 3, min_size=4).max() == 2  # the caller's choice wins

"""Tiny random U-Nets for fast logic tests."""

from __future__ import annotations

from napari_unet.model import SegmentationModel, UNetConfig, new_model


def contrasty_tiny_model(config: UNetConfig | None = None, seed: int | None = None) -> SegmentationModel:
    """A base-width-4 model whose last layer is scaled so probabilities spread over (0, 1), not all ~0.5."""
    import keras

    if config is None:
        config = UNetConfig(base_width=4)

    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = new_model(config, tile_size=64)
    layer = model.keras_model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 30, bias])
    return model

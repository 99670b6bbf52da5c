"""An image whose channels napari opened as separate layers (channel_axis): the dock reads them as one image's
channels when the user says so (Predict tab, Channel layers), in Predict, the training set and fine-tuning."""

from __future__ import annotations

import numpy as np
from dock_fixtures import errors, model_of, wait_for

from napari_unet.model import UNetConfig, new_model, save_model


def _open_two_channels(viewer, widget, image) -> None:
    viewer.add_image(np.stack([image, 255 - image]), channel_axis=0, name=["nuclei", "membrane"])
    widget.reset_choices()  # what napari does when layers are added
    widget.predict_tab.image_combo.select("nuclei")


def _choose(combo, text_start: str) -> None:
    texts = [combo.itemText(i) for i in range(combo.count())]
    index = next(i for i, text in enumerate(texts) if text.startswith(text_start))
    combo.setCurrentIndex(index)
    combo.activated.emit(index)  # what a user's pick emits


def test_channel_layers_are_read_as_one_image_only_when_chosen(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    tab = widget.predict_tab
    _open_two_channels(viewer, widget, blobs_image)
    assert tab.layers_combo.isVisibleTo(tab)
    layer_texts = [tab.layers_combo.itemText(i) for i in range(tab.layers_combo.count())]
    assert layer_texts == ["this layer only", "2 layers as channels: nuclei, membrane"]
    assert tab.channels_combo.itemText(0).startswith("as they are: grey")  # one layer, one channel: as before

    _choose(tab.layers_combo, "2 layers")
    texts = [tab.channels_combo.itemText(i) for i in range(tab.channels_combo.count())]
    assert texts[0] == "the image has 2, the model reads 1: choose"
    assert "nuclei only" in texts and "membrane only" in texts  # named after the layers
    job = wait_for(qtbot, tab.predict())  # two channels for a one-channel model: refused, naming the fixes
    assert job.error is not None and "convert to grey" in errors(notifications)[-1]

    _choose(tab.channels_combo, "membrane only")
    job = wait_for(qtbot, tab.predict())
    assert job.error is None, errors(notifications)
    from napari_unet.inference.prediction import predict

    expected = predict(model_of(widget), 255 - blobs_image, output="labels")  # the tiny model's default: no instances
    np.testing.assert_array_equal(viewer.layers["nuclei prediction"].data, expected)

    labels = viewer.layers["nuclei prediction"]
    labels.data = (blobs_image > 100).astype(labels.data.dtype)  # the user's corrections
    job = wait_for(qtbot, widget.training_set_tab.add_current())
    assert job.error is None, errors(notifications)
    image, _ = widget.session.training_set.load(widget.session.training_set.names()[0])
    assert image.shape == (*blobs_image.shape, 2)  # the pair keeps both channels: a round widens the model
    np.testing.assert_array_equal(image[..., 1], 255 - blobs_image)

    _choose(tab.layers_combo, "this layer only")
    assert tab.channels_combo.count() == 1 and tab.channels_combo.itemText(0).startswith("as they are")


def test_channel_layers_with_a_two_channel_model(qtbot, dock, blobs_image, notifications, tmp_path):
    viewer, widget = dock
    path = tmp_path / "two_channels.keras"
    save_model(new_model(UNetConfig(n_channels=2, base_width=4, depth=2), tile_size=64), path)
    widget.session.select_model(str(path))
    tab = widget.predict_tab
    _open_two_channels(viewer, widget, blobs_image)
    _choose(tab.layers_combo, "2 layers")
    assert tab.channels_combo.itemText(0) == "as they are: nuclei, membrane"
    job = wait_for(qtbot, tab.predict())
    assert job.error is None, errors(notifications)
    from napari_unet.inference.prediction import predict

    both = np.stack([blobs_image, 255 - blobs_image], axis=-1)
    np.testing.assert_array_equal(viewer.layers["nuclei prediction"].data,
                                  predict(model_of(widget), both, output="labels"))  # the tiny model: no instances
    viewer.layers.remove("membrane")  # a channel layer gone: the image is its own layer again, said by the menu
    widget.reset_choices()
    assert not tab.layers_combo.isVisibleTo(tab)
    assert tab.channels_combo.itemText(0).startswith("the image has 1, the model reads 2")

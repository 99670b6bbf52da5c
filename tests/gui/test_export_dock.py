"""The Models tab exports the selected version as a bioimage.io package, and the package predicts in the dock."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from tiny_models import contrasty_tiny_model

from napari_unet.storage.bioimageio import load_package


def test_dock_exports_the_selected_version_for_bioimageio(make_napari_viewer, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_unet._widgets.launch import PLUGIN

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    record = widget.session.store.save_version(contrasty_tiny_model(seed=4), name="tiny-version")
    widget.session.versions_changed.emit()
    models = widget.models_tab
    names = [models.table.item(row, 0).text() for row in range(models.table.rowCount())]
    models.table.selectRow(names.index(record.name))
    messages = []
    notification_manager.notification_ready.connect(lambda note: messages.append(str(note.message)))

    assert models.export_bioimageio_selected(str(tmp_path / "refused.zip"), authors=" ", license="MIT") is None
    assert any("needs its authors" in message for message in messages), messages
    target = tmp_path / "tiny-version.zip"
    job = models.export_bioimageio_selected(str(target), authors="Ada Lovelace, Alan Turing", license="CC-BY-4.0")
    assert models.cancel_button.isEnabled()  # the export runs in a worker and can be stopped
    qtbot.waitUntil(lambda: job.done, timeout=120_000)
    assert job.error is None, messages
    assert any(f"saved for bioimage.io as {target}" in message for message in messages), messages
    packaged, stored = load_package(target), widget.session.store.load(record.name)
    for packaged_weights, stored_weights in zip(packaged.keras_model.get_weights(), stored.keras_model.get_weights()):
        np.testing.assert_array_equal(packaged_weights, stored_weights)
    assert not models.cancel_button.isEnabled()

    # The package, chosen as a model file (what File… does), predicts like the version it came from.
    from napari_unet.inference.prediction import predict

    image = (ndi.gaussian_filter(np.random.default_rng(1).random((64, 80)), 2) * 255).astype(np.uint8)
    viewer.add_image(image, name="cells")
    widget.session.select_model(str(target))
    assert widget.session.model_label == "tiny-version.zip"
    prediction = widget.predict_tab.predict()
    qtbot.waitUntil(lambda: prediction.done, timeout=60_000)
    assert prediction.error is None, messages
    labels = viewer.layers["cells prediction"].data
    assert np.unique(labels).size > 1  # not an empty prediction, so the comparison means something
    np.testing.assert_array_equal(labels, predict(stored, image, output="labels"))

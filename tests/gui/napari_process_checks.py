"""Run by test_worker_process.py in a fresh pytest (--noconftest: conftest.py imports TensorFlow for the other tests):
after a Predict and a fine-tuning round driven through the dock's buttons, napari's process has imported neither
TensorFlow nor Keras. $NAPARI_UNET_TEST_MODEL: a tiny .keras made by the calling test."""

from __future__ import annotations

import os
import sys

import numpy as np
from qtpy.QtCore import Qt

JOB_TIMEOUT_MS = 120_000


def _click(qtbot, button) -> None:
    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_napari_never_imports_tensorflow(make_napari_viewer, qtbot, tmp_path):
    from napari_unet._widgets.launch import PLUGIN

    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    widget.session.set_project(tmp_path / "project")
    widget.session.select_model(os.environ["NAPARI_UNET_TEST_MODEL"])
    rng = np.random.default_rng(0)
    image = rng.normal(40, 10, (96, 96))
    image[20:50, 30:60] += 120
    viewer.add_image(np.clip(image, 0, 255).astype(np.uint8), name="cells")

    predict = widget.predict_tab
    _click(qtbot, predict.predict_button)
    qtbot.waitUntil(lambda: predict.job is not None and predict.job.done, timeout=JOB_TIMEOUT_MS)
    assert predict.job.error is None, predict.job.error
    labels = viewer.layers["cells prediction"]
    labels.data = (image > 100).astype(labels.data.dtype)  # the user's corrections

    correct = widget.training_set_tab
    _click(qtbot, correct.add_button)
    qtbot.waitUntil(lambda: correct.job is not None and correct.job.done, timeout=JOB_TIMEOUT_MS)
    assert correct.job.error is None, correct.job.error

    finetune = widget.finetune_tab
    finetune.epochs_spin.setValue(1)
    finetune.steps_spin.setValue(2)
    finetune.augment_check.setChecked(False)
    finetune.image_combo.reset_choices()
    _click(qtbot, finetune.controls.start_button)
    qtbot.waitUntil(lambda: finetune.job is not None and finetune.job.done, timeout=JOB_TIMEOUT_MS)
    assert finetune.job.error is None, finetune.job.error
    version = finetune.last_outcome.version
    assert f"cells prediction ({version})" in viewer.layers  # re-predicted with the new version
    qtbot.waitUntil(lambda: all(job.done for job in widget.session.jobs), timeout=JOB_TIMEOUT_MS)

    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    assert widget.session.worker.call("worker_tasks:imported", ("tensorflow", "keras")) == {"tensorflow": True,
                                                                                         "keras": True}

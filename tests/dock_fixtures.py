"""Fixtures and helpers shared by the dock's tests (test_*_tab.py, test_dock.py and the other GUI tests).

Registered for every test by conftest.py (pytest_plugins), so it imports neither Qt nor napari nor TensorFlow at
import time: the core tests collect without them. Tiny data: a base_width=4 depth=2 model and 64-96 px images.
"""

from __future__ import annotations

import numpy as np
import pytest

JOB_TIMEOUT_MS = 60_000


_TINY_MODEL: dict = {}


@pytest.fixture
def tiny_model_path(tmp_path_factory):
    """A base_width=4 model file, built once per session."""
    if "path" not in _TINY_MODEL:
        from napari_unet.model import UNetConfig, new_model, save_model

        path = tmp_path_factory.mktemp("models") / "tiny.keras"
        save_model(new_model(UNetConfig(base_width=4, depth=2), tile_size=64, name="tiny"), path)
        _TINY_MODEL["path"] = str(path)
    return _TINY_MODEL["path"]


@pytest.fixture
def blobs_image():
    """96×96 bright discs on a noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    image = rng.normal(40, 10, (96, 96))
    for cy, cx in ((25, 25), (60, 70), (70, 20)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] += 120
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def notifications():
    """(severity, message) of every napari notification during the test."""
    from napari.utils.notifications import notification_manager

    received = []

    def collect(notification):
        received.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(collect)
    yield received
    notification_manager.notification_ready.disconnect(collect)


def errors(notifications) -> list[str]:
    """The error messages among `notifications`."""
    return [message for severity, message in notifications if severity.lower() == "error"]


@pytest.fixture
def dock(make_napari_viewer, tiny_model_path, qtbot):
    """(viewer, UNetWidget) opened through the manifest, with the tiny model selected.

    Teardown waits for the dock's workers, so none outlives its test.
    """
    from napari_unet._widgets.launch import PLUGIN

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    widget._warm_up_timer.stop()  # the tests start their own predictions (the warm-up has its own test)
    widget.session.select_model(tiny_model_path)
    yield viewer, widget
    qtbot.waitUntil(lambda: all(job.done for job in widget.session.jobs), timeout=JOB_TIMEOUT_MS)


@pytest.fixture
def contrasty_dock(dock, tmp_path):
    """The dock with a tiny model whose probabilities spread around 0.5, so slider steps change masks."""
    from tiny_models import contrasty_tiny_model

    from napari_unet.model import UNetConfig, save_model

    viewer, widget = dock
    path = tmp_path / "contrasty.keras"
    save_model(contrasty_tiny_model(UNetConfig(base_width=4, depth=2), seed=0), path)
    widget.session.select_model(str(path))
    return viewer, widget


@pytest.fixture
def stack_dock(contrasty_dock):
    """The contrasty dock set to separate objects over all slices of a stack: (viewer, widget, its Predict tab)."""
    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    tab.instances_check.setChecked(True)
    tab.scope_combo.setCurrentText("all slices")
    return viewer, widget, tab


def model_of(widget, key: str | None = None):
    """The dock's model (default: the selected one) loaded in the test process, to compare with."""
    return widget.session.project.load_model(key or widget.session.model_key)


def wait_for(qtbot, job, timeout=JOB_TIMEOUT_MS):
    """`job` once it is done (fails the test if the dock refused to start it)."""
    assert job is not None, "the widget refused to start (see notifications)"
    qtbot.waitUntil(lambda: job.done, timeout=timeout)
    return job


def add_corrected_pair(qtbot, viewer, widget, blobs_image, name="cells"):
    """Predict `blobs_image`, paint the truth over the prediction and add it as a training pair."""
    viewer.add_image(blobs_image, name=name)
    wait_for(qtbot, widget.predict_tab.predict())
    labels = viewer.layers[f"{name} prediction"]
    labels.data = (blobs_image > 100).astype(labels.data.dtype)  # the user's corrections
    labels.refresh()
    job = wait_for(qtbot, widget.training_set_tab.add_current())
    assert job.error is None
    qtbot.waitUntil(lambda: widget.training_set_tab.pair_list.count() >= 1, timeout=10_000)


def tiny_finetune_settings(widget, epochs=1, steps=2):
    """A round of a few steps without augmentation: seconds, not minutes."""
    tab = widget.finetune_tab
    tab.epochs_spin.setValue(epochs)
    tab.steps_spin.setValue(steps)
    tab.learning_rate_spin.setValue(1e-3)
    tab.augment_check.setChecked(False)

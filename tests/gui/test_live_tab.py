"""The dock's Live tab in a real napari viewer: training from the user's strokes, refusing what it cannot use, stacks,
closing with Live on, and a user who never stops painting.

Behaviour (accuracy, training) is tested on the core; here: does each control reach the core in the dock's worker
process, land its result in the right layer, and say what went wrong in words? The tests' own process loads models to
compare with (TensorFlow, imported before the first viewer: conftest.py). Fixtures (dock, notifications, blobs_image,
tiny_model_path) and helpers: dock_fixtures.py.
"""

from __future__ import annotations

import time

import numpy as np
from dock_fixtures import (
    JOB_TIMEOUT_MS,
    errors,
    wait_for,
)

from napari_unet._widgets.launch import PLUGIN


def _live_ready(qtbot, dock, image, name="cells"):
    """A predicted image, an evaluation pair in the project, and the Live tab pointed at the image."""
    viewer, widget = dock
    viewer.add_image(image, name=name)
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None
    truth = (image > 100).astype(np.uint8)
    widget.session.project.add_pair(image, truth, evaluation=True, name="held-out")
    tab = widget.live_tab
    tab.image_combo.reset_choices()
    tab.image_combo.select(name)
    labels = viewer.layers[f"{name} prediction"]
    # A known prediction to correct (napari reports only the pixels a stroke changes): nothing, and one wrong square.
    labels.data[:] = 0
    labels.data[40:51, 40:51] = 1
    labels.refresh()
    return viewer, widget, tab, labels


def test_live_trains_from_strokes_into_its_own_layer_and_keeps_through_the_guard(qtbot, dock, blobs_image, notifications):
    viewer, widget, tab, labels = _live_ready(qtbot, dock, blobs_image)
    tab.live_check.setChecked(True)
    assert tab.running, errors(notifications)
    # two strokes through the layer's own paint API (each fires one `paint` event, as the brush does)
    labels.brush_size = 12
    labels.paint((25, 25), 1)
    labels.paint((45, 45), 0)
    painted = labels.data.copy()
    qtbot.waitUntil(lambda: tab.last_burst is not None, timeout=JOB_TIMEOUT_MS)
    live = viewer.layers["cells live"]
    first_steps = tab.last_burst.total_steps
    qtbot.waitUntil(lambda: tab.last_burst.total_steps > first_steps, timeout=JOB_TIMEOUT_MS)
    assert live.data.shape == blobs_image.shape and live.data.any()
    np.testing.assert_array_equal(labels.data, painted)  # the user's layer is never written
    (pair,) = widget.session.project.training.pairs()
    assert 0 < pair.corrected_pixels < blobs_image.size
    _, mask = widget.session.project.training.load(pair.name)
    assert mask[25, 25] == 1 and mask[45, 45] == 0 and mask[90, 90] == 255  # only what was touched counts
    # Pause: training stops after the current burst
    tab.toggle_pause()
    qtbot.wait(int(1000 * 5))  # longer than a burst
    paused_steps = tab.last_burst.total_steps
    qtbot.wait(1500)
    assert tab.last_burst.total_steps == paused_steps
    tab.toggle_pause()
    # Keep: a version through the project's guard, recorded as a round
    tab.keep()
    qtbot.waitUntil(lambda: tab.last_record is not None, timeout=JOB_TIMEOUT_MS)
    rounds = widget.session.project.rounds()
    assert rounds[-1].version == tab.last_record.version
    assert rounds[-1].eval.source == "evaluation pairs"
    # Off: stops, keeps the best so far the same way, no thread left
    kept_rounds = len(rounds)
    tab.live_check.setChecked(False)
    wait_for(qtbot, tab.job)
    assert tab.job.error is None, errors(notifications)
    assert len(widget.session.project.rounds()) == kept_rounds + 1
    assert not tab.running and not tab.keep_button.isEnabled()
    np.testing.assert_array_equal(labels.data, painted)


def test_live_refuses_what_it_cannot_use(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    tab = widget.live_tab
    tab.live_check.setChecked(True)  # no image at all
    assert not tab.running and not tab.live_check.isChecked()
    assert "no image layer" in errors(notifications)[-1]
    viewer.add_image(blobs_image, name="cells")
    tab.image_combo.reset_choices()
    tab.live_check.setChecked(True)  # no prediction to correct
    assert not tab.running and "Press Predict first" in errors(notifications)[-1]


def test_live_with_a_model_that_fails_to_load_says_so(qtbot, dock, blobs_image, notifications, tmp_path):
    viewer, widget, tab, labels = _live_ready(qtbot, dock, blobs_image)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a model")
    widget.session.select_model(str(broken))
    tab.live_check.setChecked(True)
    wait_for(qtbot, tab.job)
    assert tab.job.error is not None and any("broken.keras" in message for message in errors(notifications))
    assert not tab.live_check.isChecked()


def test_live_on_a_stack_learns_from_the_plane_being_painted(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    stack = np.stack([blobs_image, np.roll(blobs_image, 20, axis=1)])
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None
    tab = widget.live_tab
    tab.image_combo.reset_choices()
    tab.image_combo.select("stack")
    tab.live_check.setChecked(True)
    assert tab.running and tab.plane_index == (1,)
    assert any("the plane you paint" in message for _, message in notifications)
    labels = viewer.layers["stack prediction"]
    labels.data = np.zeros_like(labels.data)  # a stroke that changes no pixel has no paint event: start from nothing
    labels.brush_size = 8
    labels.paint((1, 30, 30), 1)
    labels.paint((0, 60, 60), 1)  # another plane: Live follows it, and that plane is a pair of its own
    assert tab.plane_index == (0,)
    training = widget.session.project.training
    qtbot.waitUntil(lambda: sorted(training.names()) == ["stack_live_0", "stack_live_1"], timeout=JOB_TIMEOUT_MS)
    image_1, mask_1 = training.load("stack_live_1")
    image_0, mask_0 = training.load("stack_live_0")
    np.testing.assert_array_equal(image_1, stack[1])
    np.testing.assert_array_equal(image_0, stack[0])
    assert mask_1[30, 30] == 1 and mask_1[60, 60] == 255  # each plane's pair holds that plane's strokes only
    assert mask_0[60, 60] == 1 and mask_0[30, 30] == 255
    tab.live_check.setChecked(False)
    wait_for(qtbot, tab.job)


def test_closing_the_viewer_with_live_on_stops_it_and_leaves_complete_files(qtbot, make_napari_viewer, tiny_model_path,
                                                                             blobs_image, notifications):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    widget.session.select_model(tiny_model_path)
    _, _, tab, labels = _live_ready(qtbot, (viewer, widget), blobs_image)
    tab.live_check.setChecked(True)
    labels.brush_size = 12
    labels.paint((25, 25), 1)
    qtbot.waitUntil(lambda: tab.last_burst is not None, timeout=JOB_TIMEOUT_MS)
    job, project = tab.job, widget.session.project
    viewer.close()  # the dock's closer waits until the worker has left TensorFlow
    assert job.ended.is_set() and job.detached
    for pair in project.training.pairs():  # every recorded pair has both of its files, readable
        image, mask = project.training.load(pair.name)
        assert image.shape[:2] == mask.shape
    for record in project.rounds():  # the Keep on the way out is either complete or absent
        assert project.store.has(record.version)
    assert not errors(notifications)


def test_live_sends_corrections_while_the_user_keeps_painting(qtbot, dock, blobs_image, monkeypatch):
    from napari_unet._widgets import live_widget

    monkeypatch.setattr(live_widget, "MAX_WAIT_S", 0.5)
    viewer, widget, tab, labels = _live_ready(qtbot, dock, blobs_image)
    tab.live_check.setChecked(True)
    labels.brush_size = 6
    sent = []
    started = time.monotonic()
    for step in range(12):  # a stroke every 100 ms: the 600 ms pause never comes
        labels.paint((10 + 6 * step, 20), 1)
        qtbot.wait(100)
        if tab.updates_sent or widget.session.project.training.pairs():
            sent.append(time.monotonic() - started)
    assert sent and sent[0] < 1.2  # sent within MAX_WAIT_S of the first stroke (plus a stroke), not after painting
    tab.live_check.setChecked(False)
    wait_for(qtbot, tab.job)


def test_live_follows_a_user_who_never_stops_painting(qtbot, dock, blobs_image, monkeypatch, notifications):
    """Corrections arrive every MAX_WAIT_S while the user paints on; each burst still trains before the next one
    interrupts it (tasks.MIN_BURST_SECONDS), so the live layer changes during the painting, not only after it."""
    from napari_unet._widgets import live_widget

    monkeypatch.setattr(live_widget, "MAX_WAIT_S", 0.5)
    viewer, widget, tab, labels = _live_ready(qtbot, dock, blobs_image)
    tab.live_check.setChecked(True)
    labels.brush_size = 4
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    step = 0
    while tab.last_burst is None and time.monotonic() < deadline:  # a stroke every 150 ms until the layer follows
        labels.paint((8 + (3 * step) % 80, 10 + (7 * step) % 80), 1)
        step += 1
        qtbot.wait(150)
    assert tab.last_burst is not None, errors(notifications)
    assert tab.updates_sent >= 2  # it came while corrections kept coming
    tab.live_check.setChecked(False)
    wait_for(qtbot, tab.job)

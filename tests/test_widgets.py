"""The dock in a real napari viewer (under Xvfb): wiring, the worker process, notifications, shortcuts.

Behaviour (accuracy, training) is tested on the core; here: does each button reach the core off
the GUI thread (in the dock's worker process), land its result in the right layer, and say what went wrong in
words? Tiny data: a base_width=4 depth=2 model and 64-96 px images. The tests' own process has TensorFlow
(conftest.py) and loads models to compare with: the dock's copies live in its worker process.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt, QTimer

from napari_unet._widgets.launch import PLUGIN
from napari_unet.errors import Cancelled
from napari_unet.model import UNetConfig, new_model, save_model

JOB_TIMEOUT_MS = 60_000


_TINY_MODEL: dict = {}


@pytest.fixture
def tiny_model_path(tmp_path_factory):
    """A base_width=4 model file, built once per session."""
    if "path" not in _TINY_MODEL:
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
    return [message for severity, message in notifications if severity.lower() == "error"]


@pytest.fixture
def dock(make_napari_viewer, tiny_model_path, qtbot):
    """(viewer, UNetWidget) opened through the manifest, with the tiny model selected.

    Teardown waits for the dock's workers, so none outlives its test.
    """
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    widget._warm_up_timer.stop()  # the tests start their own predictions (the warm-up has its own test)
    widget.session.select_model(tiny_model_path)
    yield viewer, widget
    qtbot.waitUntil(lambda: all(job.done for job in widget.session.jobs), timeout=JOB_TIMEOUT_MS)


def model_of(widget, key: str | None = None):
    """The dock's model (default: the selected one) loaded in the test process, to compare with."""
    return widget.session.project.load_model(key or widget.session.model_key)


def wait_for(qtbot, job, timeout=JOB_TIMEOUT_MS):
    assert job is not None, "the widget refused to start (see notifications)"
    qtbot.waitUntil(lambda: job.done, timeout=timeout)
    return job


def test_predict_adds_a_labels_layer_named_after_the_image(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    widget.predict_tab.probabilities_check.setChecked(True)
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    labels = viewer.layers["cells prediction"]
    probability = viewer.layers["cells probability"]
    assert labels.data.shape == blobs_image.shape and probability.data.shape == blobs_image.shape
    from napari_unet.prediction import predict

    expected = predict(model_of(widget), blobs_image, output="labels", threshold=0.5)
    np.testing.assert_array_equal(labels.data, expected)
    assert widget.predict_tab.progress_bar.value() == widget.predict_tab.progress_bar.maximum()


def test_predict_writes_only_the_displayed_slice_of_a_stack(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    stack = np.stack([blobs_image, np.roll(blobs_image, 20, axis=1), blobs_image[::-1]])
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 2)
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    labels = viewer.layers["stack prediction"].data
    assert labels.shape == stack.shape
    assert not labels[:2].any()
    from napari_unet.prediction import predict

    np.testing.assert_array_equal(labels[2], predict(model_of(widget), stack[2], output="labels"))


def test_instances_option_numbers_each_object(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    widget.predict_tab.instances_check.setChecked(True)
    widget.predict_tab.probabilities_check.setChecked(True)  # the path that thresholds in the widget's worker
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    from napari_unet.prediction import predict

    expected = predict(model_of(widget), blobs_image, output="instances")
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)


def test_rgb_image_with_a_one_channel_model_is_converted_only_when_the_user_chooses(qtbot, dock, blobs_image,
                                                                                     notifications):
    viewer, widget = dock
    viewer.add_image(np.dstack([blobs_image] * 3), name="colour", rgb=True)
    tab = widget.predict_tab
    tab.image_combo.select("colour")
    texts = [tab.channels_combo.itemText(i) for i in range(tab.channels_combo.count())]
    assert "grey" in " ".join(texts) and "red only" in texts
    job = wait_for(qtbot, tab.predict())  # nothing chosen: refused, naming the fix
    assert job.error is not None and "convert to grey" in errors(notifications)[-1]
    tab.channels_combo.setCurrentIndex(tab.channels_combo.findData("grey"))
    job = wait_for(qtbot, tab.predict())
    assert job.error is None, errors(notifications)
    assert viewer.layers["colour prediction"].data.shape == blobs_image.shape
    viewer.add_image(np.stack([blobs_image] * 3), name="three planes")  # a (Z, Y, X) stack, not colour
    tab.image_combo.reset_choices()
    tab.image_combo.select("three planes")
    assert tab.channels_combo.itemText(0).startswith("as they are") and tab.channels_combo.count() == 1


def test_multichannel_layer_with_a_two_channel_model(qtbot, dock, blobs_image, notifications, tmp_path):
    viewer, widget = dock
    path = tmp_path / "two_channels.keras"
    save_model(new_model(UNetConfig(n_channels=2, base_width=4, depth=2), tile_size=64), path)
    widget.session.select_model(str(path))
    viewer.add_image(np.stack([blobs_image, 255 - blobs_image]), name="two channels")  # (C, Y, X) in one layer
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    assert viewer.layers["two channels prediction"].data.shape == blobs_image.shape

    viewer.add_image(blobs_image, name="grey")  # one channel for a two-channel model: refused in words
    widget.predict_tab.image_combo.select("grey")
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is not None and "reads 2 channels" in errors(notifications)[-1]


def test_cancel_stops_prediction_without_a_layer(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(np.stack([blobs_image] * 40), name="long stack")
    widget.predict_tab.scope_combo.setCurrentText("all slices")
    job = widget.predict_tab.predict()
    job._relay.progress.connect(lambda value: widget.predict_tab.cancel())  # cancel at the first tile
    wait_for(qtbot, job)
    assert isinstance(job.error, Cancelled)
    assert "long stack prediction" not in [layer.name for layer in viewer.layers]
    assert any("cancelled" in message for _, message in notifications)
    assert widget.predict_tab.predict_button.isEnabled()


def test_removing_the_image_mid_prediction_discards_the_result(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    layer = viewer.add_image(blobs_image, name="gone")
    job = widget.predict_tab.predict()
    viewer.layers.remove(layer)  # before the worker's result can reach the GUI thread
    wait_for(qtbot, job)
    assert [layer.name for layer in viewer.layers] == []
    assert any("'gone' was removed" in message for _, message in notifications)
    assert not errors(notifications)


def test_bad_input_is_reported_in_words(qtbot, dock, blobs_image, notifications, tmp_path):
    viewer, widget = dock
    assert widget.predict_tab.predict() is None
    assert "there is no image layer" in errors(notifications)[-1]

    viewer.add_image(blobs_image, name="cells")
    viewer.add_labels(np.zeros((50, 50), dtype=np.uint8), name="cells prediction")
    assert widget.training_set_tab.add_current() is None
    assert "'cells prediction' is 50×50 but image 'cells' is 96×96" in errors(notifications)[-1]

    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    widget.session.select_model(str(broken))
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is not None
    assert "not a valid .keras model file" in errors(notifications)[-1]
    assert "Prediction of 'cells'" in errors(notifications)[-1]


def test_only_where_corrected_needs_a_prediction(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    viewer.add_labels((blobs_image > 100).astype(np.uint8), name="cells prediction")  # painted, not predicted
    widget.training_set_tab.only_corrected_check.setChecked(True)
    job = wait_for(qtbot, widget.training_set_tab.add_current())
    assert job.error is not None and "needs the original prediction" in errors(notifications)[-1]
    assert widget.session.training_set.pairs() == []


def test_shortcuts_predict_and_add_to_training_set(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    canvas = viewer.window._qt_viewer.canvas.native  # noqa: SLF001 (the widget napari reads keys from)
    qtbot.keyClick(canvas, Qt.Key.Key_U, Qt.KeyboardModifier.ShiftModifier)
    wait_for(qtbot, widget.predict_tab.job)
    assert "cells prediction" in [layer.name for layer in viewer.layers], errors(notifications)
    labels = viewer.layers["cells prediction"]
    before = labels.data.copy()
    labels.paint((20, 20), 1)  # as a brush stroke would
    changes = widget.training_set_tab.show_changes().data
    np.testing.assert_array_equal(changes.astype(bool), labels.data != before)
    qtbot.keyClick(canvas, Qt.Key.Key_T, Qt.KeyboardModifier.ShiftModifier)
    wait_for(qtbot, widget.training_set_tab.job)
    assert widget.session.training_set.names() == ["cells"], errors(notifications)


def _add_corrected_pair(qtbot, viewer, widget, blobs_image, name="cells"):
    viewer.add_image(blobs_image, name=name)
    wait_for(qtbot, widget.predict_tab.predict())
    labels = viewer.layers[f"{name} prediction"]
    labels.data = (blobs_image > 100).astype(labels.data.dtype)  # the user's corrections
    labels.refresh()
    job = wait_for(qtbot, widget.training_set_tab.add_current())
    assert job.error is None
    qtbot.waitUntil(lambda: widget.training_set_tab.pair_list.count() >= 1, timeout=10_000)


def _tiny_finetune_settings(widget, epochs=1, steps=2):
    tab = widget.finetune_tab
    tab.epochs_spin.setValue(epochs)
    tab.steps_spin.setValue(steps)
    tab.learning_rate_spin.setValue(1e-3)
    tab.augment_check.setChecked(False)


def test_fine_tune_with_an_empty_training_set_says_what_to_do(qtbot, dock, notifications):
    pytest.importorskip("napari_unet.training")
    viewer, widget = dock
    job = wait_for(qtbot, widget.finetune_tab.start())
    assert job.error is not None
    assert "no training pairs" in errors(notifications)[-1] and "Add to training set" in errors(notifications)[-1]

    widget.session.training_set.add(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8), "empty")
    job = wait_for(qtbot, widget.finetune_tab.start())
    assert job.error is not None and "no foreground" in errors(notifications)[-1]


def test_predict_correct_finetune_predict(qtbot, dock, blobs_image, notifications, tmp_path):
    pytest.importorskip("napari_unet.training")
    from napari_unet.onnx_engine import load_onnx_twin
    from napari_unet.prediction import predict

    viewer, widget = dock
    _add_corrected_pair(qtbot, viewer, widget, blobs_image)
    corrected = viewer.layers["cells prediction"].data.copy()
    store = widget.session.store
    versions_before = len(store.list_versions())
    _tiny_finetune_settings(widget)
    job = wait_for(qtbot, widget.finetune_tab.start())
    assert job.error is None, errors(notifications)
    outcome, _ = job.result
    version = outcome.version
    assert len(store.list_versions()) == versions_before + 1 and store.has(version)
    new_model = store.load(version)
    assert widget.session.project.rounds()[-1].version == version  # the round is in the project's log
    new_layer = viewer.layers[f"cells prediction ({version})"]
    np.testing.assert_array_equal(new_layer.data, predict(new_model, blobs_image, output="labels"))
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, corrected)  # the user's layer is kept
    assert version in widget.finetune_tab.controls.text() and outcome.reason in widget.finetune_tab.controls.text()
    assert (widget.session.model_key == version) == outcome.kept
    assert widget.finetune_tab.rounds_plot.points[-1][0] == 1  # the round is plotted
    twin = store.root / f"{version}.onnx"  # a kept version gets its ONNX twin in the background (onnx_engine.py)
    if outcome.kept:
        qtbot.waitUntil(lambda: all(job.done for job in widget.session.jobs), timeout=JOB_TIMEOUT_MS)
        assert widget.session.jobs[-1].what == f"Preparing a quick start for '{version}'"
        assert widget.session.onnx_twin_for(version) is None  # loaded in the worker process already: no need
        assert load_onnx_twin(store.root / f"{version}.keras") is not None
    else:
        assert not twin.exists()

    models = widget.models_tab
    names = [models.table.item(row, 0).text() for row in range(models.table.rowCount())]
    models.table.selectRow(names.index(version))
    exported = tmp_path / "exported.keras"
    models.export_selected(str(exported))
    qtbot.waitUntil(exported.exists, timeout=10_000)
    from napari_unet.model import load_model_file

    assert load_model_file(exported).config == new_model.config

    models.rename_selected("my-cells")
    rename_job = wait_for(qtbot, widget.session.jobs[-1])  # the store, then the round log, are renamed
    assert rename_job.what == f"Renaming '{version}'" and rename_job.error is None
    assert store.has("my-cells") and not store.has(version)
    assert (store.root / "my-cells.onnx").exists() == outcome.kept and not twin.exists()  # the twin follows
    assert widget.session.project.rounds()[-1].version == "my-cells"
    qtbot.waitUntil(lambda: "my-cells" in [models.table.item(r, 0).text() for r in range(models.table.rowCount())],
                    timeout=10_000)
    names = [models.table.item(row, 0).text() for row in range(models.table.rowCount())]
    models.table.selectRow(names.index("my-cells"))
    models.revert_selected()  # a revert record in the project's log; "my-cells" becomes active
    revert_job = wait_for(qtbot, widget.session.jobs[-1])
    assert revert_job.what == "Reverting to 'my-cells'" and revert_job.error is None
    assert widget.session.model_key == "my-cells" == widget.session.project.active
    assert widget.session.project.rounds()[-1].kind == "revert"


def test_a_pair_for_evaluation_only_is_scored_every_round_and_never_trained_on(qtbot, dock, blobs_image, notifications):
    pytest.importorskip("napari_unet.training")
    viewer, widget = dock
    _add_corrected_pair(qtbot, viewer, widget, blobs_image)
    widget.training_set_tab.evaluation_check.setChecked(True)
    job = wait_for(qtbot, widget.training_set_tab.add_current())
    assert job.error is None, errors(notifications)
    project = widget.session.project
    assert len(project.training.pairs()) == 1 and len(project.evaluation.pairs()) == 1
    qtbot.waitUntil(lambda: "1 evaluation pair(s)" in widget.training_set_tab.count_label.text(), timeout=10_000)
    _tiny_finetune_settings(widget)
    for _ in range(2):
        job = wait_for(qtbot, widget.finetune_tab.start())
        assert job.error is None, errors(notifications)
    rounds = project.rounds()
    assert [r.eval.source for r in rounds] == ["evaluation pairs"] * 2
    assert len(widget.finetune_tab.rounds_plot.points) == 3  # before round 1, after 1, after 2
    trained_on = project.store.record(rounds[-1].version)["training_pairs"]
    assert [p["name"] for p in trained_on] == project.training.names()


def test_gui_command_opens_the_dock_with_a_sample(qtbot):
    from napari_unet._widgets.launch import open_gui
    from napari_unet.errors import NapariUNetError

    with pytest.raises(NapariUNetError, match="no sample named 'nope'"):
        open_gui(sample="nope", show=False)
    viewer, widget = open_gui(sample="nuclei", show=False)
    try:
        assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei ground truth"]
        assert widget.predict_tab.image_combo.currentText() == "nuclei"
        assert widget.tabs.count() == 5
    finally:
        viewer.close()


def test_gui_command_opens_given_files_and_pair_folders(qtbot, tmp_path):
    import tifffile

    from napari_unet._widgets.launch import open_gui

    tifffile.imwrite(tmp_path / "cells.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "pairs" / "images").mkdir(parents=True)
    (tmp_path / "pairs" / "masks").mkdir()
    tifffile.imwrite(tmp_path / "pairs" / "images" / "a.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "pairs" / "masks" / "a.tif", np.ones((32, 32), np.uint8))
    viewer, _ = open_gui(images=[str(tmp_path / "cells.tif"), str(tmp_path / "pairs")], show=False)
    try:
        assert [layer.name for layer in viewer.layers] == ["cells", "a", "a mask"]
    finally:
        viewer.close()


def test_gui_stays_responsive_while_fine_tuning(qtbot, dock, blobs_image, notifications, monkeypatch):
    """A 20 ms QTimer keeps firing while the worker trains, and the GUI thread's own work between two
    beats stays under 200 ms.

    "Own work" is the GUI thread's CPU time (time.thread_time), which a busy machine cannot inflate:
    on a loaded 2-core machine the wall-clock gap between beats grows (other processes run), but the
    CPU time the GUI thread spends between them only grows if our code blocks it. The wall-clock
    stall figures belong in benchmarks/ (bench_gui.py). Measured from the worker's start to its
    result (adding the new prediction layer afterwards is GUI work by nature).
    """
    pytest.importorskip("napari_unet.training")
    viewer, widget = dock
    _add_corrected_pair(qtbot, viewer, widget, blobs_image)
    _tiny_finetune_settings(widget, epochs=2, steps=8)
    beats, window = [], {}
    timer = QTimer()
    timer.timeout.connect(lambda: beats.append((time.perf_counter(), time.thread_time())))
    original_done = widget.finetune_tab._done
    monkeypatch.setattr(widget.finetune_tab, "_done",
                        lambda *args: (window.setdefault("end", time.perf_counter()), original_done(*args)))
    timer.start(20)
    job = widget.finetune_tab.start()
    window["start"] = time.perf_counter()
    wait_for(qtbot, job)
    timer.stop()
    assert job.error is None, errors(notifications)
    during = [(wall, cpu) for wall, cpu in beats if window["start"] <= wall <= window["end"]]
    assert len(during) > 20, "the fine-tune was too short to measure anything"
    gui_work = max(np.diff([cpu for _, cpu in during]))
    print(f"largest GUI-thread work between beats while fine-tuning: {gui_work * 1000:.0f} ms CPU "
          f"(largest wall-clock gap {max(np.diff([wall for wall, _ in during])) * 1000:.0f} ms, {len(during)} beats)")
    assert gui_work < 0.2, f"the GUI thread worked {gui_work * 1000:.0f} ms without returning to the event loop"
    assert len(widget.finetune_tab.plot.losses) > 0  # the live plot received the steps


def test_closing_the_viewer_mid_training_is_safe(qtbot, make_napari_viewer, tiny_model_path, blobs_image, notifications):
    pytest.importorskip("napari_unet.training")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    widget.session.select_model(tiny_model_path)
    _add_corrected_pair(qtbot, viewer, widget, blobs_image)
    _tiny_finetune_settings(widget, epochs=5, steps=20)
    job = widget.finetune_tab.start()
    qtbot.waitUntil(lambda: bool(widget.finetune_tab.plot.losses) or job.done, timeout=JOB_TIMEOUT_MS)
    viewer.close()
    wait_for(qtbot, job)
    assert job.detached and job.cancelled
    assert not errors(notifications)


def test_closing_napari_mid_round_ends_the_process_cleanly(tiny_model_path, tmp_path):
    """Not a segmentation fault: closing waits until the worker has left TensorFlow; the project stays intact."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from napari_unet.project import Project

    script = Path(__file__).with_name("close_mid_round.py")
    project_dir = tmp_path / "project"
    image = np.random.default_rng(0).normal(40, 10, (96, 96)).astype(np.float32)
    mask = np.zeros((96, 96), np.uint8)
    mask[20:40, 20:40] = 1
    Project.init(project_dir, tiny_model_path).add_pair(image + 120 * mask, mask, name="cells")
    env = {**os.environ, "NAPARI_UNET_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(script), str(project_dir)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "closing mid-training" in done.stdout
    project = Project.open(project_dir)
    assert project.training.names() == ["cells"]
    for version in project.store.names():  # whatever was saved loads
        assert project.store.load(version).config.base_width == 4


# --- live threshold: the slider re-thresholds the last prediction from its cached probabilities ---

@pytest.fixture
def contrasty_dock(dock, tmp_path):
    """The dock with a tiny model whose probabilities spread around 0.5, so slider steps change masks."""
    from tiny_models import contrasty_tiny_model

    viewer, widget = dock
    path = tmp_path / "contrasty.keras"
    save_model(contrasty_tiny_model(UNetConfig(base_width=4, depth=2), seed=0), path)
    widget.session.select_model(str(path))
    return viewer, widget


def _mask_changing_steps(probabilities, current_step=50) -> list[int]:
    """Slider steps whose mask is neither empty nor full and differs from the current step's."""
    current = probabilities > current_step / 100
    steps = [step for step in range(45, 56)
             if 0 < (probabilities > step / 100).mean() < 1 and not np.array_equal(probabilities > step / 100, current)]
    assert len(steps) >= 2, "the model's probabilities do not straddle the slider steps near 0.5"
    return steps


def _counting_predict(monkeypatch, widget) -> list:
    """Record every prediction the dock asks its worker process for."""
    calls, worker = [], widget.session.worker
    original = worker.submit
    monkeypatch.setattr(worker, "submit", lambda task, args, listener: (
        calls.append(task) if task.startswith("predict") else None, original(task, args, listener))[1])
    return calls


def test_threshold_slider_rethresholds_the_last_prediction_without_the_model(qtbot, contrasty_dock, blobs_image,
                                                                             notifications, monkeypatch):
    from napari_unet._widgets import _live_threshold
    from napari_unet.prediction import predict

    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    viewer.add_image(blobs_image, name="cells")
    job = wait_for(qtbot, tab.predict())
    assert job.error is None, errors(notifications)
    layer = viewer.layers["cells prediction"]
    probabilities = predict(model_of(widget), blobs_image, output="probabilities")
    first_step, second_step = _mask_changing_steps(probabilities)[:2]
    model_runs = _counting_predict(monkeypatch, widget)

    tab.threshold_slider.setValue(first_step)  # small map: re-thresholded on the GUI thread
    expected = (probabilities > first_step / 100).astype(np.uint8)  # the engine's comparison (semantic_labels)
    qtbot.waitUntil(lambda: np.array_equal(layer.data, expected), timeout=5_000)
    assert tab.threshold_job is None

    monkeypatch.setattr(_live_threshold, "INLINE_PIXELS", 0)  # as for a large map: in a worker
    tab.threshold_slider.setValue(second_step)
    qtbot.waitUntil(lambda: tab.threshold_job is not None and tab.threshold_job.done, timeout=5_000)
    assert tab.threshold_job.error is None, errors(notifications)
    np.testing.assert_array_equal(layer.data, probabilities > second_step / 100)
    assert model_runs == [] and tab.job is job
    assert [lyr.name for lyr in viewer.layers] == ["cells", "cells prediction"]

    layer.paint((20, 20), 1 - int(layer.data[20, 20]))  # the re-thresholded mask counts as the prediction:
    job = wait_for(qtbot, tab.predict())  # a correction is still detected, and the next Predict keeps it
    assert len(model_runs) == 1 and "cells prediction [2]" in viewer.layers
    np.testing.assert_array_equal(viewer.layers["cells prediction [2]"].data, probabilities > second_step / 100)


def test_threshold_slider_leaves_a_corrected_prediction_alone(qtbot, contrasty_dock, blobs_image, notifications):
    from napari_unet._widgets._session import PREDICTION_KEY
    from napari_unet._widgets.predict_widget import THRESHOLD_DEBOUNCE_MS
    from napari_unet.prediction import predict

    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    viewer.add_image(blobs_image, name="cells")
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    layer = viewer.layers["cells prediction"]
    predicted = layer.metadata[PREDICTION_KEY].copy()
    layer.paint((20, 20), 1 - int(layer.data[20, 20]))  # a brush stroke
    corrected = layer.data.copy()
    assert not np.array_equal(corrected, predicted)

    probabilities = predict(model_of(widget), blobs_image, output="probabilities")
    tab.threshold_slider.setValue(_mask_changing_steps(probabilities)[0])
    qtbot.waitUntil(lambda: "corrections in 'cells prediction' are kept" in tab.status_label.text(),
                    timeout=THRESHOLD_DEBOUNCE_MS + 5_000)
    np.testing.assert_array_equal(layer.data, corrected)
    np.testing.assert_array_equal(layer.metadata[PREDICTION_KEY], predicted)
    assert [lyr.name for lyr in viewer.layers] == ["cells", "cells prediction"]


def test_threshold_slider_recomputes_instances_of_the_predicted_slice_only(qtbot, contrasty_dock, blobs_image,
                                                                          notifications):
    from napari_unet.postprocess import instances_from_labels
    from napari_unet.prediction import predict

    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    stack = np.stack([blobs_image, np.roll(blobs_image, 20, axis=1), blobs_image[::-1]])
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    tab.instances_check.setChecked(True)
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    layer = viewer.layers["stack prediction"]
    probabilities = predict(model_of(widget), stack[1], output="probabilities")
    step = next(step for step in _mask_changing_steps(probabilities)
                if instances_from_labels((probabilities > step / 100).astype(np.uint8)).max() > 0)
    expected = instances_from_labels((probabilities > step / 100).astype(np.uint8), objects="foreground")
    assert not np.array_equal(layer.data[1], expected)

    tab.threshold_slider.setValue(step)
    qtbot.waitUntil(lambda: np.array_equal(layer.data[1], expected), timeout=5_000)
    assert layer.data.dtype == np.int32 and not layer.data[[0, 2]].any()


def test_views_menu_averages_that_many_flipped_predictions(qtbot, contrasty_dock, blobs_image, notifications):
    from napari_unet.prediction import predict

    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    assert tab.views_combo.currentData() == 1  # fastest by default
    viewer.add_image(blobs_image, name="cells")
    tab.probabilities_check.setChecked(True)
    tab.views_combo.setCurrentIndex(tab.views_combo.findData(2))
    job = wait_for(qtbot, tab.predict())
    assert job.error is None, errors(notifications)
    model = model_of(widget)
    two_views = predict(model, blobs_image, output="probabilities", test_time_augmentation=2)
    np.testing.assert_allclose(viewer.layers["cells probability"].data, two_views, atol=1e-6)
    assert np.abs(two_views - predict(model, blobs_image, output="probabilities")).max() > 0.01


def test_the_nuclei_model_predicts_separate_objects_by_default(dock):
    viewer, widget = dock
    tab = widget.predict_tab
    widget.session.select_model("nuclei")
    assert tab.instances_check.isChecked()  # its metadata: seeded watershed
    nuclei_min_size = widget.session.model_metadata().min_size
    assert tab.min_size_spin.isEnabled() and tab.min_size_spin.value() == nuclei_min_size
    widget.session.select_model("membranes")
    assert not tab.instances_check.isChecked() and not tab.min_size_spin.isEnabled()


def test_smallest_object_size_decides_which_objects_predict_keeps(qtbot, dock, notifications):
    """The dock's 'Smallest object' overrides the model's own size (nuclei: chosen on validation)."""
    from napari_unet._sample_data import load_nuclei

    viewer, widget = dock
    viewer.add_image(load_nuclei("nuclei_sparse")[0], name="cells")
    widget.session.select_model("nuclei")
    tab = widget.predict_tab
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    default = viewer.layers["cells prediction"].data.copy()
    median = int(np.median(np.bincount(default.ravel())[1:]))
    tab.min_size_spin.setValue(median)
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    kept = viewer.layers["cells prediction"].data
    assert 0 < kept.max() < default.max() and np.bincount(kept.ravel())[1:].min() >= median


def test_first_predict_of_a_shipped_model_runs_on_its_onnx_twin_then_on_tensorflow(qtbot, dock, notifications):
    """While the worker process has not loaded the model, Predict runs its twin in napari's process (onnx_engine.py):
    the same objects."""
    pytest.importorskip("onnxruntime")
    from napari_unet._sample_data import load_nuclei
    from napari_unet._widgets.predict_widget import ONNX_RUNTIME, TENSORFLOW
    from napari_unet.prediction import predict

    viewer, widget = dock
    image = load_nuclei("nuclei_sparse")[0]
    viewer.add_image(image, name="cells")
    widget.session.select_model("nuclei")
    tab = widget.predict_tab
    assert any(job.what == "Preparing the quick start" for job in widget.session.jobs)  # opened with membranes
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    assert tab.engine == ONNX_RUNTIME and "ONNX Runtime" in tab.status_label.text()
    first = viewer.layers["cells prediction"].data.copy()
    assert wait_for(qtbot, widget._warm_up()).error is None  # the dock's warm-up: from now on the worker serves
    same = first == predict(model_of(widget, "nuclei"), image, output="instances", precision="float32")
    assert same.mean() > 0.999 and first.max() > 5
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    assert tab.engine == TENSORFLOW and "ONNX Runtime" not in tab.status_label.text()
    assert (viewer.layers["cells prediction"].data > 0).mean() == pytest.approx((first > 0).mean(), abs=0.01)


# --------------------------------------------------------------------------------------------- Live


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


def test_the_dock_prepares_the_selected_model_in_the_background(qtbot, make_napari_viewer, tiny_model_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    widget.session.select_model(tiny_model_path)  # picked right after opening: this one is warmed up
    qtbot.waitUntil(lambda: any(job.what == "Preparing the model" for job in widget.session.jobs), timeout=5_000)
    warm_up = next(job for job in widget.session.jobs if job.what == "Preparing the model")
    wait_for(qtbot, warm_up)
    assert warm_up.error is None and warm_up.result == tiny_model_path  # loaded and traced in the worker process
    assert widget.session.is_warm(tiny_model_path)


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


def test_a_job_runs_its_task_in_the_worker_process_and_local_work_on_a_thread(qtbot, dock):
    """Tasks (everything that needs TensorFlow) run in the dock's worker process; file work stays on a thread."""
    import os
    import threading

    from napari_unet._widgets._workers import Job

    viewer, widget = dock
    remote = wait_for(qtbot, Job(widget.session.request("worker_tasks:process_id"), what="pid", on_done=print).start())
    assert remote.result == widget.session.worker.pid != os.getpid()
    local = wait_for(qtbot, Job(lambda report, is_cancelled: threading.current_thread() is threading.main_thread(),
                                what="thread", on_done=print).start())
    assert local.result is False


def test_the_warm_up_gives_a_version_saved_without_a_twin_its_twin(qtbot, dock, notifications):
    """Versions saved before twins existed get one once TensorFlow has them (the next napari starts faster);
    a file opened by path never gets one in the user's folder."""
    pytest.importorskip("tf2onnx")
    from napari_unet.model import load_model_file
    from napari_unet.onnx_engine import load_onnx_twin, twin_path

    viewer, widget = dock
    session = widget.session
    opened_by_path = Path(session.model_key)
    record = session.store.save_version(load_model_file(opened_by_path))
    keras_path = Path(record["path"])
    assert not twin_path(keras_path).exists()
    for key in (str(opened_by_path), record["name"]):
        session.select_model(key)
        assert wait_for(qtbot, widget._warm_up()).error is None, errors(notifications)
    assert not twin_path(opened_by_path).exists()
    assert load_onnx_twin(keras_path) is not None  # written for this .keras (its checksum matches)
    assert session.onnx_twin_for(record["name"]) is None  # the worker process is warm: it serves from now on


def test_suggest_a_start_selects_the_model_that_fits_the_corrections_and_says_why(qtbot, dock, blobs_image,
                                                                                  notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    mask = (blobs_image > 100).astype(np.uint8)
    widget.session.project.add_pair(blobs_image, mask, name="cells")
    tab = widget.finetune_tab
    tab.image_combo.reset_choices()
    job = wait_for(qtbot, tab.suggest_start())
    assert job.error is None, errors(notifications)
    proposal = tab.suggestion
    assert proposal["by"] == "corrections" and proposal["name"] == max(proposal["scores"], key=proposal["scores"].get)
    assert widget.session.model_key == proposal["name"]  # bright discs on dark: fluorescence nuclei fit best
    assert proposal["name"] == "nuclei"
    assert any("fits your corrections best" in message for _, message in notifications)

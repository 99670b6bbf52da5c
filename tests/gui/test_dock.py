"""The dock as a whole in a real napari viewer: `napari-unet gui`, the worker process running its tasks, and the
model prepared in the background.

Behaviour (accuracy, training) is tested on the core; here: does each control reach the core in the dock's worker
process, land its result in the right layer, and say what went wrong in words? The tests' own process loads models to
compare with (TensorFlow, imported before the first viewer: conftest.py). Fixtures (dock, notifications, blobs_image,
tiny_model_path) and helpers: dock_fixtures.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dock_fixtures import (
    errors,
    wait_for,
)

from napari_unet._widgets.launch import PLUGIN


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


def test_the_dock_prepares_the_selected_model_in_the_background(qtbot, make_napari_viewer, tiny_model_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    widget.session.select_model(tiny_model_path)  # picked right after opening: this one is warmed up
    qtbot.waitUntil(lambda: any(job.what == "Preparing the model" for job in widget.session.jobs), timeout=5_000)
    warm_up = next(job for job in widget.session.jobs if job.what == "Preparing the model")
    wait_for(qtbot, warm_up)
    assert warm_up.error is None and warm_up.result == tiny_model_path  # loaded and traced in the worker process
    assert widget.session.is_warm(tiny_model_path)


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
    from napari_unet.inference.onnx_engine import load_onnx_twin, twin_path
    from napari_unet.model import load_model_file

    viewer, widget = dock
    session = widget.session
    opened_by_path = Path(session.model_key)
    record = session.store.save_version(load_model_file(opened_by_path))
    keras_path = Path(record.path)
    assert not twin_path(keras_path).exists()
    for key in (str(opened_by_path), record.name):
        session.select_model(key)
        assert wait_for(qtbot, widget._warm_up()).error is None, errors(notifications)
    assert not twin_path(opened_by_path).exists()
    assert load_onnx_twin(keras_path) is not None  # written for this .keras (its checksum matches)
    assert session.onnx_twin_for(record.name) is None  # the worker process is warm: it serves from now on

"""The dock's worker process (napari_unet/worker/): requests, arrays through shared memory, cancel, a worker that
dies or stops answering is ended and started again; and in napari, the dock keeps TensorFlow out of napari's
process and survives its worker being killed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from dock_fixtures import JOB_TIMEOUT_MS, errors, wait_for

from napari_unet.worker.client import Waiter, WorkerClient, WorkerLost

TIMEOUT_S = 120


class Recorder(Waiter):
    """The client's listener, also keeping every progress value it heard."""

    def __init__(self):
        self.progress_values, self.started = [], threading.Event()
        super().__init__(self._heard)

    def _heard(self, value) -> None:
        self.progress_values.append(value)
        self.started.set()


@pytest.fixture
def worker():
    lost = []
    client = WorkerClient(on_lost=lost.append).start()
    client.lost = lost
    yield client
    client.stop()


def _shared_blocks() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_arrays_cross_both_ways_through_shared_memory_and_leave_no_block(worker):
    before = _shared_blocks()
    image = np.random.default_rng(0).integers(0, 255, (1024, 2048), dtype=np.uint8)  # 2 MB: through a block
    small = np.arange(10, dtype=np.float32)  # inside the pickle
    sent = {"image": image, "transposed": image.T, "small": small, "text": "plain values too"}
    echoed = worker.call("worker_tasks:echo", (sent,))
    np.testing.assert_array_equal(echoed["image"], image)
    np.testing.assert_array_equal(echoed["transposed"], image.T)
    np.testing.assert_array_equal(echoed["small"], small)
    assert echoed["text"] == "plain values too"
    assert _shared_blocks() <= before  # read and removed on both sides


def test_cancel_reaches_the_running_task(worker):
    recorder = Recorder()
    job_id = worker.submit("worker_tasks:wait_for_cancel", (), recorder)
    assert recorder.started.wait(TIMEOUT_S)
    worker.cancel(job_id)
    assert recorder.ended.wait(TIMEOUT_S)
    assert recorder.result == "cancelled" and recorder.progress_values == ["started"]


def test_an_error_in_a_task_comes_back_worded_and_a_foreign_one_by_name(worker):
    from napari_unet.errors import ModelLoadError
    from napari_unet.worker.channel import RemoteError
    from napari_unet.worker.tasks import ModelReference

    with pytest.raises(ModelLoadError, match="does not exist"):
        worker.call("warm_up", (ModelReference("/nowhere/model.keras"),))
    with pytest.raises(RemoteError) as raised:
        worker.call("worker_tasks:process_id", ("an argument too many",))
    assert raised.value.type_name == "TypeError" and "Traceback" in raised.value.traceback_text


def test_a_killed_worker_fails_its_jobs_quietly_and_starts_again(worker):
    recorder = Recorder()
    worker.submit("worker_tasks:wait_for_cancel", (), recorder)
    assert recorder.started.wait(TIMEOUT_S)
    first = worker.pid
    os.kill(first, signal.SIGKILL)
    assert recorder.ended.wait(TIMEOUT_S)
    assert isinstance(recorder.error, WorkerLost) and "exit code -9" in str(recorder.error)
    assert len(worker.lost) == 1 and worker.restarts == 1
    assert worker.call("worker_tasks:process_id", ()) == worker.pid != first  # the next job runs in the new one


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP to play a hung process")
def test_a_worker_that_stops_answering_is_ended_and_started_again():
    lost = []
    client = WorkerClient(on_lost=lost.append, unresponsive_seconds=5.0).start()
    try:
        first = client.call("worker_tasks:process_id", ())
        recorder = Recorder()
        client.submit("worker_tasks:wait_for_cancel", (), recorder)
        assert recorder.started.wait(TIMEOUT_S)
        os.kill(first, signal.SIGSTOP)  # hung: no reply to pings any more
        assert recorder.ended.wait(TIMEOUT_S)
        assert isinstance(recorder.error, WorkerLost) and lost == ["stopped answering"]
        assert client.call("worker_tasks:process_id", ()) not in (first, None)
    finally:
        client.stop()


def test_a_worker_that_does_not_end_a_cancelled_task_is_ended_and_started_again():
    lost = []
    client = WorkerClient(on_lost=lost.append, cancel_grace_seconds=3.0).start()
    try:
        recorder = Recorder()
        job_id = client.submit("worker_tasks:ignore_cancel", (), recorder)
        assert recorder.started.wait(TIMEOUT_S)
        client.cancel(job_id)
        assert recorder.ended.wait(TIMEOUT_S)
        assert isinstance(recorder.error, WorkerLost) and lost == ["did not stop a cancelled task"]
        assert client.call("worker_tasks:process_id", ()) == client.pid
    finally:
        client.stop()


# ------------------------------------------------------------------------------------------------- in napari

def test_killing_the_worker_mid_prediction_says_so_once_and_the_next_predict_works(
        qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(np.stack([blobs_image] * 40), name="long stack")
    widget.predict_tab.scope_combo.setCurrentText("all slices")
    first_worker = widget.session.worker.pid
    job = widget.predict_tab.predict()
    job._relay.progress.connect(lambda value: os.kill(first_worker, signal.SIGKILL) if widget.session.worker.pid ==
                                first_worker else None)  # killed at its first tile
    wait_for(qtbot, job)
    assert isinstance(job.error, WorkerLost)
    qtbot.waitUntil(lambda: len(errors(notifications)) == 1, timeout=JOB_TIMEOUT_MS)
    (said,) = errors(notifications)
    assert said.startswith("The compute process stopped unexpectedly") and "restarted" in said and said.count(". ") == 0
    assert "long stack prediction" not in [layer.name for layer in viewer.layers]
    assert widget.predict_tab.predict_button.isEnabled()

    viewer.add_image(blobs_image, name="cells")
    widget.predict_tab.image_combo.select("cells")
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    assert widget.session.worker.pid != first_worker and "cells prediction" in viewer.layers
    assert len(errors(notifications)) == 1


def test_after_a_predict_and_a_round_through_the_buttons_napari_has_no_tensorflow(tiny_model_path, tmp_path):
    """The tests' own process has TensorFlow (conftest.py): the check runs in a fresh pytest without it."""
    script = Path(__file__).with_name("napari_process_checks.py")
    env = {**os.environ, "NAPARI_UNET_HOME": str(tmp_path / "home"), "NAPARI_UNET_TEST_MODEL": tiny_model_path}
    done = subprocess.run([sys.executable, "-m", "pytest", "--noconftest", "-p", "no:cacheprovider", "-q", str(script)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=str(script.parent))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout

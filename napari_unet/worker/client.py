"""napari's side of the worker process: start it, send it requests, hand back their progress and results.

Calls come from the GUI thread and return at once: a sender thread writes the requests (copying large arrays
into shared memory), a reader thread receives the replies and calls each job's listener (which relays to the GUI
thread). A watchdog pings the worker; one that stops answering, or that does not end a cancelled job in time, is
ended. A worker that dies (or was ended) fails its running jobs quietly with WorkerLost, is started again, and
`on_lost` gets one sentence for the user: the project on disk is the state, so a new worker loses nothing.
No Qt here: the dock's Job (_widgets/_workers.py) is the listener.
"""

from __future__ import annotations

import contextlib
import multiprocessing.spawn
import pickle
import queue
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Client, Listener
from typing import Any, Callable, Protocol

from napari_unet.errors import NapariUNetError
from napari_unet.worker.channel import Channel

HEARTBEAT_SECONDS = 2.0
# No reply to pings for this long: the worker hangs (it answers from its own thread while tasks compute, also
# during TensorFlow's import), so it is ended and started again.
UNRESPONSIVE_SECONDS = 60.0
# A cancelled job that has not ended after this long is stuck: the worker is ended (not for the tasks that go on
# by design after a cancel: tasks.FINISH_AFTER_CANCEL).
CANCEL_GRACE_SECONDS = 120.0


class WorkerLost(NapariUNetError):
    """A job's worker process ended before the job did (the dock already told the user, once)."""


class JobListener(Protocol):
    """Called from the client's reader thread, never the GUI thread."""

    def progress(self, value: Any) -> None: ...

    def succeeded(self, result: Any) -> None: ...

    def failed(self, error: BaseException) -> None: ...


@dataclass
class _Job:
    listener: JobListener
    task: str
    generation: int | None = None  # the worker its request went to (None: not sent yet)
    cancelled_at: float | None = None

    def stuck(self, now: float, grace: float) -> bool:
        """Cancelled long ago and still running, though its task stops at a cancel (tasks.FINISH_AFTER_CANCEL)."""
        from napari_unet.worker.tasks import FINISH_AFTER_CANCEL

        return self.cancelled_at is not None and now - self.cancelled_at > grace and self.task not in FINISH_AFTER_CANCEL


class WorkerClient:
    """Owns one worker process: spawned (never forked: napari's process runs Qt and threads) as
    `python -m napari_unet.worker.server`, connected through an authenticated local socket (named pipe on Windows).
    Not a multiprocessing spawn-context Process: that runs the parent's main script again in the child, and a user's
    napari script without a `__main__` guard would open a second viewer there."""

    def __init__(self, on_lost: Callable[[str], None] | None = None, *,
                 unresponsive_seconds: float = UNRESPONSIVE_SECONDS, cancel_grace_seconds: float = CANCEL_GRACE_SECONDS):
        self.on_lost = on_lost
        self.unresponsive_seconds = unresponsive_seconds
        self.cancel_grace_seconds = cancel_grace_seconds
        self.ready = threading.Event()  # the current worker has imported TensorFlow and Keras
        self.ready_info: dict = {}
        self.restarts = 0
        self._lock = threading.Condition()
        self._jobs: dict[int, _Job] = {}
        self._next_job = 1
        self._generation = 0
        self._process: subprocess.Popen | None = None
        self._listener = None
        self._accepting = False  # the reader waits for the current process to connect
        self._channel: Channel | None = None
        self._last_heard = time.monotonic()
        self._kill_reason: str | None = None
        self._stopping = False
        self._closed = False
        self._outbox: queue.Queue = queue.Queue()

    # --- life ---------------------------------------------------------------------------------
    def start(self) -> "WorkerClient":
        self._spawn()
        threading.Thread(target=self._send_loop, name="napari-unet worker sender", daemon=True).start()
        threading.Thread(target=self._watch, name="napari-unet worker watchdog", daemon=True).start()
        return self

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def _spawn(self) -> None:
        """Start a worker process; the reader thread accepts its connection (the GUI thread never waits for it)."""
        authkey = secrets.token_bytes(32)
        listener = Listener(authkey=authkey)
        process = subprocess.Popen([multiprocessing.spawn.get_executable(), "-m", "napari_unet.worker.server"],
                                   stdin=subprocess.PIPE)
        with process.stdin:  # not on the command line: other users of the machine could read it there
            pickle.dump({"address": listener.address, "authkey": authkey, "sys_path": sys.path}, process.stdin)
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._process, self._listener, self._accepting = process, listener, True
            self._last_heard = time.monotonic()
            self._kill_reason = None
            self.ready.clear()
        threading.Thread(target=self._read, args=(generation, listener, process), name="napari-unet worker reader",
                         daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the worker: it cancels what runs and leaves once its tasks have ended (a round saves its version);
        after `timeout` s it is killed. Jobs still running fail quietly (WorkerLost)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            process = self._process
        self._outbox.put((None, ("exit",)))
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with self._lock:
            listener = self._listener if self._accepting else None
        if listener is not None:  # never connected: the reader still waits in accept()
            _wake(listener)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._outbox.put(None)

    # --- jobs ---------------------------------------------------------------------------------
    def submit(self, task: str, args: tuple, listener: JobListener) -> int:
        """Run `task` (a name in worker.tasks.TASKS, or 'module:function') with `args` in the worker; returns the
        job's id. The listener hears progress, then exactly one of succeeded/failed."""
        with self._lock:
            if self._stopping:
                raise NapariUNetError("the dock is closing: nothing new is started")
            job_id = self._next_job
            self._next_job += 1
            self._jobs[job_id] = _Job(listener, task)
        self._outbox.put((job_id, ("run", job_id, task, tuple(args))))
        return job_id

    def cancel(self, job_id: int) -> None:
        """Ask the job to stop at its next check (the task polls job.is_cancelled)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.cancelled_at = job.cancelled_at or time.monotonic()
        self._outbox.put((job_id, ("cancel", job_id)))

    def send(self, job_id: int, message: Any) -> None:
        """A message to a running job (job.messages() in the task), e.g. Live's corrections."""
        self._outbox.put((job_id, ("message", job_id, message)))

    def call(self, task: str, args: tuple, report: Callable[[Any], None] | None = None,
             is_cancelled: Callable[[], bool] | None = None) -> Any:
        """Run `task` and wait for its result (raises its error); for threads other than the GUI thread."""
        waiter = Waiter(report)
        job_id = self.submit(task, args, waiter)
        while not waiter.ended.wait(0.1):
            if is_cancelled is not None and is_cancelled():
                self.cancel(job_id)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def running_jobs(self) -> int:
        with self._lock:
            return len(self._jobs)

    # --- threads ------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            job_id, message = item
            with self._lock:
                while self._channel is None and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                channel, generation = self._channel, self._generation
                if job_id is not None:
                    job = self._jobs.get(job_id)
                    if job is None:
                        continue  # ended already: its cancel or message has nobody to reach
                    if message[0] == "run":
                        job.generation = generation
                    elif job.generation != generation:
                        continue  # its worker is gone
            try:
                channel.send(message)
            except (OSError, EOFError, ValueError):
                pass  # the reader sees the worker gone and fails its jobs
            except Exception as error:  # an argument that does not pickle (a lazy image built in memory): worded
                if job_id is not None and message[0] == "run":
                    self._end(job_id, error=NapariUNetError(
                        f"its input could not be sent to the compute process ({type(error).__name__}: {error}): "
                        "a lazy image must come from a file (zarr, OME-Zarr): save it as zarr and open that"))

    def _read(self, generation: int, listener, process) -> None:
        try:
            channel = Channel(listener.accept())
        except (OSError, EOFError):  # the process ended before it connected (the watchdog woke this thread)
            channel = None
        with self._lock:
            self._accepting = False
        listener.close()
        if channel is None:
            self._lost(generation, None, process)
            return
        with self._lock:
            if self._generation == generation:
                self._channel = channel
                self._lock.notify_all()
        while True:
            try:
                message = channel.receive()
            except Exception:  # EOF, a reset connection, a reply that does not unpickle: the worker is lost
                break
            self._last_heard = time.monotonic()
            kind = message[0]
            if kind == "progress":
                job = self._jobs.get(message[1])
                if job is not None:
                    _quietly(job.listener.progress, message[2])
            elif kind == "done":
                self._end(message[1], result=message[2])
            elif kind == "error":
                self._end(message[1], error=message[2])
            elif kind == "ready":
                self.ready_info = message[1]
                self.ready.set()
        self._lost(generation, channel, process)

    def _end(self, job_id: int, result: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return
        if error is None:
            _quietly(job.listener.succeeded, result)
        else:
            _quietly(job.listener.failed, error)

    def _lost(self, generation: int, channel: Channel | None, process) -> None:
        try:
            process.wait(1.0)
        except subprocess.TimeoutExpired:  # a connection lost by a process still running: end it
            process.kill()
            process.wait()
        with self._lock:
            if self._generation != generation:
                return
            lost = [job_id for job_id, job in self._jobs.items() if job.generation == generation]
            self._channel = None
            stopping = self._stopping
            reason = self._kill_reason or f"stopped unexpectedly (exit code {process.returncode})"
        if channel is not None:
            channel.close()
        if not stopping:  # a new worker first, and the user told, then the lost jobs end (quietly)
            self.restarts += 1
            self._spawn()
            if self.on_lost is not None:
                _quietly(self.on_lost, reason)
        for job_id in lost:
            self._end(job_id, error=WorkerLost(f"the compute process {reason}"))

    def _watch(self) -> None:
        count = 0
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                if self._stopping:
                    return
                process, now = self._process, time.monotonic()
                if self._accepting and process is not None and process.poll() is not None:
                    listener, process = self._listener, None  # it died before connecting
                else:
                    listener = None
                silent = now - self._last_heard > self.unresponsive_seconds
                stuck = any(job.stuck(now, self.cancel_grace_seconds) for job in self._jobs.values())
                if (silent or stuck) and self._kill_reason is None and process is not None:
                    self._kill_reason = "stopped answering" if silent else "did not stop a cancelled task"
                    listener = self._listener if self._accepting else None
                else:
                    process = None
            if process is not None:
                process.kill()  # the reader sees it gone: jobs fail quietly, the worker starts again
            if listener is not None:
                _wake(listener)  # the reader leaves accept(), sees the worker gone and starts another
            if process is not None or listener is not None:
                continue
            count += 1
            self._outbox.put((None, ("ping", count)))


def _wake(listener) -> None:
    """Make a reader waiting in listener.accept() return: a connection that fails the handshake at once."""
    with contextlib.suppress(OSError):
        Client(listener.address).close()


class Waiter:
    """A job's listener for a caller that waits: relays progress to `report`, keeps the result or the error."""

    def __init__(self, report):
        self.report = report
        self.ended = threading.Event()
        self.result, self.error = None, None

    def progress(self, value) -> None:
        if self.report is not None:
            self.report(value)

    def succeeded(self, result) -> None:
        self.result = result
        self.ended.set()

    def failed(self, error) -> None:
        self.error = error
        self.ended.set()


def _quietly(function, *args) -> None:
    """A listener's own failure must not stop the reader thread (it would strand every other job)."""
    try:
        function(*args)
    except Exception:
        import traceback

        traceback.print_exc()

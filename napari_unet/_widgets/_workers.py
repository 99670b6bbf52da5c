"""Jobs of the dock: run work off the GUI thread — in the worker process (WorkerRequest: anything that needs
TensorFlow) or on a thread of napari's process (file work, re-thresholding) — relay its progress to the GUI
thread, cancel it through a flag the core polls, and turn every failure into a notification a user can act on.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from napari_unet.errors import Cancelled, NapariUNetError
from napari_unet.worker.channel import RemoteError
from napari_unet.worker.client import WorkerClient, WorkerLost

# Threads of napari's process for the dock's local work (never TensorFlow: that is the worker process's).
LOCAL_THREADS = 4


class _Relay(QObject):
    """Emitted from any thread, delivered on the GUI thread (queued connection: the relay lives there)."""

    progress = Signal(object)
    returned = Signal(object)
    errored = Signal(object)
    finished = Signal()


@dataclass(frozen=True)
class WorkerRequest:
    """A task of the worker process (worker/tasks.py) with its arguments, for a Job to run there."""

    client: WorkerClient
    task: str
    args: tuple = ()


def describe_error(exc: BaseException, what: str) -> str:
    """A sentence for the user: our own errors already say what to do; others get context."""
    if isinstance(exc, NapariUNetError):
        return f"{what}: {exc}"
    if isinstance(exc, MemoryError):
        return f"{what}: not enough memory. Try a smaller image or a smaller tile size, or close other programs."
    name = exc.type_name if isinstance(exc, RemoteError) else type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (f"{what} failed unexpectedly ({name}{': ' + text if text else ''}). "
            "Details are in the console (View ▸ Console); please report this if it repeats.")


_local_threads: ThreadPoolExecutor | None = None
_local_threads_lock = threading.Lock()


def _local_pool() -> ThreadPoolExecutor:
    global _local_threads
    with _local_threads_lock:
        if _local_threads is None:
            _local_threads = ThreadPoolExecutor(max_workers=LOCAL_THREADS, thread_name_prefix="napari-unet dock")
        return _local_threads


class Job:
    """One long task: a WorkerRequest, run in the worker process, or `function(report, is_cancelled)`, run on a
    thread of napari's process.

    Progress (the task's job.report, or `report(value)`) reaches `on_progress(value)` on the GUI thread.
    `cancel()` sets the flag the core polls between tiles/steps (a message to the worker process). Exactly one
    of on_done(result) / a notification happens, then on_finished(). A job whose worker process died ends
    without a notification of its own: the dock says it once for all of them. A quiet job never notifies.
    """

    def __init__(self, work: WorkerRequest | Callable[[Callable[[Any], None], Callable[[], bool]], Any], *, what: str,
                 on_done: Callable[[Any], None], on_progress: Callable[[Any], None] | None = None,
                 on_finished: Callable[[], None] | None = None, on_cancelled: Callable[[], None] | None = None,
                 quiet: bool = False):
        self.what = what
        self.quiet = quiet  # failures are kept in `error`, never shown (background preparation)
        self.work = work
        self.cancel_event = threading.Event()
        self.ended = threading.Event()  # set (off the GUI thread) once the work has returned or raised
        self.launched = False
        self.job_id: int | None = None  # in the worker process
        self._on_done = on_done
        self._on_finished = on_finished
        self._on_cancelled = on_cancelled
        self.error: BaseException | None = None
        self.result: Any = None
        self.done = False
        self.detached = False  # set when the dock closes: results are then dropped silently
        self._relay = _Relay()
        if on_progress is not None:
            self._relay.progress.connect(on_progress)
        self._relay.returned.connect(self._returned)
        self._relay.errored.connect(self._errored)
        self._relay.finished.connect(self._finished)

    @property
    def remote(self) -> bool:
        return isinstance(self.work, WorkerRequest)

    def start(self) -> "Job":
        self.launched = True
        if self.remote:
            try:
                self.job_id = self.work.client.submit(self.work.task, self.work.args, self)
            except NapariUNetError as exc:  # the dock is closing
                self.failed(exc)
        else:
            _local_pool().submit(self._run_here)
        return self

    def _run_here(self) -> None:
        try:
            result = self.work(self._relay.progress.emit, self.cancel_event.is_set)
        except BaseException as exc:  # every failure reaches the user, worded
            self.failed(exc)
        else:
            self.succeeded(result)

    # The listener of WorkerClient (and of _run_here): called off the GUI thread.
    def progress(self, value: Any) -> None:
        self._relay.progress.emit(value)

    def succeeded(self, result: Any) -> None:
        self.ended.set()
        self._relay.returned.emit(result)
        self._relay.finished.emit()

    def failed(self, error: BaseException) -> None:
        self.ended.set()
        self._relay.errored.emit(error)
        self._relay.finished.emit()

    def cancel(self) -> None:
        self.cancel_event.set()
        if self.remote and self.job_id is not None:
            self.work.client.cancel(self.job_id)

    def send(self, message: Any) -> None:
        """A message to the running task in the worker process (job.messages() there)."""
        if self.remote and self.job_id is not None and not self.ended.is_set():
            self.work.client.send(self.job_id, message)

    def detach(self) -> None:
        """The dock is going away: stop the work at the next check and drop its result."""
        self.detached = True
        self.cancel()

    def wait(self, timeout: float) -> bool:
        """Block until the work has ended (True) or `timeout` s passed (False)."""
        if not self.launched:
            return True  # never started: nothing runs
        return self.ended.wait(timeout)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def _returned(self, result: Any) -> None:
        self.result = result
        if self.detached:
            return
        try:
            self._on_done(result)
        except Exception as exc:  # a bug in a GUI callback must still reach the user
            self._errored(exc)

    def _errored(self, exc: BaseException) -> None:
        self.error = exc
        if self.detached or self.quiet or isinstance(exc, WorkerLost):
            return
        if isinstance(exc, Cancelled):
            show_info(f"{self.what}: cancelled.")
            if self._on_cancelled is not None:
                self._on_cancelled()
            return
        if isinstance(exc, RemoteError):
            print(exc.traceback_text)
        elif not isinstance(exc, NapariUNetError):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        show_error(describe_error(exc, self.what))

    def _finished(self) -> None:
        self.done = True
        if self._on_finished is not None and not self.detached:
            # RuntimeError: the widget was deleted (viewer closed) while the job ran
            with contextlib.suppress(RuntimeError):
                self._on_finished()

"""Worker plumbing shared by the docks: run core functions off the GUI thread, relay progress,
cancel through a flag the core polls, and turn every failure into a notification a user can act on.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from typing import Any, Callable

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from napari_unet.errors import Cancelled, NapariUNetError


class QuietFunctionWorker(FunctionWorker):
    """napari's FunctionWorker without its raw-traceback notification: Job shows a worded one instead."""

    def _relay_error(self, exc: Exception) -> None:  # overrides napari's relay (connected in __init__)
        return None


class _Relay(QObject):
    """Emitted from the worker thread, delivered on the GUI thread (queued connection)."""

    progress = Signal(object)


def describe_error(exc: BaseException, what: str) -> str:
    """A sentence for the user: our own errors already say what to do; others get context."""
    if isinstance(exc, NapariUNetError):
        return f"{what}: {exc}"
    if isinstance(exc, MemoryError):
        return f"{what}: not enough memory. Try a smaller image or a smaller tile size, or close other programs."
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (f"{what} failed unexpectedly ({type(exc).__name__}{': ' + text if text else ''}). "
            "Details are in the console (View ▸ Console); please report this if it repeats.")


_tensorflow_threads = None
_tensorflow_threads_lock = threading.Lock()


def _tensorflow_executor():
    """Python threads that live as long as the process, for every job that may reach TensorFlow.

    Qt's pool threads run Python with a new thread state per job. TensorFlow's pybind11 code caches the thread
    state of the first job in a thread-local and reuses it in a later job on the same pool thread, after
    Python has freed it: napari crashed in the second fine-tuning round (gdb: PyGraph::version_def →
    gil_scoped_acquire → take_gil on a freed thread state; 10 of 12 runs of scripts/screenshot.py). A Python
    thread keeps one thread state for life, so the cached one stays valid. Two threads: as many jobs as
    Qt's pool runs at once on two cores (e.g. Live training while a prediction runs)."""
    global _tensorflow_threads
    with _tensorflow_threads_lock:
        if _tensorflow_threads is None:
            from concurrent.futures import ThreadPoolExecutor

            _tensorflow_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="napari-unet TensorFlow")
        return _tensorflow_threads


def on_tensorflow_thread(function, *args):
    """`function(*args)` after importing TensorFlow the safe way (see _tensorflow.py), on one of the long-lived
    TensorFlow threads (see _tensorflow_executor); the calling thread waits for it."""
    from napari_unet._widgets._tensorflow import ensure_tensorflow

    def run():
        ensure_tensorflow()
        return function(*args)

    return _tensorflow_executor().submit(run).result()


def _with_tensorflow(ended: threading.Event, function, *args):
    """Every job may reach TensorFlow unless it says otherwise (needs_tensorflow=False)."""
    try:
        return on_tensorflow_thread(function, *args)
    finally:
        ended.set()


def _plain(ended: threading.Event, function, *args):
    try:
        return function(*args)
    finally:
        ended.set()


class Job:
    """One long task: `function(report, is_cancelled)` runs in a napari thread worker.

    `report(value)` may be called from the worker thread as often as wanted (e.g. as the core's
    progress callback); `on_progress(value)` then runs on the GUI thread. `cancel()` sets a flag
    that `is_cancelled()` returns, which the core polls between tiles/steps. Exactly one of
    on_done(result) / an error notification happens, then on_finished().
    """

    def __init__(self, function: Callable[[Callable[[Any], None], Callable[[], bool]], Any], *, what: str,
                 on_done: Callable[[Any], None], on_progress: Callable[[Any], None] | None = None,
                 on_finished: Callable[[], None] | None = None, on_cancelled: Callable[[], None] | None = None,
                 needs_tensorflow: bool = True):
        self.what = what
        self.cancel_event = threading.Event()
        self.ended = threading.Event()  # set by the worker thread when the function has returned or raised
        self.launched = False
        self._relay = _Relay()
        self._on_done = on_done
        self._on_finished = on_finished
        self._on_cancelled = on_cancelled
        self.error: BaseException | None = None
        self.result: Any = None
        self.done = False
        self.detached = False  # set when the dock closes: results are then dropped silently
        if on_progress is not None:
            self._relay.progress.connect(on_progress)
        relay = self._relay  # the worker thread holds the relay, not the widget
        # Passing `errored` in _connect stops superqt from also re-raising the error in the event loop.
        self.worker = create_worker(
            _with_tensorflow if needs_tensorflow else _plain, self.ended, function, relay.progress.emit,
            self.cancel_event.is_set, _worker_class=QuietFunctionWorker,
            _start_thread=False,
            _connect={"returned": self._returned, "errored": self._errored, "finished": self._finished},
        )

    def start(self) -> "Job":
        self.launched = True
        self.worker.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    def detach(self) -> None:
        """The dock is going away: stop the work at the next check and drop its result."""
        self.detached = True
        self.cancel_event.set()

    def wait(self, timeout: float) -> bool:
        """Block until the function has left its worker thread (True) or `timeout` s passed (False).

        Used when napari closes: a thread still inside TensorFlow while the interpreter exits crashes it.
        """
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
        if self.detached:
            return
        if isinstance(exc, Cancelled):
            show_info(f"{self.what}: cancelled.")
            if self._on_cancelled is not None:
                self._on_cancelled()
            return
        if not isinstance(exc, NapariUNetError):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        show_error(describe_error(exc, self.what))

    def _finished(self) -> None:
        self.done = True
        if self._on_finished is not None and not self.detached:
            # RuntimeError: the widget was deleted (viewer closed) while the job ran
            with contextlib.suppress(RuntimeError):
                self._on_finished()

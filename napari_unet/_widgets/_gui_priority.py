"""The dock's background work (importing TensorFlow and ONNX Runtime, loading a model, tracing it) kept out
of the GUI thread's way. Three things made the GUI stall while it ran:

- Python's cyclic garbage collector. A full collection walks every tracked object while holding the GIL:
  0.14-0.20 s in a viewer with napari alone (266k objects), more with TensorFlow, and an import that makes
  hundreds of thousands of objects triggers several; whichever thread triggers one, the GUI thread waits.
  So collection is paused during the imports, and what exists after them is frozen (gc.freeze: moved to a
  generation no collection walks). Those are mostly modules, functions and classes, which live as long as
  the process anyway. But the layers open at that moment are frozen too, and a layer napari removes is
  freed by the collector only (its events hold cycles): when a removed layer holds at least
  BIG_LAYER_BYTES of arrays, free_removed_layers() collects once after the removal (0.4 s with TensorFlow
  loaded, right after the user deleted a big layer), else its data could stay in memory for good. A smaller
  frozen layer may stay: a bounded cost, paid at most once per layer open when the imports ended.
- Sharing the GIL. napari's first Labels layer is 0.2 s of Python on the GUI thread; beside an import it
  took twice that. While the GUI thread is inside gui_first(), each import of a TensorFlow or Keras module
  in such a block waits (at most MAX_WAIT_SECONDS) before it starts. Only those: a thread waiting there
  holds the import locks of the modules that import it, which are TensorFlow's and Keras' own; had it
  waited for any module, the GUI thread could have had to wait for one both import.
- Sharing the GIL with TensorFlow's graph building (the warm-up's model load and trace), which holds it in
  long C++ calls: inside yielding_to_the_gui(), a worker thread pauses at its next function call while the
  GUI thread is inside gui_first(). It is a profile function, called at every call: the dock's warm-up took
  3.2 s instead of 1.9 s, which only delays the moment TensorFlow takes over from the ONNX twin.

Measured with benchmarks/bench_first_click.py (--imports-ab; benchmarks/README). The fourth cause, the dynamic
loader's lock, is handled where TensorFlow is imported (_tensorflow.start_after).
"""

from __future__ import annotations

import contextlib
import gc
import threading

BIG_LAYER_BYTES = 64 * 2**20  # a removed layer with this much array data is worth a full collection
MAX_WAIT_SECONDS = 1.0  # an import never waits longer for the GUI (nor could it deadlock with it)
DRAW_SECONDS = 0.15  # after gui_first(): the draw of what the block added

_lock = threading.Lock()
_active = 0  # background_imports() blocks running now, in any thread
_collector_was_enabled = True
_gui_free = threading.Event()
_gui_free.set()
_collect_pending = False


WAITING_PACKAGES = ("tensorflow", "keras", "tf_keras", "tensorboard")
_importing_threads: set[int] = set()  # threads inside background_imports()
_hook_added = False


def _wait_for_the_gui(event: str, args: tuple) -> None:
    """An audit hook (the "import" event is raised before any import lock is taken; a sys.meta_path entry runs
    under the global import lock, so waiting there stalled the GUI thread's own imports: tried)."""
    if (event == "import" and not _gui_free.is_set() and threading.get_ident() in _importing_threads
            and str(args[0]).split(".", 1)[0] in WAITING_PACKAGES
            and threading.current_thread() is not threading.main_thread()):  # the GUI thread never waits
        _gui_free.wait(MAX_WAIT_SECONDS)


@contextlib.contextmanager
def background_imports():
    """For a worker thread's imports: collection paused (the outermost of nested or concurrent blocks
    restores it, then freezes everything alive), and imports that wait while the GUI thread is busy."""
    import sys

    global _active, _collector_was_enabled, _hook_added
    thread = threading.get_ident()
    with _lock:
        if not _hook_added:  # audit hooks stay for the life of the process: added once, idle outside these blocks
            sys.addaudithook(_wait_for_the_gui)
            _hook_added = True
        if _active == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _active += 1
        _importing_threads.add(thread)
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            _importing_threads.discard(thread)
            if _active == 0:
                gc.freeze()
                if _collector_was_enabled:
                    gc.enable()


def _pause_for_the_gui(frame, event, arg) -> None:
    if not _gui_free.is_set():
        _gui_free.wait(MAX_WAIT_SECONDS)


@contextlib.contextmanager
def yielding_to_the_gui():
    """For Python-heavy work in a worker thread that holds no lock the GUI thread takes."""
    import sys

    if threading.current_thread() is threading.main_thread():
        yield
        return
    previous = sys.getprofile()
    sys.setprofile(_pause_for_the_gui)
    try:
        yield
    finally:
        sys.setprofile(previous)


@contextlib.contextmanager
def gui_first():
    """GUI thread: background imports and yielding work wait during the block and the draw after it
    (DRAW_SECONDS). Elsewhere (a script calling dock code from a thread) it does nothing. The release is a
    threading.Timer, not a Qt one, so that nothing (a quitting event loop) can leave the background waiting."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _gui_free.clear()
    try:
        yield
    finally:
        release = threading.Timer(DRAW_SECONDS, _gui_free.set)
        release.daemon = True
        release.start()


def free_removed_layers(event) -> None:
    """viewer.layers.events.removed (GUI thread): after the removal of a big layer, unfreeze, collect and freeze
    again, so that a layer frozen with the imports (see above) is freed. Removals in one go share one collection."""
    from qtpy.QtCore import QTimer

    global _collect_pending
    if _collect_pending or gc.get_freeze_count() == 0 or _array_bytes(getattr(event, "value", None)) < BIG_LAYER_BYTES:
        return
    _collect_pending = True
    QTimer.singleShot(0, _collect_all)


def _array_bytes(layer) -> int:
    """Bytes of the in-memory arrays a layer holds (lazy dask/zarr data: 0, nothing of it is in memory)."""
    import numpy as np

    data = getattr(layer, "data", None)
    levels = data if isinstance(data, (list, tuple)) else [data]  # multiscale: one array per level
    return sum(level.nbytes for level in levels if isinstance(level, np.ndarray))


def _collect_all() -> None:
    global _collect_pending
    with _lock:
        _collect_pending = False
        gc.unfreeze()
        gc.collect()
        gc.freeze()

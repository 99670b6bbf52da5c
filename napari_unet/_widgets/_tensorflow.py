"""Import TensorFlow safely inside a running napari.

On Linux with Mesa OpenGL (llvmpipe under Xvfb, and AMD/Intel drivers that use LLVM), napari's
canvas loads the system libLLVM. TensorFlow bundles its own LLVM; importing it afterwards binds
TF's LLVM static initialisers to the system copy and the process dies with SIGSEGV
(in _GLOBAL__sub_I_DebugInfoMetadata.cpp, seen with TF 2.21 + Mesa/LLVM 15). Loading TensorFlow's
libraries with RTLD_DEEPBIND makes them prefer their own symbols. Only done when libLLVM is
already mapped, so nothing changes elsewhere (macOS, Windows, or TF imported first).
"""

from __future__ import annotations

import os
import sys
import threading
import time

_lock = threading.Lock()
_not_before = 0.0  # time.monotonic() before which a worker thread does not start the import (start_after)


def start_after(seconds: float) -> None:
    """Worker threads start TensorFlow's import no sooner than `seconds` from now. The dock calls this as it is
    built: mapping TensorFlow's 800 MB of libraries holds the dynamic loader's lock, and the dock's first paint
    (Qt loading its plugins) waited up to 0.2 s for it, whether the import came from the dock's own job or
    from a Predict clicked at once."""
    global _not_before
    _not_before = max(_not_before, time.monotonic() + seconds)


def _llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:
        return False


def ensure_tensorflow() -> None:
    """Import tensorflow and keras once, with RTLD_DEEPBIND if the system LLVM is loaded (Linux)."""
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        return
    from napari_unet._widgets._gui_priority import background_imports

    if threading.current_thread() is not threading.main_thread():
        time.sleep(max(0.0, _not_before - time.monotonic()))
    with _lock, background_imports():
        if "tensorflow" not in sys.modules:
            flags = sys.getdlopenflags()
            deep = sys.platform.startswith("linux") and hasattr(os, "RTLD_DEEPBIND") and _llvm_loaded()
            import_flags = flags | os.RTLD_DEEPBIND if deep else flags
            sys.setdlopenflags(import_flags)
            try:
                _load_libraries_without_the_gil(import_flags)
                import tensorflow  # noqa: F401
            finally:
                sys.setdlopenflags(flags)
        _import_keras_without_scikit_learn()


def _load_libraries_without_the_gil(flags: int) -> None:
    """TensorFlow's two big libraries (~800 MB; their static initialisers register every op and kernel), mapped
    before `import tensorflow` without the GIL (_native.py), with the flags the import uses (so RTLD_DEEPBIND
    still holds): building the dock took 0.26-0.45 s with the import's own dlopen beside it, 0.06 s after."""
    from napari_unet._native import package_files, preload

    preload(package_files("tensorflow", "libtensorflow_framework.so.2", "libtensorflow_cc.so.2"), flags)


def _import_keras_without_scikit_learn() -> None:
    """Keras 3 imports scikit-learn (and with it scipy.stats) at import time for its sklearn wrappers,
    which napari-unet never uses: 0.3-0.6 s of the first click, spent holding the GIL. Hide it for the
    import only; keras's wrappers then see no scikit-learn, and a later `import sklearn` (Live's forest
    preview) works as usual."""
    hidden = "sklearn" not in sys.modules
    if hidden:
        sys.modules["sklearn"] = None  # makes `import sklearn` raise ImportError
    try:
        import keras  # noqa: F401
    finally:
        if hidden and sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]

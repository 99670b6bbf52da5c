"""Map big native libraries before Python imports them, without holding Python's lock (GIL).

An extension module's import calls dlopen while holding the GIL, and the libraries' static initialisers
(TensorFlow registers every op and kernel, ~300 ms) then stall every other Python thread, e.g. napari's GUI
thread. dlopen through ctypes releases the GIL; the import that follows finds the libraries mapped.
"""

from __future__ import annotations

import os
import sys


def preload(paths: list[str], flags: int | None = None) -> None:
    """dlopen `paths` (missing ones are skipped) with `flags` (default: the interpreter's dlopen flags, which its
    own import would use). Linux only; any failure is left to the import, which reports it properly."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        dlopen = ctypes.CDLL(None).dlopen
    except (OSError, AttributeError):
        return
    dlopen.argtypes, dlopen.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_void_p
    for path in paths:
        if os.path.exists(path):
            dlopen(path.encode(), sys.getdlopenflags() if flags is None else flags)


def package_files(package: str, *names: str) -> list[str]:
    """Paths of files in an installed package's folder, found without importing it ([] if it is missing)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = spec.submodule_search_locations[0]
    return [os.path.join(folder, name) for name in names]

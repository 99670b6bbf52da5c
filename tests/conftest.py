"""Shared fixtures: real ISBI data from ../shared/data, and an isolated model store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The dock's fixtures (a viewer with the dock, notifications, tiny images and model) for the GUI tests; the module
# imports neither Qt nor napari nor TensorFlow until a fixture is used.
pytest_plugins = ("dock_fixtures",)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ISBI_DIR = SHARED_DATA / "isbi2012"
NUCLEI_DIR = SHARED_DATA / "nuclei_dsb2018"


def _shared_data(folder: Path, what: str) -> Path:
    """`folder` if its images/ are there, else skip naming the first folder that is missing."""
    for needed in (SHARED_DATA, folder, folder / "images"):
        if not needed.is_dir():
            pytest.skip(f"needs ../shared/data ({what}): folder {needed} is missing")
    return folder


@pytest.fixture
def isbi_dir() -> Path:
    """The ISBI 2012 slices (images/NN.png, masks/NN.png); skips only where ../shared is absent."""
    return _shared_data(ISBI_DIR, "ISBI 2012 EM slices")


@pytest.fixture
def nuclei_dir() -> Path:
    """The DSB 2018 fluorescence nuclei (images/<id>.tif, masks/<id>.tif instance labels)."""
    return _shared_data(NUCLEI_DIR, "DSB 2018 nuclei")


# Markers ([tool.pytest.ini_options] in pyproject.toml) given by the fixtures a test uses, so a new test needs no
# decorator to be selected or deselected with -m: "gui" (napari viewer or Qt), "shared_data" (../shared/data).
_MARKER_OF_FIXTURE = {"make_napari_viewer": "gui", "make_napari_viewer_proxy": "gui", "qtbot": "gui", "qapp": "gui",
                      "isbi_dir": "shared_data", "nuclei_dir": "shared_data"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in sorted({_MARKER_OF_FIXTURE[name] for name in getattr(item, "fixturenames", ())
                              if name in _MARKER_OF_FIXTURE}):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """Before the first test of a run that opens napari viewers, import TensorFlow.

    The tests' own process uses TensorFlow beside napari (the dock itself keeps it in its worker process). It must
    be loaded before any viewer brings up Mesa's OpenGL (and its libLLVM): in the other order, on Linux with Mesa,
    TensorFlow's bundled LLVM binds to the system's and the import dies with a segmentation fault. Collecting, and
    runs without a viewer, leave it to the tests that need it."""
    if not session.config.option.collectonly and any(item.get_closest_marker("gui") for item in session.items):
        import tensorflow  # noqa: F401


@pytest.fixture(autouse=True)
def float32_between_processes(request, monkeypatch):
    """GUI tests compare what the dock's worker process computed with what the test process computes. In
    bfloat16 two processes need not round alike (seen: 1 pixel in 9216 flipped, probabilities 1e-3 apart,
    only in the full suite); in float32 they agree. The worker inherits this environment variable."""
    if request.node.get_closest_marker("gui") is not None:
        from napari_unet.inference.precision import ENVIRONMENT_VARIABLE

        monkeypatch.setenv(ENVIRONMENT_VARIABLE, "float32")


@pytest.fixture(autouse=True)
def isolated_model_store(tmp_path_factory, monkeypatch):
    """Never let a test write into the user's real model folder."""
    home = tmp_path_factory.mktemp("napari_unet_home")
    monkeypatch.setenv("NAPARI_UNET_HOME", str(home))
    return home


# --- exit crash of TensorFlow + Mesa OpenGL in one process (the tests' own; see the import above) ---
# When TensorFlow is imported before napari's OpenGL (as the core tests do), TF's bundled LLVM and
# Mesa's libLLVM both register LLVM options; their C++ destructors at process exit free each other's
# memory: "free(): invalid pointer", exit code 134 after every test passed. Once the session is over,
# leave without running C++ static destructors, keeping pytest's exit status.
_SESSION_STATUS = {}


def pytest_sessionfinish(session, exitstatus):
    _SESSION_STATUS["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import sys

    if "tensorflow" in sys.modules and sys.platform.startswith("linux") and "code" in _SESSION_STATUS:
        try:
            with open("/proc/self/maps") as maps:
                llvm_loaded = any("libLLVM" in line for line in maps)
        except OSError:
            llvm_loaded = False
        if llvm_loaded:
            # os._exit skips atexit handlers: stop pytest-xvfb's display ourselves.
            xvfb = sys.modules.get("pytest_xvfb")
            if xvfb is not None:
                xvfb.shutdown_xvfb()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(_SESSION_STATUS["code"])


@pytest.fixture
def start_model(tmp_path) -> str:
    """A tiny (base width 4, depth 2) random model saved as a .keras file: the start of test projects."""
    import keras

    from napari_unet.model import UNetConfig, new_model, save_model

    keras.utils.set_random_seed(0)
    return str(save_model(new_model(UNetConfig(base_width=4, depth=2), tile_size=64, name="tiny"), tmp_path / "tiny.keras"))


@pytest.fixture
def lock_holder():
    """hold(path): another process that takes the file lock on `path` (filelock) and keeps it until killed.

    Returns its Popen once it holds the lock; kill it to play a holder that crashed. Killed at teardown.
    """
    import subprocess
    import sys

    holders = []
    code = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(600)")

    def hold(path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        holders.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in holders:
        process.kill()
        process.wait()

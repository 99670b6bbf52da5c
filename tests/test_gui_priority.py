"""The dock's background imports stay out of the GUI thread's way (napari_unet/_widgets/_gui_priority.py)."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from napari_unet._widgets import _gui_priority
from napari_unet._widgets._gui_priority import background_imports, gui_first


@pytest.fixture
def waiting_package(tmp_path, monkeypatch):
    """A package the hook treats as TensorFlow's, and one it does not, importable from tmp_path."""
    for name in ("fake_tensorflow_for_test", "plain_package_for_test"):
        (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_gui_priority, "WAITING_PACKAGES", ("fake_tensorflow_for_test",))
    yield "fake_tensorflow_for_test", "plain_package_for_test"
    for name in ("fake_tensorflow_for_test", "plain_package_for_test"):
        sys.modules.pop(name, None)


def _import_in_background(name: str) -> threading.Event:
    done = threading.Event()

    def work():
        with background_imports():
            __import__(name)
        done.set()

    threading.Thread(target=work, daemon=True).start()
    return done


def test_collection_is_paused_during_the_imports_and_what_they_made_is_frozen_after():
    enabled_before = gc.isenabled()
    frozen_before = gc.get_freeze_count()
    with background_imports():
        assert not gc.isenabled()
        with background_imports():  # nested (or another thread's): the outer block restores
            pass
        assert not gc.isenabled()
        made_inside = [[] for _ in range(1000)]  # containers: objects the collector tracks
    assert gc.isenabled() == enabled_before
    assert gc.get_freeze_count() >= frozen_before + len(made_inside)


def test_a_tensorflow_import_waits_while_the_gui_thread_is_busy_and_others_do_not(qtbot, waiting_package):
    waiting, plain = waiting_package
    with gui_first():
        plain_done = _import_in_background(plain)
        assert plain_done.wait(5.0), "an import outside TensorFlow's packages must not wait for the GUI"
        waiting_done = _import_in_background(waiting)
        assert not waiting_done.wait(0.3), "TensorFlow's import must wait while the GUI thread is busy"
    qtbot.waitUntil(waiting_done.is_set, timeout=5000)  # free once the draw after the block is over
    assert sys.modules[waiting].VALUE == 1


def test_the_gui_thread_itself_never_waits(qtbot, waiting_package, monkeypatch):
    waiting, _ = waiting_package
    waits = []

    class RecordingEvent(threading.Event):
        def wait(self, timeout=None):
            waits.append(threading.current_thread() is threading.main_thread())
            return super().wait(timeout)

    monkeypatch.setattr(_gui_priority, "_gui_free", RecordingEvent())
    _gui_priority._gui_free.set()
    with gui_first(), background_imports():
        __import__(waiting)
    assert waiting in sys.modules
    assert waits == []
    qtbot.waitUntil(_gui_priority._gui_free.is_set, timeout=5000)


def test_only_the_removal_of_a_big_layer_costs_a_full_collection(qtbot, monkeypatch):
    """A full collection takes 0.4 s with TensorFlow loaded: worth it to free a big frozen layer, not for the
    prediction layers a user deletes all the time."""
    from types import SimpleNamespace

    import numpy as np

    collections = []
    def collect_all():  # what the real one records, without the 0.4 s
        collections.append(True)
        _gui_priority._collect_pending = False

    monkeypatch.setattr(_gui_priority, "_collect_all", collect_all)
    monkeypatch.setattr(gc, "get_freeze_count", lambda: 1)
    small = SimpleNamespace(data=np.zeros((512, 512), np.uint16))
    big = SimpleNamespace(data=[np.zeros(_gui_priority.BIG_LAYER_BYTES, np.uint8), np.zeros(4, np.uint8)])
    _gui_priority.free_removed_layers(SimpleNamespace(value=small))
    qtbot.wait(50)
    assert collections == []
    _gui_priority.free_removed_layers(SimpleNamespace(value=big))  # multiscale: its levels count
    qtbot.waitUntil(lambda: collections == [True], timeout=5000)


def test_gui_first_outside_the_gui_thread_holds_nothing_back():
    """Dock code called from a script's thread must not make TensorFlow's import wait."""
    seen = []

    def work():
        with gui_first():
            seen.append(_gui_priority._gui_free.is_set())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert seen == [True]

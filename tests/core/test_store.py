"""ModelStore: versions, records, read-only shipped models, atomic saves, locking, unwritable folders."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_unet.errors import NapariUNetError
from napari_unet.model import UNetConfig, new_model, save_model
from napari_unet.storage import registry
from napari_unet.storage import shipped as shipped_module
from napari_unet.storage.records import PairFingerprint
from napari_unet.storage.store import ModelStore, array_sha1, pair_fingerprint

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    return new_model(UNetConfig(base_width=4, depth=2), name="membranes", tile_size=64)


@pytest.fixture
def store(isolated_model_store):
    return ModelStore()


@pytest.fixture
def shipped(tmp_path, monkeypatch, tiny):
    """A fake shipped model 'membranes' in a temporary models folder."""
    folder = tmp_path / "shipped"
    save_model(tiny, folder / "membranes.keras")
    monkeypatch.setattr(shipped_module, "SHIPPED_MODELS_DIR", folder)
    return folder


def _visible_files(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if not p.name.startswith(".")}


def test_root_follows_napari_unet_home(isolated_model_store, store):
    assert store.root == Path(isolated_model_store) / "models"


def test_versions_are_numbered_per_lineage_and_listed_newest_first(store, tiny):
    image, mask = np.arange(16).reshape(4, 4), np.eye(4, dtype=np.uint8)
    first = store.save_version(tiny, training_pairs=[(image, mask)], settings={"epochs": 2})
    second = store.save_version(tiny, parent=first.name)
    assert (first.name, second.name) == ("membranes-v1", "membranes-v2")
    assert store.names() == ["membranes-v2", "membranes-v1"]
    assert second.parent == "membranes-v1" and second.lineage == "membranes"
    record = store.record("membranes-v1")
    assert record.training_pairs == (PairFingerprint(array_sha1(image), array_sha1(mask), (4, 4)),)
    on_disk = json.loads((store.root / "membranes-v1.json").read_text())
    assert on_disk["training_pairs"] == [{"image_sha1": array_sha1(image), "mask_sha1": array_sha1(mask), "shape": [4, 4]}]
    assert record.settings == {"epochs": 2} and record.created
    loaded = store.load("membranes-v1")
    assert loaded.source == "membranes-v1"
    for a, b in zip(loaded.keras_model.get_weights(), tiny.keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # a loaded version saved again (e.g. after fine-tuning) continues its lineage with it as parent
    third = store.save_version(loaded)
    assert third.name == "membranes-v3" and third.parent == "membranes-v1"


def test_hashes_differ_for_different_data():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[0, 0] = 1
    assert array_sha1(a) != array_sha1(b) and array_sha1(a) == array_sha1(a.copy())
    assert pair_fingerprint(a, b, "x").name == "x"


def test_history_metrics_are_recorded(store, tiny):
    from napari_unet.training import TrainHistory

    history = TrainHistory(steps=12, seconds=3.5, val_iou=0.7, val_dice=0.8, final_loss=0.4, best_epoch=2,
                           settings={"learning_rate": 1e-4})
    record = store.save_version(tiny, history, name="mine", metrics={"held_out_iou": 0.75})
    assert record.metrics["val_iou"] == 0.7 and record.metrics["steps"] == 12
    assert record.metrics["held_out_iou"] == 0.75
    assert record.settings["learning_rate"] == 1e-4 and record.seconds == 3.5
    assert store.list_versions()[0].metrics["val_iou"] == 0.7


def test_rename_delete_revert_export(store, tiny, tmp_path):
    store.save_version(tiny, name="base")
    child = store.save_version(tiny, parent="base")
    assert child.name == "base-v1"
    store.rename("base", "start")
    assert set(store.names()) == {"start", "base-v1"}
    assert store.record("base-v1").parent == "start"  # children follow the rename
    reverted = store.revert("start")
    assert reverted.parent == "start" and reverted.reverted_from == "start"
    assert store.names()[0] == reverted.name  # the newest version is the current one
    assert {"start", "base-v1"} <= set(store.names())  # revert deletes nothing
    exported = store.export("start", tmp_path / "out" / "copy.keras")
    assert exported.is_file()
    with pytest.raises(NapariUNetError, match="already exists"):
        store.export("start", exported)
    store.delete("base-v1")
    assert "base-v1" not in store.names() and not (store.root / "base-v1.keras").exists()
    with pytest.raises(NapariUNetError, match="no stored model version named 'base-v1'"):
        store.load("base-v1")


def test_bad_names_are_refused(store, tiny):
    store.save_version(tiny, name="taken")
    for name, message in (("taken", "already exists"), ("../evil", "not a valid model name"), ("a b", "not a valid")):
        with pytest.raises(NapariUNetError, match=message):
            store.save_version(tiny, name=name)


def test_shipped_models_are_read_only(store, tiny, shipped, tmp_path):
    with pytest.raises(NapariUNetError, match="shipped model"):
        store.delete("membranes")
    with pytest.raises(NapariUNetError, match="shipped model"):
        store.rename("membranes", "other")
    with pytest.raises(NapariUNetError, match="shipped model"):
        store.save_version(tiny, name="membranes")
    assert (shipped / "membranes.keras").is_file()
    assert store.export("membranes", tmp_path / "m.keras").is_file()
    # fine-tunes of the shipped model get versions of its lineage
    assert store.save_version(registry.load_model("membranes")).name == "membranes-v1"
    assert registry.load_model("membranes-v1").source == "membranes-v1"


def test_concurrent_saves_from_threads_get_distinct_versions(store, tiny):
    records, errors = [], []

    def save():
        try:
            records.append(store.save_version(tiny, parent="membranes").name)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(records) == [f"membranes-v{i}" for i in range(1, 5)]
    assert len(store.list_versions()) == 4


def test_a_save_while_another_process_holds_the_store_lock_waits_then_says_so(store, tiny, lock_holder, monkeypatch):
    import napari_unet.storage.store as store_module

    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_SECONDS", 0.3)
    store.root.mkdir(parents=True, exist_ok=True)
    holder = lock_holder(store.root / ".lock")
    with pytest.raises(NapariUNetError, match=r"model folder .* is locked by another save.*wait for it"):
        store.save_version(tiny)
    assert store.names() == []
    holder.kill()  # the other napari-unet dies holding the lock: the OS releases it
    holder.wait()
    assert store.save_version(tiny).name == "membranes-v1"


SAVER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from napari_unet.model import UNetConfig, new_model
    from napari_unet.storage.store import ModelStore
    model = new_model(UNetConfig(base_width=4, depth=2), name="membranes")
    store = ModelStore()
    mode = sys.argv[1]
    if mode == "parallel":
        names = [store.save_version(model).name for _ in range(3)]
        print(" ".join(names), flush=True)
        sys.exit(0)
    store.save_version(model)  # membranes-v1, complete
    import zipfile, napari_unet.storage.store as store_module
    def hang(*args, **kwargs):
        print("saving", flush=True)
        time.sleep(120)
    if mode == "during-model":  # killed while the .keras temp file is being written
        zipfile.ZipFile.writestr = hang
    else:  # killed after the .keras is in place, while the record is written
        store_module.ModelStore._write_record = hang
    store.save_version(model)
    """
)


def _start_saver(mode: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SAVER.format(repo=str(REPO_ROOT)), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


@pytest.mark.parametrize("mode", ["during-model", "during-record"])
def test_a_save_killed_midway_leaves_no_visible_half_version(store, mode):
    process = _start_saver(mode, dict(os.environ))
    try:
        assert process.stdout.readline().strip() == "saving"
    finally:
        process.kill()  # SIGKILL: no cleanup handlers run
        process.wait()
    assert store.names() == ["membranes-v1"]
    assert store.load("membranes-v1").keras_model is not None
    assert _visible_files(store.root) <= {"membranes-v1.keras", "membranes-v1.json", "membranes-v2.keras"}
    # the next save removes the debris and reuses the number of the save that never completed
    model = store.load("membranes-v1")
    assert store.save_version(model, name=None).name == "membranes-v2"
    assert _visible_files(store.root) == {f"membranes-v{i}.{ext}" for i in (1, 2) for ext in ("keras", "json")}


def test_two_processes_saving_at_once_get_distinct_versions(store):
    processes = [_start_saver("parallel", dict(os.environ)) for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0].split() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    names = [name for output in outputs for name in output]
    assert sorted(names, key=lambda n: int(n.rsplit("v", 1)[1])) == [f"membranes-v{i}" for i in range(1, 7)]
    assert len(store.list_versions()) == 6


def test_full_disk_leaves_nothing_half_written(store, tiny, monkeypatch):
    store.save_version(tiny)
    before = _visible_files(store.root)
    real_replace = os.replace

    def disk_full(source, target, *args, **kwargs):
        if str(target).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(NapariUNetError, match=r"cannot write to model folder .*disk is full.*NAPARI_UNET_HOME"):
        store.save_version(tiny)
    assert _visible_files(store.root) == before
    assert not [p for p in store.root.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_read_only_folder_gives_a_clear_error(store, tiny, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    import tempfile

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # no file can be created in the folder
    with pytest.raises(NapariUNetError, match="cannot write to model folder .*Permission denied.*NAPARI_UNET_HOME"):
        store.save_version(tiny)
    assert _visible_files(store.root) == set()
    assert store.names() == []


def test_model_folder_that_cannot_be_created(tmp_path, tiny):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(NapariUNetError, match="cannot write to model folder"):
        ModelStore(blocker / "models").save_version(tiny)


def test_saving_a_version_never_changes_the_model_a_caller_holds(store, tiny, monkeypatch):
    """Another thread may be predicting with the model while it is saved: its metadata must not move."""
    import napari_unet.model as model_module

    names_seen_during_save = []
    real_save = model_module.save_model

    def watching_save(model, path):
        names_seen_during_save.append(tiny.metadata.name)
        return real_save(model, path)

    monkeypatch.setattr(model_module, "save_model", watching_save)
    original = tiny.metadata.name
    record = store.save_version(tiny, name="watched")
    assert names_seen_during_save == [original] and tiny.metadata.name == original
    assert store.load(record.name).metadata.name == "watched"

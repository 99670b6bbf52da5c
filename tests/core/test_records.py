"""The records that cross modules (records.py): JSON round trips, and project folders and model stores written
before a field existed."""

from __future__ import annotations

import json
import pickle

import pytest

from napari_unet.project import Project
from napari_unet.storage.records import (
    ModelEntry,
    PairFingerprint,
    RoundEvaluation,
    RoundRecord,
    RoundTraining,
    VersionRecord,
)

EVAL = {"before": {"iou": 0.5, "dice": 0.6667, "pixel_error": 0.1}, "after": {"iou": 0.7, "dice": 0.8235,
        "pixel_error": 0.05}, "source": "evaluation pairs", "units": 12, "delta_iou_interval": [0.1, 0.3],
        "verdict": "helped"}
ROUND = {"format": "napari-unet-round/1", "round": 2, "parent": "membranes", "version": "membranes-v2", "kept": True,
         "reason": "It helped.", "eval": EVAL, "seconds": 41.5,
         "training": {"steps": 120, "seconds": 38.0, "stopped_reason": "time budget", "pairs": ["a", "b"],
                      "settings": {"seed": 0, "augmentation": {"rotations": True}}},
         "adaptation": {"new_domain": False}, "created": "2026-11-30T10:00:00+00:00"}
REVERT = {"format": "napari-unet-round/1", "round": 3, "kind": "revert", "parent": "membranes-v2",
          "version": "membranes", "kept": True, "reason": "Reverted to 'membranes' by the user; it is active again.",
          "eval": EVAL, "seconds": 0.0, "created": "2026-11-30T10:05:00+00:00"}


@pytest.mark.parametrize("values", [ROUND, REVERT], ids=["round", "revert"])
def test_a_round_record_reads_and_writes_the_json_it_was_read_from(values):
    record = RoundRecord.from_json(json.loads(json.dumps(values)))
    assert json.dumps(record.to_json()) == json.dumps(values)  # same keys, same order, same values


def test_fields_are_typed_and_frozen():
    record = RoundRecord.from_json(ROUND)
    assert isinstance(record.eval, RoundEvaluation) and record.eval.after["iou"] == 0.7
    assert isinstance(record.training, RoundTraining) and record.training.pairs == ("a", "b")
    assert not record.is_revert and RoundRecord.from_json(REVERT).is_revert
    assert RoundRecord.from_json(REVERT).training is None
    with pytest.raises(AttributeError):
        record.kept = False


def test_the_public_json_is_the_cli_contract():
    assert RoundRecord.from_json(ROUND).public_json() == {key: ROUND[key] for key in
                                                        ("round", "parent", "version", "kept", "reason", "eval",
                                                         "seconds")}


def test_an_older_record_without_the_newer_fields_loads_and_unknown_keys_survive():
    old = {"format": "napari-unet-round/1", "round": 1, "parent": "nuclei", "version": "nuclei-v1", "kept": False,
           "reason": "Rolled back: it predicts nothing.", "seconds": 9.0,
           "eval": {"before": {"iou": 0.4}, "after": {"iou": 0.0}, "verdict": "rolled back", "per_class": [0.1]},
           "training": {"steps": 30, "seconds": 8.0}, "note": "written by a later version"}
    record = RoundRecord.from_json(old)
    assert record.adaptation is None and record.created == "" and record.training.pairs == ()
    assert record.extra == {"note": "written by a later version"} and record.eval.extra == {"per_class": [0.1]}
    again = record.to_json()
    assert again["note"] == old["note"] and again["eval"]["per_class"] == [0.1] and again["training"]["steps"] == 30


def test_a_project_folder_with_old_round_files_lists_its_rounds_and_active_version(tmp_path):
    root = tmp_path / "p"
    (root / "rounds").mkdir(parents=True)
    (root / "project.json").write_text(json.dumps({"format": "napari-unet-project/1", "start_model": "membranes"}))
    kept = {key: value for key, value in ROUND.items() if key not in ("adaptation", "created")}
    (root / "rounds" / "0001.json").write_text(json.dumps({**kept, "round": 1, "version": "membranes"}))
    (root / "rounds" / "0002.json").write_text("{not json")  # a torn file is not a round
    (root / "rounds" / "0003.json").write_text(json.dumps({"format": "napari-unet-round/1", "round": 3}))  # nor this
    project = Project(root)
    assert [r.round for r in project.rounds()] == [1]
    assert project.active == "membranes"
    assert project.status()["rounds"] == [{**RoundRecord.from_json(kept).public_json(), "round": 1,
                                          "version": "membranes"}]


def test_a_model_entry_round_trips():
    shipped = ModelEntry(name="nuclei", kind="shipped", path="/m/nuclei.keras", metrics={"ap50": 0.84})
    version = ModelEntry(name="nuclei-v1", kind="version", path="/s/nuclei-v1.keras", parent="nuclei",
                         created="2026-11-30", kept=False, store="/s")
    for entry in (shipped, version):
        assert ModelEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    assert shipped.is_shipped and not version.is_shipped and "store" not in shipped.to_json()


PAIR = {"image_sha1": "1f" * 20, "mask_sha1": "2e" * 20, "shape": [256, 256], "name": "cells_01.tif"}
# A version as a project's round writes it (store.save_version with the round's extra keys), key for key.
VERSION = {"format": "napari-unet-version/1", "name": "nuclei-v2", "lineage": "nuclei", "parent": "nuclei-v1",
           "created": "2026-11-30T10:00:00.123456+00:00", "sequence": 1796032800123456789,
           "metrics": {"val_iou": 0.71, "val_dice": 0.83, "final_loss": 0.21, "steps": 120, "best_epoch": 3,
                       "stopped_reason": "time budget", "eval_iou": 0.69, "eval_dice": 0.81, "eval_pixel_error": 0.04},
           "settings": {"learning_rate": 0.0003, "patch_size": 256, "augmentation": {"rotations": True}},
           "seconds": 38.123, "training_pairs": [PAIR, {**PAIR, "name": "cells_02.tif"}],
           "model": {"config": {"n_channels": 1, "base_width": 16, "depth": 3, "n_classes": 3,
                                "upsampling": "transpose", "batch_norm": True, "dropout": 0.0},
                     "class_names": ["background", "nucleus", "boundary"], "tile_size": 256},
           "project_round": 2, "kept": True, "failed_reason": None, "seed": 0, "package_version": "0.9.0",
           "evaluation_source": "evaluation pairs", "evaluation_pairs": [{**PAIR, "name": "eval_01.tif"}]}
# A version saved outside a project (napari-unet finetune), then one store.revert made of it.
PLAIN_VERSION = {key: VERSION[key] for key in list(VERSION)[:11]}
REVERTED_VERSION = {**PLAIN_VERSION, "name": "nuclei-v3", "parent": "nuclei-v2", "seconds": None,
                    "training_pairs": [{key: value for key, value in PAIR.items() if key != "name"}],
                    "reverted_from": "nuclei-v2"}


@pytest.mark.parametrize("values", [VERSION, PLAIN_VERSION, REVERTED_VERSION], ids=["round", "plain", "revert"])
def test_a_version_record_reads_and_writes_the_json_it_was_read_from(values):
    record = VersionRecord.from_json(json.loads(json.dumps(values)))
    assert json.dumps(record.to_json()) == json.dumps(values)  # same keys, same order, same values


def test_version_fields_are_typed_frozen_and_cross_processes():
    record = VersionRecord.from_json(VERSION)
    assert record.training_pairs[1] == PairFingerprint("1f" * 20, "2e" * 20, (256, 256), "cells_02.tif")
    assert record.evaluation_pairs[0].name == "eval_01.tif" and record.kept and not record.rolled_back
    assert VersionRecord.from_json({**VERSION, "kept": False, "failed_reason": "it predicts nothing"}).rolled_back
    plain = VersionRecord.from_json(PLAIN_VERSION)
    assert plain.kept is None and not plain.rolled_back and plain.project_round is None and plain.reverted_from is None
    assert VersionRecord.from_json(REVERTED_VERSION).training_pairs[0].name == ""
    with pytest.raises(AttributeError):
        record.parent = "other"
    assert pickle.loads(pickle.dumps(record)) == record  # as the dock's worker process sends it


def test_an_older_version_record_without_the_newer_fields_loads_and_unknown_keys_survive():
    old = {"format": "napari-unet-version/1", "name": "membranes-v1", "parent": "membranes",
           "created": "2026-11-25T09:40:00+00:00", "metrics": None, "settings": {"epochs": 2},
           "training_pairs": [{"image_sha1": "ab", "mask_sha1": "cd", "shape": [4, 4], "rank": 1}],
           "note": "written by a later version"}
    record = VersionRecord.from_json(old)
    assert (record.lineage, record.sequence, record.seconds, record.model, record.metrics) == ("", 0, None, {}, {})
    assert record.kept is None and record.evaluation_source is None and record.path == ""
    assert record.extra == {"note": "written by a later version"} and record.training_pairs[0].extra == {"rank": 1}
    again = record.to_json()
    assert again["note"] == old["note"] and again["training_pairs"] == old["training_pairs"]
    assert "kept" not in again and "failed_reason" not in again and "reverted_from" not in again


def test_a_model_store_with_old_and_damaged_records_lists_the_readable_versions(tmp_path):
    from napari_unet.storage.store import ModelStore

    store = ModelStore(tmp_path / "models")
    store.root.mkdir(parents=True)
    for name, values in (("nuclei-v2", VERSION), ("old", {"format": "napari-unet-version/1", "parent": "membranes"}),
                         ("torn", {**PLAIN_VERSION, "training_pairs": [{"shape": [4, 4]}]})):
        (store.root / f"{name}.keras").write_bytes(b"")
        (store.root / f"{name}.json").write_text(json.dumps({**values, "name": "stale-name"}))
    assert store.names() == ["nuclei-v2", "old"]  # newest first; a record that cannot be read is not a version
    record = store.record("nuclei-v2")
    assert record.name == "nuclei-v2" and record.path == str(store.root / "nuclei-v2.keras")
    assert store.record("old").parent == "membranes" and store.record("torn") is None

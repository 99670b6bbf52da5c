"""The records that cross modules (records.py): JSON round trips, and project folders written before a field existed."""

from __future__ import annotations

import json

import pytest

from napari_unet.project import Project
from napari_unet.storage.records import ModelEntry, RoundEvaluation, RoundRecord, RoundTraining

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

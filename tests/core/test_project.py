"""The loop as a project (project.py) and its command line: rounds, guard and rollback, lineage, bad input."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import tifffile
from filelock import FileLock
from synthetic_images import bright_discs

from napari_unet.cli import main
from napari_unet.errors import NapariUNetError
from napari_unet.model import UNetConfig, new_model, save_model
from napari_unet.project import Project
from napari_unet.storage.store import array_sha1
from napari_unet.training import TrainConfig

# Enough for a base-width-4 model to learn bright discs on a dark background (about 2 s).
QUICK = TrainConfig(epochs=2, steps_per_epoch=15, batch_size=2, patch_size=64, learning_rate=1e-2)


@pytest.fixture
def project(tmp_path, start_model):
    project = Project.init(tmp_path / "project", start_model)
    for seed in (0, 1):
        project.add_pair(*bright_discs(seed, instances=True))
    project.add_pair(*bright_discs(7), evaluation=True)
    return project


def test_a_round_that_helps_is_kept_with_its_lineage(project, start_model):
    outcome = project.round(QUICK)
    record = outcome.record
    assert record.round == 1 and record.parent == start_model and record.kept
    assert record.eval.source == "evaluation pairs"
    assert record.eval.after["iou"] > record.eval.before["iou"]
    assert record.eval.verdict == "helped" and "helped" in record.reason
    assert project.active == record.version == outcome.version
    lineage = project.store.record(record.version)
    assert lineage.parent == "tiny" and lineage.seed == QUICK.seed and lineage.package_version
    stored = [project.training.load(name) for name in project.training.names()]
    assert [(p.image_sha1, p.mask_sha1) for p in lineage.training_pairs] == \
        [(array_sha1(image), array_sha1(mask)) for image, mask in stored]
    assert lineage.settings["learning_rate"] == QUICK.learning_rate


def test_a_round_scored_on_one_tile_says_it_cannot_tell(tmp_path, start_model):
    """One evaluation tile gives the paired bootstrap nothing to resample: the message says so, not an infinite
    interval."""
    project = Project.init(tmp_path / "project", start_model)
    project.add_pair(*bright_discs(0, instances=True))
    image, mask = bright_discs(7, size=64)
    project.add_pair(image, mask, evaluation=True)
    record = project.round(QUICK).record
    assert record.eval.units == 1 and record.kept
    assert "too few pixels to tell (one tile)" in record.reason and "inf" not in record.reason, record.reason
    assert record.eval.delta_iou_interval is None
    stored = (project.rounds_dir / "0001.json").read_text()
    assert "Infinity" not in stored
    json.loads(stored, parse_constant=lambda name: pytest.fail(f"{name} in a round record"))  # strict JSON


def test_a_round_on_wrong_masks_is_rolled_back_and_kept_for_inspection(project):
    good = project.round(QUICK).version
    for name in project.training.names():  # the "user" paints everything the wrong way round
        image, mask = project.training.load(name)
        project.training.remove(name)
        project.add_pair(image, (mask == 0).astype(np.uint8), name=name)
    failed = project.round(QUICK)
    assert not failed.kept and failed.reason.startswith("Rolled back:")
    assert "previous model stays active" in failed.reason
    assert project.active == good
    assert project.store.has(failed.version) and project.store.record(failed.version).kept is False
    assert [r["kept"] for r in project.status()["rounds"]] == [True, False]


def test_without_evaluation_pairs_the_held_out_stripes_are_scored_and_not_trained_on(tmp_path, start_model):
    project = Project.init(tmp_path / "p", start_model)
    project.add_pair(*bright_discs(0))
    outcome = project.round(QUICK)
    assert outcome.record.eval.source == "held-out stripes"
    pairs = project.store.record(outcome.version).training_pairs
    _, stored_mask = project.training.load(project.training.names()[0])
    assert pairs[0].mask_sha1 != array_sha1(stored_mask)  # trained on the mask with its stripe set to 255


def test_retrain_repeats_a_round_exactly(project):
    project.round(QUICK)
    report = project.retrain(1)
    assert report["steps"] == report["recorded_steps"] == 30
    assert abs(report["iou_difference"]) < 1e-3 and report["max_weight_difference"] < 1e-4


def test_a_time_budget_ends_training_and_the_round_still_finishes(project):
    from dataclasses import replace

    outcome = project.round(replace(QUICK, epochs=1000, seconds=1.0))
    training = outcome.record.training
    assert training.stopped_reason == "time budget" and 0 < training.steps < 1000 * QUICK.steps_per_epoch
    assert outcome.record.eval.after is not None


def test_a_failed_round_leaves_nothing_half_written(project, monkeypatch):
    import napari_unet.training as train

    def broken(*args, **kwargs):
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(train, "finetune", broken)
    with pytest.raises(RuntimeError):
        project.round(QUICK)
    assert project.rounds() == [] and project.store.names() == []
    with FileLock(project.root / ".round.lock", timeout=0):  # released: nobody holds it any more
        pass
    assert len(project.training.pairs()) == 2


def test_two_rounds_at_once_are_refused_and_a_killed_rounds_lock_is_no_lock(project, lock_holder):
    with project._one_round_at_a_time(), \
            pytest.raises(NapariUNetError, match=r"already running on project .*wait for it to finish"):
        project.round(QUICK)  # a second round in this process (the dock's and a script's, say)
    holder = lock_holder(project.root / ".round.lock")  # a round in another process
    with pytest.raises(NapariUNetError, match="already running"):
        project.round(QUICK)
    assert project.rounds() == []
    holder.kill()  # it dies mid-round (SIGKILL: no cleanup); its lock file stays, the OS lock does not
    holder.wait()
    assert (project.root / ".round.lock").exists()
    assert project.round(QUICK).record.round == 1


def test_an_old_training_set_folder_opens_as_a_project_with_no_rounds(tmp_path, start_model):
    from napari_unet.training.training_set import TrainingSet

    TrainingSet(tmp_path / "old").add(*bright_discs(0), name="cells")
    project = Project.open(tmp_path / "old")
    assert project.rounds() == [] and project.active is None and project.training.names() == ["cells"]
    with pytest.raises(NapariUNetError, match="no model to start from"):
        project.round(QUICK)
    assert project.round(QUICK, model=start_model).record.parent == start_model


# ---------------------------------------------------------------------- command line


def _files(tmp_path):
    for index, seed in enumerate((0, 1, 7)):
        image, labels = bright_discs(seed, instances=True)
        tifffile.imwrite(tmp_path / f"image{index}.tif", image)
        tifffile.imwrite(tmp_path / f"labels{index}.tif", labels)
    return tmp_path


def test_cli_round_and_status_print_the_contract(tmp_path, start_model, capsys, monkeypatch):
    import napari_unet.training as train

    monkeypatch.setattr(train, "TrainConfig", lambda: QUICK)  # the CLI reads its defaults from TrainConfig()
    folder, project = _files(tmp_path), str(tmp_path / "p")
    assert main(["project", "init", project, "-m", start_model]) == 0
    for index in (0, 1):
        assert main(["project", "add", project, "--image", str(folder / f"image{index}.tif"),
                     "--mask", str(folder / f"labels{index}.tif")]) == 0
    assert main(["project", "add", project, "--image", str(folder / "image2.tif"), "--mask",
                 str(folder / "labels2.tif"), "--eval"]) == 0
    capsys.readouterr()
    assert main(["project", "round", project, "--seed", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"round", "parent", "version", "kept", "reason", "eval", "seconds"} <= set(record)
    assert record["round"] == 1 and isinstance(record["kept"], bool) and record["reason"].endswith(".")
    for side in ("before", "after"):
        assert set(record["eval"][side]) == {"iou", "dice", "pixel_error"}
    assert main(["project", "status", project, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["rounds"] == [record] and status["active"] == (record["version"] if record["kept"] else start_model)
    assert Project.open(project).store.record(record["version"]).seed == 3


@pytest.mark.parametrize("case", ["missing project", "shape mismatch", "eval without foreground",
                                  "round without pairs", "round already running", "init twice"])
def test_cli_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, start_model, capsys, case):
    folder, project = _files(tmp_path), str(tmp_path / "p")
    holder = contextlib.ExitStack()
    main(["project", "init", project, "-m", start_model])
    capsys.readouterr()
    image = str(folder / "image0.tif")
    if case == "missing project":
        args, words = ["project", "round", str(tmp_path / "nope")], "no project at"
    elif case == "shape mismatch":
        tifffile.imwrite(tmp_path / "small.tif", np.zeros((100, 128), np.uint8))
        args, words = ["project", "add", project, "--image", image, "--mask", str(tmp_path / "small.tif")], "100×128"
    elif case == "eval without foreground":
        tifffile.imwrite(tmp_path / "empty.tif", np.zeros((128, 128), np.uint8))
        args = ["project", "add", project, "--image", image, "--mask", str(tmp_path / "empty.tif"), "--eval"]
        words = "no foreground"
    elif case == "round without pairs":
        args, words = ["project", "round", project], "no training pairs"
    elif case == "round already running":
        main(["project", "add", project, "--image", image, "--mask", str(folder / "labels0.tif")])
        holder.enter_context(FileLock(tmp_path / "p" / ".round.lock"))  # this process is running a round
        args, words = ["project", "round", project], "already running"
    else:
        args, words = ["project", "init", project, "-m", start_model], "already a project"
    capsys.readouterr()
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "p").rglob("*") if p.name != ".round.lock")
    with holder:
        assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and words in error
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "p").rglob("*") if p.name != ".round.lock")
    assert after == before  # nothing half-written


def test_a_boundary_class_model_fine_tunes_on_instance_labels_and_keeps_its_method(tmp_path):
    """A nuclei-like model (background / interior / boundary) learns from painted instance labels."""
    import keras

    keras.utils.set_random_seed(0)
    model = new_model(UNetConfig(base_width=4, depth=2, n_classes=3), tile_size=64, name="tiny-nuclei",
                      class_names=["background", "nucleus", "nucleus boundary"], instances="boundary_watershed")
    start = str(save_model(model, tmp_path / "tiny-nuclei.keras"))
    project = Project.init(tmp_path / "p", start)
    for seed in (0, 1):
        project.add_pair(*bright_discs(seed, instances=True))
    project.add_pair(*bright_discs(7, instances=True), evaluation=True)
    from dataclasses import replace

    outcome = project.round(replace(QUICK, steps_per_epoch=30, learning_rate=3e-3))  # three classes learn slower
    assert outcome.model.metadata.instance_method == "boundary_watershed" and outcome.kept
    assert outcome.record.eval.after["iou"] > outcome.record.eval.before["iou"]
    stored = project.store.load(outcome.version)
    assert stored.config.n_classes == 3 and stored.metadata.instance_method == "boundary_watershed"


def test_revert_in_an_old_folder_after_a_rolled_back_first_round(tmp_path, start_model, monkeypatch):
    """No start model and no kept round: the revert compares against the model the first round started from."""
    from napari_unet.training.training_set import TrainingSet

    TrainingSet(tmp_path / "old").add(*bright_discs(0), name="cells")
    project = Project.open(tmp_path / "old")
    import napari_unet.project as project_module

    monkeypatch.setattr(project_module, "_guard", lambda *args: "Rolled back: forced by the test.")
    failed = project.round(QUICK, model=start_model)
    assert not failed.kept and project.active is None
    record = project.revert(failed.version)
    assert record.kind == "revert" and record.parent == start_model and project.active == failed.version


def test_a_renamed_version_keeps_its_place_in_the_round_log(tmp_path, start_model):
    """Renaming goes through the store and the log: the lineage and the active version hold, the rest is as it was."""
    from napari_unet.storage.records import RoundEvaluation, RoundRecord

    project = Project.init(tmp_path / "p", start_model)
    first = project.store.save_version(new_model(UNetConfig(base_width=4, depth=2), name="tiny"), parent=start_model)
    second = project.store.save_version(project.store.load(first.name))
    evaluation = RoundEvaluation(before={"iou": 0.5}, after={"iou": 0.6}, verdict="helped")
    project.rounds_dir.mkdir(parents=True, exist_ok=True)
    for number, (parent, version) in enumerate(((start_model, first.name), (first.name, second.name)), start=1):
        record = RoundRecord(round=number, parent=parent, version=version, kept=True, reason="It helped.",
                             eval=evaluation, extra={"note": "kept as it is"})
        (project.rounds_dir / f"{number:04d}.json").write_text(json.dumps(record.to_json()))
    (project.rounds_dir / "0003.json").write_text("{torn")
    renamed = project.rename_version(first.name, "my-cells")
    assert renamed.name == "my-cells" and project.store.record(second.name).parent == "my-cells"
    assert [(r.parent, r.version) for r in project.rounds()] == [(start_model, "my-cells"), ("my-cells", second.name)]
    assert project.active == second.name and project.rounds()[0].extra == {"note": "kept as it is"}

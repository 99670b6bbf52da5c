"""The headless demo: runs the whole loop, reports before/after on data it did not train on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet import demo
from napari_unet.cli import main
from napari_unet.errors import NapariUNetError


def test_half_split_never_gives_held_out_labels_to_training():
    truth = np.zeros((64, 64), dtype=np.uint8)
    truth[:, ::7] = 1
    case = demo.half_split_case(np.zeros((64, 64), np.uint8), truth, "synthetic")
    train_mask, held_out = case.train_masks[0], case.held_out[0]
    assert np.all(train_mask[held_out] == demo.IGNORE_LABEL)
    assert np.array_equal(train_mask[~held_out], truth[~held_out])
    assert held_out.sum() == 64 * 32


def test_folder_split_holds_out_the_last_images(tmp_path):
    import tifffile

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(4):
        tifffile.imwrite(tmp_path / "images" / f"s{i}.tif", np.full((32, 32), i, np.uint8))
        tifffile.imwrite(tmp_path / "masks" / f"s{i}.tif", np.eye(32, dtype=np.uint8))
    case = demo.folder_case(tmp_path)
    assert [m is not None for m in case.train_masks] == [True, True, False, False]
    assert [bool(h.all()) for h in case.held_out] == [False, False, True, True]


def test_folder_without_masks_names_the_fix(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(NapariUNetError, match="masks/"):
        demo.folder_case(tmp_path)


@pytest.mark.slow
def test_demo_command_prints_before_after_json(capsys):
    code = main(["demo", "--seconds", "8", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for phase in ("before", "after"):
        assert set(result[phase]) == {"iou", "dice", "pixel_error"}
        assert 0 <= result[phase]["pixel_error"] <= 1
    # the shipped model must do something sensible on the EM-like sample before any fine-tuning
    assert result["before"]["pixel_error"] < 0.2
    assert result["finetune"]["steps"] > 0
    # The shipped model's ISBI offset is re-fitted on the corrected half (the synthetic masks have their own).
    from napari_unet import load_model

    assert result["finetune"]["output_offset_before"] == list(load_model("membranes").metadata.output_offset)
    assert all(abs(v) <= 1 for v in result["finetune"]["output_offset_after"])
    assert result["held_out_pixels"] == result["trained_pixels"] == 512 * 256
    assert set(result["timings"]) >= {"load_model", "round", "finetune"}
    assert result["finetune"]["stopped_reason"] == "time budget"  # the round was bounded by --seconds
    if result["improved"]:
        assert result["after"]["pixel_error"] < result["before"]["pixel_error"]
        assert result["after"]["iou"] > result["before"]["iou"]
    assert ("helped" in result["verdict"]) == result["improved"]  # the verdict must match the numbers


def test_demo_rejects_a_non_positive_budget():
    with pytest.raises(NapariUNetError, match="--seconds"):
        demo.run_demo(seconds=0)

"""`napari-unet finetune` and `napari-unet models` on tiny files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.model import UNetConfig, load_model_file, new_model, save_model
from napari_unet.storage import shipped as shipped_module
from napari_unet.storage.store import ModelStore


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for index in range(2):
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + index * 5 : 40, 20:50] = 1
        image = (mask * 90 + rng.normal(60, 8, mask.shape)).clip(0, 255).astype(np.uint8)
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "images" / f"cell_{index}.tif", image)
        tifffile.imwrite(tmp_path / "masks" / f"cell_{index}.tif", mask)
    return tmp_path


@pytest.fixture
def model_file(tmp_path) -> Path:
    return save_model(new_model(UNetConfig(base_width=4, depth=2), tile_size=64, name="cells"), tmp_path / "start.keras")


def _args(pairs_dir, model_file, output, *extra):
    return ["finetune", "-m", str(model_file), "--images", str(pairs_dir / "images"), "--masks",
            str(pairs_dir / "masks"), "-o", str(output), "--epochs", "1", "--steps-per-epoch", "2", *extra]


def test_finetune_writes_the_model_registers_a_version_and_prints_one_json(pairs_dir, model_file, tmp_path, capsys):
    output = tmp_path / "tuned.keras"
    assert main(_args(pairs_dir, model_file, output, "--json", "--lr", "1e-3", "--seed", "1")) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert set(result) >= {"epochs", "steps", "seconds", "final_loss", "val_iou", "model"}
    assert result["steps"] == 2 and result["epochs"] == 1 and result["model"] == str(output)
    assert "[finetune]" in captured.err  # progress goes to stderr
    tuned = load_model_file(output)
    assert tuned.metadata.info["training"]["learning_rate"] == 1e-3
    record = ModelStore().record(result["version"])
    assert record.parent == "start" and record.lineage == "start"
    assert [entry.name for entry in record.training_pairs] == ["cell_0.tif", "cell_1.tif"]

    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in listing["versions"]] == [result["version"]]
    assert listing["versions"][0]["metrics"]["steps"] == 2


def test_finetune_refuses_to_overwrite_without_force_and_never_the_input(pairs_dir, model_file, tmp_path, capsys):
    existing = tmp_path / "exists.keras"
    existing.write_bytes(b"keep me")
    assert main(_args(pairs_dir, model_file, existing)) == 2
    assert "--force" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    before = model_file.read_bytes()
    assert main(_args(pairs_dir, model_file, model_file, "--force")) == 2
    assert "is the input model" in capsys.readouterr().err
    assert model_file.read_bytes() == before
    assert main(_args(pairs_dir, model_file, tmp_path / "out.h5")) == 2
    assert ".keras" in capsys.readouterr().err


def test_finetune_reports_bad_masks_in_one_line(pairs_dir, model_file, tmp_path, capsys):
    tifffile.imwrite(pairs_dir / "masks" / "cell_1.tif", np.full((64, 64), 0.5, dtype=np.float32))
    assert main(_args(pairs_dir, model_file, tmp_path / "o.keras")) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cell_1.tif" in error and "non-integer" in error
    assert not (tmp_path / "o.keras").exists()


def test_finetune_takes_instance_label_masks_as_the_dock_does(pairs_dir, model_file, tmp_path, capsys):
    """One mask rule for every face: instance ids from files train as foreground."""
    mask = tifffile.imread(pairs_dir / "masks" / "cell_1.tif")
    tifffile.imwrite(pairs_dir / "masks" / "cell_1.tif", np.where(mask > 0, 7, 0).astype(np.uint16))
    assert main(_args(pairs_dir, model_file, tmp_path / "o.keras")) == 0
    assert (tmp_path / "o.keras").exists()


def test_models_lists_shipped_models_with_their_metrics(tmp_path, monkeypatch, capsys):
    model = new_model(UNetConfig(base_width=4, depth=2), name="membranes")
    model.metadata.info = {"description": "EM membranes", "metrics_held_out": {"at_threshold_0.5": {"iou": 0.61}}}
    save_model(model, tmp_path / "shipped" / "membranes.keras")
    monkeypatch.setattr(shipped_module, "SHIPPED_MODELS_DIR", tmp_path / "shipped")
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "membranes" in text and "iou 0.6100" in text and "(none yet)" in text
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["shipped"][0]["metrics"] == {"iou": 0.61}

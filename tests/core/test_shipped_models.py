"""Each shipped model loads, is small, has a complete card, and still scores as its card says on
held-out data it was never trained on (ISBI slices, DSB 2018 nuclei images), so a broken or swapped
model fails CI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet.storage.registry import load_model
from napari_unet.storage.shipped import SHIPPED_MODELS_DIR, shipped_model_names

MAX_MODEL_BYTES = 10 * 1024 * 1024
# A re-measurement may differ from the card by nondeterminism only (threads, oneDNN kernels: ~1e-4);
# anything worse than this margin means the weights or the prediction path changed for the worse.
# (0.003 is less than what one training choice changed: e.g. 0.0757 -> 0.0714 for depth 4.)
PIXEL_ERROR_MARGIN = 0.003
IOU_MARGIN = 0.01
GOAL_PIXEL_ERROR = 0.07  # the membranes model's goal on ISBI slices never trained on

CARD_FIELDS = ("name", "description", "class_names", "data", "architecture", "training", "metrics_held_out")
AP_MARGIN = 0.01  # nuclei: object AP may differ from the card by nondeterminism only
# Share of touching truth pairs (first 30 held-out images) that come out as two objects: the shipped model
# (core targets) measured 163 of 274 (59 %; the touching band alone 138, 50 %; 1-px rings 127, 46 %; the first
# model, without border weights: 24 %). Guards against regression.
TOUCHING_SEPARATED = 0.57


def _card(name: str) -> dict:
    return json.loads((SHIPPED_MODELS_DIR / f"{name}.json").read_text())


def _expected(card: dict) -> dict:
    """What the shipped model scored on the card's test slices: held out for a recipe run; for a final model
    (trained on every slice, the card's "final") its own numbers on those slices, which it has seen."""
    return card["final"]["metrics_on_slices_it_trained_on"] if card.get("final") else card["metrics_held_out"]


def _held_out_slices(isbi_dir, card: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The card's test ISBI images and 0/1 masks, read from ../shared/data."""
    from napari_unet.storage.io import read_image

    stems = card["metrics_held_out"]["images"]
    images = [read_image(isbi_dir / "images" / f"{s}.png") for s in stems]
    masks = [(read_image(isbi_dir / "masks" / f"{s}.png") > 0).astype(np.uint8) for s in stems]
    return images, masks


def test_membranes_and_nuclei_models_are_shipped():
    assert {"membranes", "nuclei"} <= set(shipped_model_names())


@pytest.mark.parametrize("name", shipped_model_names())
def test_shipped_model_file_is_small_and_has_a_complete_card(name):
    path = SHIPPED_MODELS_DIR / f"{name}.keras"
    assert path.stat().st_size < MAX_MODEL_BYTES
    card = _card(name)
    missing = [f for f in CARD_FIELDS if f not in card]
    assert not missing, f"model card {name}.json lacks {missing}"
    split = card["data"]["split"]  # a final model's card keeps its recipe run's split, whose numbers it reports
    assert not set(split["test_held_out"]) & (set(split["train"]) | set(split["validation"]))
    assert card["training"]["steps"] > 0 and card["training"]["seconds"] > 0
    if card.get("final"):  # a final model says what it trained on, and keeps its recipe run's record
        trained_on, test = set(card["final"]["trained_on_stems"]), set(split["test_held_out"])
        assert trained_on >= set(split["train"]) | set(split["validation"])
        if trained_on & test:  # every slice (membranes): the held-out numbers can only be its recipe run's
            assert trained_on >= test
            assert card["recipe_run"]["metrics_held_out"] == card["metrics_held_out"]
        else:  # train + validation (nuclei): measured on the held-out images itself
            assert "metrics_held_out" in card["recipe_run"] and "metrics_validation" not in card
    metrics = card["metrics_held_out"].get("at_threshold_0.5") or card["metrics_held_out"]["single_pass"]
    for key in ("iou", "dice", "pixel_error"):
        assert 0 <= metrics[key] <= 1


@pytest.mark.parametrize("name", shipped_model_names())
def test_shipped_model_metadata_matches_its_card(name):
    model = load_model(name)
    card = _card(name)
    assert model.metadata.name == name
    assert list(model.metadata.class_names) == card["class_names"]
    assert model.config.base_width == card["architecture"]["base_width"]
    assert model.config.depth == card["architecture"]["depth"]
    assert model.config.batch_norm == card["architecture"]["batch_norm"]
    assert model.metadata.symmetries == card.get("symmetries", "dihedral")
    assert list(model.metadata.output_offset) == card.get("output_offset", {}).get("dy_dx", [0.0, 0.0])
    assert model.metadata.touching_width == card.get("targets", {}).get("touching_width", 1)
    assert model.metadata.core_fraction == card.get("targets", {}).get("core_fraction", 0.0)


@pytest.mark.slow
@pytest.mark.shared_data
def test_membranes_model_keeps_its_held_out_accuracy(isbi_dir):
    from napari_unet.scoring.evaluation import evaluate

    card = _card("membranes")
    images, masks = _held_out_slices(isbi_dir, card)
    measured = evaluate(load_model("membranes"), images, masks, threshold=0.5)
    expected = _expected(card)["at_threshold_0.5"]
    assert measured["n_images"] == len(card["metrics_held_out"]["images"])
    assert measured["pixel_error"] <= expected["pixel_error"] + PIXEL_ERROR_MARGIN
    assert measured["iou"] >= expected["iou"] - IOU_MARGIN
    # and far better than the trivial "all interior" answer (pixel error = membrane fraction ≈ 0.2)
    assert measured["pixel_error"] < 0.5 * float(np.mean([m.mean() for m in masks]))


@pytest.mark.slow
@pytest.mark.shared_data
def test_membranes_output_offset_fitted_on_validation_also_helps_on_held_out_slices(isbi_dir):
    from dataclasses import replace

    from napari_unet.scoring.evaluation import evaluate

    card = _card("membranes")
    images, masks = _held_out_slices(isbi_dir, card)
    model = load_model("membranes")
    assert model.metadata.output_offset != (0.0, 0.0)
    unmoved = model.copy()
    unmoved.metadata = replace(unmoved.metadata, output_offset=(0.0, 0.0))
    with_offset = evaluate(model, images, masks)["pixel_error"]
    without = evaluate(unmoved, images, masks)["pixel_error"]
    assert without == pytest.approx(_expected(card)["without_output_offset_at_threshold_0.5"]["pixel_error"], abs=1e-3)
    assert with_offset < without - 0.001


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("key, views", [("with_test_time_augmentation", True), ("with_2_views", 2)])
def test_membranes_model_with_test_time_augmentation_keeps_its_card_accuracy(isbi_dir, key, views):
    from napari_unet.scoring.evaluation import evaluate

    card = _card("membranes")
    expected = _expected(card).get(key)
    if expected is None:
        pytest.fail(f"the membranes card has no {key} metrics: rerun scripts/train_shipped_models.py")
    images, masks = _held_out_slices(isbi_dir, card)
    measured = evaluate(load_model("membranes"), images, masks, threshold=expected["threshold"],
                        test_time_augmentation=views)
    assert measured["pixel_error"] <= expected["pixel_error"] + PIXEL_ERROR_MARGIN
    assert measured["iou"] >= expected["iou"] - IOU_MARGIN
    assert measured["pixel_error"] <= GOAL_PIXEL_ERROR  # met with test-time augmentation


# --------------------------------------------------------------------------------------------- nuclei


def _held_out_nuclei(nuclei_dir, card: dict, stems=None):
    from napari_unet.storage.io import read_image

    stems = stems or card["data"]["split"]["test_held_out"]
    return ([read_image(nuclei_dir / "images" / f"{s}.tif") for s in stems],
            [read_image(nuclei_dir / "masks" / f"{s}.tif") for s in stems])


def test_nuclei_model_separates_objects_by_its_own_method():
    model = load_model("nuclei")
    assert model.config.n_classes == 3 and model.metadata.instance_method == "boundary_watershed"


@pytest.mark.slow
@pytest.mark.shared_data
def test_nuclei_model_keeps_its_held_out_accuracy(nuclei_dir):
    from napari_unet.scoring.evaluation import evaluate

    card = _card("nuclei")
    images, masks = _held_out_nuclei(nuclei_dir, card)
    measured = evaluate(load_model("nuclei"), images, masks, instances=True)
    expected = card["metrics_held_out"]["single_pass"]
    assert measured["ap50"] >= expected["ap50"] - AP_MARGIN
    assert measured["map"] >= expected["map"] - AP_MARGIN
    assert measured["iou"] >= expected["iou"] - IOU_MARGIN
    baseline = card["metrics_held_out"]["otsu_watershed_baseline"]
    assert measured["ap50"] > baseline["ap50"] + 0.05  # and clearly better than what a user would otherwise do


@pytest.mark.slow
@pytest.mark.shared_data
def test_touching_nuclei_in_held_out_images_come_out_as_separate_objects(nuclei_dir):
    """Pairs of truth nuclei that touch: both found (IoU > 0.5), each by its own predicted object."""
    from napari_unet.inference.prediction import predict
    from napari_unet.scoring.metrics import instance_ious

    card = _card("nuclei")
    model = load_model("nuclei")
    separated = total = 0
    for image, truth in zip(*_held_out_nuclei(nuclei_dir, card, card["data"]["split"]["test_held_out"][:30])):
        horizontal = np.stack([truth[:, :-1].ravel(), truth[:, 1:].ravel()], axis=1)
        vertical = np.stack([truth[:-1].ravel(), truth[1:].ravel()], axis=1)
        touching = np.concatenate([horizontal, vertical])
        touching = touching[(touching[:, 0] > 0) & (touching[:, 1] > 0) & (touching[:, 0] != touching[:, 1])]
        pairs = {tuple(sorted(pair)) for pair in touching.tolist()}
        if not pairs:
            continue
        ids = np.unique(truth)[1:]
        ious = instance_ious(truth, predict(model, image, output="instances"))
        best = {int(ids[row]): (int(np.argmax(ious[row])), float(ious[row].max())) for row in range(len(ids))}
        for a, b in pairs:
            total += 1
            (match_a, iou_a), (match_b, iou_b) = best[a], best[b]
            separated += iou_a > 0.5 and iou_b > 0.5 and match_a != match_b
    assert total >= 20, "too few touching nuclei in these images to test anything"
    assert separated / total >= TOUCHING_SEPARATED, f"only {separated} of {total} touching pairs came out as two objects"

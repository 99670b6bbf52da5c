"""The training-set folder and the 'train only where I corrected' mask, without Qt or a viewer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet.errors import NapariUNetError
from napari_unet.labels.masks import IGNORE_LABEL, to_training_mask
from napari_unet.storage.io import find_pairs
from napari_unet.training.training_set import TrainingSet, changed_pixels, held_out_region, restrict_to_corrections, thumbnail


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)


def test_painted_labels_become_binary_with_ignore_kept():
    labels = np.array([[0, 1, 2], [7, 255, 0]], dtype=np.int32)
    mask = to_training_mask(labels)
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[0, 1, 1], [1, 255, 0]]


def test_only_pixels_near_a_correction_stay_annotated():
    prediction = np.zeros((60, 60), dtype=np.uint8)
    corrected = prediction.copy()
    corrected[30, 30] = 1  # one painted pixel
    mask = restrict_to_corrections(to_training_mask(corrected), prediction, corrected, margin=5)
    annotated = mask != IGNORE_LABEL
    assert annotated[30, 30] and mask[30, 30] == 1
    assert annotated[30, 35] and mask[30, 35] == 0  # unchanged neighbour within the margin: "was right"
    assert not annotated[30, 36] and not annotated[0, 0]
    assert np.count_nonzero(annotated) == np.count_nonzero(
        (np.subtract.outer(np.arange(60), 30) ** 2)[:, None] + (np.arange(60) - 30) ** 2 <= 25)


def test_painting_not_sure_is_not_a_correction():
    prediction = np.ones((20, 20), dtype=np.uint8)
    corrected = prediction.copy()
    corrected[:5] = IGNORE_LABEL
    assert not changed_pixels(prediction, corrected).any()
    with pytest.raises(NapariUNetError, match="no corrections"):
        restrict_to_corrections(to_training_mask(corrected), prediction, corrected, margin=3)


def test_pairs_are_stored_readable_by_find_pairs_and_removed(tmp_path, image):
    training_set = TrainingSet(tmp_path / "project")
    mask = (image > 128).astype(np.uint8)
    first = training_set.add(image, mask, "cells 01", source_image="cells 01", source_labels="cells 01 prediction")
    second = training_set.add(image, mask, "cells 01")
    assert (first.name, second.name) == ("cells_01", "cells_01_2")
    assert training_set.names() == ["cells_01", "cells_01_2"]
    stored_image, stored_mask = training_set.load("cells_01")
    np.testing.assert_array_equal(stored_image, image)
    np.testing.assert_array_equal(stored_mask, mask)
    record = json.loads((training_set.records_dir / "cells_01.json").read_text())
    assert record["foreground_pixels"] == int(mask.sum()) and record["source_labels"] == "cells 01 prediction"
    assert [p.name for p, _ in find_pairs(training_set.images_dir, training_set.masks_dir)] == ["cells_01.tif", "cells_01_2.tif"]
    training_set.remove("cells_01")
    assert training_set.names() == ["cells_01_2"]
    assert not list(training_set.root.rglob("*.partial"))


def test_a_pair_without_its_record_is_not_listed(tmp_path, image):
    """The JSON is written last: image and mask files without it (a crash mid-save) are not a pair."""
    training_set = TrainingSet(tmp_path)
    pair = training_set.add(image, np.zeros(image.shape, np.uint8), "a")
    (training_set.records_dir / f"{pair.name}.json").unlink()
    assert training_set.pairs() == []


def test_bad_pairs_are_refused_with_the_layer_names(tmp_path, image):
    training_set = TrainingSet(tmp_path)
    with pytest.raises(NapariUNetError, match="'my labels' are 32×32 but image 'cells'"):
        training_set.add(image, np.zeros((32, 32), np.uint8), source_image="cells", source_labels="my labels")
    with pytest.raises(NapariUNetError, match="all 'not annotated'"):
        training_set.add(image, np.full(image.shape, IGNORE_LABEL, np.uint8))
    assert training_set.pairs() == []


def test_split_holds_out_a_fixed_stripe_and_refuses_empty_sets(tmp_path, image):
    training_set = TrainingSet(tmp_path)
    with pytest.raises(NapariUNetError, match="is empty"):
        training_set.split()
    training_set.add(image, np.zeros(image.shape, np.uint8), "background only")
    with pytest.raises(NapariUNetError, match="no foreground"):
        training_set.split()
    mask = np.zeros(image.shape, np.uint8)
    mask[10:50, 10:70] = 1
    training_set.add(image, mask, "cells")
    data = training_set.split()
    stripe = held_out_region(mask)
    assert stripe[:, -16:].all() and not stripe[:, :-16].any()  # 20% of 80 annotated columns
    for train_mask, region in zip(data.train_masks, data.held_out):
        assert (train_mask[stripe] == IGNORE_LABEL).all()
        assert not (train_mask[~stripe] == IGNORE_LABEL).any()
        np.testing.assert_array_equal(region, stripe)
    assert data.held_out_pixels == 2 * stripe.sum()


def test_held_out_stripe_lies_inside_a_partial_annotation():
    mask = np.full((10, 100), IGNORE_LABEL, dtype=np.uint8)
    mask[:, :50] = 0  # only the left half was checked
    mask[2:8, 30:45] = 1
    region = held_out_region(mask)
    assert region[:, 40:50].all() and not region[:, :40].any() and not region[:, 50:].any()


def test_instance_labels_are_stored_as_painted_and_count_as_foreground(tmp_path, image):
    training_set = TrainingSet(tmp_path / "project")
    labels = np.zeros(image.shape, dtype=np.int32)
    labels[5:20, 5:20], labels[5:20, 20:35], labels[40:50, 60:70] = 1, 2, 300
    pair = training_set.add(image, labels, "cells")
    stored = training_set.load("cells")[1]
    assert stored.dtype == np.uint32 and set(np.unique(stored)) == {0, 1, 2, 300}
    assert pair.foreground_pixels == 15 * 30 + 100
    data = training_set.split()
    np.testing.assert_array_equal(data.truths[0], labels > 0)


def test_a_float_mask_is_refused_with_the_fix(tmp_path, image):
    with pytest.raises(NapariUNetError, match="labels"):
        TrainingSet(tmp_path / "p").add(image, np.full(image.shape, 0.5), "cells")


def test_thumbnail_is_small_and_uint8(image):
    preview = thumbnail(np.repeat(image, 8, axis=0), size=48)
    assert preview.dtype == np.uint8 and max(preview.shape) <= 48
    assert thumbnail(np.dstack([image] * 3)).shape[-1] == 3

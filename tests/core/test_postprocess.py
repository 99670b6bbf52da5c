"""Semantic labels from probabilities, and instances with touching objects split."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.labels.postprocess import instance_labels, instances_from_labels, objects_are_background, semantic_labels


def disks(centres, radius, shape=(80, 120)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for row, col in centres:
        mask |= (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
    return mask


def test_threshold_for_one_class_and_argmax_for_several():
    probabilities = np.array([[0.2, 0.5, 0.51, 0.9]], np.float32)
    np.testing.assert_array_equal(semantic_labels(probabilities, 0.5), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(semantic_labels(probabilities, 0.1), [[1, 1, 1, 1]])
    softmax = np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]], np.float32)
    labels = semantic_labels(softmax, n_classes=3)
    np.testing.assert_array_equal(labels, [[0, 2]])
    assert labels.dtype == np.uint8


def test_touching_disks_are_split_into_two_instances():
    mask = disks([(40, 40), (40, 68)], radius=15)  # overlap: one connected component
    from scipy import ndimage as ndi

    assert ndi.label(mask)[1] == 1
    labels = instance_labels(mask)
    assert labels.dtype == np.int32
    assert labels.max() == 2
    assert labels[40, 35] != labels[40, 75]
    np.testing.assert_array_equal(labels > 0, mask)


def test_without_splitting_touching_disks_stay_one_object():
    assert instance_labels(disks([(40, 40), (40, 68)], radius=15), split_touching=False).max() == 1


def test_objects_smaller_than_min_size_are_removed_and_ids_renumbered():
    mask = disks([(20, 20), (60, 100)], radius=10) | disks([(70, 20)], radius=1)
    labels = instance_labels(mask, min_size=20)
    assert labels.max() == 2
    assert labels[70, 20] == 0
    assert set(np.unique(labels)) == {0, 1, 2}


def test_empty_mask_gives_no_instances():
    labels = instance_labels(np.zeros((30, 30), bool))
    assert labels.dtype == np.int32 and labels.max() == 0


def test_membrane_model_instances_are_the_enclosed_regions():
    membranes = np.zeros((60, 60), np.uint8)
    membranes[20, :] = membranes[:, 30] = 1  # a cross: four enclosed regions
    assert objects_are_background(["membrane"]) and not objects_are_background(["nuclei"])
    cells = instances_from_labels(membranes, objects="background", min_size=1)
    assert cells.max() == 4
    assert np.all(cells[membranes > 0] == 0)


def test_unknown_objects_kind_is_refused():
    with pytest.raises(ValueError):
        instances_from_labels(np.zeros((4, 4), np.uint8), objects="cells")


def test_threshold_ranks_rethreshold_exactly_on_their_grid():
    from napari_unet.labels.postprocess import labels_from_ranks, threshold_ranks

    grid = [step / 100 for step in range(1, 100)]
    on_the_grid = np.array(grid, np.float32)  # pixels exactly at, just above and just below each threshold
    probabilities = np.concatenate([np.random.default_rng(0).random(5000, np.float32), on_the_grid,
                                    np.nextafter(on_the_grid, 1), np.nextafter(on_the_grid, 0), [0, 1]])
    ranks = threshold_ranks(probabilities.reshape(-1, 1), grid)
    assert ranks.dtype == np.uint8 and ranks.shape == (probabilities.size, 1)
    for threshold in grid:
        np.testing.assert_array_equal(labels_from_ranks(ranks, grid, threshold)[:, 0],
                                      semantic_labels(probabilities, threshold))
    with pytest.raises(ValueError, match="not on the grid"):
        labels_from_ranks(ranks, grid, 0.505)


def test_instances_per_plane_numbers_each_plane_on_its_own():
    from napari_unet.labels.postprocess import instances_per_plane

    planes = np.stack([disks([(40, 30)], 10), disks([(20, 20), (60, 90)], 10), np.zeros((80, 120), bool)])
    instances = instances_per_plane(planes.astype(np.uint8))
    assert instances.dtype == np.int32
    assert [int(plane.max()) for plane in instances] == [1, 2, 0]
    np.testing.assert_array_equal(instances[1], instances_from_labels(planes[1].astype(np.uint8)))

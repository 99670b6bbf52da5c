"""Touching objects as separate instances (instances.py), the one mask rule (masks.py), object metrics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.labels.instances import BOUNDARY, INTERIOR, boundary_targets, instances_from_boundary_probabilities
from napari_unet.labels.masks import IGNORE_LABEL, training_targets
from napari_unet.labels.postprocess import instances_from_probabilities
from napari_unet.model import ModelMetadata, UNetConfig
from napari_unet.scoring.metrics import as_instances, instance_counts, instance_scores


def _touching_discs(size=64):
    """Two discs of radius 12 whose edges touch along a vertical line: labels 1 and 2."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    labels[(yy - 32) ** 2 + (xx - 20) ** 2 < 144] = 1
    labels[((yy - 32) ** 2 + (xx - 43) ** 2 < 144) & (labels == 0)] = 2
    assert np.any((labels[:, :-1] == 1) & (labels[:, 1:] == 2)), "the discs must touch"
    return labels


def _probabilities_from(targets):
    """A confident softmax output that equals the targets."""
    return np.eye(3, dtype=np.float32)[targets] * 0.9 + 0.1 / 3


def test_boundary_targets_separate_the_interiors_of_touching_objects():
    labels = _touching_discs()
    targets = boundary_targets(labels)
    assert set(np.unique(targets)) == {0, INTERIOR, BOUNDARY}
    from scipy import ndimage

    _, n_interiors = ndimage.label(targets == INTERIOR)
    assert n_interiors == 2  # the rings meet where the objects touch
    assert np.all(targets[labels == 0] == 0) and np.all(targets[labels > 0] > 0)


def test_a_wider_touching_band_moves_touching_interiors_apart_and_leaves_free_edges_alone():
    from scipy import ndimage

    labels = _touching_discs()

    def interior_gap(targets) -> float:
        """px from disc 1's interior to disc 2's."""
        from_first = ndimage.distance_transform_edt(~((targets == INTERIOR) & (labels == 1)))
        return from_first[(targets == INTERIOR) & (labels == 2)].min()

    thin, wide = boundary_targets(labels), boundary_targets(labels, touching_width=3)
    assert interior_gap(thin) <= 3 and interior_gap(wide) >= 5  # 1 px of boundary on each side, then 3 (a disk)
    assert ndimage.label(wide == INTERIOR)[1] == 2 and np.all(wide[labels > 0] > 0)
    alone = np.where(labels == 1, 1, 0)  # no neighbour: its outer ring is all the boundary it gets
    assert np.array_equal(boundary_targets(alone, touching_width=3), boundary_targets(alone))


def test_core_targets_keep_each_objects_centre_as_interior_and_its_rim_as_boundary():
    """core_fraction 0.5: interior is the half of each disc's depth nearest its centre, so the seeds of two
    touching discs lie about a radius apart whatever their size; the objects' extent is unchanged."""
    from scipy import ndimage

    labels = _touching_discs()  # radius 12: depth up to 12
    cores = boundary_targets(labels, touching_width=2, core_fraction=0.5)
    assert ndimage.label(cores == INTERIOR)[1] == 2 and np.array_equal(cores > 0, labels > 0)
    for label, centre in ((1, (32, 20)), (2, (32, 43))):
        interior = (cores == INTERIOR) & (labels == label)
        assert interior[centre] and 100 < interior.sum() < 0.4 * (labels == label).sum()  # ~ radius 6.6: 137 of 437 px
    from_first = ndimage.distance_transform_edt(~((cores == INTERIOR) & (labels == 1)))
    assert from_first[(cores == INTERIOR) & (labels == 2)].min() >= 10  # vs 5 for the touching band alone
    small = np.zeros((20, 20), np.int32)
    small[8:12, 8:12] = 1  # 4 x 4: depth 2 at its centre, still an interior of its own
    assert (boundary_targets(small, core_fraction=0.5) == INTERIOR).sum() == 4
    assert np.array_equal(boundary_targets(labels, core_fraction=0.0), boundary_targets(labels))


def test_the_edge_of_what_was_annotated_is_no_object_edge():
    """An object cut by the edge of the annotated part (e.g. a corrected tile) gets no boundary ring along that edge,
    and its core is measured as if it went on: not annotated is not background."""
    labels = _touching_discs()
    ignore = np.zeros(labels.shape, dtype=bool)
    ignore[:, 50:] = True  # disc 2 (centre column 43, radius 12) is cut at column 50
    cut = np.where(ignore, 0, labels)
    for targets in (training_targets(np.where(ignore, IGNORE_LABEL, labels), _boundary_metadata()),
                    boundary_targets(cut, ignore=ignore)):
        assert (targets[ignore] == IGNORE_LABEL).all()
        whole = boundary_targets(labels)
        assert np.array_equal(targets[:, :48], whole[:, :48])  # away from the edge, as if it went on
        edge = (labels[:, 49] == 2) & (whole[:, 49] == INTERIOR)  # the disc's rows that are inside at the edge
        assert edge.sum() >= 15 and (targets[edge, 49] == INTERIOR).all()  # no ring along the edge
    core_of_disc = (boundary_targets(cut, ignore=ignore, core_fraction=0.5) == INTERIOR) & (labels == 2)
    core_whole = (boundary_targets(labels, core_fraction=0.5) == INTERIOR) & (labels == 2) & ~ignore
    assert core_of_disc.sum() >= 0.8 * core_whole.sum()  # its depth measured as if it went on


def _boundary_metadata() -> ModelMetadata:
    return ModelMetadata(config=UNetConfig(n_classes=3), class_names=["background", "nucleus", "boundary"],
                         instances="boundary_watershed")


def test_two_touching_nuclei_come_out_as_two_objects():
    labels = _touching_discs()
    instances = instances_from_boundary_probabilities(_probabilities_from(boundary_targets(labels)))
    assert instances.max() == 2
    scores = instance_scores(instance_counts(labels, instances))
    assert scores["ap50"] == 1.0 and scores["map"] > 0.7
    from scipy import ndimage

    assert ndimage.label(labels > 0)[1] == 1  # plain connected components would merge them


def test_fragments_without_a_boundary_between_them_merge_and_touching_nuclei_do_not():
    """merge_weak_borders: a dim nucleus split into two by its seeds is one object again; two nuclei with a
    confident boundary between them stay two."""
    labels = _touching_discs()
    probabilities = _probabilities_from(boundary_targets(labels))  # boundary 0.93 on each disc's ring
    # a third disc, far right, whose interior dips in a vertical band (texture): two seeds, a weak border
    yy, xx = np.mgrid[:64, :96]
    padded = np.zeros((64, 96, 3), np.float32)
    padded[:, :64], padded[:, 64:] = probabilities, (0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3)
    dim = (yy - 32) ** 2 + (xx - 80) ** 2 < 144
    padded[dim] = (0.02, 0.93, 0.05)
    padded[dim & (np.abs(xx - 80) <= 1)] = (0.02, 0.80, 0.18)  # below the seed threshold, hardly a boundary
    split = instances_from_boundary_probabilities(padded, seed_threshold=0.9)
    assert split.max() == 4  # two touching discs, and the dim disc in two fragments
    merged = instances_from_boundary_probabilities(padded, seed_threshold=0.9, merge_threshold=0.25)
    assert merged.max() == 3
    assert len(np.unique(merged[dim])) == 1 and len(np.unique(merged[:, :64][labels > 0])) == 2
    assert merged.dtype == np.int32 and np.array_equal(merged > 0, split > 0)


def test_the_model_method_decides_how_output_becomes_instances():
    membranes = np.ones((40, 40), np.float32)
    membranes[5:35, 5:35] = 0.0  # a closed membrane ring around one cell
    assert instances_from_probabilities(membranes, "enclosed").max() == 1
    with pytest.raises(ValueError, match="3 classes"):
        instances_from_probabilities(membranes[..., None], "boundary_watershed", n_classes=1)


def test_user_labels_become_the_targets_the_model_needs():
    labels = _touching_discs()
    labels[:4] = IGNORE_LABEL
    three = ModelMetadata(config=UNetConfig(n_classes=3), instances="boundary_watershed")
    targets = training_targets(labels, three)
    assert np.all(targets[:4] == IGNORE_LABEL) and np.count_nonzero(targets == BOUNDARY) > 0
    binary = training_targets((labels > 0) & (labels != IGNORE_LABEL), three)
    assert set(np.unique(binary)) <= {0, INTERIOR, BOUNDARY}  # a plain 0/1 correction still trains such a model
    cores = ModelMetadata(config=UNetConfig(n_classes=3), instances="boundary_watershed", touching_width=2,
                          core_fraction=0.5)  # the model's own rule, not the defaults
    np.testing.assert_array_equal(training_targets(labels, cores)[4:], boundary_targets(
        np.where(labels == IGNORE_LABEL, 0, labels), touching_width=2, core_fraction=0.5)[4:])
    one_class = training_targets(labels, ModelMetadata(config=UNetConfig(n_classes=1), instances="components"))
    assert set(np.unique(one_class)) == {0, 1, IGNORE_LABEL}


def test_object_metrics_count_matches_misses_and_extras():
    truth = np.zeros((30, 60), np.int32)
    truth[5:15, 5:15], truth[5:15, 25:35], truth[5:15, 45:55] = 1, 2, 3
    predicted = np.zeros_like(truth)
    predicted[5:15, 5:15] = 7  # exact
    predicted[5:15, 27:35] = 8  # IoU 0.8
    predicted[20:28, 20:28] = 9  # an extra object; object 3 is missed
    counts = instance_counts(truth, predicted)
    assert counts[0].tolist() == [2, 1, 1]  # IoU > 0.5: TP 2, FP 1, FN 1
    assert counts[-1].tolist() == [1, 2, 2]  # IoU > 0.95: only the exact one
    scores = instance_scores(counts)
    assert scores["ap50"] == pytest.approx(2 / 4) and scores["f1_50"] == pytest.approx(4 / 6)
    assert scores["n_true"] == 3 and scores["n_predicted"] == 3


def test_a_binary_truth_mask_is_split_into_components():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = mask[6:8, 6:8] = 1
    assert as_instances(mask).max() == 2


def test_evaluate_reports_object_metrics_per_image_and_pooled():
    from napari_unet.model import UNetConfig, new_model
    from napari_unet.scoring.evaluation import evaluate

    model = new_model(UNetConfig(base_width=4, depth=2), tile_size=64)
    labels = _touching_discs()
    result = evaluate(model, [labels.astype(np.float32) * 50] * 2, [labels] * 2, instances=True)
    for key in ("ap50", "map", "f1_50", "iou"):
        assert 0 <= result[key] <= 1 and key in result["per_image"][0]
    assert result["n_true"] == 4


def test_a_background_threshold_widens_the_object_mask_of_labels_and_instances():
    """A model's own background threshold (chosen on validation) decides which pixels belong to objects."""
    from napari_unet.labels.postprocess import semantic_labels

    probabilities = np.zeros((4, 4, 3), np.float32)
    probabilities[...] = (0.6, 0.3, 0.1)  # background most likely everywhere …
    probabilities[1:3, 1:3] = (0.05, 0.9, 0.05)  # … except a confident interior
    assert semantic_labels(probabilities, n_classes=3).max() == 1 and (semantic_labels(probabilities, n_classes=3) > 0).sum() == 4
    widened = semantic_labels(probabilities, n_classes=3, background_threshold=0.7)
    assert (widened > 0).all() and set(np.unique(widened)) == {1}
    objects = instances_from_probabilities(probabilities, "boundary_watershed", n_classes=3, min_size=1,
                                           background_threshold=0.7)
    assert objects.max() == 1 and (objects > 0).all()


def test_ground_truth_files_read_as_user_labels():
    from napari_unet.labels.masks import labels_from_ground_truth

    binary_0_255 = np.array([[0, 255], [255, 0]], np.uint8)
    assert labels_from_ground_truth(binary_0_255).tolist() == [[0, 1], [1, 0]]  # 255 meant foreground here
    many = np.array([[0, 1, 254, 255, 300]], np.uint16)
    assert labels_from_ground_truth(many).tolist() == [[0, 1, 254, 256, 301]]  # no object reads as "not annotated"
    few = np.array([[0, 3, 7]], np.uint8)
    assert labels_from_ground_truth(few) is few

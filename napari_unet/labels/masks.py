"""The one mask rule, for every face (dock, CLI, project, finetune): what a user's labels mean for training.

Labels as painted in napari or stored in files: 0 = background, 255 = not annotated (left out of
training), any other value = an object (instance ids 1, 2, 3 … or a plain 1). What the model trains on
follows from how it turns its output into objects (its metadata):
- a one-class model: 0/1 with 255 kept (every object is foreground);
- a boundary-watershed model: background / interior / boundary derived from the objects
  (instances.boundary_targets, with the model's own ModelMetadata.touching_width and core_fraction), so
  touching objects teach the boundary between them;
- a model of several classes with boundary outputs: the class ids, with the outer part of each object class's
  objects moved to that class's boundary output (instances.class_boundary_targets);
- any other multi-class model: the values are class ids and are used as they are.
Evaluation masks: > 0 is foreground (an instance label image is fine), no 255 rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_unet.labels.instances import boundary_targets, class_boundary_targets

if TYPE_CHECKING:
    from napari_unet.model import ModelMetadata

IGNORE_LABEL = 255


def to_training_mask(labels: np.ndarray) -> np.ndarray:
    """uint8 0/1/255: 0 stays 0, 255 stays 255, any other label → 1."""
    labels = np.asarray(labels)
    return np.where(labels == IGNORE_LABEL, IGNORE_LABEL, labels != 0).astype(np.uint8)


def labels_from_ground_truth(mask: np.ndarray) -> np.ndarray:
    """A ground-truth file read as a user's labels: a 0/255 file means background/foreground (not "not
    annotated"); instance ids stay, but id 255 and up move by one so no object reads as "not annotated"."""
    mask = np.asarray(mask)
    values = np.unique(mask)
    if values.size and set(values.tolist()) <= {0, IGNORE_LABEL}:
        return (mask > 0).astype(np.uint8)
    if values.size and int(values[-1]) >= IGNORE_LABEL:
        return np.where(mask >= IGNORE_LABEL, mask.astype(np.int32) + 1, mask)
    return mask


def training_targets(labels: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """The uint8 targets the model described by `metadata` trains on, from user labels (its class count, instance
    method and, for boundary_watershed, its touching width and core fraction)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if metadata.instance_method == "boundary_watershed":
        ignore = labels == IGNORE_LABEL
        return boundary_targets(np.where(ignore, 0, labels), ignore=ignore if ignore.any() else None,
                                touching_width=metadata.touching_width, core_fraction=metadata.core_fraction)
    if metadata.boundary_outputs:
        return class_boundary_targets(labels, metadata.object_class_values, metadata.boundary_outputs,
                                      touching_width=metadata.touching_width, core_fraction=metadata.core_fraction)
    if metadata.config.n_classes == 1 and labels.dtype.kind in "ui":
        return to_training_mask(labels)
    return labels


def target_classes(metadata: ModelMetadata) -> np.ndarray | None:
    """For a model of several classes: the class (label value) each of its training target values stands for, a
    lookup of 256 entries (a boundary output's value stands for its object class; 255 for itself), so that weighting
    and patch sampling count classes, not outputs. None for any other model."""
    if metadata.instance_method != "classes":
        return None
    lookup = np.arange(256, dtype=np.uint8)
    for value, channel in zip(metadata.object_class_values, metadata.boundary_outputs):
        lookup[channel] = value
    return lookup


def class_matrix(metadata: ModelMetadata) -> np.ndarray | None:
    """(outputs, classes + 1) float32 0/1: which class each output of a model with boundary outputs is part of
    (target_classes as a matrix, for the loss); None for any other model, whose outputs are its classes."""
    if not metadata.boundary_outputs:
        return None
    matrix = np.zeros((metadata.config.n_classes, metadata.class_outputs), dtype=np.float32)
    matrix[np.arange(metadata.config.n_classes), target_classes(metadata)[:metadata.config.n_classes]] = 1.0
    return matrix

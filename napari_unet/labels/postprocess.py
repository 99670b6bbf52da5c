"""From probabilities to semantic labels and instance labels (scikit-image / scipy).

Semantic labels: a threshold for one-class (sigmoid) models, the arg-max for softmax models.
Instances: connected components of a 2D mask, with touching blobs split by a watershed on the
distance transform (markers = local maxima of the distance to the background). For a membrane
(boundary) model the objects are the regions *enclosed* by the predicted membranes, i.e. the
components of the background; `instances_of="auto"` picks that from the model's class name.
"""

from __future__ import annotations

import numpy as np

from napari_unet.labels.instances import (
    MIN_OBJECT_SIZE,
    MIN_SEED_SIZE,
    SEED_THRESHOLD,
    drop_small_objects,
    objects_from_cores,
)

# Class names whose foreground is a boundary between objects rather than the objects themselves.
BOUNDARY_CLASS_WORDS = ("membrane", "boundar", "contour", "edge")


def semantic_labels(probabilities: np.ndarray, threshold: float = 0.5, n_classes: int = 1,
                    background_threshold: float | None = None) -> np.ndarray:
    """uint8 labels: probability > threshold for 1 class (shape kept), arg-max over a trailing class axis else.

    background_threshold (multi-class): a pixel is not background when P(background) is below it, and
    then takes the most probable other class (a model's own value, ModelMetadata.background_threshold).
    """
    if n_classes == 1:
        return (np.asarray(probabilities) > threshold).astype(np.uint8)
    if background_threshold is None:
        return np.argmax(probabilities, axis=-1).astype(np.uint8)
    probabilities = np.asarray(probabilities)
    labels = np.argmax(probabilities[..., 1:], axis=-1).astype(np.uint8) + 1
    labels[probabilities[..., 0] >= background_threshold] = 0
    return labels


def class_probabilities(probabilities: np.ndarray, metadata) -> np.ndarray:
    """A model's output (..., channels) read as classes: background and one probability per class. A model of
    several classes with boundary outputs (ModelMetadata.boundary_outputs) has each object class's boundary added
    to the class (a pixel on an object's outer part belongs to the object); any other output is returned as it is."""
    if not metadata.boundary_outputs:
        return probabilities
    return boundaries_added(probabilities, metadata.object_class_values, metadata.boundary_outputs)


def boundaries_added(probabilities: np.ndarray, object_classes, boundary_outputs) -> np.ndarray:
    """(..., channels - len(boundary_outputs)): the channel of each object class (label value `object_classes[i]`)
    plus that of its boundary (`boundary_outputs[i]`), the boundary channels (the last ones) left out."""
    probabilities = np.asarray(probabilities)
    classes = probabilities[..., :probabilities.shape[-1] - len(boundary_outputs)].copy()
    for value, channel in zip(object_classes, boundary_outputs):
        classes[..., value] += probabilities[..., channel]
    return classes


def model_labels(probabilities: np.ndarray, metadata, threshold: float = 0.5) -> np.ndarray:
    """uint8 semantic labels of a model's output (one-class: (..., Y, X); else (..., Y, X, channels)) by the model's
    own reading: its classes (class_probabilities), its background threshold."""
    return semantic_labels(class_probabilities(probabilities, metadata), threshold, metadata.class_outputs,
                           metadata.background_threshold)


def objects_are_background(class_names: list[str]) -> bool:
    """True when the model's foreground is a boundary (e.g. EM membranes), so objects are what it encloses."""
    first = (class_names or [""])[0].lower()
    return any(word in first for word in BOUNDARY_CLASS_WORDS)


def instance_labels(
    mask: np.ndarray,
    *,
    min_size: int = MIN_OBJECT_SIZE,
    split_touching: bool = True,
    min_distance: int = 7,
) -> np.ndarray:
    """int32 instance ids (0 = background) of the non-zero pixels of a 2D mask (or a 3-D one, of cubic voxels).

    split_touching: separate blobs that touch with a watershed on the distance transform; seeds are
    the local maxima at least `min_distance` px apart (adjacent maxima on a ridge count as one seed).
    Objects smaller than `min_size` px are removed; ids are then renumbered 1..N.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    foreground = np.asarray(mask) > 0
    if foreground.ndim not in (2, 3):
        raise ValueError(f"instance_labels needs a 2D or 3-D mask, got shape {foreground.shape}")
    components, n_components = ndi.label(foreground)
    if n_components == 0:
        return np.zeros(foreground.shape, dtype=np.int32)
    if split_touching:
        distance = ndi.distance_transform_edt(foreground)
        peaks = peak_local_max(distance, min_distance=max(1, min_distance), labels=components, exclude_border=False)
        peak_mask = np.zeros(foreground.shape, dtype=bool)
        peak_mask[tuple(peaks.T)] = True
        markers, n_markers = ndi.label(peak_mask, structure=np.ones((3,) * foreground.ndim))
        # A component without a seed (rare: a plateau rejected by min_distance) keeps one of its own.
        seeded = np.zeros(n_components + 1, dtype=bool)
        seeded[np.unique(components[peak_mask])] = True
        unseeded = ~seeded[components] & foreground
        markers[unseeded] = components[unseeded] + n_markers
        labels = watershed(-distance, markers, mask=foreground)
    else:
        labels = components
    return drop_small_objects(labels, min_size)


def instances_from_labels(
    labels: np.ndarray,
    *,
    objects: str = "foreground",
    min_size: int = MIN_OBJECT_SIZE,
    split_touching: bool | None = None,
) -> np.ndarray:
    """Instances of a 2D (or 3-D) semantic label image; objects="background" for boundary (membrane) models.

    With objects="background" the regions enclosed by the boundaries are already separated by them,
    so no watershed split is applied unless asked for.
    """
    if objects not in ("foreground", "background"):
        raise ValueError(f"objects must be 'foreground' or 'background', not {objects!r}")
    mask = labels > 0 if objects == "foreground" else labels == 0
    if split_touching is None:
        split_touching = objects == "foreground"
    return instance_labels(mask, min_size=min_size, split_touching=split_touching)


def threshold_ranks(probabilities: np.ndarray, thresholds) -> np.ndarray:
    """uint8 per pixel: how many of the ascending `thresholds` (at most 255) its probability exceeds.

    A compact stand-in for a one-class probability map when only thresholds on a known grid (e.g. a
    slider's 0.01 steps) will be asked for: 1 byte per pixel instead of 4, and exact, since
    `ranks > i` is `probabilities > thresholds[i]` (the comparison semantic_labels makes, in the
    probabilities' own dtype). Plain 0-255 quantisation would be as small but would flip the pixels
    lying within 1/510 of a threshold, so re-thresholding would not equal predicting again.
    """
    probabilities = np.asarray(probabilities)
    grid = np.asarray(thresholds, dtype=probabilities.dtype)
    if grid.ndim != 1 or len(grid) > 255 or np.any(np.diff(grid) <= 0):
        raise ValueError("thresholds must be at most 255 strictly increasing values")
    return np.searchsorted(grid, probabilities, side="left").astype(np.uint8)


def labels_from_ranks(ranks: np.ndarray, thresholds, threshold: float) -> np.ndarray:
    """uint8 0/1 labels at `threshold` (one of `thresholds`) from threshold_ranks(probabilities, thresholds)."""
    grid = np.asarray(thresholds, dtype=np.float64)
    position = int(np.argmin(np.abs(grid - threshold)))
    if abs(grid[position] - threshold) > 1e-9:
        raise ValueError(f"threshold {threshold} is not on the grid the ranks were made for "
                         f"({grid[0]:g} … {grid[-1]:g}, {len(grid)} values)")
    return (np.asarray(ranks) > position).astype(np.uint8)


def instances_per_plane(labels: np.ndarray, objects: str = "foreground", min_size: int = MIN_OBJECT_SIZE,
                        spatial_dims: int = 2) -> np.ndarray:
    """int32 instances of every (Y, X) plane of a (..., Y, X) semantic label array (see instances_from_labels);
    spatial_dims=3: of every (Z, Y, X) volume of a (..., Z, Y, X) one, as 3-D objects."""
    labels = np.asarray(labels)
    instances = np.zeros(labels.shape, dtype=np.int32)
    for index in np.ndindex(labels.shape[:-spatial_dims]):
        instances[index] = instances_from_labels(labels[index], objects=objects, min_size=min_size)
    return instances


def instances_from_probabilities(probabilities: np.ndarray, method: str, *, threshold: float = 0.5,
                                 n_classes: int = 1, min_size: int = MIN_OBJECT_SIZE, seed_threshold: float | None = None,
                                 background_threshold: float | None = None,
                                 min_seed_size: int | None = None, merge_threshold: float | None = None,
                                 spatial_dims: int = 2, object_classes: tuple[int, ...] = (),
                                 boundary_outputs: tuple[int, ...] = ()) -> np.ndarray:
    """int32 instances of every plane of a model's output, by the model's own method (ModelMetadata.instances).

    probabilities: (..., Y, X) for one class, (..., Y, X, n_classes) otherwise. method: "components"
    (foreground blobs, touching ones split on the distance transform), "enclosed" (regions between
    predicted boundaries), "boundary_watershed" (3 classes: seeds from the interiors, instances.py), "classes"
    (several classes: the objects of each class in `object_classes`, label values, split like "components"; ids
    are unique over all classes; with `boundary_outputs`, the output channel of each object class's boundary, each
    class's objects grow from its cores as a boundary_watershed model's do).
    seed_threshold, background_threshold, min_seed_size, merge_threshold: the model's own (ModelMetadata), None for
    the defaults (no merging). spatial_dims=3: the objects of every (Z, Y, X) volume, in 3-D (cubic voxels).
    The one place that turns output into objects: predict(), the CLI and the dock call it.
    """
    from napari_unet.labels.instances import instances_from_boundary_probabilities

    probabilities = np.asarray(probabilities)
    if method == "boundary_watershed":
        if n_classes != 3:
            raise ValueError(f"boundary_watershed needs 3 classes (background, interior, boundary), not {n_classes}")
        instances = np.zeros(probabilities.shape[:-1], dtype=np.int32)
        for index in np.ndindex(probabilities.shape[:-1 - spatial_dims]):
            instances[index] = instances_from_boundary_probabilities(
                probabilities[index], min_size=min_size, seed_threshold=seed_threshold or SEED_THRESHOLD,
                background_threshold=background_threshold, min_seed_size=min_seed_size or MIN_SEED_SIZE,
                merge_threshold=merge_threshold)
        return instances
    if method == "classes" and boundary_outputs:
        return class_boundary_instances(probabilities, object_classes, boundary_outputs, spatial_dims=spatial_dims,
                                        min_size=min_size, seed_threshold=seed_threshold or SEED_THRESHOLD,
                                        min_seed_size=min_seed_size or MIN_SEED_SIZE, merge_threshold=merge_threshold,
                                        background_threshold=background_threshold)
    labels = semantic_labels(probabilities, threshold, n_classes, background_threshold)
    if method == "classes":
        return class_instances(labels, object_classes, min_size, spatial_dims)
    if method not in ("components", "enclosed"):
        raise ValueError(f"unknown instance method {method!r}")
    return instances_per_plane(labels, "background" if method == "enclosed" else "foreground", min_size, spatial_dims)


def class_instances(labels: np.ndarray, object_classes, min_size: int = MIN_OBJECT_SIZE,
                    spatial_dims: int = 2) -> np.ndarray:
    """int32 instances of the object classes of a (..., Y, X) class-id label array: each class's regions split
    into objects as "components" does, ids numbered on over the classes so no two objects share one."""
    labels = np.asarray(labels)
    instances = np.zeros(labels.shape, dtype=np.int32)
    for index in np.ndindex(labels.shape[:-spatial_dims]):
        plane, offset = instances[index], 0
        for value in object_classes:
            objects = instances_from_labels(labels[index] == value, min_size=min_size)
            plane[objects > 0] = objects[objects > 0] + offset
            offset += int(objects.max()) if objects.size else 0
    return instances


def class_boundary_instances(probabilities: np.ndarray, object_classes, boundary_outputs, *, spatial_dims: int = 2,
                             min_size: int = MIN_OBJECT_SIZE, seed_threshold: float = SEED_THRESHOLD,
                             min_seed_size: int = MIN_SEED_SIZE, merge_threshold: float | None = None,
                             background_threshold: float | None = None) -> np.ndarray:
    """int32 instances of a model of several classes with boundary outputs, from its (..., Y, X, channels) output:
    the objects of each object class (label value `object_classes[i]`, its boundary in channel
    `boundary_outputs[i]`) grow from its cores over the pixels labelled with the class (instances.objects_from_cores),
    ids numbered on over the classes so no two objects share one."""
    probabilities = np.asarray(probabilities)
    classes = boundaries_added(probabilities, object_classes, boundary_outputs)
    labels = semantic_labels(classes, n_classes=classes.shape[-1], background_threshold=background_threshold)
    instances = np.zeros(labels.shape, dtype=np.int32)
    for index in np.ndindex(labels.shape[:-spatial_dims]):
        plane, offset = instances[index], 0
        for value, channel in zip(object_classes, boundary_outputs):
            objects = objects_from_cores(probabilities[index][..., value], probabilities[index][..., channel],
                                         labels[index] == value, seed_threshold=seed_threshold,
                                         min_seed_size=min_seed_size, min_size=min_size,
                                         merge_threshold=merge_threshold)
            plane[objects > 0] = objects[objects > 0] + offset
            offset += int(objects.max()) if objects.size else 0
    return instances


def smallest_object(metadata, min_size: int | None = None) -> int:
    """Objects below this many px are dropped: the caller's choice, else the model's own, else the default."""
    return min_size or metadata.min_size or MIN_OBJECT_SIZE


def model_instances(probabilities: np.ndarray, metadata, n_classes: int, *, threshold: float = 0.5,
                    min_size: int | None = None, spatial_dims: int = 2) -> np.ndarray:
    """Instances by a model's own method and settings (ModelMetadata: method, thresholds and sizes chosen on
    validation). min_size: the caller's choice over the model's. spatial_dims=3: 3-D objects of volumes."""
    return instances_from_probabilities(
        probabilities, metadata.instance_method, threshold=threshold, n_classes=n_classes,
        min_size=smallest_object(metadata, min_size), seed_threshold=metadata.seed_threshold,
        background_threshold=metadata.background_threshold, min_seed_size=metadata.min_seed_size,
        merge_threshold=metadata.merge_threshold, spatial_dims=spatial_dims,
        object_classes=tuple(metadata.object_class_values), boundary_outputs=tuple(metadata.boundary_outputs))

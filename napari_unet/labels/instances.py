"""Touching objects as separate instances: the boundary-class method of the U-Net literature.

A model with classes (background, interior, boundary) is trained on targets derived from instance
labels: every object's outermost pixel ring is "boundary", the rest of it "interior" (or, with a model's
core_fraction, only its core: the DSB 2018 solutions' eroded masks). Where two objects touch, the two rings
meet, so the interiors of touching objects never touch. At prediction the interior components are the
seeds, and a watershed on the interior probability grows each seed back over the boundary into the
predicted foreground (interior + boundary).

No TensorFlow, no Qt: scikit-image and SciPy only.
"""

from __future__ import annotations

import numpy as np

MIN_OBJECT_SIZE = 16  # px; smaller objects are dropped (a model's metadata.min_size, if set, decides instead)

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
# How a model's output becomes instances; stored in the model's metadata (ModelMetadata.instances).
INSTANCE_METHODS = ("components", "enclosed", "boundary_watershed", "classes")


def boundary_targets(labels: np.ndarray, ignore: np.ndarray | None = None, touching_width: int = 1,
                     core_fraction: float = 0.0) -> np.ndarray:
    """uint8 (Y, X) training targets 0 = background, 1 = interior, 2 = boundary from an instance label image.

    `labels` holds instance ids (0 = background; a 0/1 mask counts as objects split by connectivity,
    so a user's binary correction still yields targets). Pixels where `ignore` is True become 255
    (masks.IGNORE_LABEL). With `touching_width` > 1, an object's pixels within that many px of another
    object are boundary too (ModelMetadata.touching_width): the interiors of touching objects lie further apart.
    With `core_fraction` > 0 (ModelMetadata.core_fraction), interior is only an object's core, its pixels at least
    that fraction of the object's largest depth from its edge; the rest is boundary: the seeds of touching
    objects then lie apart by about their radius, not by a band of fixed width.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"boundary_targets needs a 2D label image, got shape {labels.shape}")
    if labels.dtype == bool or np.unique(labels[labels != 0]).size <= 1:
        labels, _ = ndi.label(labels != 0)
    if ignore is not None and np.any(ignore) and not np.all(ignore):
        # Not annotated is not background: each such pixel takes its nearest annotated label, so an object cut by
        # the edge of what was annotated gets no boundary ring along that edge and keeps its depth for its core.
        nearest = ndi.distance_transform_edt(np.asarray(ignore, dtype=bool), return_distances=False,
                                             return_indices=True)
        labels = labels[tuple(nearest)]
    outline = find_boundaries(labels, mode="inner") & (labels != 0)
    ring = outline.copy()
    if touching_width > 1:
        ring |= near_another_object(labels, touching_width)
    if core_fraction > 0:
        ring |= (labels != 0) & ~object_cores(labels, core_fraction, outline)
    targets = np.where(labels != 0, INTERIOR, BACKGROUND).astype(np.uint8)
    targets[ring] = BOUNDARY
    if ignore is not None:
        targets[np.asarray(ignore, dtype=bool)] = 255
    return targets


def class_boundary_targets(labels: np.ndarray, object_values: list[int], boundary_values: list[int],
                           touching_width: int = 1, core_fraction: float = 0.0) -> np.ndarray:
    """uint8 training targets of a model of several classes with boundary outputs, from painted class ids (255 kept).

    Each object class's connected regions are its objects; their outer parts (as boundary_targets makes them, with
    objects of every object class, so objects of two classes that touch are kept apart too) take the class's
    boundary value (`boundary_values[i]` for `object_values[i]`), their cores keep the class value. Touching objects
    painted with one value are one region: only core_fraction (a narrow neck between two cores is outer part) can
    part them. Region classes and background stay as painted."""
    from scipy import ndimage as ndi

    from napari_unet.labels.masks import IGNORE_LABEL  # masks.py imports this module

    labels = np.asarray(labels)
    objects = np.zeros(labels.shape, dtype=np.int32)
    for value in object_values:
        regions, _ = ndi.label(labels == value)
        objects[regions > 0] = regions[regions > 0] + int(objects.max())
    parts = boundary_targets(objects, ignore=labels == IGNORE_LABEL, touching_width=touching_width,
                             core_fraction=core_fraction)
    targets = labels.astype(np.uint8, copy=True)
    for value, boundary_value in zip(object_values, boundary_values):
        targets[(labels == value) & (parts == BOUNDARY)] = boundary_value
    return targets


def object_cores(labels: np.ndarray, fraction: float, outline: np.ndarray | None = None) -> np.ndarray:
    """bool (Y, X): each object's pixels whose depth (px to the nearest pixel not of that object) is at least
    `fraction` of the object's largest depth. `outline`: the objects' inner boundary pixels, if already found."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    if outline is None:
        outline = find_boundaries(labels, mode="inner")
    inner = (labels != 0) & ~outline  # objects apart from each other
    depth = ndi.distance_transform_edt(inner) + (labels != 0)  # the ring is depth 1
    deepest = np.zeros(int(labels.max()) + 1)
    ids = np.unique(labels[labels != 0])
    deepest[ids] = ndi.maximum(depth, labels, ids)
    return (labels != 0) & (depth >= fraction * deepest[labels])


def near_another_object(labels: np.ndarray, distance: int) -> np.ndarray:
    """bool (Y, X): object pixels with a pixel of another object within `distance` px (a disk)."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    labels = np.asarray(labels, dtype=np.int64)  # room for the max + 1 below (uint8 ids go up to 255)
    footprint = disk(distance)
    highest = ndi.maximum_filter(labels, footprint=footprint)
    lowest = ndi.minimum_filter(np.where(labels == 0, labels.max() + 1, labels), footprint=footprint)
    return (labels != 0) & ((highest > labels) | (lowest < labels))


# A seed is where the model is this sure of "interior": high enough to keep the interiors of touching
# nuclei apart where the boundary between them is faint. The default for models without their own
# (ModelMetadata.seed_threshold, which the recipe picks on validation images: first nuclei model, AP@0.5
# 0.760 at 0.5 → 0.792 at 0.9; the shipped one 0.794 at 0.5 → 0.822 at 0.8).
SEED_THRESHOLD = 0.8


MIN_SEED_SIZE = 4  # px; ModelMetadata.min_seed_size, chosen on validation by the recipe, overrides it


def instances_from_boundary_probabilities(
    probabilities: np.ndarray, *, seed_threshold: float = SEED_THRESHOLD, min_seed_size: int = MIN_SEED_SIZE,
    min_size: int = MIN_OBJECT_SIZE,
    background_threshold: float | None = None,
    merge_threshold: float | None = None,
) -> np.ndarray:
    """int32 instances (0 = background) from (Y, X, 3) softmax output (background, interior, boundary), or
    3-D objects from (Z, Y, X, 3) output on cubic voxels (seeds and watershed in 3-D, sizes in voxels).

    Seeds: connected regions where P(interior) > seed_threshold (SEED_THRESHOLD). Foreground: where
    background is not the most likely class (or P(background) < background_threshold). A watershed on
    -P(interior) from the seeds fills the foreground; foreground blobs without any seed (tiny or faint
    objects) keep one id of their own. With `merge_threshold`, neighbours whose shared border is no boundary
    become one (merge_weak_borders). Objects smaller than `min_size` px are dropped, ids renumbered 1..N.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim not in (3, 4) or probabilities.shape[-1] != 3:
        raise ValueError(f"need (Y, X, 3) or (Z, Y, X, 3) probabilities (background, interior, boundary), "
                         f"got {probabilities.shape}")
    if background_threshold is None:
        foreground = np.argmax(probabilities, axis=-1) != BACKGROUND
    else:  # a model's own, chosen on validation: a generous mask reaches the edges a boundary class leaves out
        foreground = probabilities[..., BACKGROUND] < background_threshold
    return objects_from_cores(probabilities[..., INTERIOR], probabilities[..., BOUNDARY], foreground,
                              seed_threshold=seed_threshold, min_seed_size=min_seed_size, min_size=min_size,
                              merge_threshold=merge_threshold)


def objects_from_cores(interior: np.ndarray, boundary: np.ndarray, foreground: np.ndarray, *,
                       seed_threshold: float = SEED_THRESHOLD, min_seed_size: int = MIN_SEED_SIZE,
                       min_size: int = MIN_OBJECT_SIZE, merge_threshold: float | None = None) -> np.ndarray:
    """int32 objects (ids 1..N) of the `foreground` pixels from the probabilities of the objects' cores (`interior`)
    and of their outer parts (`boundary`): seeds where the interior is above seed_threshold (regions of at least
    min_seed_size px), a watershed on -interior from them over the foreground, optional merging of neighbours
    without a boundary between them, objects under min_size px dropped. The rule of a boundary_watershed model
    (instances_from_boundary_probabilities) and of each object class of a model with boundary outputs."""
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    interior = np.asarray(interior, dtype=np.float32)
    markers, _ = ndi.label((interior > seed_threshold) & foreground)
    if min_seed_size > 1:  # specks of interior are noise, not nuclei
        small = np.bincount(markers.ravel()) < min_seed_size
        small[0] = False
        markers[small[markers]] = 0
    markers, _, _ = relabel_sequential(markers)
    labels = seeded_watershed(interior, markers, foreground)
    if merge_threshold is not None:
        labels = merge_weak_borders(labels, boundary, merge_threshold)
    return drop_small_objects(labels, min_size)


def seeded_watershed(interior: np.ndarray, markers: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """int32 labels: a watershed on -interior from `markers` (ids 1..N, 0 = none; those outside `foreground` are
    dropped) that fills `foreground`; foreground blobs no marker reaches keep one id each, above N, so a faint
    object without a seed is kept, not lost."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    markers = np.where(foreground, markers, 0).astype(np.int32)
    components, _ = ndi.label(foreground)
    unseeded = foreground & ~np.isin(components, np.unique(components[markers > 0]))
    markers[unseeded] = components[unseeded] + int(markers.max())
    return watershed(-interior, markers, mask=foreground).astype(np.int32)


def merge_weak_borders(labels: np.ndarray, boundary: np.ndarray, threshold: float) -> np.ndarray:
    """Merge touching objects whose shared border has a mean boundary probability below `threshold`, weakest
    border first (a region adjacency graph, skimage.graph). Why: in a dim, textured nucleus the interior
    probability dips in places, so seeds split it into fragments with no real boundary between them, while
    touching nuclei keep a confident boundary. The 5000-step nuclei model: held-out images of kinds it never saw,
    AP@0.5 0.550 → 0.607 with the 0.25 chosen on validation (validation 0.841 → 0.846)."""
    from skimage import graph
    from skimage.segmentation import relabel_sequential

    labels = np.asarray(labels)
    if labels.max() < 2:
        return labels
    adjacency = graph.rag_boundary(labels, np.asarray(boundary, dtype=np.float64))
    if 0 in adjacency:  # borders with the background are not between objects
        adjacency.remove_node(0)
    merged = graph.merge_hierarchical(labels, adjacency, thresh=threshold, rag_copy=False, in_place_merge=True,
                                      merge_func=_keep_edges, weight_func=_mean_border)
    # merge_hierarchical numbers the remaining nodes from 0 and leaves the background's label 0 at 0
    return relabel_sequential(np.where(labels > 0, merged + 1, 0).astype(np.int32))[0]


def _keep_edges(adjacency, source, target) -> None:
    """merge_hierarchical's hook before two nodes merge: nothing to update (the weights follow _mean_border)."""


def _mean_border(adjacency, source, target, neighbour) -> dict:
    """The merged node's border with `neighbour`: the pixel-count-weighted mean of the two borders it had."""
    none = {"weight": 0.0, "count": 0}
    first, second = adjacency[source].get(neighbour, none), adjacency[target].get(neighbour, none)
    count = first["count"] + second["count"]
    return {"count": count, "weight": (first["count"] * first["weight"] + second["count"] * second["weight"]) / count}


def drop_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """int32 labels without objects smaller than `min_size` px, renumbered 1..N."""
    from skimage.segmentation import relabel_sequential

    labels = np.asarray(labels)
    if min_size > 1:
        too_small = np.bincount(labels.ravel()) < min_size
        too_small[0] = False
        labels = np.where(too_small[labels], 0, labels)
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def objects_in_masks(masks, ignore: int = 255) -> str:
    """What the foreground of one-class training masks is: "components" (objects, e.g. nuclei) or
    "enclosed" (boundaries between objects, e.g. membranes), read off the masks themselves.

    Objects leave the background as one connected sea around many foreground islands; boundaries
    cut the background into many cells joined by one foreground network. Counted over all masks.
    """
    from scipy import ndimage

    foreground_pieces = background_pieces = 0
    for mask in masks:
        mask = np.asarray(mask)
        annotated = mask != ignore
        foreground_pieces += ndimage.label(annotated & (mask > 0))[1]
        background_pieces += ndimage.label(annotated & (mask == 0))[1]
    return "enclosed" if background_pieces > foreground_pieces else "components"

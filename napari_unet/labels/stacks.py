"""Objects in stacks of planes: one id per object across the planes of a volume, and from frame to frame.

A 2-D network labels each plane on its own, so ids restart in every plane: unrelated objects of neighbouring
planes share an id and one object gets a new id in each plane. What the field does with a 2-D network:

- stitching (Cellpose's stitch_threshold): objects of neighbouring planes that overlap enough are one
  object. Works for any Z spacing; the default.
- three views (Cellpose's 3-D mode), for near-isotropic volumes: the model's probabilities predicted on the
  XY, XZ and YZ planes of the volume resampled to cubic voxels are averaged, and one 3-D seeded watershed
  turns them into objects. Each object is seen from three sides, so a plane where it is faint or merged with
  a neighbour is outvoted; on strongly anisotropic stacks the XZ/YZ planes look like nothing the model was
  trained on, so it is used only up to ISOTROPIC_LIMIT.
- time: the objects of frame t take the ids of the frame t-1 objects they match one to one (Hungarian matching
  on overlap, as stardist-napari links a time-lapse); an object that matches nothing gets an id never used
  before.

The prediction engine (prediction.predict with stack="z" or "t") calls these on its per-plane output.
No TensorFlow, no Qt: NumPy, SciPy and scikit-image.
"""

from __future__ import annotations

import math

import numpy as np

from napari_unet.errors import NapariUNetError

# What the leading axis of a (N, Y, X) stack is: "planes" = unrelated planes, each labelled on its own;
# "z" = planes of one volume (objects stitched into 3-D objects); "t" = frames (ids kept over time).
STACK_KINDS = ("planes", "z", "t")
# Objects of neighbouring planes (or frames) are one object when their IoU reaches this (Cellpose's
# stitch_threshold is 0.0 by default, off; its documentation suggests values around 0.25 to 0.5).
STITCH_THRESHOLD = 0.25
LINK_THRESHOLD = 0.25
# Z spacing / XY pixel size up to which a volume is near-isotropic enough for the three-view average.
ISOTROPIC_LIMIT = 2.0


def overlap_ious(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of objects of two label arrays (same shape) that overlap: (first ids, second ids, their IoU)."""
    first, second = np.asarray(first).ravel(), np.asarray(second).ravel()
    both = (first != 0) & (second != 0)
    pairs, shared = np.unique(np.stack([first[both], second[both]]), axis=1, return_counts=True)
    first_ids, second_ids = pairs if pairs.size else (np.zeros(0, first.dtype), np.zeros(0, second.dtype))
    first_sizes = _sizes(first, first_ids)
    second_sizes = _sizes(second, second_ids)
    return first_ids, second_ids, shared / (first_sizes + second_sizes - shared)


def _sizes(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixel count of each of `ids` in `labels`."""
    present, counts = np.unique(labels, return_counts=True)
    return counts[np.searchsorted(present, ids)] if ids.size else np.zeros(0, dtype=np.int64)


def one_to_one_matches(previous: np.ndarray, current: np.ndarray,
                       threshold: float) -> list[tuple[int, int]]:
    """(previous id, current id) pairs: at most one partner each, the assignment of largest total IoU
    (scipy.optimize.linear_sum_assignment), pairs below `threshold` IoU dropped."""
    from scipy.optimize import linear_sum_assignment

    previous_ids, current_ids, ious = overlap_ious(previous, current)
    if not ious.size:
        return []
    rows, row_of = np.unique(previous_ids, return_inverse=True)
    columns, column_of = np.unique(current_ids, return_inverse=True)
    table = np.zeros((rows.size, columns.size))
    table[row_of, column_of] = ious
    chosen_rows, chosen_columns = linear_sum_assignment(table, maximize=True)
    return [(int(rows[r]), int(columns[c])) for r, c in zip(chosen_rows, chosen_columns)
            if table[r, c] >= threshold]


def link_frames(instances: np.ndarray, threshold: float = LINK_THRESHOLD) -> np.ndarray:
    """int32 instances of a (T, ...) stack whose frames were labelled each on its own, with ids kept over time.

    Frame t's objects take the id of the frame t-1 object they match (one_to_one_matches, IoU >= threshold);
    the others get ids never used before, so an id is never reused for an unrelated object. A frame may be a
    plane or a volume (the IoU is over all its pixels). An object missing from one frame comes back with a new id.
    """
    instances = np.asarray(instances)
    if instances.ndim < 3:
        raise NapariUNetError(f"linking needs a stack of frames, got shape {instances.shape}")
    linked = np.zeros(instances.shape, dtype=np.int64)
    next_id = 1
    for index, frame in enumerate(instances):
        linked[index], next_id = link_frame(linked[index - 1] if index else None, frame, next_id, threshold)
    return within_int32(linked)


def link_frame(previous: np.ndarray | None, frame: np.ndarray, next_id: int,
               threshold: float = LINK_THRESHOLD) -> tuple[np.ndarray, int]:
    """(frame's objects with the ids of the `previous` linked frame's objects they match, the next unused id):
    one step of link_frames, so a time-lapse too large for memory is linked frame by frame."""
    frame = np.asarray(frame)
    ids = np.unique(frame[frame != 0])
    new_ids = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.int64)
    if previous is not None:
        for previous_id, current_id in one_to_one_matches(previous, frame, threshold):
            new_ids[current_id] = previous_id
    unmatched = ids[new_ids[ids] == 0]
    new_ids[unmatched] = np.arange(next_id, next_id + unmatched.size)
    return new_ids[frame], next_id + int(unmatched.size)


def stitch_planes(instances: np.ndarray, threshold: float = STITCH_THRESHOLD) -> np.ndarray:
    """int32 3-D objects of a (Z, Y, X) stack whose planes were labelled each on its own, ids 1..N.

    Objects of neighbouring planes with IoU >= threshold are one object. Every such pair is joined, and the
    joined objects are the connected components of that graph (scipy.sparse.csgraph): an object cut in two in
    one plane stays one object, because both halves overlap it in the planes around.
    """
    instances = np.asarray(instances)
    if instances.ndim != 3:
        raise NapariUNetError(f"stitching needs a (Z, Y, X) stack of instances, got shape {instances.shape}")
    # Ids unique over the whole stack: plane z's ids shifted by the highest id of the planes before it.
    highest = np.array([int(plane.max()) for plane in instances], dtype=np.int64)
    shifts = np.concatenate([[0], np.cumsum(highest)[:-1]])
    unique = np.where(instances != 0, instances.astype(np.int64) + shifts[:, None, None], 0)
    sources, targets = [], []
    for lower, upper in zip(unique[:-1], unique[1:]):
        lower_ids, upper_ids, ious = overlap_ious(lower, upper)
        joined = ious >= threshold
        sources.append(lower_ids[joined])
        targets.append(upper_ids[joined])
    present = np.zeros(int(highest.sum()) + 1, dtype=bool)
    present[np.unique(unique)] = True
    return within_int32(joined_ids(present, sources, targets)[unique])


def joined_ids(present: np.ndarray, sources: list, targets: list) -> np.ndarray:
    """The new id of every id 0..n-1 once each (source, target) pair is one object: the connected components of that
    graph (scipy.sparse.csgraph), numbered 1.. in the order of the component labels (as relabel_sequential does);
    0 stays 0. A table, so a stack too large for memory is relabelled plane by plane.

    present: bool (n,), which ids occur (an absent id takes no number); sources, targets: lists of int arrays of
    joined ids."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_ids = int(present.size)
    sources = np.concatenate([np.zeros(0, np.int64), *sources]).astype(np.int64)
    targets = np.concatenate([np.zeros(0, np.int64), *targets]).astype(np.int64)
    graph = coo_matrix((np.ones(sources.size), (sources, targets)), shape=(n_ids, n_ids))
    _, component = connected_components(graph, directed=False)
    ids = np.flatnonzero(present[1:]) + 1
    table = np.zeros(n_ids, dtype=np.int64)
    table[ids] = np.unique(component[ids], return_inverse=True)[1].ravel() + 1
    return table


def within_int32(labels: np.ndarray) -> np.ndarray:
    """Object ids as int32 (napari's and the files' label type), refused in one line if they do not fit."""
    if labels.size and int(labels.max()) > np.iinfo(np.int32).max:
        raise NapariUNetError("more than 2**31 objects: split the stack and label its parts one at a time")
    return labels.astype(np.int32, copy=False)


def uses_three_views(anisotropy: float | None) -> bool:
    """Whether a volume with this Z spacing / XY pixel size is segmented from three views (else stitched).
    None (spacing unknown) stitches: it works for any spacing."""
    return anisotropy is not None and anisotropy <= ISOTROPIC_LIMIT


def anisotropy_from_scale(scale) -> float | None:
    """Z spacing / X spacing of a layer's scale (..., Z, Y, X); None for fewer than 3 axes. napari's default
    scale (all ones) reads as cubic voxels, 1."""
    scale = [float(value) for value in scale]
    if len(scale) < 3 or scale[-1] <= 0:
        return None
    return scale[-3] / scale[-1]


def isotropic_depth(depth: int, anisotropy: float) -> int:
    """Planes of a volume of `depth` planes resampled to cubic voxels (at least 1)."""
    return max(1, int(round(depth * anisotropy)))


def resample_depth(volume: np.ndarray, depth: int, order: int = 1) -> np.ndarray:
    """`volume` (Z, ...) resampled along its first axis to `depth` planes (linear, or nearest with order=0),
    float32 for order 1, the input's dtype for order 0."""
    from scipy import ndimage as ndi

    volume = np.asarray(volume)
    if volume.shape[0] == depth:
        return volume
    factors = (depth / volume.shape[0],) + (1,) * (volume.ndim - 1)
    source = volume.astype(np.float32, copy=False) if order else volume
    # grid_mode: plane centres at (i + 0.5) * spacing, so the first and last planes cover the same extent
    resampled = ndi.zoom(source, factors, order=order, mode="nearest", grid_mode=True)
    if resampled.shape[0] != depth:  # ndi.zoom rounds the shape; make it exact
        resampled = resampled[:depth] if resampled.shape[0] > depth else np.concatenate(
            [resampled, resampled[-1:].repeat(depth - resampled.shape[0], axis=0)])
    return resampled


def side_views(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The XZ planes (Y, Z, X, ...) and the YZ planes (X, Z, Y, ...) of a (Z, Y, X, ...) volume (views)."""
    axes = tuple(range(3, np.ndim(volume)))
    return np.transpose(volume, (1, 0, 2, *axes)), np.transpose(volume, (2, 0, 1, *axes))


def volume_instances(probabilities: np.ndarray, metadata, n_classes: int, depth: int, *,
                     threshold: float = 0.5, min_size: int | None = None, instances_of: str = "auto") -> np.ndarray:
    """int32 3-D objects of one volume from its three-view probabilities, on cubic voxels.

    probabilities: (Z', Y, X) for one class, (Z', Y, X, n_classes) otherwise, on cubic voxels (resampled to
    isotropic_depth planes); the objects are returned on the volume's own `depth` planes (nearest plane).
    The model's own method in 3-D (postprocess.model_instances): seeds where the averaged interior
    probability is high and one seeded watershed for a boundary-class model; for a one-class model the
    foreground's 3-D components, touching ones split on the distance transform (seeds at its maxima).
    min_size: voxels of the cubic grid (None: the model's own, else the default).
    """
    from skimage.segmentation import relabel_sequential

    from napari_unet.labels.postprocess import instances_from_labels, model_instances, model_labels, smallest_object

    if instances_of == "auto":
        objects = model_instances(probabilities, metadata, n_classes, threshold=threshold, min_size=min_size,
                                  spatial_dims=3)
    else:
        labels = model_labels(probabilities, metadata, threshold)
        objects = instances_from_labels(labels, objects=instances_of, min_size=smallest_object(metadata, min_size))
    on_planes = resample_depth(objects, depth, order=0)
    return relabel_sequential(on_planes)[0].astype(np.int32, copy=False)


def volume_objects(probabilities: np.ndarray, metadata, n_classes: int, depth: int, *, three_views: bool,
                   threshold: float = 0.5, min_size: int | None = None) -> np.ndarray:
    """int32 3-D objects of one (Z, Y, X) volume from the map prediction.predict_volume_map gives: the three views'
    mean on cubic voxels (three_views: volume_instances), else the planes' own probabilities, labelled plane by
    plane by the model's own method and stitched (stitch_planes). `depth`: the volume's planes."""
    if three_views:
        return volume_instances(probabilities, metadata, n_classes, depth, threshold=threshold, min_size=min_size)
    from napari_unet.labels.postprocess import model_instances

    return stitch_planes(model_instances(probabilities, metadata, n_classes, threshold=threshold, min_size=min_size))


def check_stack(stack: str | None, output: str, leading_shape: tuple, anisotropy: float | None) -> None:
    """Refuse, in one line naming the fix, a stack kind that does not fit the image's stack axes."""
    if stack is None:
        if anisotropy is not None:
            raise NapariUNetError("anisotropy is the Z spacing of a volume: add stack='z' (or 't' for a time-lapse "
                                  "of volumes), or drop anisotropy")
        return
    if stack not in STACK_KINDS:
        raise NapariUNetError(f"stack={stack!r} is not one of {', '.join(STACK_KINDS)} "
                              "(z: planes of one volume, t: frames of a time-lapse)")
    if anisotropy is not None and not (math.isfinite(anisotropy) and anisotropy > 0):
        raise NapariUNetError(f"anisotropy={anisotropy} must be a positive number: the Z spacing divided by the "
                              "XY pixel size (e.g. 2 for 0.5 µm pixels and 1 µm steps)")
    if stack == "planes":
        return
    if output != "instances":
        raise NapariUNetError(f"stack={stack!r} gives objects their ids across planes: it needs "
                              f"output='instances' (--instances), not {output!r}")
    shape = "×".join(str(n) for n in leading_shape)
    if not leading_shape:
        raise NapariUNetError(f"stack={stack!r} needs a stack of planes, but the image is one plane: drop "
                              "stack, or pass channel_axis= if an axis read as channels is really Z or T")
    if stack == "z" and len(leading_shape) != 1:
        raise NapariUNetError(f"stack='z' needs a (Z, Y, X) volume, but the image is {shape} planes: use "
                              "stack='t' for a (T, Z, Y, X) time-lapse of volumes")
    if stack == "t" and len(leading_shape) == 1 and anisotropy is not None:
        raise NapariUNetError("anisotropy is the Z spacing of a volume, and a (T, Y, X) time-lapse has no Z: "
                              "drop anisotropy, or use stack='z' if the stack is a volume")


def three_view_volumes(stack: str | None, leading_shape: tuple, anisotropy: float | None) -> list[tuple]:
    """The indices (over the axes before Z) of the volumes to segment from three views: [()] for a
    near-isotropic (Z, Y, X) volume, [(0,), (1,), ...] for a (T, Z, Y, X) time-lapse of them, [] otherwise."""
    if not uses_three_views(anisotropy):
        return []
    if stack == "z":
        return [()]
    if stack == "t" and len(leading_shape) == 2:
        return [(t,) for t in range(leading_shape[0])]
    return []


def three_view_mean(xy: np.ndarray, xz: np.ndarray, yz: np.ndarray) -> np.ndarray:
    """The mean of a volume's outputs on its XY planes (Z, Y, X, ...), XZ planes and YZ planes (side_views'
    layouts), in (Z, Y, X, ...) order."""
    axes = tuple(range(3, np.ndim(xy)))
    return (xy + np.transpose(xz, (1, 0, 2, *axes)) + np.transpose(yz, (1, 2, 0, *axes))) / 3


def join_planes(instances: np.ndarray, stack: str) -> np.ndarray:
    """int32 objects with ids across planes, from instances labelled plane by plane (*leading, Y, X):
    stack "z" stitches a (Z, Y, X) volume; "t" links the frames of a (T, Y, X) time-lapse, or stitches each
    volume of a (T, Z, Y, X) one and links the volumes; "planes" leaves them as they are."""
    if stack == "planes":
        return instances
    if stack == "z":
        return stitch_planes(instances)
    if np.ndim(instances) == 4:
        instances = np.stack([stitch_planes(volume) for volume in instances])
    return link_frames(instances)


def stack_depth(shape: tuple, n_channels: int, channels=None) -> int | None:
    """How many stack axes (before Y, X) an image of `shape` has as prediction reads it for a model of
    `n_channels` channels (channels.as_planes); None when that layout would be refused (predict says why).

    Read off a small zero stand-in with the same last axis and its Y, X capped at MIN_COLOUR_SIDE, which are
    all the layout rule looks at, so a huge image is neither read nor copied.
    """
    from napari_unet.inference.channels import MIN_COLOUR_SIDE, as_planes

    shape = tuple(int(n) for n in shape)
    if len(shape) < 3:
        return 0
    stand_in_shape = (*(1,) * (len(shape) - 3), *(min(n, MIN_COLOUR_SIDE) for n in shape[-3:-1]), shape[-1])
    try:
        planes = as_planes(np.zeros(stand_in_shape, dtype=np.uint8), n_channels, None, channels)
    except NapariUNetError:
        return None
    return planes.ndim - 3


# Axis names (as a reader or the user gives them to a napari layer) that say what a stack axis is.
TIME_AXIS_NAMES = frozenset({"t", "time", "frame", "frames"})
DEPTH_AXIS_NAMES = frozenset({"z", "depth", "plane", "planes", "slice", "slices"})


def stack_kind_from_axis_names(names, n_stack_axes: int) -> str | None:
    """The stack kind ("z" or "t") that the names of an image's stack axes (those before Y, X) say, or None when
    they do not say (napari's default names '-3', '-2', …): (Z, Y, X) -> "z"; (T, Y, X) and (T, Z, Y, X) -> "t"."""
    names = [str(name).strip().lower() for name in tuple(names)[:n_stack_axes]]
    if len(names) != n_stack_axes or not names:
        return None
    if n_stack_axes == 1:
        return "t" if names[0] in TIME_AXIS_NAMES else "z" if names[0] in DEPTH_AXIS_NAMES else None
    if n_stack_axes == 2 and names[0] in TIME_AXIS_NAMES and names[1] in DEPTH_AXIS_NAMES:
        return "t"
    return None

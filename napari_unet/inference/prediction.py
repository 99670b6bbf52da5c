"""The prediction engine: numpy or dask arrays of any layout, size and dtype -> probabilities or labels.

Data flow per 2D plane: raw pixels -> percentile range (once per plane, from a strided subsample
for big/dask images) -> tiles gathered with reflect padding (tiling.py) -> normalised per tile with
that one range (identical to normalising the whole plane) -> one compiled tf.function per model ->
probabilities blended with a raised-cosine window -> cropped to exactly the input's Y x X.

Layouts (channel_axis=None; channels.as_planes is the rule):
  (Y, X)                      one plane
  (Y, X, C)                   C channels (colour or fluorescence), read as they are by a C-channel model;
                              another channel count is refused with the fixes named (channels=[...] picks,
                              channels="grey" converts, channels.widen_input gives the model C channels)
  (Z|T, Y, X), (T, Z, Y, X)   stacks, predicted plane by plane (each plane normalised on its own); with
                              output="instances", stack="z" or "t" gives an object one id across the planes
                              of a volume or over time (stacks.py), else each plane is labelled on its own
  (..., Y, X, C)              stacks of multichannel planes, same rule for the last axis.
A 3-D array whose last axis has 2 to 4 entries is read as channels (Y, X, C) only if Y and X are both at
least 16 px; otherwise it is a stack. Pass channel_axis to say where channels are (e.g. 0 for (C, Y, X));
channel_axis always wins over the guess.

dask (or zarr via dask.array.from_zarr) input returns a lazy dask array: blocks of BLOCK_SIZE px are
predicted on compute, each from exactly the tiles a whole-image pass would use, so blocks join without
seams and the result equals the numpy result. Percentiles are computed once per plane, eagerly.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from napari_unet.errors import Cancelled, NapariUNetError
from napari_unet.inference import tiling
from napari_unet.inference.channels import ChannelChoice, as_planes
from napari_unet.inference.normalize import apply_range, is_flat, percentile_range
from napari_unet.inference.onnx_engine import is_onnx, onnx_forward
from napari_unet.inference.precision import with_precision
from napari_unet.labels.postprocess import (
    class_probabilities,
    instances_per_plane,
    model_instances,
    model_labels,
    smallest_object,
)
from napari_unet.labels.stacks import (
    STITCH_THRESHOLD,
    check_stack,
    isotropic_depth,
    join_planes,
    joined_ids,
    link_frame,
    link_frames,
    overlap_ious,
    resample_depth,
    side_views,
    three_view_mean,
    three_view_volumes,
    volume_instances,
    within_int32,
)
from napari_unet.model import SegmentationModel, inference_function

OUTPUTS = ("labels", "probabilities", "instances", "raw")
# Target tile side (tiling.axis_tiles: the number of tiles first, then the smallest tile covering the image):
# fewer tiles means less overlap work, and 1024 px tiles run at the same GFLOP/s as 256-512 px ones on CPU.
LARGE_TILE = 1024
# Pixels per forward call at base width 16 (scaled by 16/base_width), which bounds activation memory
# (~0.5 GB at 1 Mpx); one 1024² tile per call runs as fast as bigger batches on CPU.
BATCH_PIXEL_BUDGET = 1024 * 1024
# Side of the output blocks of a lazy (dask) prediction. A tile crossing a block border is computed by
# both blocks, so bigger blocks waste less (~1 tile per block side); a block holds one float32 buffer.
BLOCK_SIZE = 8192
# One forward pass at a time per process: TF already uses every core for one call, and parallel dask
# blocks would otherwise multiply the activation memory.
_FORWARD_LOCK = threading.Lock()
MIN_SIDE = 2

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


def forward_function(model: SegmentationModel, test_time_augmentation: bool | int = False,
                     with_squares: bool = False):
    """The model's compiled forward pass: float32 (N, H, W, C) -> (N, H, W, n_classes).

    Traced once per Keras model with a (None, None, None, C) signature, so any tile size and batch
    reuse it; cached on the SegmentationModel (a new Keras model, e.g. after copy(), gets its own).
    model.predict is avoided on purpose: it is up to 2x slower and erratic on CPU (cpu-calibration.md).
    test_time_augmentation: average the flips/rotations the model was trained for
    (metadata.symmetries: 8 for most models, 2 for one trained with left-right flips only), each
    undone before averaging; True = all of them, 2 or 4 = that many (augment.tta_views). Costs that
    many times the work for a little accuracy.
    The model's metadata.output_offset is applied last, to the averaged output (calibration.py).
    with_squares: also return the views' mean of squared probabilities, (N, H, W, 2 * n_classes),
    from which uncertainty.py measures how much the views disagree.
    """
    import tensorflow as tf

    from napari_unet.training.augment import tta_views

    keras_model = model.keras_model
    try:
        transforms = tta_views(model.metadata.symmetries, test_time_augmentation)
    except ValueError as error:
        raise NapariUNetError(str(error)) from None
    cache = model.__dict__.get("_forward")
    if cache is None or cache[0] is not keras_model:
        cache = (keras_model, {})
        model.__dict__["_forward"] = cache
    offset = tuple(float(v) for v in model.metadata.output_offset)
    key = (transforms, offset, with_squares)
    if key in cache[1]:
        return cache[1][key]
    n_channels = int(keras_model.input_shape[-1])
    signature = [tf.TensorSpec((None, None, None, n_channels), tf.float32)]
    network = inference_function(keras_model, model.config) or (lambda batch: keras_model(batch, training=False))

    def averaged_views(batch):
        if len(transforms) <= 1:
            output = network(batch)
            return tf.concat([output, tf.square(output)], axis=-1) if with_squares else output
        total = None
        for quarter_turns, mirrored in transforms:
            moved = tf.image.rot90(tf.reverse(batch, axis=[2]) if mirrored else batch, quarter_turns)
            output = tf.image.rot90(network(moved), (4 - quarter_turns) % 4)
            output = tf.reverse(output, axis=[2]) if mirrored else output
            output = tf.concat([output, tf.square(output)], axis=-1) if with_squares else output
            total = output if total is None else total + output
        return total / float(len(transforms))

    @tf.function(input_signature=signature)
    def forward(batch):
        return _moved(averaged_views(batch), offset)

    cache[1][key] = forward
    return forward


def _moved(output, offset):
    """TensorFlow twin of calibration.shift_probabilities on (N, H, W, C) tensors (traced once)."""
    import tensorflow as tf

    for axis, amount in zip((1, 2), offset):
        if amount == 0.0:
            continue
        length = tf.shape(output)[axis]
        source = tf.clip_by_value(tf.range(length) + (1 if amount < 0 else -1), 0, length - 1)
        neighbour = tf.gather(output, source, axis=axis)
        output = (1.0 - abs(amount)) * output + abs(amount) * neighbour
    return output


class _ProgressCounter:
    """Counts finished tiles across a whole call (all planes, all blocks); thread-safe for dask."""

    def __init__(self, total: int, progress: ProgressCallback | None, cancel: CancelCheck | None):
        self.total, self.done = total, 0
        self._progress, self._cancel = progress, cancel
        self._lock = threading.Lock()

    def check_cancel(self) -> None:
        if self._cancel is not None and self._cancel():
            raise Cancelled("prediction cancelled")

    def add(self, n_tiles: int) -> None:
        with self._lock:
            self.done += n_tiles
            done = self.done
        if self._progress is not None:
            self._progress(done, self.total)


def _is_dask(image) -> bool:
    return type(image).__module__.startswith("dask.")


def _describe(shape) -> str:
    return "×".join(str(n) for n in shape)


def check_image_values(image) -> None:
    """Reject inputs that are not intensity images before any TensorFlow work."""
    dtype = np.dtype(image.dtype)
    if dtype == np.dtype(bool):
        raise NapariUNetError(
            "the image is boolean (is it a mask?): pass the intensity image, or convert it with "
            "image.astype('uint8') if you really want to segment a binary image"
        )
    if dtype.kind not in "uif":
        raise NapariUNetError(f"the image has dtype {dtype}: a numeric (integer or float) image is needed")
    if image.size == 0:
        raise NapariUNetError(f"the image of shape {_describe(image.shape)} is empty: nothing to segment")


def model_and_planes(model, image, channel_axis: int | None = None, channels: ChannelChoice = None):
    """The model (a name or path is loaded) and the image checked and laid out as (*leading, Y, X, C) planes
    of the channels the model reads (channels.as_planes)."""
    if not isinstance(model, SegmentationModel):
        from napari_unet.storage.registry import load_model

        model = load_model(model)
    check_image_values(image)
    planes = as_planes(image, model.config.n_channels, channel_axis, channels)
    spatial_shape = tuple(planes.shape[-3:-1])
    if min(spatial_shape) < MIN_SIDE:
        raise NapariUNetError(
            f"the image is {_describe(spatial_shape)} px: too small to segment, it needs at least {MIN_SIDE} px per side"
        )
    return model, planes


def _plane_range(plane, normalization, index) -> tuple[np.ndarray, np.ndarray] | None:
    """Percentile range of one (Y, X, C) plane, or None for a constant plane (predicted as background)."""
    where = f" (plane {index})" if index else ""
    if not _is_dask(plane) and np.dtype(plane.dtype).kind == "f" and not np.all(np.isfinite(plane)):
        raise NapariUNetError(
            f"the image{where} contains NaN or infinite values: replace them (e.g. numpy.nan_to_num) before segmenting"
        )
    try:
        low, high = percentile_range(plane, normalization)
    except NapariUNetError as exc:
        raise NapariUNetError(f"{exc}{where}") from None
    if np.all(is_flat(low, high)):
        warnings.warn(
            f"the image{where} is constant (no contrast between its percentiles): predicted as all background",
            stacklevel=4,
        )
        return None
    return low, high


def _tile_and_overlap(model: SegmentationModel, tile_size: int | None, overlap: int | None) -> tuple[int, int]:
    """(target tile side, overlap) in px of predict's tiles for `model`, from predict's tile_size and overlap."""
    multiple = model.config.size_multiple
    model_tile = tiling.round_up(max(model.metadata.tile_size, multiple), multiple)
    if tile_size is None:
        tile = max(model_tile, LARGE_TILE)
    else:
        if tile_size < multiple:
            raise NapariUNetError(f"tile_size={tile_size} is too small: use at least {multiple} (2**depth)")
        tile = tiling.round_up(int(tile_size), multiple)
    if overlap is None:
        overlap = tiling.default_overlap(min(model_tile, tile))
    if overlap < 0:
        raise NapariUNetError(f"overlap={overlap} must be >= 0 px")
    return tile, overlap


def tile_grid_for(model: SegmentationModel, spatial_shape: tuple[int, int], tile_size: int | None = None,
                  overlap: int | None = None) -> tuple[tiling.AxisTiles, tiling.AxisTiles]:
    """The row and column tiles predict() cuts a (Y, X) plane of `spatial_shape` into for `model`, with predict's
    tile_size and overlap (None: its defaults). The model runs on exactly these tiles, so their area, not the
    image's, is what a prediction computes."""
    tile, overlap = _tile_and_overlap(model, tile_size, overlap)
    return tiling.tile_grid(spatial_shape, tile, int(overlap), model.config.size_multiple)


class _Plan:
    """Everything fixed for one call: tiling, batch size, classes."""

    def __init__(self, model: SegmentationModel, spatial_shape, tile_size, overlap, batch_size,
                 test_time_augmentation: bool | int = False, precision: str | None = None, *,
                 with_squares: bool = False):
        config = model.config
        tile, overlap = _tile_and_overlap(model, tile_size, overlap)
        if batch_size < 1:
            raise NapariUNetError(f"batch_size={batch_size} must be >= 1")
        self.grid = tiling.tile_grid(spatial_shape, tile, int(overlap), config.size_multiple)
        rows, cols = self.grid
        self.row_window = tiling.blending_window(rows.size, overlap)
        self.col_window = tiling.blending_window(cols.size, overlap)
        self.window = np.outer(self.row_window, self.col_window).astype(np.float32)
        pixel_budget = BATCH_PIXEL_BUDGET * 16 // max(1, config.base_width)
        self.batch_size = max(1, min(int(batch_size), pixel_budget // (rows.size * cols.size)))
        self.n_classes = config.n_classes
        # Channels blended per pixel: the probabilities, then (with_squares) the views' mean of their squares.
        self.n_outputs = self.n_classes * (2 if with_squares else 1)
        if is_onnx(model):  # float32 on ONNX Runtime, with no TensorFlow (onnx_engine.py)
            self.forward = onnx_forward(model, test_time_augmentation, with_squares)
        else:
            self.forward = forward_function(with_precision(model, precision), test_time_augmentation, with_squares)

    def tiles_in(self, region) -> list[tuple[int, int]]:
        (y0, y1), (x0, x1) = region
        rows, cols = self.grid
        return [
            (i, j)
            for i in tiling.tiles_overlapping(rows, y0, y1)
            for j in tiling.tiles_overlapping(cols, x0, x1)
        ]


def _tile_probabilities(plan: _Plan, plane, value_range, tiles: list[tuple[int, int]], counter: _ProgressCounter):
    """Yield ((i, j), probabilities (size, size, n_outputs)) of each of `tiles` of a raw (Y, X, C) plane (numpy or
    dask; not constant: value_range is its percentile range), in that order, one batch at a time. Reads only the
    pixels the tiles need; cancel is checked before each batch, progress counted after it."""
    rows, cols = plan.grid
    low, high = value_range
    row_index = {i: tiling.reflect_indices(rows.starts[i], rows.size, rows.length) for i, _ in tiles}
    col_index = {j: tiling.reflect_indices(cols.starts[j], cols.size, cols.length) for _, j in tiles}
    r0 = min(int(idx.min()) for idx in row_index.values())
    r1 = max(int(idx.max()) for idx in row_index.values()) + 1
    c0 = min(int(idx.min()) for idx in col_index.values())
    c1 = max(int(idx.max()) for idx in col_index.values()) + 1
    source = plane[r0:r1, c0:c1]
    if _is_dask(source):
        source = source.compute()
        if np.dtype(source.dtype).kind == "f" and not np.all(np.isfinite(source)):
            raise NapariUNetError("the image contains NaN or infinite values: replace them (e.g. numpy.nan_to_num)")
    for first in range(0, len(tiles), plan.batch_size):
        counter.check_cancel()
        batch_tiles = tiles[first : first + plan.batch_size]
        batch = np.stack(
            [apply_range(source[np.ix_(row_index[i] - r0, col_index[j] - c0)], low, high) for i, j in batch_tiles]
        )
        with _FORWARD_LOCK:
            probabilities = np.asarray(plan.forward(batch))
        yield from zip(batch_tiles, probabilities)
        counter.add(len(batch_tiles))


def _predict_region(plan: _Plan, plane, value_range, region, counter: _ProgressCounter) -> np.ndarray:
    """Blended probabilities (Yr, Xr, n_classes) of `region` of a raw (Y, X, C) plane (numpy or dask)."""
    (y0, y1), (x0, x1) = region
    rows, cols = plan.grid
    tiles = plan.tiles_in(region)
    if value_range is None:  # constant plane: all background
        probabilities = np.zeros((y1 - y0, x1 - x0, plan.n_outputs), dtype=np.float32)
        if plan.n_classes > 1:
            probabilities[..., :: plan.n_classes] = 1.0  # background: p = 1 (and p² = 1)
        counter.check_cancel()
        counter.add(len(tiles))
        return probabilities
    accumulated = np.zeros((y1 - y0, x1 - x0, plan.n_outputs), dtype=np.float32)
    # The window is separable and the tiles form a full grid, so the sum of windows over the tiles
    # covering a pixel is (sum over its tile rows) x (sum over its tile columns): two 1D arrays, not 2D.
    row_weight_sum = np.zeros(y1 - y0, dtype=np.float32)
    col_weight_sum = np.zeros(x1 - x0, dtype=np.float32)
    for i in {i for i, _ in tiles}:
        ay0, ay1 = max(rows.starts[i], y0), min(rows.starts[i] + rows.size, y1)
        row_weight_sum[ay0 - y0 : ay1 - y0] += plan.row_window[ay0 - rows.starts[i] : ay1 - rows.starts[i]]
    for j in {j for _, j in tiles}:
        ax0, ax1 = max(cols.starts[j], x0), min(cols.starts[j] + cols.size, x1)
        col_weight_sum[ax0 - x0 : ax1 - x0] += plan.col_window[ax0 - cols.starts[j] : ax1 - cols.starts[j]]
    for (i, j), tile_probabilities in _tile_probabilities(plan, plane, value_range, tiles, counter):
        ty0, tx0 = rows.starts[i], cols.starts[j]
        # Intersection of the tile with the region, in region and in tile coordinates.
        ay0, ay1 = max(ty0, y0), min(ty0 + rows.size, y1)
        ax0, ax1 = max(tx0, x0), min(tx0 + cols.size, x1)
        window = plan.window[ay0 - ty0 : ay1 - ty0, ax0 - tx0 : ax1 - tx0]
        accumulated[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] += (
            tile_probabilities[ay0 - ty0 : ay1 - ty0, ax0 - tx0 : ax1 - tx0] * window[..., None]
        )
    accumulated /= row_weight_sum[:, None, None]
    accumulated /= col_weight_sum[None, :, None]
    return accumulated


def predict_probabilities(
    model: SegmentationModel,
    plane,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    test_time_augmentation: bool | int = False,
    precision: str | None = None,
    with_squares: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Probabilities (Y, X, n_classes) float32 of ONE raw (Y, X, C) plane (normalised here).

    with_squares: return (probabilities, the test-time-augmentation views' mean of squared probabilities), both
    from the same pass: how much the views disagree (uncertainty.uncertainty_map) without predicting twice."""
    plane_range = _plane_range(plane, model.metadata.normalization, None)
    plan = _Plan(model, plane.shape[:2], tile_size, overlap, batch_size, test_time_augmentation, precision,
                 with_squares=with_squares)
    region = ((0, plane.shape[0]), (0, plane.shape[1]))
    counter = _ProgressCounter(len(plan.tiles_in(region)), progress, cancel)
    blended = _predict_region(plan, plane, plane_range, region, counter)
    return (blended[..., : plan.n_classes], blended[..., plan.n_classes :]) if with_squares else blended


def _finish(model: SegmentationModel, probabilities: np.ndarray, output: str, threshold: float, instances_of: str,
            min_size: int | None):
    n_classes = model.config.n_classes
    output_map = probabilities[..., 0] if n_classes == 1 else probabilities
    if output == "raw":
        return output_map
    if output == "probabilities":
        return class_probabilities(output_map, model.metadata)
    labels = model_labels(output_map, model.metadata, threshold)
    if output == "labels":
        return labels
    if instances_of != "auto":  # the caller overrides the model's method for a plain semantic model
        return instances_per_plane(labels, instances_of, smallest_object(model.metadata, min_size))
    return model_instances(output_map, model.metadata, n_classes, threshold=threshold, min_size=min_size)


def predict(
    model,
    image,
    *,
    output: str = "labels",
    threshold: float = 0.5,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    channel_axis: int | None = None,
    channels: ChannelChoice = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    instances_of: str = "auto",
    min_size: int | None = None,
    block_size: int = BLOCK_SIZE,
    test_time_augmentation: bool | int = False,
    precision: str | None = None,
    with_uncertainty: bool | str = False,
    stack: str | None = None,
    anisotropy: float | None = None,
):
    """Segment `image` (numpy or dask; layouts in the module docstring) with `model`.

    model: a SegmentationModel, or a shipped/stored name or .keras path (resolved by registry.load_model).
    output: "labels" (uint8, 0/1 or class ids), "probabilities" (float32; trailing class axis only for
    multi-class models: background, then one per class), "instances" (int32; instances_of="auto" uses the model's
    own method, e.g. the regions enclosed by membranes or a seeded watershed for a boundary-class model:
    postprocess.py) or "raw" (float32: the model's output channels as they are, for post-processing of one's own; they
    differ from "probabilities" only for a model of several classes with boundary outputs, whose last channels are
    the object classes' boundaries, each class's own channel then holding its objects' cores).
    Spatial shape always equals the input's.
    channels: which of the image's channels the model reads: None (all, as they are), "grey" (converted by
    request) or a list of indices (channels.as_planes).
    min_size: instances smaller than this (px) are dropped (None: the model's own, else 16).
    tile_size: target tile side in px (default LARGE_TILE; tiles are at most tile_size + overlap, see
    tiling.axis_tiles);
    overlap: px shared by neighbouring tiles (default 1/8 of the model's tile size, >= 16).
    progress(done, total) counts tiles over the whole call; cancel() is polled between tile batches and
    raises errors.Cancelled. dask input returns a lazy dask array (instances not supported there).
    Constant planes are predicted as background with a warning.
    test_time_augmentation: average the flips/rotations the model was trained for over every tile
    (True: all, up to 8x slower; 2: two views, 2x; slightly more accurate; see forward_function).
    precision: "float32", "bfloat16" or None/"auto" (precision.default_precision(): bfloat16 where the CPU
    has it natively). The probabilities are float32 either way.
    with_uncertainty: return (result, uncertainty), uncertainty float32 with the image's spatial shape
    (and its leading stack axes), in [0, 1], higher = less sure (numpy input only). True: the measured
    default (uncertainty.DEFAULT_METHOD); a name from uncertainty.METHODS: that map.
    stack (output="instances" of a stack): what its leading axis is. None or "planes": unrelated planes, each
    labelled on its own (ids restart in every plane); "z": planes of a (Z, Y, X) volume, objects get one id
    across planes; "t": frames of a (T, Y, X) or (T, Z, Y, X) time-lapse, objects keep their id from frame to
    frame (stacks.py).
    anisotropy (with stack "z", or "t" on volumes): Z spacing / XY pixel size. Up to stacks.ISOTROPIC_LIMIT (2)
    the volume is also predicted on its XZ and YZ planes (resampled to cubic voxels, ~3x the work) and the
    three views' mean becomes 3-D objects in one seeded watershed; above it, or None (unknown), the planes'
    objects are stitched by overlap.
    """
    if output not in OUTPUTS:
        raise NapariUNetError(f"output={output!r} is not one of {', '.join(OUTPUTS)}")
    if instances_of not in ("auto", "foreground", "background"):
        raise NapariUNetError(f"instances_of={instances_of!r} is not one of auto, foreground, background")
    lazy = _is_dask(image)
    model, planes = model_and_planes(model, image if lazy else np.asarray(image), channel_axis, channels)
    spatial_shape = tuple(planes.shape[-3:-1])
    method = None
    if with_uncertainty:
        from napari_unet.inference.uncertainty import DEFAULT_METHOD, METHODS

        method = DEFAULT_METHOD if with_uncertainty is True else with_uncertainty
        if method not in METHODS:
            raise NapariUNetError(f"with_uncertainty={with_uncertainty!r}: use True or one of {', '.join(METHODS)}")
        if lazy:
            raise NapariUNetError("an uncertainty map is not available for lazy (dask/zarr) images: load a region "
                                  "that fits in memory (numpy) to get one, or predict without uncertainty")
    with_squares = method not in (None, "entropy")  # the views' spread needs their mean of squares too
    plan = _Plan(model, spatial_shape, tile_size, overlap, batch_size, test_time_augmentation, precision,
                 with_squares=with_squares)
    leading_shape = tuple(planes.shape[:-3])
    check_stack(stack, output, leading_shape, anisotropy)
    volumes = three_view_volumes(stack, leading_shape, anisotropy)
    side_plans = ()
    if volumes:  # the XZ and YZ planes of each volume, resampled to cubic voxels, have their own tiling
        depth = isotropic_depth(leading_shape[-1], anisotropy)
        side_plans = tuple(_Plan(model.side_view_model, (depth, side), tile_size, overlap, batch_size,
                                 test_time_augmentation, precision) for side in (spatial_shape[1], spatial_shape[0]))
    normalization = model.metadata.normalization
    ranges = {index: _plane_range(planes[index], normalization, index) for index in np.ndindex(leading_shape)}
    if lazy:
        if output == "instances":
            raise NapariUNetError(
                "instances are not available for lazy (dask) images: predict labels, then compute "
                "instances on a region that fits in memory (napari_unet.labels.postprocess.instances_from_labels)"
            )
        probabilities = _predict_lazy(plan, planes, ranges, leading_shape, spatial_shape, progress, cancel, block_size)
        if plan.n_classes == 1:
            probabilities = probabilities[..., 0]
        if output == "raw":
            return probabilities
        if output == "probabilities":
            return _classes_lazy(probabilities, model.metadata)
        return probabilities.map_blocks(model_labels, model.metadata, threshold, dtype=np.uint8,
                                        drop_axis=None if plan.n_classes == 1 else probabilities.ndim - 1)
    whole = ((0, spatial_shape[0]), (0, spatial_shape[1]))
    tiles_per_plane = len(plan.tiles_in(whole))
    # the XZ planes are as many as Y, the YZ planes as many as X
    side_tiles = sum(len(side.tiles_in(((0, side.grid[0].length), (0, side.grid[1].length)))) * n_planes
                     for side, n_planes in zip(side_plans, spatial_shape))
    counter = _ProgressCounter(tiles_per_plane * math.prod(leading_shape) + side_tiles * len(volumes), progress, cancel)
    if not leading_shape:  # one plane: keep the blended buffer itself, no second full-size copy
        probabilities = _predict_region(plan, planes, ranges[()], whole, counter)
    else:
        probabilities = np.empty((*leading_shape, *spatial_shape, plan.n_outputs), dtype=np.float32)
        for index in np.ndindex(leading_shape):
            probabilities[index] = _predict_region(plan, planes[index], ranges[index], whole, counter)
    uncertainty = None
    if method is not None:
        from napari_unet.inference.uncertainty import uncertainty_map
        from napari_unet.training.augment import tta_views

        mean_of_squares = None
        if with_squares:
            probabilities, mean_of_squares = probabilities[..., : plan.n_classes], probabilities[..., plan.n_classes :]
            if len(tta_views(model.metadata.symmetries, test_time_augmentation)) < 2:
                raise NapariUNetError(f"the {method!r} uncertainty measures how test-time-augmentation views "
                                      "disagree: predict with test_time_augmentation=2 or more (--tta), or use entropy")
        uncertainty = uncertainty_map(probabilities, mean_of_squares, method,
                                      classes=class_probabilities(probabilities, model.metadata))
    if volumes:  # near-isotropic volumes: three views, one 3-D watershed each
        objects = [_three_view_objects(model, planes[index], probabilities[index], side_plans, anisotropy, counter,
                                       threshold, instances_of, min_size) for index in volumes]
        result = objects[0] if stack == "z" else link_frames(np.stack(objects))
    else:
        result = _finish(model, probabilities, output, threshold, instances_of, min_size)
        if output == "instances" and stack is not None:
            result = join_planes(result, stack)
    return result if method is None else (result, uncertainty)


def predict_stack_into(model, image, out, *, stack: str = "z", threshold: float = 0.5, channel_axis: int | None = None,
                       channels: ChannelChoice = None, progress: ProgressCallback | None = None,
                       cancel: CancelCheck | None = None, instances_of: str = "auto", min_size: int | None = None,
                       test_time_augmentation: bool | int = False, precision: str | None = None) -> None:
    """Objects of a (Z, Y, X) volume or (T, Y, X) time-lapse too large for memory, written into `out` plane by plane.

    image: any array that reads one plane at a time (zarr, dask, numpy), layouts as in predict(); out: a writable
    int32 array of the image's (N, Y, X) shape, e.g. a zarr array (chunked one plane deep). Each plane is predicted
    with predict(..., output="instances"); stack "z" stitches it to the plane before (stacks.stitch_planes' rule:
    IoU >= STITCH_THRESHOLD) and relabels `out` in a second pass, stack "t" links it to the frame before
    (stacks.link_frame). What `out` then holds equals predict(image, output="instances", stack=stack) without
    anisotropy. Memory: two planes and one id per object, whatever the depth (three views need the whole volume:
    predict() them on a region that fits). progress(done, total) counts planes (and the relabelling pass)."""
    if stack not in ("z", "t"):
        raise NapariUNetError(f"stack={stack!r}: predicting into an array joins the planes of a volume ('z') or the "
                              "frames of a time-lapse ('t')")
    if not _is_dask(image) and not isinstance(image, np.ndarray):  # zarr and the like: read plane by plane
        import dask.array as da

        image = da.from_array(image, chunks=image.chunks) if hasattr(image, "chunks") else np.asarray(image)
    model, planes = model_and_planes(model, image, channel_axis, channels)
    leading_shape = tuple(planes.shape[:-3])
    if len(leading_shape) != 1:
        raise NapariUNetError(f"predicting into an array takes a (Z, Y, X) or (T, Y, X) stack, got "
                              f"{'×'.join(map(str, planes.shape[:-1]))} planes: predict each volume of a (T, Z, Y, X) "
                              "stack into its own array")
    if tuple(out.shape) != tuple(planes.shape[:-1]):
        raise NapariUNetError(f"the output array is {'×'.join(map(str, out.shape))} but the image's planes are "
                              f"{'×'.join(map(str, planes.shape[:-1]))}: make it that shape (int32)")
    n_planes = leading_shape[0]
    total = n_planes * (2 if stack == "z" else 1)

    def report(done: int) -> None:
        if cancel is not None and cancel():
            raise Cancelled("prediction cancelled")
        if progress is not None:
            progress(done, total)

    previous, next_id = None, 1
    sources, targets, present = [], [], [np.zeros(1, dtype=bool)]
    for index in range(n_planes):
        report(index)
        plane = predict(model, np.asarray(planes[index]), output="instances", threshold=threshold, channel_axis=-1,
                        instances_of=instances_of, min_size=min_size, test_time_augmentation=test_time_augmentation,
                        precision=precision).astype(np.int64)
        if stack == "t":
            plane, next_id = link_frame(previous, plane, next_id)
        else:  # ids unique over the stack; pairs of overlapping objects of neighbouring planes noted for joining
            highest = int(plane.max(initial=0))
            plane = np.where(plane != 0, plane + (next_id - 1), 0)
            seen = np.zeros(highest, dtype=bool)
            seen[np.unique(plane[plane != 0]) - next_id] = True
            present.append(seen)
            next_id += highest
            if previous is not None:
                lower_ids, upper_ids, ious = overlap_ious(previous, plane)
                sources.append(lower_ids[ious >= STITCH_THRESHOLD])
                targets.append(upper_ids[ious >= STITCH_THRESHOLD])
        out[index] = within_int32(plane)
        previous = plane
    if stack == "z":
        table = within_int32(joined_ids(np.concatenate(present), sources, targets))
        for index in range(n_planes):
            report(n_planes + index)
            out[index] = table[np.asarray(out[index])]
    report(total)


def _three_view_map(model: SegmentationModel, volume, xy_probabilities: np.ndarray, side_plans, anisotropy: float,
                    counter: _ProgressCounter) -> np.ndarray:
    """The three views' mean (Z', Y, X, n_classes) on cubic voxels of one raw (Z, Y, X, C) volume: its XY-plane
    probabilities (already predicted) averaged with those of the XZ and YZ planes of the volume resampled to cubic
    voxels, those by model.side_view_model."""
    n_classes = model.config.n_classes
    normalization = model.side_view_model.metadata.normalization
    depth = isotropic_depth(volume.shape[0], anisotropy)
    views = []
    for side_plan, side in zip(side_plans, side_views(resample_depth(volume, depth))):  # each plane normalised alone
        whole = ((0, side.shape[1]), (0, side.shape[2]))
        views.append(np.stack([_predict_region(side_plan, plane, _plane_range(plane, normalization, None), whole,
                                               counter) for plane in side]))
    return three_view_mean(resample_depth(xy_probabilities[..., :n_classes], depth), *views)


def _three_view_objects(model: SegmentationModel, volume, xy_probabilities: np.ndarray, side_plans, anisotropy: float,
                        counter: _ProgressCounter, threshold: float, instances_of: str, min_size: int | None):
    """int32 3-D objects of one raw (Z, Y, X, C) volume from its three views' mean (stacks.volume_instances)."""
    n_classes = model.config.n_classes
    mean = _three_view_map(model, volume, xy_probabilities, side_plans, anisotropy, counter)
    return volume_instances(mean[..., 0] if n_classes == 1 else mean, model.metadata, n_classes, volume.shape[0],
                            threshold=threshold, min_size=min_size, instances_of=instances_of)


def predict_volume_map(model, volume, *, anisotropy: float | None = None, channel_axis: int | None = None,
                       channels: ChannelChoice = None, precision: str | None = None,
                       progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> np.ndarray:
    """The probability map a (Z, Y, X) volume's objects are made from, as predict(..., output="instances",
    stack="z", anisotropy=anisotropy) makes them: the three views' mean on cubic voxels (Z', Y, X, ...) where
    stacks.uses_three_views(anisotropy), else the planes' own probabilities (Z, Y, X, ...); one class: no trailing
    axis. stacks.volume_objects turns it into objects, so several post-processing settings cost one prediction."""
    model, planes = model_and_planes(model, np.asarray(volume), channel_axis, channels)
    leading_shape, spatial_shape = tuple(planes.shape[:-3]), tuple(planes.shape[-3:-1])
    check_stack("z", "instances", leading_shape, anisotropy)
    plan = _Plan(model, spatial_shape, None, None, 4, precision=precision)
    three_views = bool(three_view_volumes("z", leading_shape, anisotropy))
    side_plans = ()
    if three_views:
        depth = isotropic_depth(leading_shape[0], anisotropy)
        side_plans = tuple(_Plan(model.side_view_model, (depth, side), None, None, 4, precision=precision)
                           for side in (spatial_shape[1], spatial_shape[0]))
    whole = ((0, spatial_shape[0]), (0, spatial_shape[1]))
    side_tiles = sum(len(side.tiles_in(((0, side.grid[0].length), (0, side.grid[1].length)))) * n_planes
                     for side, n_planes in zip(side_plans, spatial_shape))
    counter = _ProgressCounter(len(plan.tiles_in(whole)) * leading_shape[0] + side_tiles, progress, cancel)
    normalization = model.metadata.normalization
    probabilities = np.stack([_predict_region(plan, plane, _plane_range(plane, normalization, (index,)), whole, counter)
                              for index, plane in enumerate(planes)])
    if three_views:
        probabilities = _three_view_map(model, planes, probabilities, side_plans, anisotropy, counter)
    return probabilities[..., 0] if plan.n_classes == 1 else probabilities


def _predict_lazy(plan: _Plan, planes, ranges, leading_shape, spatial_shape, progress, cancel, block_size):
    """A dask array (*leading, Y, X, n_classes) whose blocks are predicted on compute."""
    import dask.array as da

    block = max(1, int(block_size))
    template = da.zeros(
        (*leading_shape, *spatial_shape), chunks=(*(1,) * len(leading_shape), block, block), dtype=np.uint8
    )
    total = 0
    for y_chunk_start, y_size in zip(np.cumsum((0,) + template.chunks[-2][:-1]), template.chunks[-2]):
        for x_chunk_start, x_size in zip(np.cumsum((0,) + template.chunks[-1][:-1]), template.chunks[-1]):
            region = ((int(y_chunk_start), int(y_chunk_start + y_size)), (int(x_chunk_start), int(x_chunk_start + x_size)))
            total += len(plan.tiles_in(region))
    counter = _ProgressCounter(total * math.prod(leading_shape), progress, cancel)

    def predict_block(block_template, block_info=None):
        location = block_info[None]["array-location"][:-1]  # the output's last axis is the class axis
        index = tuple(start for start, _ in location[:-2])
        region = tuple(location[-2:])
        probabilities = _predict_region(plan, planes[index], ranges[index], region, counter)
        return probabilities.reshape(block_template.shape + (plan.n_classes,))

    return template.map_blocks(
        predict_block,
        dtype=np.float32,
        chunks=(*template.chunks, (plan.n_classes,)),
        new_axis=template.ndim,
        meta=np.empty((0,) * (template.ndim + 1), dtype=np.float32),
    )


def _classes_lazy(probabilities, metadata):
    """A lazy model output read as classes (postprocess.class_probabilities), block by block."""
    if not metadata.boundary_outputs:
        return probabilities
    return probabilities.map_blocks(  # one block holds a pixel's every output
        class_probabilities, metadata, dtype=np.float32,
        chunks=(*probabilities.chunks[:-1], (metadata.class_outputs,)))


@dataclass(frozen=True)
class FinishedLabels:
    """Labels of the pixels of one plane that a RegionPredictor.finish call completed: `labels` (Yb, Xb) uint8
    over `region` ((y0, y1), (x0, x1)); `mask` (Yb, Xb) bool says which of them (None: all of `region`)."""

    region: tuple[tuple[int, int], tuple[int, int]]
    labels: np.ndarray
    mask: np.ndarray | None


class _PlaneProgress:
    """A plane's bookkeeping for RegionPredictor: the tiles computed, and each computed tile's weighted
    probabilities over the cells (tiling.axis_segments, per axis) still waiting for another tile."""

    def __init__(self, plan: _Plan, value_range):
        rows, cols = plan.grid
        self.value_range = value_range
        self.row_segments, self.col_segments = tiling.axis_segments(rows), tiling.axis_segments(cols)
        self.done = np.zeros((len(rows.starts), len(cols.starts)), dtype=bool)
        self.waiting: dict[tuple[int, int], dict[tuple[int, int], np.ndarray]] = {}  # cell -> tile -> values


class RegionPredictor:
    """Labels of one image, finished region by region in an order the caller picks as it goes (e.g. the visible
    part of a huge image first: lazy_labels.py), each tile computed once.

    Built once per image: checks the input, plans the tiles of the whole plane and computes each plane's
    percentile range on first use, so its labels equal the same pixels of predict(...) on the whole image (the
    same tiles, blending, normalisation and order of sums). A tile that reaches beyond the region asked for is
    not computed again for the next region: its share of the pixels still waiting for other tiles is kept (the
    overlaps of tiles, a few tens of px wide, so the memory stays small in any order), and those pixels are
    returned by the call that computes their last tile. image: numpy, dask or zarr; layouts as in predict();
    `leading_shape` and `spatial_shape` describe its planes.
    """

    def __init__(self, model, image, *, threshold: float = 0.5, channel_axis: int | None = None,
                 channels: ChannelChoice = None, tile_size: int | None = None, overlap: int | None = None, batch_size: int = 4,
                 test_time_augmentation: bool | int = False, precision: str | None = None):
        if not _is_dask(image) and not isinstance(image, np.ndarray):
            import dask.array as da

            image = da.from_array(image, chunks=image.chunks) if hasattr(image, "chunks") else np.asarray(image)
        model, self.planes = model_and_planes(model, image, channel_axis, channels)
        self.spatial_shape = tuple(self.planes.shape[-3:-1])
        self.leading_shape = tuple(self.planes.shape[:-3])
        self.model, self.threshold = model, threshold
        self.plan = _Plan(model, self.spatial_shape, tile_size, overlap, batch_size, test_time_augmentation, precision)
        self._planes: dict[tuple, _PlaneProgress] = {}
        self.tiles_done = 0

    @property
    def tiles_total(self) -> int:
        """Tiles of the whole image (every plane): each is computed once."""
        rows, cols = self.plan.grid
        return len(rows.starts) * len(cols.starts) * math.prod(self.leading_shape)

    @property
    def kept_bytes(self) -> int:
        """Memory held for pixels that wait for tiles not computed yet (tile overlaps at the finished part's edge)."""
        return sum(values.nbytes for plane in self._planes.values() for cell in plane.waiting.values()
                   for values in cell.values())

    def _plane(self, index: tuple) -> _PlaneProgress:
        if index not in self._planes:
            value_range = _plane_range(self.planes[index], self.model.metadata.normalization, index)
            self._planes[index] = _PlaneProgress(self.plan, value_range)
        return self._planes[index]

    def missing_tiles(self, index: tuple, region) -> list[tuple[int, int]]:
        """The tiles `region` of plane `index` still needs (none once its labels were returned)."""
        done = self._planes[index].done if index in self._planes else None
        return [tile for tile in self.plan.tiles_in(region) if done is None or not done[tile]]

    def finish(self, index: tuple, region, cancel: CancelCheck | None = None) -> FinishedLabels | None:
        """Compute the tiles `region` ((y0, y1), (x0, x1)) of plane `index` still needs; return the labels of every
        pixel they finish (all of `region` not returned before, and pixels around it whose last tile this was),
        or None when nothing is new. cancel() is polled between tile batches and raises errors.Cancelled."""
        state = self._plane(index)
        tiles = self.missing_tiles(index, region)
        if not tiles:
            return None
        counter = _ProgressCounter(0, None, cancel)
        weighted = {}  # tile -> its probabilities times the blending window (size, size, n_outputs)
        if state.value_range is None:  # constant plane: all background, nothing to compute
            counter.check_cancel()
        else:
            for tile, probabilities in _tile_probabilities(self.plan, self.planes[index], state.value_range, tiles,
                                                           counter):
                weighted[tile] = probabilities * self.plan.window[..., None]
        for tile in tiles:
            state.done[tile] = True
        self.tiles_done += len(tiles)
        finished = self._finished_cells(state, tiles, weighted)
        return self._labels_of(state, finished, weighted) if finished else None

    def _finished_cells(self, state: _PlaneProgress, tiles: list, weighted: dict) -> list:
        """(row segment, column segment, covering tiles) of the cells the new `tiles` finish; their share of the
        cells that still wait for another tile is kept in state.waiting."""
        new, new_rows, new_cols = set(tiles), {i for i, _ in tiles}, {j for _, j in tiles}
        finished = []
        for r, (_, _, row_tiles) in enumerate(state.row_segments):
            if new_rows.isdisjoint(row_tiles):
                continue
            for c, (_, _, col_tiles) in enumerate(state.col_segments):
                if new_cols.isdisjoint(col_tiles):
                    continue
                covering = [(i, j) for i in row_tiles for j in col_tiles]  # the order predict() sums them in
                fresh = [tile for tile in covering if tile in new]
                if not fresh:
                    continue
                if all(state.done[tile] for tile in covering):
                    finished.append((r, c, covering))
                elif weighted:
                    kept = state.waiting.setdefault((r, c), {})
                    for tile in fresh:
                        kept[tile] = self._cell_of(weighted[tile], tile, r, c, state).copy()
        return finished

    def _labels_of(self, state: _PlaneProgress, finished: list, weighted: dict) -> FinishedLabels:
        """The finished cells blended (kept shares and new tiles summed in predict()'s order) and labelled, over
        their bounding box."""
        rows, cols = self.plan.grid
        y0 = min(state.row_segments[r][0] for r, _, _ in finished)
        y1 = max(state.row_segments[r][1] for r, _, _ in finished)
        x0 = min(state.col_segments[c][0] for _, c, _ in finished)
        x1 = max(state.col_segments[c][1] for _, c, _ in finished)
        mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        accumulated = np.zeros((y1 - y0, x1 - x0, self.plan.n_outputs), dtype=np.float32)
        for r, c, covering in finished:
            (ry0, ry1, _), (cx0, cx1, _) = state.row_segments[r], state.col_segments[c]
            mask[ry0 - y0 : ry1 - y0, cx0 - x0 : cx1 - x0] = True
            kept = state.waiting.pop((r, c), {})
            if state.value_range is None:
                continue
            cell = accumulated[ry0 - y0 : ry1 - y0, cx0 - x0 : cx1 - x0]
            for tile in covering:
                cell += kept[tile] if tile in kept else self._cell_of(weighted[tile], tile, r, c, state)
        if state.value_range is None:
            labels = np.zeros(mask.shape, dtype=np.uint8)
        else:
            row_weight_sum = np.zeros(y1 - y0, dtype=np.float32)
            col_weight_sum = np.zeros(x1 - x0, dtype=np.float32)
            for i in tiling.tiles_overlapping(rows, y0, y1):  # as _predict_region sums them
                ay0, ay1 = max(rows.starts[i], y0), min(rows.starts[i] + rows.size, y1)
                row_weight_sum[ay0 - y0 : ay1 - y0] += self.plan.row_window[ay0 - rows.starts[i] : ay1 - rows.starts[i]]
            for j in tiling.tiles_overlapping(cols, x0, x1):
                ax0, ax1 = max(cols.starts[j], x0), min(cols.starts[j] + cols.size, x1)
                col_weight_sum[ax0 - x0 : ax1 - x0] += self.plan.col_window[ax0 - cols.starts[j] : ax1 - cols.starts[j]]
            accumulated /= row_weight_sum[:, None, None]
            accumulated /= col_weight_sum[None, :, None]
            labels = model_labels(accumulated[..., 0] if self.plan.n_classes == 1 else accumulated,
                                  self.model.metadata, self.threshold)
        return FinishedLabels(((y0, y1), (x0, x1)), labels, None if mask.all() else mask)

    def _cell_of(self, values: np.ndarray, tile: tuple[int, int], r: int, c: int, state: _PlaneProgress) -> np.ndarray:
        """The part of a tile's array (size, size, …) over cell (r, c) of its plane."""
        rows, cols = self.plan.grid
        (ry0, ry1, _), (cx0, cx1, _) = state.row_segments[r], state.col_segments[c]
        ty0, tx0 = rows.starts[tile[0]], cols.starts[tile[1]]
        return values[ry0 - ty0 : ry1 - ty0, cx0 - tx0 : cx1 - tx0]

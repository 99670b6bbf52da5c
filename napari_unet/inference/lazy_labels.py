"""Predict an image larger than memory into labels on disk, the region the user looks at first.

The image stays lazy (zarr / OME-Zarr / dask); the labels live in a zarr array on disk (uint8, chunks
of LABELS_CHUNK px) that napari can show and the user can paint. Before each step the caller's `visible()`
is asked again: a view no larger than a region (REGION_SIZE px, aligned with the chunks) is done whole first,
then the regions nearest it, so panning moves the work to where the user now looks. prediction.RegionPredictor
computes each tile once, whatever the order: a step computes the tiles it still needs and yields every pixel
they finish (the view or region, and pixels around it whose last tile that was), so the labels equal the same
pixels of a whole-image prediction. This module knows no Qt: the dock writes the yielded labels on its main thread, a
script calls fill_labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_unet.errors import Cancelled, NapariUNetError
from napari_unet.inference.prediction import RegionPredictor

LABELS_CHUNK = 1024
# The first region costs its tiles (~9 of ~1056 px at 2048 px: the first result after ~9 tiles); later ones
# only the tiles not computed yet, so the region size sets how often results come, not the total work.
REGION_SIZE = 2048
SPATIAL_AXES = ("y", "x")

Region = tuple[tuple[int, int], tuple[int, int]]  # ((y0, y1), (x0, x1)) in pixels
Visible = tuple[tuple, Region]  # (plane index, region) the user looks at


@dataclass(frozen=True)
class RegionLabels:
    """Labels (Yr, Xr) uint8 over `region` of plane `index`, finished now: all of them, or where `mask` (Yr, Xr)
    bool is True (the others belong to a later result); and how far the whole job is, in tiles."""

    index: tuple
    region: Region
    labels: np.ndarray
    tiles_done: int
    tiles_total: int
    mask: np.ndarray | None = None

    @property
    def key(self) -> tuple:
        """The region as an index into the labels array: labels_array[key] = labels."""
        (y0, y1), (x0, x1) = self.region
        return (*self.index, slice(y0, y1), slice(x0, x1))


def is_zarr(path: str | os.PathLike) -> bool:
    """Is `path` a zarr array or group on disk (a folder named *.zarr, or holding zarr's metadata)?"""
    path = Path(path)
    return path.is_dir() and (path.suffix.lower() == ".zarr"
                              or any((path / name).is_file() for name in (".zarray", ".zgroup", "zarr.json")))


def open_zarr_image(path: str | os.PathLike):
    """A dask array of a zarr array or an OME-Zarr image (its full-resolution level), axes checked.

    OME-Zarr axes must end in y, x (a c axis may precede them, time and z are read as a stack);
    anything else raises NapariUNetError naming the axes and the fix.
    """
    import dask.array as da
    import zarr

    path = Path(path)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a missing or foreign folder
        raise NapariUNetError(f"cannot open '{path}' as zarr ({type(exc).__name__}: {exc})") from None
    axes = None
    if not hasattr(node, "shape"):  # a group: OME-Zarr multiscales, level 0
        multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise NapariUNetError(f"'{path}' is a zarr group without OME-Zarr 'multiscales': open the array inside it")
        axes = [axis["name"] if isinstance(axis, dict) else axis for axis in multiscales[0].get("axes", [])]
        node = node[multiscales[0]["datasets"][0]["path"]]
    check_axes(tuple(node.shape), axes, str(path))
    return da.from_zarr(node)


def check_axes(shape: tuple, axes: list[str] | None, what: str) -> None:
    """Refuse layouts the lazy path cannot predict: it needs (…, Y, X) with at most one stack axis."""
    if axes is not None:
        axes = [str(axis).lower() for axis in axes]
        if len(axes) != len(shape):
            raise NapariUNetError(f"'{what}' declares axes {axes} for an array of shape {shape}: fix its metadata")
        if tuple(axes[-2:]) != SPATIAL_AXES:
            raise NapariUNetError(
                f"'{what}' has axes ({', '.join(axes)}): its last two must be y, x. Transpose it (e.g. "
                "dask.array.moveaxis) or re-save it as (…, y, x)")
        stacked = [axis for axis in axes[:-2] if axis != "c" and shape[axes.index(axis)] > 1]
        if len(stacked) > 1:
            raise NapariUNetError(
                f"'{what}' has axes ({', '.join(axes)}) with more than one stack axis ({', '.join(stacked)}): "
                "predict one time point (or one z) at a time: select it first, e.g. image[0]")
    elif len(shape) > 3:
        raise NapariUNetError(
            f"'{what}' has shape {shape}: a lazy image must be (Y, X), (Z, Y, X) or (Y, X, C); select one "
            "time point / channel first (e.g. image[0])")


def labels_store_path(folder: str | os.PathLike, name: str) -> Path:
    """A new '<name>.zarr' in `folder`; '<name> 2.zarr', … when taken: a user's file is never reused."""
    folder = Path(folder)
    safe = "".join(char if char.isalnum() or char in "-_ ." else "_" for char in name).strip() or "labels"
    path, counter = folder / f"{safe}.zarr", 2
    while path.exists():
        path, counter = folder / f"{safe} {counter}.zarr", counter + 1
    return path


def create_labels_store(path: str | os.PathLike, shape: tuple[int, ...], chunk: int = LABELS_CHUNK, dtype=np.uint8):
    """An empty (all 0) zarr array on disk at `path` (uint8 labels; int32 for objects: prediction.predict_stack_into),
    chunked (1, …, chunk, chunk); never overwrites."""
    import zarr

    path = Path(path)
    if path.exists():
        raise NapariUNetError(f"'{path}' exists: labels are never written over a file; choose a new name")
    chunks = (*(1,) * (len(shape) - 2), min(chunk, shape[-2]), min(chunk, shape[-1]))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return zarr.open_array(str(path), mode="w-", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    except OSError as exc:
        raise NapariUNetError(f"cannot create '{path}': {exc.strerror or exc} — choose a folder you can write to") from None


def work_regions(leading_shape: tuple, spatial_shape: tuple, region_size: int = REGION_SIZE) -> list[Visible]:
    """Every (plane index, region) of the image, regions of region_size px in raster order."""
    height, width = spatial_shape
    return [
        (index, ((y, min(y + region_size, height)), (x, min(x + region_size, width))))
        for index in np.ndindex(leading_shape)
        for y in range(0, height, region_size)
        for x in range(0, width, region_size)
    ]


def next_region(remaining: list[Visible], visible: Visible | None) -> Visible:
    """The region to do next: one overlapping the visible region (nearest its centre), then the nearest
    on the visible plane, then the rest in order."""
    if visible is None:
        return remaining[0]
    plane, ((vy0, vy1), (vx0, vx1)) = visible
    centre = ((vy0 + vy1) / 2, (vx0 + vx1) / 2)

    def rank(item: Visible):
        index, ((y0, y1), (x0, x1)) = item
        overlaps = y0 < vy1 and vy0 < y1 and x0 < vx1 and vx0 < x1
        distance = (max(y0 - centre[0], 0, centre[0] - y1) ** 2 + max(x0 - centre[1], 0, centre[1] - x1) ** 2)
        return (tuple(index) != tuple(plane), not overlaps, distance)

    return min(remaining, key=rank)


def _area(region: Region) -> int:
    (y0, y1), (x0, x1) = region
    return (y1 - y0) * (x1 - x0)


def predict_regions(
    model,
    image,
    *,
    visible: Callable[[], Visible | None] | None = None,
    region_size: int = REGION_SIZE,
    threshold: float = 0.5,
    channel_axis: int | None = None,
    tile_size: int | None = None,
    cancel: Callable[[], bool] | None = None,
    test_time_augmentation: bool | int = False,
) -> Iterator[RegionLabels]:
    """Yield the labels of every pixel of `image` once, the visible part first (visible() is asked before each step):
    a view no larger than a region comes whole in one result, then regions of region_size px (a multiple of the
    labels' chunk, LABELS_CHUNK) nearest it. Each result holds what its step's tiles finished: the view or region,
    and pixels around it whose last tile that was, minus those returned before (RegionLabels.mask).
    tile_size as in prediction.predict.
    cancel() is polled between tile batches and raises errors.Cancelled.
    """
    if region_size < 1:
        raise NapariUNetError(f"region_size={region_size} must be >= 1 px")
    if len(image.shape) > 3:
        check_axes(tuple(image.shape), None, "the image")
    predictor = RegionPredictor(model, image, threshold=threshold, channel_axis=channel_axis, tile_size=tile_size,
                                test_time_augmentation=test_time_augmentation)
    remaining = work_regions(predictor.leading_shape, predictor.spatial_shape, region_size)
    planes = set(np.ndindex(predictor.leading_shape))
    while remaining:
        if cancel is not None and cancel():
            raise Cancelled("prediction cancelled")
        seen = visible() if visible is not None else None
        finished = None
        if seen is not None and tuple(seen[0]) in planes and _area(seen[1]) <= region_size ** 2:
            index, region = tuple(seen[0]), seen[1]  # what the canvas shows, whole, before anything else
            finished = predictor.finish(index, region, cancel)
        if finished is None:  # the view is done (or too large to be one step): the region nearest it
            index, region = item = next_region(remaining, seen)
            remaining.remove(item)
            finished = predictor.finish(index, region, cancel)
        if finished is not None:
            yield RegionLabels(index, finished.region, finished.labels, predictor.tiles_done, predictor.tiles_total,
                               finished.mask)


def chunk_pieces(result: RegionLabels, chunks: tuple[int, int]) -> list[RegionLabels]:
    """`result` cut along a labels array's (Y, X) chunk grid: each piece lies within one chunk, so writing it touches
    one chunk of the store; pieces with no pixel to write are left out."""
    (y0, y1), (x0, x1) = result.region
    rows, cols = chunks
    pieces = []
    for top in range(y0 - y0 % rows, y1, rows):
        for left in range(x0 - x0 % cols, x1, cols):
            (ay0, ay1), (ax0, ax1) = (max(top, y0), min(top + rows, y1)), (max(left, x0), min(left + cols, x1))
            inside = (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0))
            mask = None if result.mask is None else result.mask[inside]
            if mask is not None and not mask.any():
                continue
            pieces.append(replace(result, region=((ay0, ay1), (ax0, ax1)), labels=result.labels[inside],
                                  mask=None if mask is None or mask.all() else mask))
    return pieces


def fill_labels(labels_array, results: Iterator[RegionLabels],
                progress: Callable[[int, int], None] | None = None) -> None:
    """Write every yielded region into `labels_array` (a zarr array shaped like the image's planes)."""
    for result in results:
        if result.mask is None:
            labels_array[result.key] = result.labels
        else:
            stored = np.asarray(labels_array[result.key])
            stored[result.mask] = result.labels[result.mask]
            labels_array[result.key] = stored
        if progress is not None:
            progress(result.tiles_done, result.tiles_total)

"""Tile grids, reflect padding by index mapping, and the blending window for seam-free tiled prediction.

Coordinates here live in one "frame" per axis: image pixels 0..length-1, extended on both sides by
reflection (numpy's 'reflect' mode, edge pixel not repeated). A tile may start before 0 or end after
`length`; `reflect_indices` says which image pixel feeds each tile pixel. Because padding is an index
mapping rather than a padded copy, the same code serves numpy arrays and lazy dask/zarr images, and a
block of a huge image can gather exactly the tiles (and input pixels) a whole-image pass would use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Weight of a tile's outermost pixels: never zero, so a pixel covered by one tile only is still defined.
WINDOW_FLOOR = 0.02


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def default_overlap(tile_size: int) -> int:
    """About 1/8 of the tile, at least 16 px: enough for the U-Net's border effects to fade out."""
    return max(16, tile_size // 8)


@dataclass(frozen=True)
class AxisTiles:
    """Tiles of one axis: each tile covers [start, start + size) in frame coordinates."""

    length: int
    size: int
    starts: tuple[int, ...]


def axis_tiles(length: int, target_tile: int, overlap: int, multiple: int) -> AxisTiles:
    """Cover `length` px with tiles of about `target_tile` px (multiples of `multiple`), overlapping by `overlap`.

    The number of tiles comes first — as few as tiles of `target_tile` px plus one overlap allow — and then
    the smallest tile that covers the axis with them, so the work is the image plus the overlaps and
    little else: a 2048 px axis with 1024 px tiles and 32 px overlap gets 2 tiles of 1040 px (not 3 of 704),
    one with 512 px tiles and 64 px overlap 4 of 560 px (not 5 of 512). A tile is therefore at most
    `target_tile + overlap` px (rounded up to the multiple). An axis shorter than that is one tile,
    reflect-padded on both sides.
    """
    if length < 1:
        raise ValueError(f"axis length must be >= 1, not {length}")
    target_tile = round_up(max(target_tile, multiple), multiple)
    overlap = min(overlap, target_tile // 2)
    single = round_up(length, multiple)
    n_tiles = max(1, math.ceil((length - overlap) / target_tile))
    if n_tiles == 1:
        start = -((single - length) // 2)  # centre the padding so both borders see reflected context
        return AxisTiles(length, single, (start,))
    size = min(round_up(math.ceil((length + (n_tiles - 1) * overlap) / n_tiles), multiple), single)
    last = length - size
    starts = tuple(int(round(i * last / (n_tiles - 1))) for i in range(n_tiles))
    return AxisTiles(length, size, starts)


def tile_grid(shape: tuple[int, int], target_tile: int, overlap: int, multiple: int) -> tuple[AxisTiles, AxisTiles]:
    """Row and column tiling of a (Y, X) plane."""
    return (axis_tiles(shape[0], target_tile, overlap, multiple), axis_tiles(shape[1], target_tile, overlap, multiple))


def reflect_indices(start: int, size: int, length: int) -> np.ndarray:
    """Image indices feeding frame pixels start..start+size-1 (numpy 'reflect' padding, any distance)."""
    positions = np.arange(start, start + size)
    if length == 1:
        return np.zeros(size, dtype=np.intp)
    period = 2 * (length - 1)
    positions = np.mod(positions, period)
    return np.where(positions < length, positions, period - positions).astype(np.intp)


def blending_window(size: int, overlap: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """1D weights: 1 in the middle, a raised-cosine ramp down to `floor` over `overlap` px at both ends.

    Predictions near a tile's border see zero-padded context and are the least reliable; the ramp lets
    the neighbouring tile's centre take over smoothly. The 2D window is the outer product.
    """
    weights = np.ones(size, dtype=np.float32)
    ramp_length = min(overlap, size // 2)
    if ramp_length > 0:
        distance = np.arange(ramp_length, dtype=np.float32) + 0.5
        ramp = np.sin(0.5 * np.pi * distance / ramp_length) ** 2
        ramp = floor + (1.0 - floor) * ramp
        weights[:ramp_length] = ramp
        weights[size - ramp_length :] = ramp[::-1]
    return weights


def tiles_overlapping(axis: AxisTiles, low: int, high: int) -> list[int]:
    """Indices of the tiles of `axis` that cover any pixel in [low, high)."""
    return [i for i, start in enumerate(axis.starts) if start < high and start + axis.size > low]


def axis_segments(axis: AxisTiles) -> list[tuple[int, int, tuple[int, ...]]]:
    """The axis cut where any tile begins or ends: (low, high, indices of the tiles covering [low, high)) in
    order, within 0..length. A pixel's blended value needs exactly the tiles of its segment (per axis), so a
    segment covered by tiles that are all computed is finished (prediction.RegionPredictor)."""
    edges = {0, axis.length}
    for start in axis.starts:
        edges.update((min(max(start, 0), axis.length), min(max(start + axis.size, 0), axis.length)))
    edges = sorted(edges)
    return [(low, high, tuple(tiles_overlapping(axis, low, high))) for low, high in zip(edges, edges[1:])]

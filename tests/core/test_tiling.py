"""Tile grids cover every pixel with enough overlap; reflect indices match numpy's padding."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.inference.tiling import (
    axis_segments,
    axis_tiles,
    blending_window,
    default_overlap,
    reflect_indices,
    tiles_overlapping,
)


@pytest.mark.parametrize("length", [5, 63, 64, 65, 200, 1000, 2048, 5001])
@pytest.mark.parametrize("max_tile,overlap", [(64, 16), (256, 32), (512, 64)])
def test_tiles_cover_axis_with_required_overlap(length, max_tile, overlap):
    multiple = 8
    tiles = axis_tiles(length, max_tile, overlap, multiple)
    assert tiles.size % multiple == 0
    assert tiles.size < max_tile + overlap + multiple
    coverage = np.zeros(length, dtype=int)
    for start in tiles.starts:
        coverage[max(0, start) : start + tiles.size] += 1
    assert coverage.min() >= 1
    if len(tiles.starts) > 1:
        assert tiles.starts[0] == 0 and tiles.starts[-1] + tiles.size == length  # no padding needed
        shared = [previous + tiles.size - start for previous, start in zip(tiles.starts, tiles.starts[1:])]
        assert min(shared) >= overlap - 1  # rounding of evenly spread starts may cost one pixel


def test_short_axis_is_one_centred_padded_tile():
    tiles = axis_tiles(37, 256, 32, 8)
    assert tiles.size == 40 and tiles.starts == (-1,)


@pytest.mark.parametrize("length,target,overlap,expected", [(2048, 1024, 32, (2, 1040)), (2048, 512, 64, (4, 560)),
                                                             (1030, 1024, 32, (1, 1032)), (4096, 1024, 32, (4, 1048))])
def test_the_number_of_tiles_comes_first_then_the_smallest_tile(length, target, overlap, expected):
    tiles = axis_tiles(length, target, overlap, 8)
    assert (len(tiles.starts), tiles.size) == expected


@pytest.mark.parametrize("length", [100, 1000, 2048, 3000, 8192, 32768])
@pytest.mark.parametrize("target,overlap", [(256, 32), (1024, 32), (1024, 128)])
def test_tiles_compute_little_more_than_the_axis_plus_overlaps(length, target, overlap):
    multiple = 16
    tiles = axis_tiles(length, target, overlap, multiple)
    n_tiles = len(tiles.starts)
    assert n_tiles * tiles.size < length + (n_tiles - 1) * overlap + n_tiles * multiple
    # and one tile fewer, each target + overlap px long, could not cover the axis with that overlap
    if n_tiles > 1:
        assert (n_tiles - 1) * target + overlap < length


@pytest.mark.parametrize("length", [1, 2, 3, 10])
@pytest.mark.parametrize("pad", [0, 1, 4, 25])
def test_reflect_indices_match_numpy_reflect_padding(length, pad):
    values = np.arange(length) * 10
    if length == 1:
        expected = np.full(length + 2 * pad, values[0])
    else:
        expected = np.pad(values, pad, mode="reflect")
    np.testing.assert_array_equal(values[reflect_indices(-pad, length + 2 * pad, length)], expected)


def test_blending_window_ramps_from_floor_to_one_symmetrically():
    window = blending_window(64, 16, floor=0.05)
    np.testing.assert_allclose(window, window[::-1])
    assert np.all(window[16:48] == 1.0)
    assert 0.05 <= window[0] < 0.06
    assert np.all(np.diff(window[:16]) > 0)


def test_default_overlap_is_an_eighth_of_the_tile_but_at_least_16():
    assert default_overlap(512) == 64
    assert default_overlap(64) == 16


def test_tiles_overlapping_a_range():
    tiles = axis_tiles(300, 128, 32, 8)
    chosen = tiles_overlapping(tiles, 100, 140)
    for index, start in enumerate(tiles.starts):
        touches = start < 140 and start + tiles.size > 100
        assert (index in chosen) == touches


@pytest.mark.parametrize("length,target,overlap", [(300, 64, 16), (2048, 1024, 32), (50, 64, 16), (1000, 100, 40)])
def test_segments_cut_the_axis_where_the_covering_tiles_change(length, target, overlap):
    axis = axis_tiles(length, target, overlap, 16)
    segments = axis_segments(axis)
    assert segments[0][0] == 0 and segments[-1][1] == length
    assert all(high == next_low for (_, high, _), (next_low, _, _) in zip(segments, segments[1:]))
    for low, high, covering in segments:
        assert low < high
        for pixel in (low, high - 1):  # every pixel of a segment has the same tiles
            assert tuple(tiles_overlapping(axis, pixel, pixel + 1)) == covering
    assert all(a[2] != b[2] for a, b in zip(segments, segments[1:]))

"""Predict tab, lazy images (zarr / OME-Zarr / dask layers): labels on disk, the visible region first.

The core (lazy_labels.predict_regions) runs in the worker process and reports each finished region; this module
writes it into a Labels layer backed by a zarr array (painting writes through to the store; napari-events.md)
on the GUI thread, a chunk at a time, the one place that writes the store, so user strokes and worker results
never race.
A region never overwrites pixels the user painted before it arrived.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_unet._widgets._layers import layer_array
from napari_unet._widgets._session import SOURCE_KEY, prediction_layer_name

LAZY_KEY = "napari_unet_lazy_store"  # layer.metadata: the zarr folder a lazy prediction writes to


def _napari_before(major: int, minor: int) -> bool:
    from importlib.metadata import version

    parts = [int(part) for part in re.findall(r"\d+", version("napari"))[:2]]
    return tuple(parts) < (major, minor)


# napari's own brush shows a written box with private Labels methods (_refresh_caches_from_region for the display
# caches of the changed pixels, _accumulate_updated_slice and _partial_labels_refresh for that part of the display).
# Through them a region costs what a brush stroke costs; the public path (a write to the store, then
# layer.refresh()) re-reads the whole plane: 1.2 s at 8192² (benchmarks/bench_lazy_labels.py).
# napari warns that these go away in 0.10: used up to 0.9 only, with the public path as the fallback.
PRIVATE_PAINT_API = _napari_before(0, 10)


def is_lazy(layer) -> bool:
    """Is the layer's full-resolution data something other than an in-memory numpy array (dask, zarr)?"""
    return not isinstance(layer_array(layer), np.ndarray)


def plane_shape(image_layer) -> tuple[int, ...]:
    """The layer's (…, Y, X) shape without a colour axis: the shape of its labels."""
    return tuple(layer_array(image_layer).shape[: image_layer.ndim])


def visible_region(layer, index: tuple = ()) -> tuple[tuple, tuple[tuple[int, int], tuple[int, int]]]:
    """(plane index, ((y0, y1), (x0, x1))) of `layer` the canvas shows (corner_pixels; all of it headless)."""
    corners = np.asarray(layer.corner_pixels)
    height, width = layer.data.shape[-2:]
    (y0, x0), (y1, x1) = corners[:, -2:].astype(int)
    y0, x0 = min(max(y0, 0), height - 1), min(max(x0, 0), width - 1)
    y1, x1 = max(min(y1 + 1, height), y0 + 1), max(min(x1 + 1, width), x0 + 1)
    return tuple(index), ((int(y0), int(y1)), (int(x0), int(x1)))


def add_lazy_labels(viewer, image_layer, folder: Path, model_key: str, dtype=np.uint8):
    """A new Labels layer '<image> prediction' backed by a new zarr store in `folder` (never a user's file); dtype
    int32 for objects with ids across planes (prediction.predict_stack_into)."""
    from napari_unet.inference.lazy_labels import create_labels_store, labels_store_path

    name = prediction_layer_name(image_layer.name)
    taken = {layer.name for layer in viewer.layers}
    if name in taken:
        counter = 2
        while f"{name} [{counter}]" in taken:
            counter += 1
        name = f"{name} [{counter}]"
    path = labels_store_path(folder, name)
    store = create_labels_store(path, plane_shape(image_layer), dtype=dtype)
    ndim = len(store.shape)
    layer = viewer.add_labels(store, name=name, opacity=0.5, scale=tuple(image_layer.scale)[-ndim:],
                              translate=tuple(image_layer.translate)[-ndim:])
    layer.metadata[SOURCE_KEY] = {"image": image_layer.name, "model": model_key}
    layer.metadata[LAZY_KEY] = str(path)
    return layer


class PaintedBoxes:
    """Where the user painted in a lazy layer (boxes from its paint events), so predictions skip those pixels."""

    def __init__(self, layer):
        self.boxes: list[tuple[tuple[int, int], ...]] = []
        layer.events.paint.connect(self._painted)

    def _painted(self, event) -> None:
        for atom in event.value:
            if len(atom) == 4:  # (slice_key, mask, old_values, new_value): brush, fill, polygon
                key = atom[0]
                self.boxes.append(tuple((int(k), int(k) + 1) if not isinstance(k, slice) else (int(k.start), int(k.stop))
                                        for k in key))
            else:  # (indices, old_values, new_values): data_setitem
                self.boxes.append(tuple((int(np.min(axis)), int(np.max(axis)) + 1) for axis in atom[0]))

    def untouched(self, index: tuple, region) -> np.ndarray:
        """Boolean (Yr, Xr): True where the user has not painted in `region` of plane `index`."""
        (y0, y1), (x0, x1) = region
        keep = np.ones((y1 - y0, x1 - x0), dtype=bool)
        for box in self.boxes:
            leading, (by0, by1), (bx0, bx1) = box[:-2], box[-2], box[-1]
            if any(not start <= i < stop for i, (start, stop) in zip(index, leading)):
                continue
            keep[max(by0, y0) - y0 : max(min(by1, y1) - y0, 0), max(bx0, x0) - x0 : max(min(bx1, x1) - x0, 0)] = False
        return keep


class BrushPieces:
    """The private Labels methods napari's brush shows a written box with (PRIVATE_PAINT_API), looked up once for a
    layer: napari warns at every lookup that they go away in 0.10 (a line in the console per region otherwise).
    `available` is False from napari 0.10 on, or when they are missing: the public path is then used."""

    NAMES = ("_refresh_caches_from_region", "_accumulate_updated_slice", "_partial_labels_refresh")

    def __init__(self, layer):
        self.refresh_caches = self.accumulate = self.partial_refresh = None
        if PRIVATE_PAINT_API:
            try:
                self.refresh_caches, self.accumulate, self.partial_refresh = (getattr(layer, name) for name in self.NAMES)
            except AttributeError:
                self.refresh_caches = None

    @property
    def available(self) -> bool:
        return self.refresh_caches is not None


def write_region(layer, result, painted: PaintedBoxes, refresh: bool = True, brush: BrushPieces | None = None) -> None:
    """Store one finished region (lazy_labels.RegionLabels: the pixels of its mask) in `layer` and show it; GUI
    thread only.

    Pixels the user painted are kept, and the region is no edit the user can undo. One write to the store; then, up
    to napari 0.9, only the changed part of the display is updated, with the private pieces napari's brush uses
    (`brush`, looked up here if not given: its display caches of the changed pixels, then a partial refresh); else,
    and if those pieces are missing, a refresh (public API). Neither napari's painting call (it writes the store
    once per label value and keeps an undo entry of the old values) nor data_setitem (it reads and writes the store
    pixel by pixel: 9 s for a 2048² region, benchmarks/bench_lazy_labels.py). refresh=False leaves the display
    update to a DisplayRefresher.
    """
    (y0, y1), (x0, x1) = result.region
    key = (*(slice(i, i + 1) for i in result.index), slice(y0, y1), slice(x0, x1))
    writable = painted.untouched(result.index, result.region)
    if result.mask is not None:
        writable &= result.mask
    labels = result.labels
    # The store holds 0 wherever nothing was written yet: only the other values change pixels.
    values = [value for value in range(1, int(labels.max(initial=0)) + 1) if np.any((labels == value) & writable)]
    if not values:
        return
    shape = (1,) * len(result.index) + labels.shape  # the region's shape in the layer's dimensions
    region_data = np.asarray(layer.data[key]).reshape(labels.shape)
    region_data[writable] = labels[writable]
    brush = brush if brush is not None else BrushPieces(layer)
    with layer.events.paint.blocker():
        layer.data[key] = region_data.reshape(shape)
        if brush.available and _show_like_the_brush(brush, key, labels, values, writable, region_data.reshape(shape),
                                                    refresh):
            return
        if refresh:
            layer.refresh()


def _show_like_the_brush(brush: BrushPieces, key, labels, values, writable, region_data, refresh: bool) -> bool:
    """Update the display caches of the region's changed pixels and mark it for a partial refresh, as napari's brush
    does after writing; False if napari's private pieces do not take these arguments."""
    try:
        for value in values:
            brush.refresh_caches(region_data, key, ((labels == value) & writable).reshape(region_data.shape), value)
        brush.accumulate(key)
        if refresh:
            brush.partial_refresh()
    except (AttributeError, TypeError):  # napari changed its private painting API: the public path does it
        return False
    return True


class RegionWriter:
    """Writes results into a lazy layer a chunk of its store at a time, as many as fit in TURN_MS per turn of the
    event loop, so the GUI thread never stalls for a whole result (a view or region and what its tiles finished:
    up to ~3000² px, 0.2-1 s to write at once on 2 busy cores, benchmarks/bench_lazy_viewer.py); the display
    follows through `display` (a DisplayRefresher). `keep_writing()` False drops what comes (the layer was removed).
    """

    TURN_MS = 30

    def __init__(self, layer, painted: PaintedBoxes, display: "DisplayRefresher", keep_writing: Callable[[], bool]):
        from collections import deque

        from qtpy.QtCore import QTimer

        self.layer, self.painted, self.display, self.keep_writing = layer, painted, display, keep_writing
        self.pieces: deque = deque()
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self._write_some)

    def add(self, result) -> None:
        """Queue a result (lazy_labels.RegionLabels) for writing, chunk by chunk."""
        from napari_unet.inference.lazy_labels import chunk_pieces

        self.pieces.extend(chunk_pieces(result, tuple(self.layer.data.chunks[-2:])))
        if not self.timer.isActive():
            self.timer.start()

    def flush(self) -> None:
        """Write everything queued now (the job has ended: nothing is left for later)."""
        self.timer.stop()
        while self.pieces:
            self._write(self.pieces.popleft())

    def _write_some(self) -> None:
        import time

        started = time.perf_counter()
        while self.pieces:
            self._write(self.pieces.popleft())
            if time.perf_counter() - started >= self.TURN_MS / 1000:
                break
        if self.pieces:
            self.timer.start()

    def _write(self, piece) -> None:
        if self.keep_writing():
            write_region(self.layer, piece, self.painted, refresh=False, brush=self.display.brush)
            self.display.request()


class DisplayRefresher:
    """Shows written regions at most every few seconds instead of after each one.

    A Labels plane larger than the GPU's largest texture is drawn downsampled, and napari then answers
    every partial update with a full re-read of the plane (4 s for 32768² under Xvfb, bench_lazy_viewer.py):
    updates are coalesced, and the wait grows to 4x the last update's duration so the GUI stays usable.
    """

    MIN_INTERVAL_MS = 500

    def __init__(self, layer):
        from qtpy.QtCore import QTimer

        self.layer = layer
        self.brush = BrushPieces(layer)
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(self.MIN_INTERVAL_MS)
        self.timer.timeout.connect(self.refresh_now)

    def request(self) -> None:
        if not self.timer.isActive():
            self.timer.start()

    def refresh_now(self) -> None:
        import time

        self.timer.stop()
        started = time.perf_counter()
        self.brush.partial_refresh() if self.brush.available else self.layer.refresh()
        spent_ms = (time.perf_counter() - started) * 1000
        self.timer.setInterval(max(self.MIN_INTERVAL_MS, int(4 * spent_ms)))


class ViewTracker:
    """The (plane, region) of `layer` on screen, kept current for the worker process (visible-region-first).

    Updated on the GUI thread when the camera moves or the slice changes, shortly after the event so
    the canvas has drawn and corner_pixels is up to date; `current` is a plain tuple, and `on_change(current)`
    (e.g. a message to the worker process) is called when it changes.
    """

    DELAY_MS = 100

    def __init__(self, viewer, layer, index_of: Callable[[], tuple], on_change: Callable[[tuple], None] | None = None):
        from qtpy.QtCore import QTimer

        self.viewer, self.layer, self.index_of, self.on_change = viewer, layer, index_of, on_change
        self.current = visible_region(layer, index_of())
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(self.DELAY_MS)
        self.timer.timeout.connect(self.update)
        self._events = (viewer.camera.events.center, viewer.camera.events.zoom, viewer.dims.events.current_step)
        for event in self._events:
            event.connect(self._moved)

    def _moved(self, event=None) -> None:
        self.timer.start()

    def update(self) -> None:
        if self.layer not in self.viewer.layers:
            return
        current = visible_region(self.layer, self.index_of())
        if current != self.current:
            self.current = current
            if self.on_change is not None:
                self.on_change(current)

    def stop(self) -> None:
        self.timer.stop()
        for event in self._events:
            event.disconnect(self._moved)

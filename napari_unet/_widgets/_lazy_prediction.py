"""Predict tab, lazy images (zarr / OME-Zarr / dask layers): labels on disk, the visible region first.

The core (lazy_labels.predict_regions) runs in the worker process and reports each finished region; this module
writes it into a Labels layer backed by a zarr array (painting writes through to the store; napari-events.md)
on the GUI thread, the one place that writes the store, so user strokes and worker results never race.
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


# napari's own brush writes a box with private Labels methods (_paint_region_with_mask, then
# _partial_labels_refresh for the changed part of the display; its undo entry in _undo_history). Through them a
# region costs what a brush stroke costs; the public path (a write to the store, then layer.refresh()) re-reads
# the whole plane: 1.2 s at 8192² (benchmarks/bench_lazy_labels.py), so the display is refreshed less often.
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


def write_region(layer, result, painted: PaintedBoxes, refresh: bool = True) -> None:
    """Store one finished region (lazy_labels.RegionLabels) in `layer` and show it; GUI thread only.

    Pixels the user painted are kept, and the region is no edit the user can undo. Up to napari 0.9 it is
    written the way napari's brush writes a box (PRIVATE_PAINT_API: one slice write to the store, then only that
    part of the display is updated; its undo entry is dropped, or one per region would keep the whole image's old
    values in memory); else, and if those pieces are missing, a write to the store and a refresh (public API).
    data_setitem is no alternative: it reads and writes the store pixel by pixel (9 s for a 2048² region,
    benchmarks/bench_lazy_labels.py). refresh=False leaves the display update to a DisplayRefresher.
    """
    (y0, y1), (x0, x1) = result.region
    key = (*(slice(i, i + 1) for i in result.index), slice(y0, y1), slice(x0, x1))
    untouched = painted.untouched(result.index, result.region)
    labels = result.labels
    values = [int(value) for value in np.unique(labels) if value != 0]
    if not values:
        return
    region_data = np.asarray(layer.data[key]).reshape(labels.shape)
    with layer.events.paint.blocker():
        if PRIVATE_PAINT_API and _paint_like_the_brush(layer, key, labels, values, untouched, region_data, refresh):
            return
        region_data[untouched] = labels[untouched]
        layer.data[key] = region_data.reshape(layer.data[key].shape)
        if refresh:
            layer.refresh()


def _paint_like_the_brush(layer, key, labels, values, untouched, region_data, refresh: bool) -> bool:
    """The region through napari's private painting API (see PRIVATE_PAINT_API); False if it is not there."""
    history = getattr(layer, "_undo_history", None)
    if history is None:
        return False
    entries = len(history)
    try:
        for value in values:
            layer._paint_region_with_mask(key, (labels == value) & untouched, value, [layer.ndim - 2, layer.ndim - 1],
                                          refresh=False, region_data=region_data)
        if refresh:
            layer._partial_labels_refresh()
    except (AttributeError, TypeError):  # napari changed its private painting API: the public path does it
        return False
    finally:
        while len(history) > entries:
            history.pop()
    return True


class DisplayRefresher:
    """Shows written regions at most every few seconds instead of after each one.

    A Labels plane larger than the GPU's largest texture is drawn downsampled, and napari then answers
    every partial update with a full re-read of the plane (14 s for 32768², benchmarks/bench_lazy_labels.py):
    updates are coalesced, and the wait grows to 4x the last update's duration so the GUI stays usable.
    """

    MIN_INTERVAL_MS = 500

    def __init__(self, layer):
        from qtpy.QtCore import QTimer

        self.layer = layer
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
        partial = getattr(self.layer, "_partial_labels_refresh", None) if PRIVATE_PAINT_API else None  # see there
        partial() if partial is not None else self.layer.refresh()
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

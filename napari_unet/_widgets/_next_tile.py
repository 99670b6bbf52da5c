"""The Predict tab's *Next* button: show the most uncertain tile of the last prediction not corrected yet.

"Corrected" = pixels the user painted in the prediction Labels layer since it was predicted (its paint
events, plus any difference from the stored prediction) or pixels already in the project's training
pairs of that image. The ranking itself is the core's (uncertainty.next_tile); this module only
collects those pixels, moves the camera and draws the rectangle.
"""

from __future__ import annotations

import contextlib

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info

from napari_unet._widgets._layers import current_index
from napari_unet._widgets._session import PREDICTION_KEY
from napari_unet.inference.uncertainty import NEXT_TILE_SIZE, next_tile
from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.training.live import touched_by

NEXT_SHORTCUT = "Shift+N"
HIGHLIGHT_NAME = "next tile"
# Share of the canvas left around the tile: enough context to see what the tile cuts through.
VIEW_MARGIN = 0.3


class NextTile:
    """Follows the last prediction made with an uncertainty map and answers *Next*."""

    def __init__(self, viewer, training_set):
        self.viewer = viewer
        self._training_set = training_set  # a callable: the session's current TrainingSet
        self.image: Image | None = None
        self.labels: Labels | None = None
        self.uncertainty: Image | None = None
        self.painted: np.ndarray | None = None  # bool, the Labels layer's shape
        # Annotated pixels of training pairs by (mask file, its mtime): Next reads each pair's mask once,
        # not at every press (a large pair's TIFF would stall the GUI thread each time).
        self._annotated: dict[tuple[str, int], np.ndarray] = {}

    def follow(self, image: Image, labels: Labels, uncertainty: Image) -> None:
        """Rank the tiles of `uncertainty` from now on; painting in `labels` marks tiles corrected."""
        self.forget()
        self.image, self.labels, self.uncertainty = image, labels, uncertainty
        self.painted = np.zeros(labels.data.shape, dtype=bool)
        labels.events.paint.connect(self._on_paint)

    def forget(self) -> None:
        if self.labels is not None:
            with contextlib.suppress(Exception):
                self.labels.events.paint.disconnect(self._on_paint)
        self.image = self.labels = self.uncertainty = self.painted = None

    def _on_paint(self, event) -> None:
        if self.painted is not None and self.painted.shape == self.labels.data.shape:
            index = current_index(self.viewer, self.labels) if self.labels.ndim > 2 else ()  # strokes: this plane
            self.painted[index] |= touched_by(event.value, self.painted.shape[-2:], index)

    def _ready(self) -> bool:
        layers = self.viewer.layers
        return all(layer is not None and layer in layers for layer in (self.image, self.labels, self.uncertainty))

    def corrected(self, index: tuple) -> np.ndarray:
        """bool (Y, X) of plane `index`: painted, changed since predicted, or already in a training pair."""
        corrected = self.painted[index].copy()
        stored = self.labels.metadata.get(PREDICTION_KEY)
        if stored is not None and stored.shape == self.labels.data.shape:
            corrected |= np.asarray(self.labels.data[index]) != stored[index]
        plane_name = f"{self.image.name}{('_' + '_'.join(map(str, index))) if index else ''}"
        training_set = self._training_set()
        for pair in training_set.pairs():  # the Correct tab names pairs after the image (and the plane)
            if pair.source_image == self.image.name and pair.name.startswith(plane_name) \
                    and tuple(pair.shape[:2]) == corrected.shape:
                corrected |= self._annotated_in(training_set, pair)
        return corrected

    def _annotated_in(self, training_set, pair) -> np.ndarray:
        try:
            key = (str(pair.mask_path), pair.mask_path.stat().st_mtime_ns)
        except OSError:
            key = None
        if key not in self._annotated:
            _, mask = training_set.load(pair.name)
            annotated = np.asarray(mask) != IGNORE_LABEL
            if key is None:
                return annotated
            self._annotated = {k: v for k, v in self._annotated.items() if k[0] != key[0]}  # an older version
            self._annotated[key] = annotated
        return self._annotated[key]

    def go(self) -> tuple[slice, slice] | None:
        """Move the camera to the next tile and outline it; None (with a notification) if there is none."""
        if not self._ready():
            show_info("Next: there is no uncertainty map to rank. Tick 'also show uncertainty', press Predict, "
                      "then Next shows the least certain part you have not corrected yet.")
            return None
        index = current_index(self.viewer, self.uncertainty) if self.uncertainty.ndim > 2 else ()
        uncertainty = np.asarray(self.uncertainty.data[index])
        if not uncertainty.any():  # a stack predicted one slice at a time: this slice has no map yet
            show_info(f"Next: slice {','.join(map(str, index))} has no uncertainty map: press Predict on it (with "
                      "'also show uncertainty'), or go back to the predicted slice.")
            return None
        tile = next_tile(uncertainty, self.corrected(index), NEXT_TILE_SIZE)
        if tile is None:
            show_info(f"Next: every tile of '{self.labels.name}' is corrected or already in the training set. "
                      "Add it to the training set and fine-tune, or predict another image.")
            return None
        self._highlight(index, tile)
        return tile

    def _highlight(self, index: tuple, tile: tuple[slice, slice]) -> None:
        """Outline `tile` of plane `index` (on that plane only) and fit the view to it."""
        rows, cols = tile
        top, bottom, left, right = rows.start - 0.5, rows.stop - 0.5, cols.start - 0.5, cols.stop - 0.5  # pixel edges
        corners = np.array([[*index, top, left], [*index, top, right], [*index, bottom, right],
                            [*index, bottom, left]], dtype=float)
        ndim = self.labels.ndim
        layer = next((layer for layer in self.viewer.layers if layer.name == HIGHLIGHT_NAME), None)
        if layer is not None and layer.ndim != ndim:
            self.viewer.layers.remove(layer)
            layer = None
        if layer is None:
            layer = self.viewer.add_shapes(name=HIGHLIGHT_NAME, ndim=ndim, edge_color="yellow",
                                           face_color="transparent", edge_width=2)
        layer.scale, layer.translate = self.labels.scale, self.labels.translate
        layer.data = []
        layer.add_rectangles([corners], edge_color="yellow", face_color="transparent", edge_width=2)
        self.viewer.fit_to_view(layers=[layer], margin=VIEW_MARGIN)
        self.viewer.layers.selection.active = self.labels  # ready to paint the correction

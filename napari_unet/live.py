"""Live mode's core: the model keeps learning from a project's corrections in short bursts.

A LiveTrainer holds one training run open (training/loop.py `_Run`: the model, its optimizer state and the
compiled step), so a burst of a few seconds costs only its steps — no model copy, no re-trace. When the
user's corrections change, `reload()` re-reads the project's pairs (as a round would: the evaluation pairs,
else held-out stripes that are then not trained on) and training goes on from the current weights. After each
burst the running model is scored on the evaluation set; the best state so far is kept in memory and `keep()`
makes it a version through the project's own guard and record (Project.keep), exactly like a round.

No Qt here: the dock drives a LiveTrainer from a worker thread, one call at a time (the trainer's model
changes in place, so it is predicted in its own precision, by the same thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from napari_unet.errors import NapariUNetError
from napari_unet.masks import IGNORE_LABEL

# Annotated = the pixels the user touched, grown by this margin (px): the labels right next to a stroke were
# looked at too, and a patch centred on a thin stroke still sees both sides of the edge it fixed.
TOUCH_MARGIN = 8
# A short round: long enough for tens of steps on a laptop CPU, short enough that the live layer follows the brush.
BURST_SECONDS = 4.0


def live_mask(labels: np.ndarray, touched: np.ndarray, margin: int = TOUCH_MARGIN, whole_plane: bool = False) -> np.ndarray:
    """The training mask of one corrected plane: the labels where the user touched them (plus `margin` px),
    IGNORE_LABEL elsewhere — or the whole plane when the user confirmed it."""
    labels = np.asarray(labels)
    if whole_plane:
        return labels.copy()
    touched = np.asarray(touched, dtype=bool)
    if touched.shape != labels.shape:
        raise NapariUNetError(f"touched pixels {touched.shape} and labels {labels.shape} differ: one plane each")
    annotated = ndimage.binary_dilation(touched, iterations=margin) if margin > 0 and touched.any() else touched
    mask = np.full(labels.shape, IGNORE_LABEL, dtype=np.uint8 if labels.max(initial=0) < IGNORE_LABEL else labels.dtype)
    mask[annotated] = labels[annotated]
    return mask


def touched_by(atoms, plane_shape: tuple[int, int], plane_index: tuple[int, ...] = ()) -> np.ndarray:
    """The pixels of one (Y, X) plane that a napari Labels `paint` event changed (its value: a list of history
    atoms — masked paints `(slice_key, mask | None, old_values, new_value)` from the brush, fill and polygon,
    or `(indices, old_values, new_values)` from data_setitem). Edits of other planes of a stack are ignored."""
    touched = np.zeros(plane_shape, dtype=bool)
    n_leading = len(plane_index)
    for atom in atoms:
        if len(atom) == 4:
            key, mask = tuple(atom[0]), atom[1]
            leading, (rows, cols) = key[:n_leading], key[n_leading:][-2:]
            offsets = []
            for part, wanted in zip(leading, plane_index):
                start = part.start or 0 if isinstance(part, slice) else int(part)
                stop = (part.stop if part.stop is not None else wanted + 1) if isinstance(part, slice) else start + 1
                if not start <= wanted < stop:
                    break
                offsets.append(wanted - start if isinstance(part, slice) else None)
            else:
                if mask is None:
                    touched[rows, cols] = True
                else:
                    plane_mask = np.asarray(mask, dtype=bool)
                    for offset in offsets:
                        plane_mask = plane_mask[offset] if offset is not None else plane_mask
                    touched[rows, cols] |= plane_mask.reshape(touched[rows, cols].shape)
        elif len(atom) == 3:
            indices = tuple(np.asarray(i) for i in atom[0])
            if len(indices) < 2:
                continue
            keep = np.ones(np.shape(indices[-1]), dtype=bool)
            for axis_indices, wanted in zip(indices[:n_leading], plane_index):
                keep &= axis_indices == wanted
            touched[indices[-2][keep], indices[-1][keep]] = True
    return touched


@dataclass
class Burst:
    """What one burst did: steps run, the mean loss, and the evaluation score afterwards (None without data)."""

    steps: int
    seconds: float
    loss: float | None
    iou: float | None
    dice: float | None
    best_iou: float | None
    total_steps: int


class LiveTrainer:
    """Short rounds from the project's current corrections, from one open training run (see the module doc)."""

    def __init__(self, project, parent_key: str, config=None):
        from napari_unet.training import TrainConfig

        self.project, self.parent_key = project, parent_key
        # No validation split of its own: the project's evaluation set scores the running model.
        self.config = config or TrainConfig(validation_fraction=0.0)
        self.parent = project.load_model(parent_key)
        self._run = None
        self.evaluation = None
        self.total_steps = 0
        self.best_iou: float | None = None
        self._best_weights = None

    @property
    def model(self):
        """The running model (changes with every step; predict it with precision=self.precision)."""
        return self._run.trained if self._run is not None else self.parent

    @property
    def precision(self) -> str | None:
        return self._run.precision if self._run is not None else None

    def reload(self) -> int:
        """Read the project's pairs again (after the user's corrections changed); returns how many train."""
        from napari_unet.training.loop import _resolve_config, _Run

        data, self.evaluation = self.project.snapshot()
        if self._run is None:
            self._run = _Run(self.parent, _resolve_config(self.parent, self.config, {}), data.images, data.train_masks,
                             None, list(data.names), None)
        else:
            self._run.use_pairs(data.images, data.train_masks, list(data.names))
        self.best_iou, self._best_weights = None, None  # scores on another evaluation set do not compare
        return len(data.names)

    def train(self, seconds: float = BURST_SECONDS, cancel: Callable[[], bool] | None = None) -> Burst:
        """Train for about `seconds` (at least one step), then score the running model."""
        if self._run is None:
            self.reload()
        started = time.monotonic()
        losses = []
        while not losses or time.monotonic() - started < seconds:
            if cancel is not None and cancel():
                break
            loss = self._run.step()
            if loss is None:
                raise NapariUNetError("live training diverged (a non-finite loss): the last good weights are back; "
                                      "check the corrections, then switch Live on again")
            losses.append(loss)
        self.total_steps += len(losses)
        iou = dice = None
        if self.evaluation is not None and self.evaluation.images:
            from napari_unet.evidence import pooled
            from napari_unet.project import _score

            units, _ = _score(self.model, self.evaluation, precision=self.precision)
            scores = pooled(units)
            iou, dice = scores["iou"], scores["dice"]
            if self.best_iou is None or iou > self.best_iou:
                self.best_iou, self._best_weights = iou, self.model.keras_model.get_weights()
        return Burst(len(losses), time.monotonic() - started, float(np.mean(losses)) if losses else None,
                     iou, dice, self.best_iou, self.total_steps)

    def predict(self, image: np.ndarray, **options) -> np.ndarray:
        """Labels of `image` (a region of the current plane) by the running model."""
        from napari_unet.prediction import predict

        return predict(self.model, image, precision=self.precision, **options)

    def keep(self, log: Callable[[str], None] | None = None):
        """The best state so far (else the current one) becomes a version through the project's guard; a kept
        version is the parent the next Keep is compared with. Returns the round outcome."""
        if self._run is None or self.total_steps == 0:
            raise NapariUNetError("nothing to keep yet: live training has not run a step (paint a correction first)")
        tuned, history = self._run.version(self._best_weights)
        history.steps = self.total_steps
        outcome = self.project.keep(tuned, history, parent_key=self.parent_key, config=self._run.config, log=log)
        if outcome.record["kept"]:
            self.parent_key = outcome.record["version"]
        return outcome

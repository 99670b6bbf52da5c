"""Live mode's core: the model keeps learning from a project's corrections in short bursts.

A LiveTrainer holds one training run open (training/loop.py `TrainingRun`: the model, its optimizer state and the
compiled step), so a burst of a few seconds costs only its steps — no model copy, no re-trace. When the
user's corrections change, `reload()` re-reads the project's pairs (as a round would: the evaluation pairs,
else held-out stripes that are then not trained on) and training goes on from the current weights. After each
burst the running model is scored on the evaluation set; the best state so far is kept in memory and `keep()`
makes it a version through the project's own guard and record (Project.keep), exactly like a round.

No Qt here: the dock drives a LiveTrainer from a worker thread, one call at a time (the trainer's model
changes in place, so it is predicted in its own precision, by the same thread).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from napari_unet.errors import NapariUNetError
from napari_unet.labels.masks import IGNORE_LABEL

# Annotated = the pixels the user touched, grown by this margin (px): the labels right next to a stroke were
# looked at too, and a patch centred on a thin stroke still sees both sides of the edge it fixed.
TOUCH_MARGIN = 8
# A short round: long enough for tens of steps on a laptop CPU, short enough that the live layer follows the brush.
BURST_SECONDS = 4.0
# The preview forest learns from at most this many of the touched pixels (a fit then takes about a second).
PREVIEW_PIXELS = 20_000
# On a new kind of image live mode only chooses its start (inverted or not, batch-norm statistics re-estimated or
# not: adaptation.py); bursts keep batch norm frozen and the configured learning rate. Measured on brightfield
# (benchmarks/new_domain.py --live, 16 tiles in 60 s of training from `nuclei`), right-half IoU over the last 4
# tiles: 0.91 with these levers, 0.86 adding the 1e-3 learning rate, 0.15 with every lever (trained batch norm on
# a few tiles collapsed after 11 tiles); the forest 0.56.
LIVE_LEVERS = ("polarity", "batch_norm_stats")


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


def _box_in_plane(key: tuple, mask, plane_index: tuple[int, ...]):
    """(rows, cols, mask of the box or None) of a masked paint atom on plane `plane_index`; None off the plane.

    The leading parts of `key` are slices (the mask has that axis) or integers (it has not)."""
    for part, wanted in zip(key[:len(plane_index)], plane_index):
        if isinstance(part, slice):
            start = part.start or 0
            stop = wanted + 1 if part.stop is None else part.stop
            if not start <= wanted < stop:
                return None
            mask = None if mask is None else np.asarray(mask)[wanted - start]
        elif int(part) != wanted:
            return None
    rows, cols = key[len(plane_index):][-2:]
    return rows, cols, mask


def touched_by(atoms, plane_shape: tuple[int, int], plane_index: tuple[int, ...] = ()) -> np.ndarray:
    """The pixels of one (Y, X) plane that a napari Labels `paint` event changed (its value: a list of history
    atoms — masked paints `(slice_key, mask | None, old_values, new_value)` from the brush, fill and polygon,
    or `(indices, old_values, new_values)` from data_setitem). Edits of other planes of a stack are ignored."""
    touched = np.zeros(plane_shape, dtype=bool)
    n_leading = len(plane_index)
    for atom in atoms:
        if len(atom) == 4:
            box = _box_in_plane(tuple(atom[0]), atom[1], plane_index)
            if box is None:
                continue
            rows, cols, mask = box
            if mask is None:
                touched[rows, cols] = True
            else:
                touched[rows, cols] |= np.asarray(mask, dtype=bool).reshape(touched[rows, cols].shape)
        elif len(atom) == 3:
            indices = tuple(np.asarray(i) for i in atom[0])
            if len(indices) < 2:
                continue
            keep = np.ones(np.shape(indices[-1]), dtype=bool)
            for axis_indices, wanted in zip(indices[:n_leading], plane_index):
                keep &= axis_indices == wanted
            touched[indices[-2][keep], indices[-1][keep]] = True
    return touched


def painted_planes(atoms, n_leading: int = 1) -> set[tuple[int, ...]]:
    """The planes (indices over the `n_leading` axes before Y, X) that a napari Labels `paint` event's atoms
    (see touched_by) wrote into; a box spanning several planes (a 3-D brush) names each."""
    planes: set[tuple[int, ...]] = set()
    if n_leading < 1:
        return planes
    for atom in atoms:
        if len(atom) == 4:
            parts, mask = tuple(atom[0])[:n_leading], atom[1]
            ranges = []
            for axis, part in enumerate(parts):
                if isinstance(part, slice):
                    start = part.start or 0
                    stop = part.stop if part.stop is not None else start + (np.shape(mask)[axis] if mask is not None else 1)
                    ranges.append(range(start, stop))
                else:
                    ranges.append(range(int(part), int(part) + 1))
            planes |= set(itertools.product(*ranges))
        elif len(atom) == 3 and len(atom[0]) > n_leading:
            leading = np.stack([np.asarray(axis_indices).ravel() for axis_indices in atom[0][:n_leading]], axis=1)
            planes |= {tuple(int(i) for i in row) for row in np.unique(leading, axis=0)}
    return planes


def _features(image: np.ndarray) -> np.ndarray:
    """ilastik's default feature set as scikit-image offers it: intensity, edges and texture at 5 scales, of
    every channel (colour stays colour, as ilastik computes features per channel)."""
    from skimage.feature import multiscale_basic_features

    from napari_unet.inference.normalize import apply_range, percentile_range

    plane = np.asarray(image, dtype=np.float32)
    plane = plane[..., None] if plane.ndim == 2 else plane
    plane = apply_range(plane, *percentile_range(plane))
    channel_axis = -1 if plane.shape[-1] > 1 else None
    plane = plane if channel_axis is not None else plane[..., 0]
    return multiscale_basic_features(plane, intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16,
                                     channel_axis=channel_axis)


class ForestPreview:
    """An instant preview while the U-Net is still learning a new domain: ilastik's pixel classifier (a random
    forest on multiscale features) fitted on the touched pixels in about a second: background and one class, or
    background and each of a project's classes (the painted label values, multi_class=True).
    Live mode shows it instead of the U-Net's prediction only while it scores better on the evaluation set."""

    def __init__(self, seed: int = 0, multi_class: bool = False):
        self.seed = seed
        self.multi_class = multi_class
        self.classifier = None
        self._cache: dict[str, np.ndarray] = {}

    def features(self, image: np.ndarray) -> np.ndarray:
        """Cached by content: every reload reads the evaluation images anew, and their features do not change."""
        from napari_unet.storage.store import array_sha1

        key = array_sha1(image)
        if key not in self._cache:
            if len(self._cache) >= 8:  # planes no longer in the project
                self._cache.clear()
            self._cache[key] = _features(image)
        return self._cache[key]

    def fit(self, image: np.ndarray, mask: np.ndarray) -> bool:
        """Fit on the annotated pixels of one plane's training mask; False when they hold only one class."""
        from sklearn.ensemble import RandomForestClassifier

        annotated = np.flatnonzero(mask.ravel() != IGNORE_LABEL)
        targets = mask.ravel()[annotated] > 0
        if self.multi_class:
            targets = mask.ravel()[annotated].astype(np.uint8)
            if np.unique(targets).size < 2:
                return False
        elif targets.all() or not targets.any():
            return False
        rng = np.random.default_rng(self.seed)
        if annotated.size > PREVIEW_PIXELS:
            chosen = rng.choice(annotated.size, PREVIEW_PIXELS, replace=False)
            annotated, targets = annotated[chosen], targets[chosen]
        features = self.features(image)
        self.classifier = RandomForestClassifier(n_estimators=50, max_depth=10, n_jobs=1, random_state=self.seed)
        self.classifier.fit(features.reshape(-1, features.shape[-1])[annotated], targets)
        return True

    def predict(self, image: np.ndarray) -> np.ndarray:
        """0/1 labels (class ids with multi_class) of a whole image (its features are cached by content)."""
        features = self.features(image)
        return self.classifier.predict(features.reshape(-1, features.shape[-1])).reshape(features.shape[:2]).astype(np.uint8)

    def score(self, evaluation) -> float | None:
        """IoU on the evaluation set (several classes: their mean IoU), as rounds score the U-Net."""
        from napari_unet.scoring.evidence import class_unit_counts, pooled, unit_counts

        if self.classifier is None or evaluation is None or not evaluation.images:
            return None
        n_classes = len(evaluation.class_names)
        units = [class_unit_counts(self.predict(image), truth, valid, n_classes) if n_classes else
                 unit_counts(self.predict(image), truth, valid)
                 for image, truth, valid in zip(evaluation.images, evaluation.truths, evaluation.valid)]
        return pooled(np.concatenate(units))["iou"]


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
        self.config = config or TrainConfig(validation_fraction=0.0, adapt_levers=LIVE_LEVERS)
        self.parent = project.load_model(parent_key)
        self._run = None
        self.evaluation = None
        self.total_steps = 0
        self.best_iou: float | None = None
        self._best_weights = None
        self._corrected: dict[str, np.ndarray] = {}
        self.adaptation: dict = {}  # what adaptation.adapt found at the first corrections

    @property
    def model(self):
        """The running model (changes with every step; predict it with precision=self.precision)."""
        return self._run.trained if self._run is not None else self.parent

    @property
    def precision(self) -> str | None:
        return self._run.precision if self._run is not None else None

    def reload(self, corrected: dict[str, np.ndarray] | None = None) -> int:
        """Read the project's pairs again (after the user's corrections changed); returns how many train.

        corrected: {pair name: bool (Y, X) map of the pixels the user changed}; half of a pair's patches are
        centred on them (the rest as usual), so a confirmed whole plane still trains mostly where it was wrong."""
        from napari_unet.training.loop import TrainingRun, resolve_config

        data, self.evaluation = self.project.snapshot()
        self._corrected.update(corrected or {})
        if self._run is None:
            # The first corrections decide how to start (a new kind of image: polarity, batch-norm statistics,
            # learning rate; adaptation.py), as a round's do.
            from napari_unet.training.adaptation import adapt

            start, config, self.adaptation = adapt(self.parent, data.images,
                                                   self.project.masks_for(self.parent, data.train_masks), self.config)
            start = self.project.with_project_classes(start, seed=config.seed)
            self._run = TrainingRun(start, resolve_config(start, config, {}), data.images, data.train_masks,
                             None, list(data.names), None, focus=self._corrected)
        else:
            self._run.use_pairs(data.images, data.train_masks, list(data.names), self._corrected)
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
            from napari_unet.project import score_evaluation
            from napari_unet.scoring.evidence import pooled

            units, _ = score_evaluation(self.model, self.evaluation, precision=self.precision)
            scores = pooled(units)
            iou, dice = scores["iou"], scores["dice"]
            if self.best_iou is None or iou > self.best_iou:
                self.best_iou, self._best_weights = iou, self.model.keras_model.get_weights()
        return Burst(len(losses), time.monotonic() - started, float(np.mean(losses)) if losses else None,
                     iou, dice, self.best_iou, self.total_steps)

    def predict(self, image: np.ndarray, **options) -> np.ndarray:
        """Labels of `image` (a region of the current plane) by the running model."""
        from napari_unet.inference.prediction import predict

        return predict(self.model, image, precision=self.precision, **options)

    def keep(self, log: Callable[[str], None] | None = None):
        """The best state so far (else the current one) becomes a version through the project's guard; a kept
        version is the parent the next Keep is compared with. Returns the round outcome."""
        if self._run is None or self.total_steps == 0:
            raise NapariUNetError("nothing to keep yet: live training has not run a step (paint a correction first)")
        tuned, history = self._run.version(self._best_weights)
        history.steps = self.total_steps
        outcome = self.project.keep(tuned, history, parent_key=self.parent_key, config=self._run.config, log=log,
                                    adaptation=self.adaptation)
        if outcome.record.kept:
            self.parent_key = outcome.record.version
        return outcome

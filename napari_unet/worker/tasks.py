"""The dock's use cases as the worker process runs them: core calls only, each `task(job, *args)`.

`job` (server.JobContext) gives progress (job.report), the cancel check (job.is_cancelled), the dock's messages
to a running task (job.messages) and the models loaded so far (job.models). Arguments and results are plain
values and numpy arrays: no model object ever crosses to napari's process. Importing this module imports no
TensorFlow (the core is imported inside the tasks), so the dock can name the tasks and use PlanePrediction.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Models kept loaded in the worker (the most recently used): a shipped model, the project's versions in use.
MAX_MODELS = 4
# Live: a burst trains at least this long before newer corrections interrupt it. A user who keeps painting sends
# corrections every MAX_WAIT_S (2 s); without a floor each one interrupted the next burst before its first step
# (re-reading the pairs takes longer than that), and the live layer never changed while the user painted.
MIN_BURST_SECONDS = 1.0


@dataclass(frozen=True)
class ModelReference:
    """A model as the dock names it: a shipped name, a version name or a file path, and the project whose
    versions the name may mean (None: the user's model store only)."""

    key: str
    project_root: str | None = None

    def stores(self) -> tuple:
        from napari_unet.storage.store import ModelStore

        user_store = ModelStore()
        return (ModelStore(Path(self.project_root) / "models"), user_store) if self.project_root else (user_store,)

    def renamed(self) -> tuple:
        """The project's renamed classes ((old, new) pairs): its versions' classes are read under the new names."""
        from napari_unet.project import Project

        return tuple(Project(self.project_root).renamed) if self.project_root else ()


class ModelCache:
    """Loaded models by file, modification time and their project's renamed classes (a renamed or rewritten file, or a
    class renamed since, is loaded anew), MAX_MODELS kept."""

    def __init__(self):
        self._models: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time: two tasks asking for one model load it once

    @staticmethod
    def _file_key(reference: ModelReference) -> tuple:
        from napari_unet.storage.registry import resolve

        path, _ = resolve(reference.key, *reference.stores())
        try:
            return str(path), path.stat().st_mtime_ns, reference.renamed()
        except OSError:
            return str(path), None, reference.renamed()

    def get(self, reference: ModelReference):
        """The SegmentationModel `reference` names, loaded once (its classes as its project names them now)."""
        from napari_unet.model import with_renamed_classes
        from napari_unet.storage.registry import load_model

        if not reference.key:
            from napari_unet.errors import NapariUNetError

            raise NapariUNetError("no model is selected: choose one in the Predict tab (or a .keras file)")
        key = self._file_key(reference)
        with self._loading:
            with self._lock:
                model = self._models.get(key)
                if model is not None:
                    self._models.move_to_end(key)
                    return model
            model = with_renamed_classes(load_model(reference.key, *reference.stores()), list(key[-1]))
            self.put(reference, model, key)
            return model

    def put(self, reference: ModelReference, model, key: tuple | None = None) -> None:
        """Keep `model` as the one `reference` names (a round's new version: its re-prediction loads nothing)."""
        key = key or self._file_key(reference)
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            while len(self._models) > MAX_MODELS:
                self._models.popitem(last=False)


# ------------------------------------------------------------------------------------------------ predict
@dataclass
class PlanePrediction:
    """One Predict's result: labels, the probability map if asked (several classes: (Y, X, n) one map per class, named
    by class_names), the slider's ranks (postprocess.threshold_ranks; None for multi-class models), which objects the
    slider re-splits, the uncertainty map if asked."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    ranks: np.ndarray | None
    objects: str | None
    uncertainty: np.ndarray | None
    class_names: tuple[str, ...] = ()


def plane_prediction(model, image: np.ndarray, settings: dict, report, is_cancelled) -> PlanePrediction:
    """What the Predict tab shows for `image`; settings: instances, threshold, with_probabilities, channel_axis,
    test_time_augmentation, with_uncertainty, min_size (None: the model's own), channels, slider_thresholds; with
    instances, stack ("z", "t": stack_prediction) and anisotropy."""
    from napari_unet.inference.prediction import predict
    from napari_unet.labels.postprocess import class_probabilities, model_instances, model_labels, threshold_ranks

    threshold = settings["threshold"]
    with_uncertainty = settings.get("with_uncertainty", False)
    stack = settings.get("stack")
    if stack in ("z", "t") and settings.get("instances", False):
        return stack_prediction(model, image, settings, report, is_cancelled)
    result = predict(model, image, output="raw", threshold=threshold, channel_axis=settings.get("channel_axis"),
                     channels=settings.get("channels"), progress=lambda done, total: report((done, total)),
                     cancel=is_cancelled, test_time_augmentation=settings.get("test_time_augmentation", False),
                     with_uncertainty=with_uncertainty)
    probabilities, uncertainty = result if with_uncertainty else (result, None)
    probabilities = np.asarray(probabilities)
    n_classes = model.config.n_classes
    labels = model_labels(probabilities, model.metadata, threshold)
    instances = settings.get("instances", False)
    if instances:
        labels = model_instances(probabilities, model.metadata, n_classes, threshold=threshold,
                                 min_size=settings.get("min_size"))
    method = model.metadata.instance_method if instances else None
    objects = {"components": "foreground", "enclosed": "background"}.get(method)  # what the slider re-splits
    slider = settings.get("slider_thresholds")
    ranks = threshold_ranks(probabilities, slider) if n_classes == 1 and slider else None
    shown, class_names = None, ()
    several = model.metadata.instance_method == "classes"
    if settings.get("with_probabilities"):
        if several:  # one map per class
            shown, class_names = class_probabilities(probabilities, model.metadata)[..., 1:], tuple(model.metadata.classes)
        else:
            shown = 1.0 - probabilities[..., 0] if n_classes > 1 else probabilities  # one map: "not background"
    return PlanePrediction(labels, shown, ranks, objects, uncertainty, class_names)


def stack_prediction(model, image: np.ndarray, settings: dict, report, is_cancelled) -> PlanePrediction:
    """Objects with one id across the planes of a volume (settings["stack"] "z") or from frame to frame ("t"), with
    the volume's settings["anisotropy"] (stacks.py); no probability map and no slider ranks: the objects come from
    the whole stack at once (the three views' mean or stitching), so a new threshold needs a new Predict."""
    from napari_unet.inference.prediction import predict

    with_uncertainty = settings.get("with_uncertainty", False)
    result = predict(model, image, output="instances", threshold=settings["threshold"],
                     channel_axis=settings.get("channel_axis"), channels=settings.get("channels"),
                     progress=lambda done, total: report((done, total)), cancel=is_cancelled,
                     test_time_augmentation=settings.get("test_time_augmentation", False),
                     with_uncertainty=with_uncertainty, min_size=settings.get("min_size"),
                     stack=settings["stack"], anisotropy=settings.get("anisotropy"))
    labels, uncertainty = result if with_uncertainty else (result, None)
    return PlanePrediction(labels, None, None, None, uncertainty)


def predict_plane(job, model: ModelReference, image: np.ndarray, settings: dict) -> PlanePrediction:
    return plane_prediction(job.models.get(model), image, settings, job.report, job.is_cancelled)


def predict_regions(job, model: ModelReference, image, visible, threshold: float, channel_axis,
                    test_time_augmentation: int) -> None:
    """A lazy image, region by region, the visible one first: each finished region is a progress value
    (lazy_labels.RegionLabels); ("view", visible) messages move the work to where the user now looks."""
    from napari_unet.inference.lazy_labels import predict_regions as regions_of

    seen = [visible]

    def current():
        for message in job.messages():
            if message[0] == "view":
                seen[0] = message[1]
        return seen[0]

    for result in regions_of(job.models.get(model), image, visible=current, threshold=threshold, channel_axis=channel_axis,
                             cancel=job.is_cancelled, test_time_augmentation=test_time_augmentation):
        job.report(result)


def predict_objects_into(job, model: ModelReference, image, store: str, stack: str, threshold: float, channel_axis,
                         test_time_augmentation: int, min_size: int | None) -> str:
    """A lazy (zarr) volume's or time-lapse's objects into the int32 zarr array at `store`, plane by plane
    (prediction.predict_stack_into: never the whole stack in memory); each plane done is a (done, total) progress
    value. Returns `store`."""
    import zarr

    from napari_unet.inference.prediction import predict_stack_into

    out = zarr.open_array(store, mode="r+")
    predict_stack_into(job.models.get(model), image, out, stack=stack, threshold=threshold, channel_axis=channel_axis,
                       progress=lambda done, total: job.report((done, total)), cancel=job.is_cancelled,
                       min_size=min_size, test_time_augmentation=test_time_augmentation)
    return store


def warm_up(job, model: ModelReference, write_missing_twin: bool = True) -> str:
    """Load the model and trace its forward pass on a small image (the traced function serves any size), so the
    next Predict only predicts; then give a project version saved without an ONNX twin its twin."""
    from napari_unet.inference.prediction import predict

    loaded = job.models.get(model)
    if job.is_cancelled():
        return model.key
    n_channels = loaded.config.n_channels
    noise = np.random.default_rng(0).random((64, 64) if n_channels == 1 else (64, 64, n_channels))
    predict(loaded, noise.astype(np.float32), output="probabilities", cancel=job.is_cancelled)
    if write_missing_twin and not job.is_cancelled():
        write_twin(job, model, only_if_missing=True)
    return model.key


def write_twin(job, model: ModelReference, only_if_missing: bool = False) -> str | None:
    """The ONNX twin of a stored version (onnx_engine.write_twin), so the next napari's first Predict with it needs
    no worker; None for shipped models (they carry theirs), files opened by path (their folders are the user's),
    an existing twin with `only_if_missing`, or a failure. Best effort: a version without a twin starts slower."""
    from napari_unet.inference.onnx_engine import twin_path
    from napari_unet.inference.onnx_engine import write_twin as write

    records = (store.record(model.key) for store in model.stores())
    record = next((found for found in records if found is not None), None)
    if record is None:
        return None
    path = Path(record.path)
    if only_if_missing and twin_path(path).is_file():
        return None
    try:
        written = write(path)
    except Exception as error:  # never the user's problem: log it, keep working
        print(f"napari-unet: no ONNX twin for '{model.key}' ({type(error).__name__}: {error})")
        return None
    return str(written) if written is not None else None


# ------------------------------------------------------------------------------------------------ the loop
def fine_tune_round(job, project_root: str, parent_key: str, config, image: np.ndarray | None, channel_axis):
    """One round of the project (Project.round), then `image` predicted with the new version (None: not asked).
    Returns (RoundOutcome without its model, labels or None); the new version stays loaded here."""
    from napari_unet.project import Project, RoundOutcome

    project = Project(project_root)
    outcome = project.round(config, model=parent_key, progress=job.report, cancel=job.is_cancelled)
    job.models.put(ModelReference(outcome.version, project_root), outcome.model)
    labels = None
    if image is not None:
        job.report(("predicting", 0))
        settings = {"threshold": config.threshold, "channel_axis": channel_axis}
        labels = plane_prediction(outcome.model, image, settings, lambda value: None, lambda: False).labels
    return RoundOutcome(outcome.record, None), labels


def propose_start(job, project_root: str, keys: list[str], image: np.ndarray | None) -> dict:
    """adaptation.propose_start over `keys`: on the project's corrections, else on `image`."""
    from napari_unet.project import Project
    from napari_unet.training.adaptation import propose_start as propose

    project = Project(project_root)
    masks = None
    if project.training.pairs():
        data, _ = project.snapshot()
        images, masks = data.images, data.train_masks
    else:
        images = [image]
    return propose({key: job.models.get(ModelReference(key, project_root)) for key in keys}, images, masks)


def revert(job, project_root: str, version: str) -> dict:
    """Project.revert: it scores both versions on the evaluation set, so it runs where the models are."""
    from napari_unet.project import Project

    return Project(project_root).revert(version)


def export_bioimageio(job, model: ModelReference, path: str, authorship, overwrite: bool) -> Path:
    from napari_unet.storage.bioimageio import export_bioimageio as export

    return export(job.models.get(model), path, authorship, overwrite=overwrite, progress=job.report,
                  is_cancelled=job.is_cancelled)


# ------------------------------------------------------------------------------------------------ Live
@dataclass
class _LiveState:
    """What the dock asked for since the last look: the latest corrections (newer replace older), pause, keep,
    and where the user looks."""

    visible: tuple
    updates: dict = field(default_factory=dict)  # pair name -> (labels, touched, whole_plane, image plane)
    paused: bool = False
    keep: bool = False

    def take(self, messages: list) -> None:
        for kind, *values in messages:
            if kind == "update":
                *update, pair_name = values
                self.updates.pop(pair_name, None)  # re-inserted last: the plane painted last is the one shown
                self.updates[pair_name] = tuple(update)
            elif kind == "pause":
                self.paused = bool(values[0])
            elif kind == "keep":
                self.keep = True
            elif kind == "view":
                self.visible = values[0]


def live(job, project_root: str, parent_key: str, image: np.ndarray, visible, context: int):
    """Live mode (live.LiveTrainer) until cancelled: each ("update", labels, touched, whole_plane, image, pair_name)
    message becomes that plane's pair (a stack: one pair per painted plane; the plane painted last is the one
    predicted; `image` is the plane shown before any update). Training runs in bursts, each reported with the labels
    of the visible region (context px around it predicted too) — the forest preview's while it scores better than
    the U-Net. ("keep",) makes the best model so far a version; ("pause", bool). Returns the record of the Keep on
    the way out (None: no step)."""
    from napari_unet.errors import NapariUNetError
    from napari_unet.labels.classes import ADD_CLASS_IN_THE_DOCK
    from napari_unet.project import Project
    from napari_unet.training.live import BURST_SECONDS, ForestPreview, LiveTrainer, live_mask

    project = Project(project_root)
    state = _LiveState(visible)
    trainer = LiveTrainer(project, parent_key)  # a model that fails to load ends Live with its message
    has_pairs = False
    # Until the U-Net beats it on the evaluation set, a forest fitted in a second is what the user sees.
    preview, preview_iou, preview_labels = ForestPreview(multi_class=len(project.classes) > 1), None, None

    burst_started = [time.monotonic()]

    def interrupted() -> bool:
        state.take(job.messages())
        if job.is_cancelled() or state.paused or state.keep:
            return True
        return bool(state.updates) and time.monotonic() - burst_started[0] >= MIN_BURST_SECONDS

    while not job.is_cancelled():
        state.take(job.messages())
        updates, state.updates = state.updates, {}
        try:  # the user's input can be unusable for a while (e.g. only erased): say so, keep listening
            corrected = {}
            for pair_name, (labels, touched, whole_plane, image) in updates.items():
                mask = live_mask(labels, touched, whole_plane=whole_plane)
                pair = project.add_pair(image, mask, name=pair_name, replace=True, add_class=ADD_CLASS_IN_THE_DOCK,
                                        corrected_pixels=int(touched.sum()), source_image=pair_name)
                corrected[pair.name] = touched
            if corrected:
                job.report(("pairs", trainer.reload(corrected)))
                has_pairs = True
                if preview is not None and preview.fit(image, mask):
                    preview_iou, preview_labels = preview.score(trainer.evaluation), preview.predict(image)
            if state.keep:
                state.keep = False
                job.report(("kept", trainer.keep().record))
        except NapariUNetError as error:
            job.report(("message", str(error)))
            has_pairs = has_pairs and trainer.total_steps > 0
        if state.paused or not has_pairs:
            time.sleep(0.1)
            continue
        burst_started[0] = time.monotonic()
        burst = trainer.train(BURST_SECONDS, cancel=interrupted)
        if burst.steps == 0:  # interrupted before its first step: new corrections, Keep or Off come first
            continue
        (y0, y1), (x0, x1) = state.visible[1]
        if preview is not None and preview_iou is not None and burst.iou is not None and preview_iou > burst.iou:
            job.report(("burst", burst, ((y0, y1), (x0, x1)), preview_labels[y0:y1, x0:x1], preview_iou))
            continue
        preview = None if burst.iou is not None and preview_iou is not None else preview  # the U-Net won
        top, left = max(0, y0 - context), max(0, x0 - context)
        labels = trainer.predict(image[top:y1 + context, left:x1 + context], output="labels")
        job.report(("burst", burst, ((y0, y1), (x0, x1)), labels[y0 - top:y1 - top, x0 - left:x1 - left], None))
    if trainer.total_steps:
        return trainer.keep().record
    return None


# Tasks that go on working after a cancel by design: a stopped round still scores and saves its version, Live off
# keeps its best model. The dock never ends a worker for not finishing these after a cancel (only for silence).
FINISH_AFTER_CANCEL = frozenset({"fine_tune_round", "live"})

TASKS = {task.__name__: task for task in (predict_plane, predict_regions, predict_objects_into, warm_up, write_twin,
                                          fine_tune_round, propose_start, revert, export_bioimageio, live)}

"""A corrected volume as a round sees it: judged, and its objects' settings chosen, the way the user predicts it.

A 2-D model segments a volume plane by plane (stitched) or from three views (stacks.py), so what a round changes in
a volume shows only in 3-D: measured on the stardist test volume, a round that raised the IoU of the XY planes on
their own from 0.63 to 0.68 lowered the three-view AP@0.5 from 0.66 to 0.13, because the side views it predicts
from changed too. Scoring the pairs alone (2-D stripes) cannot see that. So when the planes of a volume are added
to a project, the volume is kept with them (a VolumeCheck, in <project>/volumes/<name>/), and every round:

- scores the parent and the new version on the corrected planes of the volume predicted as the user predicts it
  (prediction.predict_volume_map, stacks.volume_objects: three views where stacks.uses_three_views, else
  stitched): on their held-out stripes (training_set.held_out_region, never trained on: volume_pairs keeps its
  side views out of them), or on the planes added for evaluation only. These pixels replace the pairs' 2-D
  stripes in the round's evidence (evidence.compare), so the guard rolls back a round that makes the volume
  worse on the user's corrections;
- chooses a boundary-class version's seed and background thresholds (ModelMetadata) on the volume in 3-D, where
  the labels outside the corrected planes are the prediction the user left as it was: a version inherits its
  parent's, which were chosen for the parent's probabilities (measured: the same version scores three-view
  AP@0.5 0.68 with its parent's thresholds and 0.85 with the ones chosen here).

A volume larger than CHECK_SIDE px in Y or X is kept as a crop that holds the held-out stripes, and CHECK_PLANES
planes of context around the corrected ones: each round predicts it twice (parent and version).
No TensorFlow at import (prediction is imported inside the functions), no Qt.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.storage.files import atomic_write_json, atomic_write_tiff
from napari_unet.storage.records import PairFingerprint
from napari_unet.storage.store import array_sha1
from napari_unet.training.training_set import held_out_region

VOLUME_FORMAT = "napari-unet-volume/1"
# A kept volume's largest side in Y and X, and the planes of context kept above and below the corrected ones.
CHECK_SIDE = 256
CHECK_PLANES = 16
# The units (evidence.unit_counts tiles) a volume's scored planes are cut into: a plane's held-out stripe is a few
# columns wide and a plane of a volume often smaller than evidence.TILE, so 64 px units would leave the paired
# bootstrap one unit per plane (one evaluation plane: no interval at all, and a round that took its IoU from 0.72
# to 0.03 was kept as "no measurable change").
UNIT = 16


@dataclass
class VolumeCheck:
    """A corrected volume kept in a project (a crop of it when large): image (Z, Y, X[, C]), labels (Z, Y, X) as
    they stood when planes were added; `planes` trained on, `evaluation_planes` added for evaluation only (both in
    the kept volume's coordinates); `predicted_elsewhere`: the other planes hold the prediction the user left as it
    was (not known when the labels were not made by Predict); `held_out`: per training plane, its pair's held-out
    stripe (bool (Y, X)); `pairs`: the names of the pairs cut from it (both sets)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    planes: tuple[int, ...]
    evaluation_planes: tuple[int, ...] = ()
    anisotropy: float | None = None
    predicted_elsewhere: bool = False
    held_out: dict[int, np.ndarray] = field(default_factory=dict)
    pairs: tuple[str, ...] = ()
    origin: tuple[int, int, int] = (0, 0, 0)  # where the kept volume starts in the user's (Z, Y, X)

    def fingerprint(self) -> PairFingerprint:
        """What a version's record keeps about the volume it was scored on: hashes (the mask's are the labels')."""
        return PairFingerprint(image_sha1=array_sha1(self.image), mask_sha1=array_sha1(self.labels),
                               shape=tuple(int(n) for n in self.image.shape), name=self.name,
                               extra={"planes": [int(z) for z in self.planes],
                                      "evaluation_planes": [int(z) for z in self.evaluation_planes],
                                      "anisotropy": self.anisotropy})

    def scored(self, held_out: bool) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(plane, truth (Y, X) bool, valid (Y, X) bool) of the pixels a round is scored on: the held-out stripes of
        the training planes (held_out=True), else the planes added for evaluation (their annotated pixels)."""
        rows = []
        for z in (self.planes if held_out else self.evaluation_planes):
            labels = self.labels[z]
            valid = labels != IGNORE_LABEL
            if held_out:
                valid &= self.held_out.get(z, np.zeros(labels.shape, dtype=bool))
            if valid.any():
                rows.append((z, (labels != 0) & valid, valid))
        return rows


def keep_volume(name: str, image: np.ndarray, labels: np.ndarray, planes, *, evaluation_planes=(),
                anisotropy: float | None = None, prediction: np.ndarray | None = None, pairs=(),
                masks: dict | None = None) -> VolumeCheck:
    """The VolumeCheck of a corrected (Z, Y, X) volume: cropped to CHECK_SIDE px around the corrected planes'
    held-out stripes (and CHECK_PLANES planes around them) when larger. masks: {plane: its pair's mask as stored},
    whose held-out stripe (training_set.held_out_region) is the one a round holds out (default: the labels')."""
    image, labels = np.asarray(image), np.asarray(labels)
    planes = sorted({int(z) for z in planes})
    evaluation_planes = sorted({int(z) for z in evaluation_planes} - set(planes))
    corrected = planes + evaluation_planes
    if not corrected:
        raise NapariUNetError("no corrected plane to keep the volume for: add its corrected planes")
    predicted_elsewhere = prediction is not None and np.shape(prediction) == labels.shape
    stripes = {}
    for z in planes:
        mask = (masks or {}).get(z)
        stripes[z] = held_out_region(np.where(labels[z] == IGNORE_LABEL, IGNORE_LABEL, labels[z] != 0)
                                     if mask is None else mask)
    depth, height, width = labels.shape
    z0, z1 = max(0, min(corrected) - CHECK_PLANES), min(depth, max(corrected) + CHECK_PLANES + 1)
    columns = np.flatnonzero(np.any([region.any(axis=0) for region in stripes.values()], axis=0)) if stripes else []
    x1 = int(columns[-1]) + 1 if len(columns) else width
    x0 = max(0, x1 - CHECK_SIDE)
    foreground = np.flatnonzero(((labels[corrected] != 0) & (labels[corrected] != IGNORE_LABEL))[..., x0:x1]
                                .any(axis=(0, 2)))
    centre = int(np.median(foreground)) if foreground.size else height // 2
    y0 = min(max(0, centre - CHECK_SIDE // 2), max(0, height - CHECK_SIDE))
    y1 = min(height, y0 + CHECK_SIDE)
    crop = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    return VolumeCheck(
        name=name, image=np.ascontiguousarray(image[crop]), labels=np.ascontiguousarray(labels[crop]).astype(np.int32),
        planes=tuple(z - z0 for z in planes), evaluation_planes=tuple(z - z0 for z in evaluation_planes),
        anisotropy=None if anisotropy is None else float(anisotropy), predicted_elsewhere=bool(predicted_elsewhere),
        held_out={z - z0: np.ascontiguousarray(region[y0:y1, x0:x1]) for z, region in stripes.items()},
        pairs=tuple(pairs), origin=(z0, y0, x0))


class VolumeStore:
    """The volumes of a project: <folder>/<name>/image.tif, labels.tif and volume.json (written last)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(path.parent.name for path in self.folder.glob("*/volume.json"))

    def save(self, check: VolumeCheck) -> None:
        folder = self.folder / check.name
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_tiff(folder / "image.tif", check.image)
        atomic_write_tiff(folder / "labels.tif", check.labels)
        if check.planes:  # per training plane, in the order of `planes`
            atomic_write_tiff(folder / "held_out.tif", np.stack([
                check.held_out.get(z, np.zeros(check.labels.shape[1:], dtype=bool)) for z in check.planes]).astype(np.uint8))
        atomic_write_json(folder / "volume.json", {
            "format": VOLUME_FORMAT, "planes": list(check.planes), "evaluation_planes": list(check.evaluation_planes),
            "anisotropy": check.anisotropy, "predicted_elsewhere": check.predicted_elsewhere,
            "pairs": list(check.pairs), "origin": list(check.origin)})

    def load(self, name: str) -> VolumeCheck:
        import tifffile

        folder = self.folder / name
        values = json.loads((folder / "volume.json").read_text())
        planes = tuple(int(z) for z in values["planes"])
        held_out = tifffile.imread(folder / "held_out.tif").astype(bool) if planes else ()
        return VolumeCheck(
            name=name, image=tifffile.imread(folder / "image.tif"), labels=tifffile.imread(folder / "labels.tif"),
            planes=planes, evaluation_planes=tuple(int(z) for z in values.get("evaluation_planes", ())),
            anisotropy=values.get("anisotropy"), predicted_elsewhere=bool(values.get("predicted_elsewhere")),
            held_out=dict(zip(planes, np.reshape(held_out, (len(planes), *np.shape(held_out)[-2:])))),
            pairs=tuple(values.get("pairs", ())), origin=tuple(values.get("origin", (0, 0, 0))))

    def remove(self, name: str) -> None:
        (self.folder / name / "volume.json").unlink(missing_ok=True)  # the record first: no record, no volume
        shutil.rmtree(self.folder / name, ignore_errors=True)


def volume_map(model, check: VolumeCheck, precision: str | None = None) -> np.ndarray:
    """The probability map `model` makes the check's objects from (prediction.predict_volume_map)."""
    from napari_unet.inference.prediction import predict_volume_map

    return predict_volume_map(model, check.image, anisotropy=check.anisotropy, precision=precision)


def objects_from(model, check: VolumeCheck, probabilities: np.ndarray, metadata=None) -> np.ndarray:
    """int32 (Z, Y, X) objects of the check's volume from its map, with `metadata`'s settings (default the model's)."""
    from napari_unet.labels.stacks import uses_three_views, volume_objects

    return volume_objects(probabilities, metadata or model.metadata, model.config.n_classes, check.labels.shape[0],
                          three_views=uses_three_views(check.anisotropy))


def check_labels(model, check: VolumeCheck, precision: str | None = None) -> np.ndarray:
    """int32 (Z, Y, X) objects of the check's volume as the user predicts it with `model`."""
    return objects_from(model, check, volume_map(model, check, precision))


def volume_truth(check: VolumeCheck) -> tuple[np.ndarray, np.ndarray]:
    """(objects (Z, Y, X) int, planes that count (Z,) bool): the volume's labels on the planes a post-processing
    choice may look at: the training planes and, when known, those left as predicted; never the evaluation planes."""
    counted = np.zeros(check.labels.shape[0], dtype=bool)
    counted[list(check.planes)] = True
    if check.predicted_elsewhere:
        counted[:] = True
        counted[list(check.evaluation_planes)] = False
    objects = np.where((check.labels == IGNORE_LABEL) | ~counted[:, None, None], 0, check.labels)
    return objects, counted


def keep_side_views(tuned, parent, checks: list[VolumeCheck]) -> bool:
    """Give a round's new version its parent's network for the side views (SegmentationModel.side_views) when a
    corrected volume is seen from three views: corrections on XY planes change what the network predicts on the
    XZ and YZ planes too, and the three views' mean then joins nuclei lying on top of each other. Measured on the
    stardist test volume, one round on three corrected planes (experiments/volume_round_levers.py, seeds 0-2):
    three-view AP@0.5 0.533, 0.468, 0.550 with the round's own side views, 0.655, 0.719, 0.719 with the parent's
    (the parent: 0.661). Records it in the version's card (info["side_views"]); returns whether it did (not without
    such a volume, nor when the networks differ in what they read or give)."""
    from napari_unet.labels.stacks import uses_three_views

    if not any(uses_three_views(check.anisotropy) for check in checks):
        return False
    side = parent.side_view_model
    if side.config != tuned.config:
        return False
    tuned.side_views = side
    inherited = parent.metadata.info.get("side_views") if parent.side_views is not None else None
    tuned.metadata.info["side_views"] = inherited or {
        "network": side.metadata.name or str(side.source),
        "why": "a volume's XZ and YZ planes are predicted with the network the volume rounds started from; the rounds "
               "change the XY planes' network"}
    return True


def choose_volume_post_processing(model, checks: list[VolumeCheck], precision: str | None = None) -> dict | None:
    """Choose a boundary_watershed model's seed and background thresholds on volumes whose other planes hold the
    prediction (3-D AP@0.5 pooled over their objects, adaptation.choose_thresholds); sets
    them on the model. The current setting is kept unless another scores higher. Returns {"seed_threshold",
    "background_threshold", "ap50", "before_ap50", "n_objects"}, or None when nothing could be chosen."""
    from dataclasses import replace

    from napari_unet.scoring.metrics import IOU_THRESHOLDS, instance_counts, instance_scores
    from napari_unet.training.adaptation import choose_thresholds

    metadata = model.metadata
    checks = [check for check in checks if check.predicted_elsewhere]
    if metadata.instance_method != "boundary_watershed" or not checks:
        return None
    volumes = []
    for check in checks:
        truth, counted = volume_truth(check)
        if truth.any():
            volumes.append((check, volume_map(model, check, precision), truth, counted))
    if not volumes:
        return None

    def ap50(seed, background) -> float:
        settings = replace(metadata, seed_threshold=seed, background_threshold=background)
        counts = np.zeros((len(IOU_THRESHOLDS), 3), dtype=np.int64)
        for check, probabilities, truth, counted in volumes:
            objects = objects_from(model, check, probabilities, settings)
            counts += instance_counts(truth, np.where(counted[:, None, None], objects, 0))
        return float(instance_scores(counts)["ap50"])

    return choose_thresholds(model, ap50, n_objects=sum(len(np.unique(truth)) - 1 for _, _, truth, _ in volumes))

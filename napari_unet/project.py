"""The loop, once: a project folder with training pairs, evaluation pairs, model versions and rounds.

    <project>/project.json              which model the project started from, and its classes (classes.py;
                                        none listed: one class, any label > 0)
    <project>/images, masks, pairs/     training pairs (training_set.py; an old training-set folder is a
                                        project with no rounds)
    <project>/evaluation/images, masks, pairs/   evaluation pairs: scored every round, never trained on
    <project>/models/                   the versions made here (store.py: atomic, fsynced, with records)
    <project>/volumes/<name>/           a volume whose corrected planes are pairs (volume_checks.py): rounds
                                        are scored on it, and choose objects' settings, as it is predicted in 3-D
    <project>/rounds/0001.json …        one record per round, written last (the round's commit marker)

`Project.round()` is the only place a round runs: snapshot the pairs → fine-tune → score parent and
new version on the evaluation pairs (or, without any, on the held-out stripes of the training pairs)
→ guard → keep or roll back → record. The dock, the CLI and the demo call it and present its record.

- "Did it help?" is evidence.compare (a paired bootstrap over evaluation tiles), nothing else.
- The guard rolls a round back when the new version predicts nothing or everything on the evaluation
  pixels, collapses to one class, or scores below its parent by more than the noise. The parent stays
  active; the failed version stays in models/, marked, for inspection.
- The active version is the version of the last kept round (else the start model): derived from the
  round records, so there is no second copy of it to get out of step after a crash.
- Several classes: label value k is class k; the first round from a model without the project's classes gives
  it a new output layer (model.with_classes); the rule and the guard work on the classes' mean IoU and, between
  versions that both have the classes, on each class (a class measurably worse rolls the round back).
- Volumes (add_volume): the corrected planes of a volume are pairs (volume_pairs.py), and the volume is kept, so
  the pixels a round is scored on from its planes are scored on the volume predicted as the user predicts it
  (three views or stitched), not on the planes alone; a boundary-class version's seed and background thresholds
  are chosen there too (volume_checks.py). One class only: with several classes they are scored as planes.
- Lineage: every version's record holds its parent, the content hashes of the exact pairs it trained
  on, settings, seed and package version; `retrain(n)` repeats round n and says how close it came.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock, Timeout

from napari_unet._version import __version__
from napari_unet.errors import NapariUNetError
from napari_unet.labels.classes import SegmentationClass, check_classes, check_label_values, class_truth, describe
from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.scoring.evidence import class_unit_counts, compare, pooled, stored_interval, unit_counts
from napari_unet.storage.files import atomic_write_json
from napari_unet.storage.records import (
    ROUND_FORMAT,
    PairFingerprint,
    RoundEvaluation,
    RoundRecord,
    RoundTraining,
    VersionRecord,
)
from napari_unet.storage.store import ModelStore, array_sha1, pair_fingerprint
from napari_unet.training.adaptation import adapt, choose_post_processing, error_focus, with_channels_of
from napari_unet.training.training_set import HELD_OUT_FRACTION, TrainingSet, pair_file_name, restrict_to_corrections
from napari_unet.training.volume_checks import UNIT as VOLUME_UNIT
from napari_unet.training.volume_checks import (
    VolumeCheck,
    VolumeStore,
    check_labels,
    choose_volume_post_processing,
    keep_side_views,
    keep_volume,
)

PROJECT_FORMAT = "napari-unet-project/1"
# Share of evaluation pixels predicted as foreground above which a version "predicts everything".
ALL_FOREGROUND = 0.98


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Evaluation:
    """What a round is scored on: per image the raw image, the truth (bool) and the pixels that count."""

    source: str  # "evaluation pairs" or "held-out stripes"
    names: list[str]
    images: list[np.ndarray]
    truths: list[np.ndarray]
    valid: list[np.ndarray]
    fingerprints: list[PairFingerprint] = field(default_factory=list)
    # Several classes: their names (truths then hold class ids 0..n); [] for one class (truths are bool).
    class_names: list[str] = field(default_factory=list)
    # Volumes scored in 3-D (volume_checks.py): each with its (plane, truth, valid) rows, after the images above.
    volumes: list[tuple[VolumeCheck, list]] = field(default_factory=list)
    # Every volume of the project (also those with nothing to score here): where objects' settings are chosen.
    checks: list[VolumeCheck] = field(default_factory=list)

    @property
    def described(self) -> str:
        """What the round is scored on, as a sentence part ("the held-out stripes …")."""
        if not self.volumes:
            return f"the {self.source}"
        return f"the {self.source} (of volumes: their planes as the volume is predicted in 3-D)"

    def all_truths(self) -> list[np.ndarray]:
        """The truths of the images, then of the volumes' scored planes: the order score_evaluation's labels take."""
        return list(self.truths) + [truth for _, rows in self.volumes for _, truth, _ in rows]

    def all_valid(self) -> list[np.ndarray]:
        return list(self.valid) + [valid for _, rows in self.volumes for _, _, valid in rows]


@dataclass
class RoundOutcome:
    """A finished round: its record (what the log, the CLI's --json and the dock show) and the new model."""

    record: RoundRecord
    model: object  # SegmentationModel of the new version (kept or not)

    @property
    def kept(self) -> bool:
        return self.record.kept

    @property
    def reason(self) -> str:
        return self.record.reason

    @property
    def version(self) -> str:
        return self.record.version


class Project:
    """A project folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.training = TrainingSet(self.root)
        self.evaluation = TrainingSet(self.root / "evaluation")
        self.store = ModelStore(self.root / "models")
        self.volumes = VolumeStore(self.root / "volumes")

    # ------------------------------------------------------------------ opening
    @classmethod
    def init(cls, root: str | os.PathLike, model: str, classes: list[SegmentationClass] | None = None) -> "Project":
        """Make `root` a project starting from `model` (a shipped name, stored version or .keras path).

        classes: what the user paints (label value k = classes[k - 1]); None: one class, any label > 0.
        An existing training-set folder keeps its pairs; an existing project is refused.
        """
        from napari_unet.storage.registry import load_model

        project = cls(root)
        if project.settings_path.exists():
            raise NapariUNetError(f"'{project.root}' is already a project (started from '{project.start_model}'): "
                                  "use it as it is, or choose another folder")
        if project.root.exists() and not project.root.is_dir():
            raise NapariUNetError(f"'{project.root}' is a file: a project is a folder, choose another path")
        if classes is not None:
            check_classes(classes)
        load_model(model)  # fail now, not at the first round
        if Path(str(model)).suffix == ".keras":
            model = str(Path(model).resolve())
        settings = {"format": PROJECT_FORMAT, "start_model": str(model), "created": _now(),
                    "package_version": __version__}
        if classes is not None:
            settings["classes"] = [c.to_dict() for c in classes]
        try:
            atomic_write_json(project.settings_path, settings)
        except OSError as exc:
            raise NapariUNetError(f"cannot create project '{project.root}': {exc.strerror or exc}") from exc
        return project

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Project":
        """An existing project, or an old training-set folder (a project with no rounds and no start model)."""
        project = cls(root)
        if not project.root.is_dir():
            raise NapariUNetError(f"no project at '{project.root}': create one with "
                                  f"'napari-unet project init {project.root} -m MODEL'")
        if not project.settings_path.exists() and not project.training.records_dir.is_dir():
            raise NapariUNetError(f"'{project.root}' is not a napari-unet project (no project.json, no pairs/): "
                                  f"create one with 'napari-unet project init {project.root} -m MODEL'")
        return project

    @property
    def settings_path(self) -> Path:
        return self.root / "project.json"

    @property
    def rounds_dir(self) -> Path:
        return self.root / "rounds"

    def _settings(self) -> dict:
        try:
            return json.loads(self.settings_path.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def start_model(self) -> str | None:
        return self._settings().get("start_model")

    @property
    def classes(self) -> list[SegmentationClass]:
        """The classes the user paints, label value k = classes[k - 1]; a project that lists none has one."""
        listed = self._settings().get("classes") or [{"name": "foreground"}]
        return [SegmentationClass.from_dict(values) for values in listed]

    def set_classes(self, classes: list[SegmentationClass]) -> list[SegmentationClass]:
        """Declare the project's classes. Once pairs exist, classes may only be added after the existing ones (and
        their colours or object flags changed), so no painted label changes meaning; every stored pair must hold
        only the new classes' values (a pair painted for one class may hold instance ids)."""
        check_classes(classes)
        current = self.classes
        painted = bool(self.training.pairs() or self.evaluation.pairs())
        if painted and len(current) > 1 and [c.name for c in classes[:len(current)]] != [c.name for c in current]:
            raise NapariUNetError(
                f"project '{self.root}' has pairs painted with its classes ({describe(current)}): keep them in this "
                "order and add new classes after them, or start a new project"
            )
        if not self.settings_path.exists():
            raise NapariUNetError(f"'{self.root}' has no project.json: create it with "
                                  f"'napari-unet project init {self.root} -m MODEL --classes …'")
        former = sorted({old for old, _ in self.renamed} & {c.name for c in classes})
        if former:
            raise NapariUNetError(f"class name(s) {', '.join(repr(n) for n in former)} belonged to a class of project "
                                  f"'{self.root}' before it was renamed: choose another name, so that no version reads "
                                  "one class as another")
        for folder in (self.training, self.evaluation):  # pairs painted for one class may hold instance ids
            for pair in folder.pairs():
                check_label_values(folder.load(pair.name)[1], classes, pair.name,
                                   fix="repaint that pair with class values, or remove it first")
        with self._one_round_at_a_time():
            atomic_write_json(self.settings_path, {**self._settings(), "classes": [c.to_dict() for c in classes]})
        return self.classes

    @property
    def renamed(self) -> list[tuple[str, str]]:
        """(old name, new name) of every class renamed in this project, oldest first."""
        return [(str(old), str(new)) for old, new in self._settings().get("renamed", [])]

    def edit_classes(self, *, rename: dict[str, str] | None = None, colours: dict[str, str] | None = None,
                     objects: list[str] = (), regions: list[str] = ()) -> str:
        """Rename, recolour, or make objects or regions of existing classes: what each label value means stays, so
        painted pairs stay valid. A renamed class keeps what the versions learned for it (load_model reads their
        classes under the new names); a name a class had before is not given to another. Returns "" or one line
        saying what a changed kind means for the versions made so far (they keep the kind they were trained with
        until the next round)."""
        rename, colours = dict(rename or {}), dict(colours or {})
        current = self.classes
        names = [c.name for c in current]
        unknown = sorted(({*rename, *colours, *objects, *regions}) - set(names))
        if unknown:
            raise NapariUNetError(f"no class named {', '.join(repr(n) for n in unknown)} in project '{self.root}' "
                                  f"({describe(current)}): name one of its classes")
        both = sorted(set(objects) & set(regions))
        if both:
            raise NapariUNetError(f"class(es) {', '.join(both)} named both objects and regions: name each once")
        if (objects or regions) and len(current) < 2:
            raise NapariUNetError(f"project '{self.root}' has one class, whose objects its model separates by its own "
                                  "rule: declare the project's classes first to say which are objects or regions")
        used = {old for old, _ in self.renamed}
        reused = sorted(new for old, new in rename.items() if new != old and (new in used or new in names))
        if reused:
            raise NapariUNetError(f"class name(s) {', '.join(repr(n) for n in reused)} already used in project "
                                  f"'{self.root}' (by a class, or by one before it was renamed): choose another name, "
                                  "so that no version reads one class as another")
        edited = [SegmentationClass(rename.get(c.name, c.name), colours.get(c.name, c.colour),
                                    True if c.name in objects else False if c.name in regions else c.objects)
                  for c in current]
        check_classes(edited)
        renames = [(old, new) for old, new in rename.items() if new != old]
        with self._one_round_at_a_time():
            settings = self._settings()
            if not settings:
                raise NapariUNetError(f"'{self.root}' has no project.json: create it with "
                                      f"'napari-unet project init {self.root} -m MODEL --classes …'")
            settings["classes"] = [c.to_dict() for c in edited]
            if renames:
                settings["renamed"] = [*settings.get("renamed", []), *[list(pair) for pair in renames]]
            atomic_write_json(self.settings_path, settings)
        changed = [(new.name, new.objects) for old, new in zip(current, edited) if old.objects != new.objects]
        if not changed or not self.rounds():
            return ""
        said = "; ".join(f"'{name}' is now {'an object class' if objects_now else 'a region'}"
                         for name, objects_now in changed)
        return (f"{said}: the versions made so far keep treating {'it' if len(changed) == 1 else 'them'} as before "
                "until the next round trains one that does (a model that separates objects with boundary outputs gets "
                "a new output layer for it, and that round is judged on the mean IoU of the classes)")

    # ------------------------------------------------------------------ pairs
    def add_pair(self, image: np.ndarray, mask: np.ndarray, *, evaluation: bool = False, name: str = "pair",
                 source_image: str = "", source_labels: str = "", sparse: bool = False,
                 corrected_pixels: int | None = None, replace: bool = False, add_class: str = ""):
        """Store a training pair, or an evaluation pair (never trained on; > 0 is foreground).

        replace: update the pair called `name` (live mode: one pair per plane); corrected_pixels: how many pixels
        the user changed, recorded with the pair. Several classes: a label value beyond them is refused, in one line
        ending with `add_class`, how to declare one more class in the face the user is in (default: the command
        line's; the dock's is classes.ADD_CLASS_IN_THE_DOCK)."""
        check_label_values(mask, self.classes, source_labels or name,
                           fix=add_class or f"declare one more class ('napari-unet project classes {self.root} --add NAME')")
        if evaluation:
            mask = np.asarray(mask)
            if np.shape(image)[:2] == mask.shape and not np.any((mask > 0) & (mask != IGNORE_LABEL)):
                raise NapariUNetError(
                    f"evaluation mask '{source_labels or name}' has no foreground: an evaluation pair must show "
                    "the structures to find (paint them), or IoU and Dice mean nothing"
                )
        target = self.evaluation if evaluation else self.training
        return target.add(image, mask, name=name, source_image=source_image, source_labels=source_labels,
                          sparse=sparse and not evaluation, corrected_pixels=corrected_pixels, replace=replace)

    def add_volume(self, image: np.ndarray, labels: np.ndarray, planes, *, name: str, anisotropy: float | None = None,
                   prediction: np.ndarray | None = None, evaluation: bool = False, only_corrected: bool = False,
                   margin: int = 16, source_labels: str = "", add_class: str = "") -> list:
        """The corrected `planes` of a (Z, Y, X) volume as pairs `<name>_z7` (and its side views `<name>_xz_y31` where
        uses_three_views(anisotropy): volume_pairs.py), and the volume kept for scoring rounds (volume_checks.py).
        Returns the VolumePairs added to the set asked for.

        prediction: what the labels were corrected from (the side views are then annotated on the planes left as
        predicted too). evaluation: the planes become evaluation pairs (never trained on). A plane already in the
        other set stays there only. The volume's side views are training pairs, rebuilt whenever planes are added
        (they run through other rows), from every training plane and never showing an evaluation plane.
        only_corrected: an XY pair keeps only the pixels within `margin` px of the changes (needs `prediction`)."""
        from napari_unet.training.volume_pairs import volume_pairs

        image, labels = np.asarray(image), np.asarray(labels)
        if only_corrected and prediction is None:
            raise NapariUNetError("'train only where I corrected' needs the original prediction, but these labels were "
                                  "not made by Predict: predict the volume first, correct that layer, or switch the "
                                  "option off")
        this_set, other_set = (self.evaluation, self.training) if evaluation else (self.training, self.evaluation)
        taken = set(other_set.names())
        plane_name = lambda z: pair_file_name(f"{name}_z{z}")  # noqa: E731
        own_planes = [z for z in sorted({int(z) for z in planes}) if plane_name(z) not in taken]
        if not own_planes:
            return []
        added = []
        for pair in volume_pairs(image, labels, own_planes):  # the XY planes
            mask, sparse = pair.mask, bool(np.any(pair.mask == IGNORE_LABEL))
            if only_corrected:
                mask = restrict_to_corrections(mask, prediction[pair.position], labels[pair.position], margin)
                sparse = True
            self.add_pair(pair.image, mask, evaluation=evaluation, name=plane_name(pair.position), replace=True,
                          source_image=name, source_labels=source_labels, sparse=sparse, add_class=add_class)
            added.append(pair)
        training_names, evaluation_names = set(self.training.names()), set(self.evaluation.names())
        in_training = [z for z in range(labels.shape[0]) if plane_name(z) in training_names]
        in_evaluation = [z for z in range(labels.shape[0]) if plane_name(z) in evaluation_names]
        side_prefixes = tuple(pair_file_name(f"{name}_{view}") + "_" for view in ("xz", "yz"))
        for pair_name in training_names:
            if pair_name.startswith(side_prefixes):
                self.training.remove(pair_name)
        if in_training:
            for pair in volume_pairs(image, labels, in_training, anisotropy, prediction=prediction,
                                     held_back=in_evaluation):
                if pair.view != "xy":
                    self.add_pair(pair.image, pair.mask, name=pair_file_name(f"{name}_{pair.suffix}"), replace=True,
                                  source_image=name, source_labels=source_labels,
                                  sparse=bool(np.any(pair.mask == IGNORE_LABEL)), add_class=add_class)
                    added += [] if evaluation else [pair]
        prefix = pair_file_name(name) + "_"
        pairs = sorted(n for n in set(self.training.names()) | evaluation_names if n.startswith(prefix))
        masks = {z: self.training.load(plane_name(z))[1] for z in in_training}
        self.volumes.save(keep_volume(pair_file_name(name), image, labels, in_training, evaluation_planes=in_evaluation,
                                      anisotropy=anisotropy, prediction=prediction, pairs=pairs, masks=masks))
        return added

    def volume_checks(self) -> list[VolumeCheck]:
        """The project's kept volumes (volume_checks.py); none with several classes (scored as planes there)."""
        if len(self.classes) > 1:
            return []
        return [self.volumes.load(name) for name in self.volumes.names()]

    # ------------------------------------------------------------------ rounds and versions
    def rounds(self) -> list[RoundRecord]:
        """Records of all finished rounds, oldest first."""
        return sorted((record for _, record in self._round_files()), key=lambda r: r.round)

    def _round_files(self) -> list[tuple[Path, RoundRecord]]:
        """(file, record) of each round in the log; a torn or foreign file is not a round."""
        if not self.rounds_dir.is_dir():
            return []
        found = []
        for path in sorted(self.rounds_dir.glob("[0-9]*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                values = json.loads(path.read_text())
                if isinstance(values, dict) and values.get("format") == ROUND_FORMAT:
                    found.append((path, RoundRecord.from_json(values)))
        return found

    @property
    def active(self) -> str | None:
        """The version of the last kept round, else the start model."""
        for record in reversed(self.rounds()):
            if record.kept and (self.store.has(record.version) or record.version == self.start_model):
                return record.version
        return self.start_model

    def load_model(self, key: str):
        """A version made in this project, a shipped model, a version in the user's store, or a .keras path; its
        classes under the names the project gives them now (a class renamed after the version was made)."""
        from napari_unet.model import with_renamed_classes
        from napari_unet.storage.registry import load_model

        return with_renamed_classes(load_model(key, self.store, ModelStore()), self.renamed)

    def status(self) -> dict:
        return {"project": str(self.root), "start_model": self.start_model, "active": self.active,
                "classes": [c.to_dict() for c in self.classes],
                "training_pairs": len(self.training.pairs()), "evaluation_pairs": len(self.evaluation.pairs()),
                "rounds": [record.public_json() for record in self.rounds()]}

    # ------------------------------------------------------------------ the round
    @contextlib.contextmanager
    def _one_round_at_a_time(self):
        """An exclusive OS lock on <project>/.round.lock (filelock): a second round, from any thread or process,
        is refused at once. The OS releases the lock when its process dies, so a round that was killed never blocks
        the next one; the empty file it leaves is not a lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / ".round.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise NapariUNetError(
                f"a round is already running on project '{self.root}' (another process or window holds "
                f"'{lock.lock_file}'): wait for it to finish or stop it, then start the next round"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _evaluation_pairs(self, checks: list[VolumeCheck] = ()) -> Evaluation | None:
        """The evaluation pairs (None: there are none); those cut from a volume with evaluation planes are scored in
        that volume (Evaluation.volumes) instead of alone."""
        pairs = self.evaluation.pairs()
        if not pairs:
            return None
        scored = [(check, check.scored(held_out=False)) for check in checks if check.evaluation_planes]
        in_volumes = {name for check, _ in scored for name in check.pairs}
        pairs = [pair for pair in pairs if pair.name not in in_volumes]
        classes = self.classes
        images, truths, valid, fingerprints = [], [], [], []
        for pair in pairs:
            image, mask = self.evaluation.load(pair.name)
            images.append(image)
            if len(classes) > 1:  # class ids; 255 (not annotated) does not count
                truths.append(class_truth(mask, len(classes)))
                valid.append(mask != IGNORE_LABEL)
            else:
                truths.append(mask > 0)
                valid.append(np.ones(mask.shape, dtype=bool))
            fingerprints.append(pair_fingerprint(image, mask, pair.name))
        return Evaluation("evaluation pairs", [p.name for p in pairs], images, truths, valid,
                          fingerprints + [check.fingerprint() for check, _ in scored],
                          [c.name for c in classes] if len(classes) > 1 else [], volumes=scored, checks=list(checks))

    def snapshot(self, held_out_stripes: bool | None = None):
        """(training data, evaluation) read once: the training pairs as they are now, and what the round is
        scored on — the evaluation pairs, else the held-out stripes, which are then left out of training.

        held_out_stripes: force one of the two (a repeated round uses what it used); None: decide as above.
        """
        if not self.training.pairs():
            raise NapariUNetError(
                f"project '{self.root}' has no training pairs: correct a prediction and add it ('Add to training "
                f"set' in the dock, or 'napari-unet project add {self.root} --image IMG --mask MASK')"
            )
        checks = self.volume_checks()
        evaluation = None if held_out_stripes else self._evaluation_pairs(checks)
        if evaluation is None and held_out_stripes is False:
            raise NapariUNetError(f"project '{self.root}' has no evaluation pairs any more: add them again first")
        data = self.training.split(0.0 if evaluation else HELD_OUT_FRACTION)
        if evaluation is None:
            classes = self.classes
            if len(classes) > 1:
                evaluation = Evaluation("held-out stripes", list(data.names), data.images,
                                        [class_truth(mask, len(classes)) for mask in data.masks],
                                        [region & (mask != IGNORE_LABEL) for region, mask in zip(data.held_out, data.masks)],
                                        class_names=[c.name for c in classes])
            else:  # a volume's pairs are scored in the volume (its XY planes' stripes; its side views not at all)
                scored = [(check, check.scored(held_out=True)) for check in checks if check.planes]
                in_volumes = {name for check, _ in scored for name in check.pairs}
                alone = [index for index, name in enumerate(data.names) if name not in in_volumes]
                evaluation = Evaluation("held-out stripes", [data.names[i] for i in alone], [data.images[i] for i in alone],
                                        [data.truths[i] for i in alone], [data.held_out[i] for i in alone],
                                        [check.fingerprint() for check, _ in scored], volumes=scored,
                                        checks=checks)
        return data, evaluation

    def masks_for(self, model, masks: list[np.ndarray]) -> list[np.ndarray]:
        """The training masks as `model` would draw them, for adaptation.adapt to judge how well it starts: with
        several classes and a model without them, only the class it finds (its class's name, else the first) is
        foreground; the other classes are background to it."""
        classes = [c.name for c in self.classes]
        if len(classes) < 2 or model.metadata.instance_method == "classes":
            return masks
        known = model.metadata.classes[0]
        value = classes.index(known) + 1 if known in classes else 1
        return [np.where(mask == IGNORE_LABEL, IGNORE_LABEL, mask == value).astype(np.uint8) for mask in masks]

    def with_project_classes(self, model, seed: int = 0):
        """`model` ready to learn the project's classes: as it is for one class or when it has them, else with a
        new output layer for them (its encoder and decoder kept)."""
        from napari_unet.model import with_classes

        classes = self.classes
        if len(classes) < 2:
            return model
        return with_classes(model, [c.name for c in classes], [c.name for c in classes if c.objects], seed=seed)

    def round(self, config=None, *, model: str | None = None, progress: Callable | None = None,
              cancel: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None) -> RoundOutcome:
        """Run one round (see the module docstring); returns its record and the new model.

        config: a train.TrainConfig (default: TrainConfig(), the one place defaults live).
        model: the parent when the project has none yet (an old training-set folder).
        progress/cancel: as for finetune(); cancel ends training early and the round still finishes.
        """
        from napari_unet.training import TrainConfig, finetune

        config = config or TrainConfig()
        config.check()
        log = log or (lambda text: None)
        with self._one_round_at_a_time():
            started = time.monotonic()
            parent_key = self.active or model
            if not parent_key:
                raise NapariUNetError(f"project '{self.root}' has no model to start from: give one "
                                      f"('napari-unet project init {self.root} -m MODEL')")
            data, evaluation = self.snapshot()
            parent = with_channels_of(self.load_model(parent_key), data.images)
            log(f"scoring '{parent_key}' on {evaluation.described} …")
            before_units, _ = score_evaluation(parent, evaluation)
            corrections = self.masks_for(parent, data.train_masks)
            start, config, adaptation = adapt(parent, data.images, corrections, config, log=log)
            focus = error_focus(start, data.images, corrections, data.names, config, adaptation)
            start = self.with_project_classes(start, seed=config.seed)
            if "new_output_layer" in start.metadata.info and "fine_tuned_from" not in start.metadata.info:
                log(f"'{parent_key}' has no output for the classes {describe(self.classes)}: a new output layer "
                    "learns them on its encoder and decoder")
            log(f"fine-tuning '{parent_key}' on {len(data.names)} pair(s) …")
            tuned, history = finetune(start, data.images, data.train_masks, config=config, names=data.names,
                                      progress=progress, cancel=cancel, focus=focus)
            return self._conclude(parent_key, parent, tuned, history, data, evaluation, before_units, config,
                                  started, log, adaptation)

    def keep(self, tuned, history, *, parent_key: str, config, log: Callable[[str], None] | None = None,
             adaptation: dict | None = None) -> RoundOutcome:
        """Make a model trained outside round() (live mode) a version, through the same scoring, guard and
        record as a round: scored against `parent_key` on the evaluation set as the pairs are now.
        adaptation: what adaptation.adapt found and did before training, for the record."""
        log = log or (lambda text: None)
        with self._one_round_at_a_time():
            started = time.monotonic()
            data, evaluation = self.snapshot()
            log(f"scoring '{parent_key}' on {evaluation.described} …")
            parent = self.load_model(parent_key)
            before_units, _ = score_evaluation(parent, evaluation)
            return self._conclude(parent_key, parent, tuned, history, data, evaluation, before_units, config,
                                  started, log, adaptation)

    def _conclude(self, parent_key: str, parent, tuned, history, data, evaluation: "Evaluation", before_units, config,
                  started: float, log: Callable[[str], None], adaptation: dict | None) -> RoundOutcome:
        """Score the new version, guard, save it (kept or marked rolled back) and write the round's record."""
        if adaptation and adaptation.get("new_domain"):
            log("choosing how objects are separated on your corrections …")
            chosen = choose_post_processing(tuned, *self._instance_truth(data, evaluation))
            if chosen:
                adaptation = {**adaptation, "post_processing": chosen}
        if evaluation.checks:
            if keep_side_views(tuned, parent, evaluation.checks):
                log("the volumes' side views stay with the network they started from")
            log("choosing how objects are separated in the corrected volumes …")
            chosen = choose_volume_post_processing(tuned, evaluation.checks)
            if chosen:
                adaptation = {**(adaptation or {}), "volume_post_processing": chosen}
        if adaptation:
            tuned.metadata.info["adaptation"] = adaptation
        fingerprints = [pair_fingerprint(i, m, n) for i, m, n in zip(data.images, data.train_masks, data.names)]
        log("scoring the new version …")
        after_units, after_labels = score_evaluation(tuned, evaluation)
        comparison = compare(before_units, after_units)
        failure = _guard(tuned, after_labels, evaluation, comparison)
        number = _next_number(self.rounds())
        kept = failure is None
        reason = failure or _verdict_sentence(comparison, evaluation)
        settings = history.settings  # as finetune resolved them (patch size, augmentation for the model)
        version = self.store.save_version(
            tuned, history, parent=Path(parent_key).stem if parent_key.endswith(".keras") else parent_key,
            training_pairs=fingerprints, settings=settings,
            metrics={"eval_iou": comparison.after["iou"], "eval_dice": comparison.after["dice"],
                     "eval_pixel_error": comparison.after["pixel_error"],
                     **({"eval_iou_per_class": {name: c["after"]["iou"] for name, c in
                                                zip(evaluation.class_names, comparison.per_class)}}
                        if comparison.per_class else {})},
            extra={"project_round": number, "kept": kept, "failed_reason": failure, "seed": config.seed,
                   "package_version": __version__, "evaluation_source": evaluation.source,
                   "evaluation_pairs": evaluation.fingerprints},
        ).name
        record = RoundRecord(
            round=number, parent=parent_key, version=version, kept=kept, reason=reason,
            eval=_eval_record(comparison, evaluation, "rolled back" if failure else None),
            seconds=round(time.monotonic() - started, 2),
            training=RoundTraining(steps=history.steps, seconds=round(history.seconds, 2),
                                   stopped_reason=history.stopped_reason, pairs=tuple(data.names), settings=settings),
            adaptation=adaptation or {}, created=_now(),
        )
        atomic_write_json(self.rounds_dir / f"{number:04d}.json", record.to_json())  # last: the commit marker
        log(reason)
        return RoundOutcome(record, tuned)

    def _instance_truth(self, data, evaluation: "Evaluation") -> tuple[list, list]:
        """(images, the user's masks as painted, instance ids kept) to choose post-processing on: the evaluation
        pairs, else the training pairs whole. The held-out stripes hold too few objects to tell two thresholds
        apart (on brightfield, 66 objects chose what unseen images did not; the 295 of the whole pairs chose what
        382 objects of unseen images chose: benchmarks/new_domain.py)."""
        if evaluation.source != "evaluation pairs":
            return data.images, data.masks
        loaded = [self.evaluation.load(name) for name in evaluation.names]
        return [image for image, _ in loaded], [mask for _, mask in loaded]

    def revert(self, version: str) -> RoundRecord:
        """Make an earlier version (or the start model) active again, as a record in the log.

        Nothing is deleted; the record's eval compares the active version with `version` on the same
        evaluation set, so the log shows what the user gave up or regained.
        """
        known = {r.version for r in self.rounds()} | {self.start_model}
        if version not in known:
            raise NapariUNetError(f"'{version}' was not made in project '{self.root}' and is not its start model: "
                                  f"choose one of {', '.join(sorted(v for v in known if v))}")
        with self._one_round_at_a_time():
            rounds = self.rounds()
            # A project opened from an old folder has no start model: before any kept round, the model its
            # first round started from is what is in use.
            active = self.active or (rounds[0].parent if rounds else None)
            if active is None:
                raise NapariUNetError(f"project '{self.root}' has no active model to revert from: run a round first")
            _, evaluation = self.snapshot()
            before_units, _ = score_evaluation(self.load_model(active), evaluation)
            after_units, _ = score_evaluation(self.load_model(version), evaluation)
            comparison = compare(before_units, after_units)
            number = _next_number(rounds)
            record = RoundRecord(round=number, kind="revert", parent=active, version=version, kept=True,
                                 reason=f"Reverted to '{version}' by the user; it is active again.",
                                 eval=_eval_record(comparison, evaluation), seconds=0.0, created=_now())
            atomic_write_json(self.rounds_dir / f"{number:04d}.json", record.to_json())
            return record

    def rename_version(self, old: str, new: str) -> VersionRecord:
        """Rename a version made here; the round log follows, so the lineage and the active version hold."""
        with self._one_round_at_a_time():
            record = self.store.rename(old, new)
            for path, round_record in self._round_files():
                renamed = replace(round_record, version=new if round_record.version == old else round_record.version,
                                  parent=new if round_record.parent == old else round_record.parent)
                if renamed != round_record:
                    atomic_write_json(path, renamed.to_json())
            return record

    # ------------------------------------------------------------------ lineage
    def retrain(self, number: int, *, progress: Callable | None = None) -> dict:
        """Repeat round `number` from its records (same parent, pairs, settings, seed and step count) and
        report how close the new result comes to the recorded version."""
        from napari_unet.training import TrainConfig, finetune

        record = next((r for r in self.rounds() if r.round == number), None)
        if record is None:
            raise NapariUNetError(f"project '{self.root}' has no round {number}: "
                                  f"rounds are {[r.round for r in self.rounds()] or 'none yet'}")
        if record.is_revert:
            raise NapariUNetError(f"round {number} of project '{self.root}' is a revert, not training: nothing to repeat")
        version_record = self.store.record(record.version)
        if version_record is None:
            raise NapariUNetError(f"version '{record.version}' of round {number} is no longer in the model store of "
                                  f"project '{self.root}' (deleted?): the round cannot be repeated")
        data, evaluation = self.snapshot(version_record.evaluation_source == "held-out stripes")
        available = {(array_sha1(image), array_sha1(mask)): (name, image, mask)
                     for name, image, mask in zip(data.names, data.images, data.train_masks)}
        chosen = []
        for entry in version_record.training_pairs:
            key = (entry.image_sha1, entry.mask_sha1)
            if key not in available:
                raise NapariUNetError(
                    f"pair '{entry.name or '?'}' of round {number} is no longer in the project as it was "
                    "(removed or changed): the round cannot be repeated exactly"
                )
            chosen.append(available[key])
        config = replace(_config_from_settings(TrainConfig, record.training.settings), seconds=None)
        steps = int(record.training.steps)
        done = [0]

        def count(event) -> None:
            done[0] = event.step
            if progress is not None:
                progress(event)

        parent = with_channels_of(self.load_model(record.parent), [c[1] for c in chosen])
        parent, config, _ = adapt(parent, [c[1] for c in chosen], self.masks_for(parent, [c[2] for c in chosen]), config)
        parent = self.with_project_classes(parent, seed=config.seed)
        config = replace(config, seconds=None)  # the recorded step count ends it, not the clock
        tuned, history = finetune(parent, [c[1] for c in chosen], [c[2] for c in chosen], config=config,
                                  names=[c[0] for c in chosen], progress=count, cancel=lambda: done[0] >= steps)
        recorded = self.store.load(record.version)
        units, _ = score_evaluation(tuned, evaluation)
        weights_difference = max(float(np.max(np.abs(a - b))) for a, b in
                                 zip(tuned.keras_model.get_weights(), recorded.keras_model.get_weights()))
        after = _rounded(pooled(units))
        return {"round": number, "version": record.version, "steps": history.steps, "recorded_steps": steps,
                "eval_recorded": record.eval.after, "eval_retrained": after,
                "iou_difference": round(after["iou"] - record.eval.after["iou"], 4),
                "max_weight_difference": weights_difference}


# ---------------------------------------------------------------------- helpers


def _rounded(scores: dict) -> dict:
    return {key: round(float(scores[key]), 4) for key in ("iou", "dice", "pixel_error")}


def _next_number(rounds: list[RoundRecord]) -> int:
    return rounds[-1].round + 1 if rounds else 1


def _eval_record(comparison, evaluation: Evaluation, verdict: str | None = None) -> RoundEvaluation:
    """What a log record says about the evaluation: scores before and after, the evidence, the verdict (and, with
    several classes, the same per class)."""
    classes = {name: {"before": {k: round(float(v), 4) for k, v in c["before"].items()},
                      "after": {k: round(float(v), 4) for k, v in c["after"].items()},
                      "delta_iou_interval": stored_interval(c["interval"]),
                      "verdict": c["verdict"]}
               for name, c in zip(evaluation.class_names, comparison.per_class or ())}
    return RoundEvaluation(before=_rounded(comparison.before), after=_rounded(comparison.after),
                           source=evaluation.source, units=comparison.units,
                           delta_iou_interval=stored_interval(comparison.interval),
                           verdict=verdict or comparison.verdict, classes=classes)


def _config_from_settings(config_type, settings: dict):
    from napari_unet.training.augment import AugmentConfig

    known = {key: value for key, value in settings.items() if key in config_type.__dataclass_fields__}
    if isinstance(known.get("augmentation"), dict):
        known["augmentation"] = AugmentConfig(**known["augmentation"])
    return config_type(**known)


def score_evaluation(model, evaluation: Evaluation, precision: str | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-tile counts of `model` on the evaluation pixels (per class with several), and its labels per image."""
    from napari_unet.inference.prediction import predict

    units, labels = [], []
    n_classes = len(evaluation.class_names)
    model = with_channels_of(model, evaluation.images)  # a one-channel parent or version in a colour project
    for image, truth, valid in zip(evaluation.images, evaluation.truths, evaluation.valid):
        predicted = np.asarray(predict(model, image, output="labels", precision=precision))
        if n_classes:
            predicted = labels_as_classes(predicted, model.metadata, evaluation.class_names)
            units.append(class_unit_counts(predicted, truth, valid, n_classes))
        else:
            units.append(unit_counts(predicted, truth, valid))
        labels.append(predicted)
    for check, rows in evaluation.volumes:  # one class: the volume's objects as the user predicts it, as foreground
        objects = check_labels(model, check, precision)
        for z, truth, valid in rows:
            units.append(unit_counts(objects[z] > 0, truth, valid, tile=VOLUME_UNIT))
            labels.append((objects[z] > 0).astype(np.uint8))
    if not units:
        return np.zeros((0, n_classes + 1, 4) if n_classes else (0, 4), dtype=np.int64), labels
    return np.concatenate(units), labels


def labels_as_classes(labels: np.ndarray, metadata, class_names: list[str]) -> np.ndarray:
    """A model's predicted labels as the project's class ids: its classes matched by name; a model with one class
    (a start model) counts its foreground as a class of that name, else as the first class."""
    model_classes = metadata.classes
    if metadata.instance_method != "classes":
        value = class_names.index(model_classes[0]) + 1 if model_classes[0] in class_names else 1
        return np.where(labels > 0, value, 0).astype(np.uint8)
    if model_classes == list(class_names):
        return labels.astype(np.uint8, copy=False)
    lookup = np.zeros(max(256, len(model_classes) + 1), dtype=np.uint8)
    for value, name in enumerate(model_classes, start=1):
        lookup[value] = class_names.index(name) + 1 if name in class_names else 0
    return lookup[labels]


def _guard(model, labels: list[np.ndarray], evaluation: Evaluation, comparison) -> str | None:
    """A plain sentence saying why the new version must not become active, or None when it may."""
    counted = [(label[valid], truth[valid]) for label, truth, valid in
               zip(labels, evaluation.all_truths(), evaluation.all_valid())]
    predicted = np.concatenate([p for p, _ in counted]) if counted else np.zeros(0)
    truth = np.concatenate([t for _, t in counted]) if counted else np.zeros(0, dtype=bool)
    if predicted.size == 0:
        return None
    foreground_share = float(np.mean(predicted > 0))
    where = f"on {evaluation.described}"
    if foreground_share == 0 and truth.any():
        return f"Rolled back: the new version finds nothing {where} (every pixel background); the previous model stays active."
    if foreground_share >= ALL_FOREGROUND and not truth.all():
        return (f"Rolled back: the new version marks {foreground_share:.0%} of the pixels {where} as foreground; "
                "the previous model stays active.")
    n_classes = model.config.n_classes
    if n_classes > 2 and len(np.unique(predicted)) == 1:
        return f"Rolled back: the new version predicts a single class everywhere {where}; the previous model stays active."
    mean = "mean IoU of the classes" if comparison.per_class else "IoU"
    if comparison.verdict == "hurt":
        low, high = comparison.interval
        return (f"Rolled back: the new version scores lower {where} ({mean} {comparison.before['iou']:.3f} → "
                f"{comparison.after['iou']:.3f}, beyond the noise: 95% interval {low:+.3f} to {high:+.3f}); "
                "the previous model stays active.")
    # Per class only between models that both have the classes: the round that gives a model a new output layer
    # is judged on the mean, since its parent could not segment the other classes at all.
    new_output_layer = "new_output_layer" in model.metadata.info
    for name, scores in zip(evaluation.class_names, [] if new_output_layer else comparison.per_class):
        if scores["verdict"] == "hurt":
            low, high = scores["interval"]
            return (f"Rolled back: the new version scores lower on class '{name}' {where} (IoU "
                    f"{scores['before']['iou']:.3f} → {scores['after']['iou']:.3f}, beyond the noise: 95% interval "
                    f"{low:+.3f} to {high:+.3f}); the previous model stays active.")
    return None


def _verdict_sentence(comparison, evaluation: Evaluation) -> str:
    b, a = comparison.before["iou"], comparison.after["iou"]
    low, high = comparison.interval
    source = evaluation.described
    mean = "mean IoU" if comparison.per_class else "IoU"
    per_class = "".join(f"; {name} {c['before']['iou']:.3f} → {c['after']['iou']:.3f}"
                        for name, c in zip(evaluation.class_names, comparison.per_class))
    if comparison.verdict == "helped":
        return (f"Fine-tuning helped on {source}: {mean} {b:.3f} → {a:.3f} (95% interval of the gain {low:+.3f} to "
                f"{high:+.3f}{per_class}); the new version is active.")
    if comparison.units < 2:  # one unit: no resampling, no interval
        return (f"No measurable change on {source}: {mean} {b:.3f} → {a:.3f}{per_class}, on too few pixels to tell "
                "(one tile); the new version is active. Add evaluation pairs to tell.")
    return (f"No measurable change on {source}: {mean} {b:.3f} → {a:.3f} is within the noise (95% interval "
            f"{low:+.3f} to {high:+.3f}{per_class}); the new version is active. Correct more, or add evaluation pairs "
            "to tell.")

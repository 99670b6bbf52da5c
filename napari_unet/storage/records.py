"""The records that cross modules: a project's rounds, stored model versions and the model listing, as frozen
dataclasses.

Each is written by one module and read by several (the CLI, the demo, the dock's tabs, the worker process), so
their fields are named here once instead of as string keys at every reader. `to_json()` gives the plain dict
stored on disk and printed by `--json`; `from_json()` reads it back, including records written before a field
existed (a missing field takes its default) and keys this version does not know (kept in `extra` and written
back unchanged). Pure Python: napari's process reads these without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

ROUND_FORMAT = "napari-unet-round/1"
VERSION_FORMAT = "napari-unet-version/1"


def _known_and_extra(cls, values: dict) -> tuple[dict, dict]:
    """(the values of `cls`'s fields, the rest) from a JSON object."""
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in values.items() if k in names}, {k: v for k, v in values.items() if k not in names}


@dataclass(frozen=True)
class RoundEvaluation:
    """What a round record says about the evaluation: scores before and after, the evidence, the verdict.

    before/after: {"iou", "dice", "pixel_error"} pooled over the evaluation pixels (rounded to 4 places), and
    whatever other scores the round recorded. verdict: "helped", "no clear change", "hurt", "rolled back"."""

    before: dict
    after: dict
    source: str = ""  # "evaluation pairs" or "held-out stripes"
    units: int = 0  # how many tiles the paired bootstrap resampled
    delta_iou_interval: tuple[float, float] | None = None
    verdict: str = ""
    # Several classes: {class name: {"before", "after", "delta_iou_interval", "verdict"}}; empty for one class.
    classes: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        values = {"before": dict(self.before), "after": dict(self.after), "source": self.source, "units": self.units,
                  "delta_iou_interval": None if self.delta_iou_interval is None else list(self.delta_iou_interval),
                  "verdict": self.verdict}
        if self.classes:
            values["classes"] = self.classes
        return {**values, **self.extra}

    @classmethod
    def from_json(cls, values: dict) -> RoundEvaluation:
        known, extra = _known_and_extra(cls, values)
        interval = known.get("delta_iou_interval")
        if interval is not None:
            known["delta_iou_interval"] = tuple(interval)
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class RoundTraining:
    """How a round's version was trained: steps, time, why it stopped, on which pairs, with which settings."""

    steps: int
    seconds: float
    stopped_reason: str | None = None
    pairs: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds, "stopped_reason": self.stopped_reason,
                "pairs": list(self.pairs), "settings": self.settings, **self.extra}

    @classmethod
    def from_json(cls, values: dict) -> RoundTraining:
        known, extra = _known_and_extra(cls, values)
        known["pairs"] = tuple(known.get("pairs", ()))
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class RoundRecord:
    """One entry of a project's log (<project>/rounds/NNNN.json): a round that trained a version, or a revert.

    kept: the version became active (a revert always is); reason: the sentence the user reads about it."""

    round: int
    parent: str | None
    version: str
    kept: bool
    reason: str
    eval: RoundEvaluation
    seconds: float = 0.0
    created: str = ""
    kind: str = "round"  # "round" or "revert"
    training: RoundTraining | None = None  # None for a revert
    adaptation: dict | None = None  # what adaptation.adapt found and did; None for a revert
    format: str = ROUND_FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def is_revert(self) -> bool:
        return self.kind == "revert"

    def to_json(self) -> dict:
        """The record as stored on disk."""
        values: dict[str, Any] = {"format": self.format, "round": self.round}
        if self.kind != "round":
            values["kind"] = self.kind
        values.update(parent=self.parent, version=self.version, kept=self.kept, reason=self.reason,
                      eval=self.eval.to_json(), seconds=self.seconds)
        if self.training is not None:
            values["training"] = self.training.to_json()
        if self.adaptation is not None:
            values["adaptation"] = self.adaptation
        values["created"] = self.created
        return {**values, **self.extra}

    def public_json(self) -> dict:
        """The record as the CLI's --json prints it (its documented contract)."""
        return {"round": self.round, "parent": self.parent, "version": self.version, "kept": self.kept,
                "reason": self.reason, "eval": self.eval.to_json(), "seconds": self.seconds}

    @classmethod
    def from_json(cls, values: dict) -> RoundRecord:
        known, extra = _known_and_extra(cls, values)
        known["eval"] = RoundEvaluation.from_json(known["eval"])
        if known.get("training") is not None:
            known["training"] = RoundTraining.from_json(known["training"])
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class ModelEntry:
    """One model a user can pick (registry.list_models): a shipped model or a stored version.

    metrics: held-out scores (shipped) or the version's recorded scores (val_iou, eval_iou, …);
    kept: False for a version a project's guard rolled back; store: the folder of a version, None if shipped."""

    name: str
    kind: str  # "shipped" or "version"
    path: str
    description: str = ""
    metrics: dict = field(default_factory=dict)
    parent: str | None = None
    created: str = ""
    kept: bool = True
    store: str | None = None

    @property
    def is_shipped(self) -> bool:
        return self.kind == "shipped"

    def to_json(self) -> dict:
        values = {"name": self.name, "kind": self.kind, "description": self.description, "metrics": self.metrics,
                  "parent": self.parent, "created": self.created, "path": self.path, "kept": self.kept}
        return values if self.store is None else {**values, "store": self.store}

    @classmethod
    def from_json(cls, values: dict) -> ModelEntry:
        known, _ = _known_and_extra(cls, values)
        return cls(**known)


def headline_iou(metrics: dict) -> float | None:
    """The IoU a model listing shows for a version: on the evaluation pairs, else held out, else on validation."""
    for key in ("eval_iou", "held_out_iou", "val_iou"):
        if isinstance(metrics.get(key), (int, float)):
            return metrics[key]
    return None


@dataclass(frozen=True)
class PairFingerprint:
    """What a version's record keeps about one training or evaluation pair: content hashes and shape, not the data.

    Enough to tell whether a project still holds the pair unchanged (project.retrain finds pairs by these hashes)."""

    image_sha1: str
    mask_sha1: str
    shape: tuple[int, ...] = ()
    name: str = ""  # the pair's name in its project; "" (not written) for a pair without one
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        values: dict[str, Any] = {"image_sha1": self.image_sha1, "mask_sha1": self.mask_sha1, "shape": list(self.shape)}
        if self.name:
            values["name"] = self.name
        return {**values, **self.extra}

    @classmethod
    def from_json(cls, values: dict) -> PairFingerprint:
        known, extra = _known_and_extra(cls, values)
        known["shape"] = tuple(known.get("shape", ()))
        return cls(**known, extra=extra)


def _fingerprints(values) -> tuple[PairFingerprint, ...]:
    return tuple(PairFingerprint.from_json(entry) for entry in values)


# Keys a version's record holds only when its maker set them: a project's round writes the first seven (its
# failed_reason is null when the round was kept), store.revert the last.
_OPTIONAL_VERSION_KEYS = ("project_round", "kept", "failed_reason", "seed", "package_version", "evaluation_source",
                          "evaluation_pairs", "reverted_from")


@dataclass(frozen=True)
class VersionRecord:
    """The record of one stored model version (<store>/<name>.json beside <name>.keras; store.ModelStore).

    The .keras holds the network and its metadata; the record says where the version came from: its parent and
    lineage, the training pairs (as hashes), settings, scores, time, and for a project's round whether the guard
    kept it. path is where the .keras is, set when the store reads the record (never written)."""

    name: str
    lineage: str = ""
    parent: str | None = None
    created: str = ""  # ISO 8601, UTC
    sequence: int = 0  # time.time_ns() of the save: orders versions saved within one clock tick
    metrics: dict = field(default_factory=dict)  # val_iou, val_dice, steps …; a round's eval_iou …
    settings: dict = field(default_factory=dict)  # the training settings as finetune resolved them
    seconds: float | None = None  # training time; None for a save without training (a revert, a copy)
    training_pairs: tuple[PairFingerprint, ...] = ()
    model: dict = field(default_factory=dict)  # the network: {"config", "class_names", "tile_size"}
    # Written by a project's round (project.py) only:
    project_round: int | None = None
    kept: bool | None = None  # False: the guard rolled it back; None: not made by a project's round
    failed_reason: str | None = None  # why the guard rolled it back
    seed: int | None = None
    package_version: str | None = None
    evaluation_source: str | None = None  # "evaluation pairs" or "held-out stripes"
    evaluation_pairs: tuple[PairFingerprint, ...] | None = None
    reverted_from: str | None = None  # store.revert: the version this one copies
    path: str = ""
    format: str = VERSION_FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def rolled_back(self) -> bool:
        """A project's guard made this version and did not keep it."""
        return self.kept is False

    def to_json(self) -> dict:
        """The record as stored on disk."""
        values: dict[str, Any] = {
            "format": self.format, "name": self.name, "lineage": self.lineage, "parent": self.parent,
            "created": self.created, "sequence": self.sequence, "metrics": self.metrics, "settings": self.settings,
            "seconds": self.seconds, "training_pairs": [pair.to_json() for pair in self.training_pairs],
            "model": self.model,
        }
        for key in _OPTIONAL_VERSION_KEYS:
            value = getattr(self, key)
            if value is not None or (key == "failed_reason" and self.project_round is not None):
                values[key] = [pair.to_json() for pair in value] if key == "evaluation_pairs" else value
        return {**values, **self.extra}

    @classmethod
    def from_json(cls, values: dict) -> VersionRecord:
        """A record as stored (any version of the format); raises TypeError/ValueError/KeyError on a damaged one."""
        known, extra = _known_and_extra(cls, values)
        known.pop("path", None)  # where the file is now, not what it says
        for key in ("metrics", "settings", "model"):
            if known.get(key) is None:
                known.pop(key, None)
        known["training_pairs"] = _fingerprints(known.get("training_pairs") or ())
        if known.get("evaluation_pairs") is not None:
            known["evaluation_pairs"] = _fingerprints(known["evaluation_pairs"])
        return cls(**known, extra=extra)

"""The records that cross modules: a project's rounds and the model listing, as frozen dataclasses.

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

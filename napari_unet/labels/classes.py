"""The classes a project segments: names, colours, which are objects; and what a painted label value means.

One class (the default, as every project had before classes existed): any label other than 0 and 255 is
that class, so instance ids may be painted. Several classes: label value k is class k (1..n), 0 is
background and 255 is "not annotated"; any other value is refused, because the model could not learn it.
A model for n classes has a softmax head of n + 1 outputs (background first): ModelMetadata.classes; one started
from a model that separates objects with a boundary output also has one boundary output per object class
(ModelMetadata.object_boundaries).
Leaf module: no TensorFlow, no Qt.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.labels.masks import IGNORE_LABEL

MAX_CLASSES = 254  # values 1..254; 255 means "not annotated"
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class SegmentationClass:
    """One class: painted with label value `index + 1` in the order the project lists its classes."""

    name: str
    colour: str = ""  # "#rrggbb"; "" = napari's own colour for the class's label value
    objects: bool = True  # its connected regions are objects to separate into instances

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SegmentationClass":
        return cls(name=str(values["name"]), colour=str(values.get("colour", "")),
                   objects=bool(values.get("objects", True)))


def parse_classes(names: str, objects: str | None = None) -> list[SegmentationClass]:
    """Classes from the command line: "nucleus,cytoplasm" or with colours "nucleus:#ff0000,cytoplasm:#00ff00".

    objects: comma-separated names of the classes whose objects are separated into instances (None: all).
    """
    classes = []
    for item in (part.strip() for part in names.split(",")):
        if not item:
            continue
        name, _, colour = item.partition(":")
        classes.append(SegmentationClass(name.strip(), colour.strip()))
    check_classes(classes)
    if objects is not None:
        wanted = {part.strip() for part in objects.split(",") if part.strip()}
        unknown = wanted - {c.name for c in classes}
        if unknown:
            raise NapariUNetError(f"object class(es) {', '.join(sorted(unknown))} are not among the classes "
                                  f"{', '.join(c.name for c in classes)}: name classes the project declares")
        classes = [SegmentationClass(c.name, c.colour, c.name in wanted) for c in classes]
    return classes


def check_classes(classes: list[SegmentationClass]) -> None:
    """Refuse an unusable class list in one line naming the fix."""
    if not classes:
        raise NapariUNetError("no class names given: name at least one class, e.g. --classes nucleus,cytoplasm")
    if len(classes) > MAX_CLASSES:
        raise NapariUNetError(f"{len(classes)} classes: at most {MAX_CLASSES} fit in label values 1..{MAX_CLASSES}")
    names = [c.name for c in classes]
    for name in names:
        if not name or name.lower() == "background":
            raise NapariUNetError(f"class name {name!r} is not usable: label 0 is background already; give each "
                                  "class a name such as 'nucleus'")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise NapariUNetError(f"class name(s) {', '.join(repeated)} given twice: give each class its own name")
    for c in classes:
        if c.colour and not _COLOUR.match(c.colour):
            raise NapariUNetError(f"colour {c.colour!r} of class '{c.name}' is not '#rrggbb': write e.g. "
                                  f"{c.name}:#ff8800, or leave the colour out for napari's")


# How a user of the dock declares one more class (the command line's way names the project: Project.add_pair).
ADD_CLASS_IN_THE_DOCK = "declare one more class with 'Add class' under the Correct tab's class list"


def describe(classes: list[SegmentationClass]) -> str:
    """'1 nucleus, 2 cytoplasm': the label value of each class, as users paint them."""
    return ", ".join(f"{index} {c.name}" for index, c in enumerate(classes, start=1))


def check_label_values(mask: np.ndarray, classes: list[SegmentationClass], name: str, fix: str = "") -> None:
    """Refuse labels a project with several classes cannot train on (value > number of classes, not 255).

    One class: every value is that class (instance ids are fine), so nothing is refused here.
    fix: how to declare one more class with the face the user is in (CLI command or dock)."""
    if len(classes) < 2:
        return
    values = np.unique(np.asarray(mask))
    beyond = [int(v) for v in values.tolist() if v != IGNORE_LABEL and (v < 0 or v > len(classes))]
    if beyond:
        shown = ", ".join(str(v) for v in beyond[:5]) + (" …" if len(beyond) > 5 else "")
        raise NapariUNetError(
            f"labels '{name}' hold value(s) {shown} but the project has {len(classes)} classes ({describe(classes)}): "
            f"paint with 1–{len(classes)} (0 background, {IGNORE_LABEL} not annotated)"
            + (f", or {fix}" if fix else "")
        )


def class_truth(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """uint8 class ids of a painted mask for scoring: one class: 1 where labelled (instance ids allowed), else
    the values themselves; 255 (not annotated) becomes 0 and must be left out by the caller's valid map."""
    mask = np.asarray(mask)
    if n_classes < 2:
        return ((mask != 0) & (mask != IGNORE_LABEL)).astype(np.uint8)
    return np.where(mask == IGNORE_LABEL, 0, mask).astype(np.uint8)

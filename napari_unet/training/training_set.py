"""The user's corrected image/mask pairs on disk, and which pixels of a correction to train on.

A training set is a project folder that other tools can read too:

    <folder>/images/<name>.tif   the image snapshot (as in the layer: (Y, X) or (Y, X, C))
    <folder>/masks/<name>.tif    the labels as painted: 0 = background, 255 = not annotated, any other
                                 value an object (instance ids or 1; masks.py turns them into targets)
    <folder>/pairs/<name>.json   what was stored when, from which layers, pixel counts

`images/` + `masks/` match by file stem, so the folder works with `napari-unet finetune --images F/images --masks F/masks`,
`io.find_pairs` and the reader plugin. A pair is written image → mask → JSON, each through a
temporary file renamed into place; the JSON is the commit marker, so a crash mid-save leaves
either the old state or a complete pair, never half of one.

Sparse corrections: a mask pixel of 255 (`IGNORE_LABEL`) is excluded from the loss. Users mark
such pixels by painting label 255, or let `restrict_to_corrections` mark everything farther than
`margin` pixels from what they changed relative to the prediction.

No Qt, no napari: the widgets call this, tests use it directly.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.storage.files import atomic_write_json, atomic_write_tiff, user_data_dir

# Fraction of each pair's annotated columns (the right-hand stripe) kept out of training and used
# to compare models before/after fine-tuning. Fixed per pair, so rounds are comparable.
HELD_OUT_FRACTION = 0.2
_NAME_PATTERN = re.compile(r"[^A-Za-z0-9_.-]+")


def default_training_set_dir() -> Path:
    """The dock's default project: `$NAPARI_UNET_HOME/training_set`, else e.g. ~/.local/share/napari-unet/training_set."""
    return user_data_dir() / "training_set"


def changed_pixels(prediction: np.ndarray, corrected: np.ndarray) -> np.ndarray:
    """Where the user changed the prediction (foreground/background flips; painting 255 is not a change)."""
    prediction = np.asarray(prediction)
    corrected = np.asarray(corrected)
    if prediction.shape != corrected.shape:
        raise NapariUNetError(
            f"the stored prediction is {_shape(prediction)} but the corrected labels are {_shape(corrected)}: "
            "predict again on this image before using 'train only where I corrected'"
        )
    was_foreground = prediction != 0
    is_foreground = (corrected != 0) & (corrected != IGNORE_LABEL)
    return (was_foreground != is_foreground) & (corrected != IGNORE_LABEL)


def restrict_to_corrections(mask: np.ndarray, prediction: np.ndarray, corrected: np.ndarray, margin: int = 16) -> np.ndarray:
    """Mark every pixel farther than `margin` px from a correction as not annotated (255).

    The user's edits say "here the model was wrong"; the unchanged surroundings within `margin`
    say "here it was right" (so the model does not learn to grow or shrink everything). Farther
    pixels were never looked at, so they carry no label. Raises if nothing was changed.
    """
    from scipy import ndimage

    changed = changed_pixels(prediction, corrected)
    if not changed.any():
        raise NapariUNetError(
            "no corrections found: the labels equal the prediction everywhere. Paint or erase where the model "
            "was wrong, or switch off 'train only where I corrected' to train on the whole image"
        )
    near_change = ndimage.distance_transform_edt(~changed) <= max(int(margin), 0)
    restricted = np.array(mask, dtype=np.uint8 if np.max(mask, initial=0) <= IGNORE_LABEL else np.uint32)
    restricted[~near_change] = IGNORE_LABEL
    return restricted


def held_out_region(mask: np.ndarray, fraction: float = HELD_OUT_FRACTION) -> np.ndarray:
    """Boolean (Y, X) mask of the pixels of a pair never trained on: the right-hand `fraction` of
    the columns that hold annotations (so a user who checked only part of an image still gets a
    held-out stripe inside that part), restricted to annotated pixels.
    """
    mask = np.asarray(mask)
    annotated = mask != IGNORE_LABEL
    region = np.zeros(mask.shape[:2], dtype=bool)
    columns = np.flatnonzero(annotated.any(axis=0))
    if columns.size == 0:
        return region
    first, last = int(columns[0]), int(columns[-1]) + 1
    n_columns = int(round((last - first) * fraction))
    if n_columns > 0:
        region[:, last - n_columns:last] = True
    return region & annotated


def thumbnail(image: np.ndarray, size: int = 64) -> np.ndarray:
    """A small uint8 (h, w) or (h, w, 3) preview, contrast-stretched (1-99 percentile), for lists."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] not in (3, 4):
        image = image[..., 0]
    step = max(1, int(np.ceil(max(image.shape[:2]) / size)))
    small = image[::step, ::step].astype(np.float32)
    if small.ndim == 3:
        small = small[..., :3]
    low, high = np.percentile(small, (1, 99)) if small.size else (0, 1)
    scaled = np.clip((small - low) / max(float(high - low), 1e-6), 0, 1)
    return np.ascontiguousarray((scaled * 255).astype(np.uint8))


def pair_file_name(base: str) -> str:
    """A file-safe pair name: 'cells 03' → 'cells_03'."""
    return _NAME_PATTERN.sub("_", base).strip("._") or "pair"


@dataclass
class TrainingPair:
    """One stored correction, as listed in the widget."""

    name: str
    image_path: Path
    mask_path: Path
    shape: tuple[int, ...]
    created: str
    source_image: str = ""
    source_labels: str = ""
    annotated_pixels: int = 0
    foreground_pixels: int = 0
    sparse: bool = False
    # Pixels the user changed in the prediction (live mode counts them); None where not known.
    corrected_pixels: int | None = None

    def to_dict(self) -> dict:
        values = asdict(self)
        values["image_path"] = self.image_path.name
        values["mask_path"] = self.mask_path.name
        values["shape"] = list(self.shape)
        return values


def _shape(array: np.ndarray) -> str:
    return "×".join(str(n) for n in np.shape(array))


def check_pair_shapes(image: np.ndarray, mask: np.ndarray, *, image_name: str, labels_name: str,
                      fix: str = "choose the Labels layer that belongs to this image") -> None:
    """NapariUNetError unless `image` is 2D (optionally with channels) and `mask` 2D with its height and width;
    `fix` is the remedy the message ends with (the dock's default names the layer to choose)."""
    if image.ndim not in (2, 3) or mask.ndim != 2:
        raise NapariUNetError(
            f"a training pair is one 2D image (optionally with channels) and a 2D mask, got image "
            f"{_shape(image)} and mask {_shape(mask)}: for a stack, add the current slice"
        )
    if image.shape[:2] != mask.shape:
        raise NapariUNetError(
            f"labels '{labels_name}' are {_shape(mask)} but image '{image_name}' is {_shape(image)}: {fix}"
        )


class TrainingSet:
    """A folder of corrected image/mask pairs (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root else default_training_set_dir()

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    @property
    def records_dir(self) -> Path:
        return self.root / "pairs"

    def unique_name(self, base: str) -> str:
        """A file-safe name from `base` ('cells 03' → 'cells_03'), suffixed _2, _3 … if taken."""
        stem = pair_file_name(base)
        name, counter = stem, 2
        while (self.records_dir / f"{name}.json").exists() or (self.images_dir / f"{name}.tif").exists():
            name, counter = f"{stem}_{counter}", counter + 1
        return name

    def add(self, image: np.ndarray, mask: np.ndarray, name: str = "pair", *, source_image: str = "",
            source_labels: str = "", sparse: bool = False, corrected_pixels: int | None = None,
            replace: bool = False) -> TrainingPair:
        """Store one pair atomically: the labels as painted (masks.py says what they mean for training).

        Shapes must match in (Y, X); the image may carry a trailing channel axis.
        replace: store under exactly `name`, replacing that pair (live mode updates one pair per plane). Each
        file is replaced atomically and the record last, so a crash leaves the old pair or the new one.
        """
        image = np.asarray(image)
        mask = np.asarray(mask)
        check_pair_shapes(image, mask, image_name=source_image or name, labels_name=source_labels or name)
        if mask.dtype.kind not in "uib" or (mask.dtype.kind == "i" and mask.size and mask.min() < 0):
            raise NapariUNetError(
                f"labels '{source_labels or name}' hold {mask.dtype} values: a mask holds labels (0 = background, "
                f"object ids or 1 = foreground, {IGNORE_LABEL} = not annotated), e.g. mask = (probabilities > 0.5)"
            )
        mask = mask.astype(np.uint8 if mask.size == 0 or mask.max() <= 255 else np.uint32)
        annotated = int(np.count_nonzero(mask != IGNORE_LABEL))
        if annotated == 0:
            raise NapariUNetError(
                f"labels '{source_labels or name}' are all 'not annotated' ({IGNORE_LABEL}): nothing to learn from. "
                "Paint foreground (label 1) and leave or paint background (label 0) where you checked the image"
            )
        for folder in (self.images_dir, self.masks_dir, self.records_dir):
            folder.mkdir(parents=True, exist_ok=True)
        name = pair_file_name(name) if replace else self.unique_name(name)
        pair = TrainingPair(
            name=name,
            image_path=self.images_dir / f"{name}.tif",
            mask_path=self.masks_dir / f"{name}.tif",
            shape=tuple(int(n) for n in image.shape),
            created=time.strftime("%Y-%m-%dT%H:%M:%S"),
            source_image=source_image,
            source_labels=source_labels,
            annotated_pixels=annotated,
            foreground_pixels=int(np.count_nonzero((mask != 0) & (mask != IGNORE_LABEL))),
            sparse=bool(sparse),
            corrected_pixels=None if corrected_pixels is None else int(corrected_pixels),
        )
        atomic_write_tiff(pair.image_path, image)
        atomic_write_tiff(pair.mask_path, mask)
        atomic_write_json(self.records_dir / f"{name}.json", pair.to_dict())  # last: the commit marker
        return pair

    def pairs(self) -> list[TrainingPair]:
        """Complete pairs (record, image and mask all present), oldest first."""
        if not self.records_dir.is_dir():
            return []
        found = []
        for record_path in sorted(self.records_dir.glob("*.json")):
            try:
                values = json.loads(record_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # a foreign or damaged file: not a pair we wrote
            name = record_path.stem
            pair = TrainingPair(
                name=name,
                image_path=self.images_dir / f"{name}.tif",
                mask_path=self.masks_dir / f"{name}.tif",
                shape=tuple(values.get("shape", ())),
                created=str(values.get("created", "")),
                source_image=str(values.get("source_image", "")),
                source_labels=str(values.get("source_labels", "")),
                annotated_pixels=int(values.get("annotated_pixels", 0)),
                foreground_pixels=int(values.get("foreground_pixels", 0)),
                sparse=bool(values.get("sparse", False)),
                corrected_pixels=values.get("corrected_pixels"),
            )
            if pair.image_path.is_file() and pair.mask_path.is_file():
                found.append(pair)
        return sorted(found, key=lambda p: (p.created, p.name))

    def names(self) -> list[str]:
        return [pair.name for pair in self.pairs()]

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask) of one stored pair."""
        import tifffile

        if name not in self.names():
            raise NapariUNetError(f"no pair named '{name}' in the training set '{self.root}'")
        return tifffile.imread(self.images_dir / f"{name}.tif"), tifffile.imread(self.masks_dir / f"{name}.tif")

    def remove(self, name: str) -> None:
        """Delete a pair (record first, so a crash never leaves a record without its files)."""
        (self.records_dir / f"{name}.json").unlink(missing_ok=True)
        (self.images_dir / f"{name}.tif").unlink(missing_ok=True)
        (self.masks_dir / f"{name}.tif").unlink(missing_ok=True)

    def split(self, held_out_fraction: float = HELD_OUT_FRACTION) -> "TrainingData":
        """Load every pair and split each into training pixels and a fixed held-out stripe.

        Raises NapariUNetError for an empty set or one without any foreground to learn from.
        """
        pairs = self.pairs()
        if not pairs:
            raise NapariUNetError(
                f"the training set '{self.root}' is empty: correct a prediction and press 'Add to training set' first"
            )
        data = TrainingData(names=[p.name for p in pairs])
        for pair in pairs:
            image, mask = self.load(pair.name)
            held_out = held_out_region(mask, held_out_fraction)
            train_mask = mask.copy()
            train_mask[held_out] = IGNORE_LABEL
            data.images.append(image)
            data.masks.append(mask)
            data.train_masks.append(train_mask)
            data.truths.append((mask != 0) & (mask != IGNORE_LABEL))
            data.held_out.append(held_out)
        if not any(np.any((m != 0) & (m != IGNORE_LABEL)) for m in data.train_masks):
            raise NapariUNetError(
                f"the training set '{self.root}' has no foreground pixels (label 1) outside the held-out stripe: "
                "the model would learn to find nothing. Paint the structures you want segmented, then add again"
            )
        return data


@dataclass
class TrainingData:
    """The training set in memory: images, the masks as painted, their training masks (held-out stripe = 255)
    and the held-out truth."""

    names: list
    images: list = None
    masks: list = None
    train_masks: list = None
    truths: list = None
    held_out: list = None

    def __post_init__(self):
        self.images = self.images or []
        self.masks = self.masks or []
        self.train_masks = self.train_masks or []
        self.truths = self.truths or []
        self.held_out = self.held_out or []

    @property
    def held_out_pixels(self) -> int:
        return int(sum(np.count_nonzero(region) for region in self.held_out))

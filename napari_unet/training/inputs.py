"""Training inputs: check image/mask pairs, turn user labels into the model's targets (masks.py),
normalise images exactly as prediction does, and split off validation data."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.inference.normalize import apply_range, percentile_range
from napari_unet.labels.masks import IGNORE_LABEL, training_targets
from napari_unet.model import SegmentationModel

MASK_FIX = "use 0 = background, 1 = foreground, 255 = not annotated; e.g. mask = (labels > 0)"


@dataclass
class PreparedPair:
    """One training or validation pair, ready to use."""

    name: str
    raw_image: np.ndarray  # (Y, X, C) as given, for validation through the prediction engine
    image: np.ndarray  # (Y, X, C) float32 normalised
    mask: np.ndarray  # (Y, X) uint8 with IGNORE_LABEL
    key: str | None = None  # the caller's name for the pair (finetune's names): what focus maps are keyed by
    window: tuple[slice, slice] = (slice(None), slice(None))  # where this part lies in the caller's pair

    @property
    def n_annotated(self) -> int:
        return int(np.count_nonzero(self.mask != IGNORE_LABEL))


def _as_list(items, what: str) -> list:
    if items is None:
        return []
    if isinstance(items, np.ndarray) or type(items).__module__.startswith("dask."):
        if items.ndim == 2:
            return [items]
        return [items[i] for i in range(items.shape[0])]
    if isinstance(items, (str, os.PathLike)):
        return [items]
    try:
        return list(items)
    except TypeError:
        raise NapariUNetError(f"{what} must be an array or a list of arrays, not {type(items).__name__}") from None


def _load(item, default_name: str) -> tuple[np.ndarray, str]:
    if isinstance(item, (str, os.PathLike)):
        from napari_unet.storage.io import read_image

        return read_image(item), os.path.basename(os.fspath(item))
    return np.asarray(item), default_name


def split_pairs(images, masks=None) -> tuple[list, list]:
    """Accept (images, masks) lists/arrays, or one list of (image, mask) pairs with masks=None."""
    if masks is None:
        pairs = _as_list(images, "images")
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise NapariUNetError(
                "give masks for the images: finetune(model, images, masks), or a list of (image, mask) pairs"
            )
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return _as_list(images, "images"), _as_list(masks, "masks")


def _shape_text(shape) -> str:
    return "×".join(str(n) for n in shape)


def check_mask(mask, name: str, n_classes: int = 1) -> np.ndarray:
    """A validated uint8 training mask (values 0..n_classes-1 and IGNORE_LABEL) or NapariUNetError."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise NapariUNetError(f"mask of {name} has shape {_shape_text(mask.shape)}: a 2D (Y, X) mask is needed")
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if mask.dtype.kind not in "uif":
        raise NapariUNetError(f"mask of {name} has dtype {mask.dtype}: a numeric or boolean mask is needed")
    if mask.dtype.kind == "f" and (not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask))):
        raise NapariUNetError(
            f"mask of {name} has non-integer (float) values: masks hold labels, not probabilities — "
            f"{MASK_FIX} (threshold probabilities first, e.g. mask = (probabilities > 0.5))"
        )
    values = np.unique(mask)
    allowed = set(range(n_classes if n_classes > 1 else 2)) | {IGNORE_LABEL}
    unexpected = [v for v in values.tolist() if v not in allowed]
    if unexpected:
        listed = values.tolist() if values.size <= 12 else values[:8].tolist() + ["…"] + values[-3:].tolist()
        shown = ", ".join(str(v) if v == "…" else f"{v:g}" for v in listed)
        if values.size > 12:
            shown += f"; {values.size} distinct values"

        classes = "0 = background, 1 = foreground" if n_classes == 1 else f"class ids 0..{n_classes - 1}"
        raise NapariUNetError(
            f"mask of {name} has values {{{shown}}} but training needs {classes} and {IGNORE_LABEL} = not annotated: "
            + (
                MASK_FIX
                if n_classes == 1
                else f"map your labels to 0..{n_classes - 1} (and {IGNORE_LABEL} for unlabelled pixels)"
            )
        )
    mask = mask.astype(np.uint8)
    if not np.any(mask != IGNORE_LABEL):
        raise NapariUNetError(
            f"mask of {name} has no annotated pixels (all {IGNORE_LABEL} = not annotated): nothing to learn from — "
            "paint background (0) and foreground (1) somewhere, or leave this image out"
        )
    return mask


def prepare_image(image, name: str, model: SegmentationModel) -> tuple[np.ndarray, np.ndarray]:
    """(raw (Y, X, C), normalised float32 (Y, X, C)) with the model's percentiles, as prediction does."""
    from napari_unet.inference.channels import as_planes
    from napari_unet.inference.prediction import check_image_values

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1 and model.config.n_channels == 1:
        image = image[..., 0]  # (Y, X, 1): one grey channel, not a stack of 1-pixel-wide planes
    try:
        check_image_values(image)
        planes = as_planes(image, model.config.n_channels)
    except NapariUNetError as exc:
        raise NapariUNetError(f"{name}: {exc}") from None
    if planes.ndim != 3:
        raise NapariUNetError(
            f"{name} has shape {_shape_text(np.shape(image))}: training takes 2D images (Y, X) or (Y, X, C); "
            "pass the planes of a stack as separate images"
        )
    if np.dtype(planes.dtype).kind == "f" and not np.all(np.isfinite(planes)):
        raise NapariUNetError(f"{name} contains NaN or infinite values: replace them (e.g. numpy.nan_to_num) first")
    low, high = percentile_range(planes, model.metadata.normalization)
    return planes, apply_range(planes, low, high).astype(np.float32)


def prepare_pairs(model: SegmentationModel, images, masks, label: str = "pair", names=None) -> list[PreparedPair]:
    """Validated, normalised pairs; errors name the pair (`names`, file name or index) and the fix."""
    images, masks = split_pairs(images, masks)
    names = list(names) if names is not None else None
    if names is not None and len(names) != len(images):
        raise NapariUNetError(f"got {len(names)} names for {len(images)} images: give one name per pair")
    if len(images) != len(masks):
        raise NapariUNetError(f"got {len(images)} images but {len(masks)} masks: give one mask per image")
    if not images:
        raise NapariUNetError("no training pairs were given: pass at least one image with its mask")
    pairs = []
    for index, (image_item, mask_item) in enumerate(zip(images, masks)):
        default = f"{label} {index}" if names is None else f"{label} '{names[index]}'"
        image, image_name = _load(image_item, default)
        mask, mask_name = _load(mask_item, default)
        name = image_name if image_name == mask_name else f"{label} {index} ({image_name})"
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.dtype.kind in "uib":  # the one mask rule (masks.py): user labels -> this model's targets
            mask = training_targets(mask, model.metadata)
        mask = check_mask(mask, name, model.config.n_classes)
        raw, normalized = prepare_image(image, name, model)
        if raw.shape[:2] != mask.shape:
            raise NapariUNetError(
                f"the mask of {name} is {_shape_text(mask.shape)} but its image is {_shape_text(raw.shape[:2])}: "
                "a mask must have exactly its image's Y×X shape"
            )
        pairs.append(PreparedPair(name, raw, normalized, mask, key=None if names is None else str(names[index])))
    return pairs


def check_foreground(pairs: list[PreparedPair], n_classes: int) -> None:
    """Refuse training without any foreground; warn about pairs that are all one class."""
    total_foreground = 0
    hint = ""
    for pair in pairs:
        annotated = pair.mask != IGNORE_LABEL
        foreground = int(np.count_nonzero(annotated & (pair.mask > 0)))
        total_foreground += foreground
        if foreground == 0:
            if np.any(~annotated):  # only 0 and 255: often a 0/255 binary mask, where 255 meant foreground
                hint = (f" (masks with only 0 and {IGNORE_LABEL}: if {IGNORE_LABEL} means foreground in your files, "
                        "convert them with mask = (mask > 0))")
            warnings.warn(f"the mask of {pair.name} has no foreground (all background){hint}", stacklevel=3)
        elif foreground == int(np.count_nonzero(annotated)):
            warnings.warn(f"the mask of {pair.name} is all foreground (no background)", stacklevel=3)
    if total_foreground == 0:
        raise NapariUNetError(
            "no foreground pixels in any training mask: the model would learn to predict nothing — "
            f"{MASK_FIX}, and annotate at least some foreground{hint}"
        )


def split_validation(pairs: list[PreparedPair], fraction: float,
                     rng: np.random.Generator) -> tuple[list[PreparedPair], list[PreparedPair]]:
    """(training, validation): whole pairs when fraction * n >= 1, else a strip of every pair.

    A strip is the last `fraction` of the longer axis; the training part is cropped so the strip's
    pixels are never sampled. Pairs whose strip or remainder has no annotated pixels stay whole.
    """
    if fraction <= 0:
        return pairs, []
    n_held_out = int(round(fraction * len(pairs)))
    if len(pairs) >= 2 and n_held_out >= 1:
        n_held_out = min(n_held_out, len(pairs) - 1)
        has_foreground = [bool(np.any((p.mask > 0) & (p.mask != IGNORE_LABEL))) for p in pairs]
        held_out: set[int] = set()
        for index in rng.permutation(len(pairs)).tolist():  # random, but never all the foreground
            if len(held_out) == n_held_out:
                break
            if any(has_foreground[j] for j in range(len(pairs)) if j != index and j not in held_out):
                held_out.add(index)
        return ([p for i, p in enumerate(pairs) if i not in held_out], [p for i, p in enumerate(pairs) if i in held_out])
    training, validation = [], []
    for pair in pairs:
        axis = 0 if pair.mask.shape[0] >= pair.mask.shape[1] else 1
        length = pair.mask.shape[axis]
        cut = length - max(1, int(round(fraction * length)))
        keep, strip = (slice(None, cut), slice(cut, None))
        part = lambda array, s, axis=axis: array[s] if axis == 0 else array[:, s]  # noqa: E731
        train_part = PreparedPair(pair.name, part(pair.raw_image, keep), part(pair.image, keep), part(pair.mask, keep),
                                  key=pair.key, window=(keep, slice(None)) if axis == 0 else (slice(None), keep))
        strip_part = PreparedPair(f"{pair.name} (validation strip)", part(pair.raw_image, strip), part(pair.image, strip),
                           part(pair.mask, strip))
        if cut < 8 or train_part.n_annotated == 0 or strip_part.n_annotated == 0:
            training.append(pair)
        else:
            training.append(train_part)
            validation.append(strip_part)
    return training, validation

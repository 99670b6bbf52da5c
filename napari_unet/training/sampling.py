"""Patches for training steps: random batches from prepared pairs, and the U-Net paper's border weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_unet.labels.instances import INTERIOR
from napari_unet.labels.masks import IGNORE_LABEL, target_classes
from napari_unet.training.augment import PairAugmenter
from napari_unet.training.inputs import PreparedPair

if TYPE_CHECKING:
    from napari_unet.model import SegmentationModel
    from napari_unet.training.config import TrainConfig


def border_weight_map(mask: np.ndarray, *, objects_are_background: bool, w0: float = 10.0, sigma: float = 5.0,
                      n_classes: int = 1, object_class: int | None = None) -> np.ndarray:
    """w = w_c + w0 * exp(-(d1 + d2)² / (2 sigma²)), normalised to mean 1 over annotated pixels.

    d1, d2: distances to the nearest and second-nearest object; objects are the connected regions of
    background (membrane models: the cells the membranes enclose), of foreground (e.g. nuclei), or of
    one class (`object_class`: the interiors of a boundary-class model, which stay apart where nuclei
    touch, so the weight is highest exactly on the boundary between touching nuclei).
    w_c balances classes (inverse frequency over annotated pixels). 0 on IGNORE_LABEL pixels.
    """
    from scipy import ndimage

    annotated = mask != IGNORE_LABEL
    class_weights = _class_weights(mask, annotated, n_classes)
    if object_class is not None:
        objects = annotated & (mask == object_class)
    else:
        objects = annotated & ((mask == 0) if objects_are_background else (mask > 0))
    labels, n_objects = ndimage.label(objects)
    reach = int(np.ceil(sigma * 4))  # beyond d1 + d2 > 4 sigma the term is < exp(-8)
    nearest = np.full(mask.shape, np.inf, dtype=np.float32)
    second = np.full(mask.shape, np.inf, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(slice(max(0, s.start - reach), min(n, s.stop + reach)) for s, n in zip(box, mask.shape))
        distance = ndimage.distance_transform_edt(labels[window] != index).astype(np.float32)
        near, sec = nearest[window], second[window]
        second[window] = np.where(distance < near, near, np.minimum(sec, distance))
        nearest[window] = np.minimum(near, distance)
    border = np.zeros(mask.shape, dtype=np.float32)
    if n_objects >= 2:
        total = nearest + second
        finite = np.isfinite(total)
        border[finite] = w0 * np.exp(-(total[finite] ** 2) / (2 * sigma**2))
    weights = np.where(annotated, class_weights + border, 0.0).astype(np.float32)
    mean = weights[annotated].mean() if np.any(annotated) else 1.0
    return weights / np.float32(mean if mean > 0 else 1.0)


def _class_weights(mask: np.ndarray, annotated: np.ndarray, n_classes: int) -> np.ndarray:
    """w_c: each class present gets the same total weight (inverse frequency over annotated pixels)."""
    class_weights = np.zeros(mask.shape, dtype=np.float32)
    n_annotated = max(1, int(np.count_nonzero(annotated)))
    present = [k for k in range(max(2, n_classes)) if np.any(annotated & (mask == k))]
    for k in present:
        selected = annotated & (mask == k)
        class_weights[selected] = n_annotated / (len(present) * np.count_nonzero(selected))
    return class_weights


def class_weight_map(mask: np.ndarray, n_classes: int, target_classes: np.ndarray | None = None) -> np.ndarray:
    """w_c alone, normalised to mean 1 over annotated pixels (0 on IGNORE_LABEL): several classes train with it, so
    a class painted on few pixels counts as much as background. target_classes (masks.target_classes): the class
    each target value stands for, so an object class's boundary and core share the class's weight."""
    annotated = mask != IGNORE_LABEL
    weights = _class_weights(mask if target_classes is None else target_classes[mask], annotated, n_classes)
    mean = weights[annotated].mean() if np.any(annotated) else 1.0
    return weights / np.float32(mean if mean > 0 else 1.0)


def border_weight_maps(model: SegmentationModel, config: TrainConfig, pairs: list[PreparedPair]) -> list[np.ndarray] | None:
    """The U-Net paper's weight map of each pair when `config.border_weight`, with the objects this model's output
    means (membranes: the cells between; boundary-class models: the interiors, apart where objects touch); without
    it, class-balance weights for a model of several classes, else None (every annotated pixel counts 1)."""
    if not config.border_weight:
        classes = target_classes(model.metadata)
        if classes is not None:
            return [class_weight_map(p.mask, model.config.n_classes, classes) for p in pairs]
        return None
    from napari_unet.labels.postprocess import objects_are_background

    background_objects = objects_are_background(model.metadata.class_names)
    object_class = INTERIOR if model.metadata.instance_method == "boundary_watershed" else None
    return [border_weight_map(p.mask, objects_are_background=background_objects, w0=config.border_w0,
                              sigma=config.border_sigma, n_classes=model.config.n_classes, object_class=object_class)
            for p in pairs]


class PatchSampler:
    """Random training batches from prepared pairs, in numpy so a step's time is the model's.

    Every image is padded once (reflect; masks with IGNORE_LABEL) to at least one patch plus the
    augmentation margin, so images smaller than a patch train fine. Pairs are drawn in proportion to
    their annotated pixels; a `foreground_fraction` of patches is centred on a random foreground
    pixel, the rest on a random annotated pixel (sparse corrections are never missed). With focus maps, a
    `focus_fraction` of a pair's patches is centred on its focus pixels first (live mode: the corrected ones).
    With `target_classes` (several classes: masks.target_classes), foreground patches are centred on a class drawn
    uniformly first, so a rare class is seen as often as a common one.
    """

    def __init__(self, pairs: list[PreparedPair], patch_size: int, *, rng: np.random.Generator,
                 augmenter: PairAugmenter | None = None, foreground_fraction: float = 0.5,
                 weight_maps: list[np.ndarray] | None = None, focus_maps: list[np.ndarray | None] | None = None,
                 focus_fraction: float = 0.5, target_classes: np.ndarray | None = None):
        self.patch_size = patch_size
        self.rng = rng
        self.augmenter = augmenter
        self.foreground_fraction = foreground_fraction
        self.margin = augmenter.margin if augmenter is not None else 0
        self.images, self.masks, self.weights, self.offsets = [], [], [], []
        self.foreground, self.annotated, self.by_class = [], [], []
        for index, pair in enumerate(pairs):
            height, width = pair.mask.shape
            extra_y, extra_x = max(0, patch_size - height), max(0, patch_size - width)
            pad = ((self.margin + extra_y // 2, self.margin + extra_y - extra_y // 2),
                   (self.margin + extra_x // 2, self.margin + extra_x - extra_x // 2))
            self.images.append(np.pad(pair.image, pad + ((0, 0),), mode="reflect"))
            self.masks.append(np.pad(pair.mask, pad, mode="constant", constant_values=IGNORE_LABEL))
            weight = weight_maps[index] if weight_maps is not None else (pair.mask != IGNORE_LABEL).astype(np.float32)
            self.weights.append(np.pad(weight, pad, mode="constant", constant_values=0.0))
            self.offsets.append((pad[0][0], pad[1][0]))
            annotated = pair.mask != IGNORE_LABEL
            self.annotated.append(np.flatnonzero(annotated).astype(np.int64))
            self.foreground.append(np.flatnonzero(annotated & (pair.mask > 0)).astype(np.int64))
            classes = None if target_classes is None else target_classes[pair.mask]
            self.by_class.append([] if classes is None else
                                 [found for value in np.unique(classes[annotated & (classes > 0)])
                                  if (found := np.flatnonzero(classes == value).astype(np.int64)).size])
        # Pixels to centre patches on more often (live mode: what the user corrected), annotated ones only.
        self.focus_fraction = focus_fraction
        self.focus = [np.zeros(0, dtype=np.int64) if f is None else
                      np.flatnonzero(np.asarray(f, dtype=bool) & (pair.mask != IGNORE_LABEL)).astype(np.int64)
                      for f, pair in zip(focus_maps or [None] * len(pairs), pairs)]
        counts = np.array([a.size for a in self.annotated], dtype=np.float64)
        self.pair_probabilities = counts / counts.sum()
        self.shapes = [pair.mask.shape for pair in pairs]

    def draw_window(self) -> tuple[int, tuple[slice, slice]]:
        """A random pair and the window (patch plus augmentation margin, padded coordinates) to cut from it."""
        rng = self.rng
        index = int(rng.choice(len(self.images), p=self.pair_probabilities))
        if self.focus[index].size > 0 and rng.random() < self.focus_fraction:
            candidates = self.focus[index]
        else:
            use_foreground = self.foreground[index].size > 0 and rng.random() < self.foreground_fraction
            candidates = self.foreground[index] if use_foreground else self.annotated[index]
            if use_foreground and len(self.by_class[index]) > 1:
                candidates = self.by_class[index][int(rng.integers(len(self.by_class[index])))]
        centre = int(candidates[rng.integers(candidates.size)])
        cy, cx = divmod(centre, self.shapes[index][1])
        size, margin = self.patch_size, self.margin
        oy, ox = self.offsets[index]
        image = self.images[index]
        # top-left of the patch in padded coordinates, kept inside the (padded-to-patch) image
        top = min(max(cy + oy - size // 2, margin), image.shape[0] - margin - size)
        left = min(max(cx + ox - size // 2, margin), image.shape[1] - margin - size)
        return index, (slice(top - margin, top + size + margin), slice(left - margin, left + size + margin))

    def sample_patch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index, window = self.draw_window()
        image_patch = self.images[index][window]
        mask_patch, weight_patch = self.masks[index][window], self.weights[index][window]
        if self.augmenter is not None:
            image_patch, (mask_patch, weight_patch) = self.augmenter(image_patch, [mask_patch, weight_patch])
        weight_patch = np.where(mask_patch == IGNORE_LABEL, 0.0, weight_patch).astype(np.float32)
        labels = np.where(mask_patch == IGNORE_LABEL, 0, mask_patch).astype(np.int32)
        return image_patch, labels, weight_patch

    def sample_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images (B, P, P, C) float32, labels (B, P, P) int32, weights (B, P, P) float32; 0 = ignored)."""
        patches = [self.sample_patch() for _ in range(batch_size)]
        return tuple(np.stack(parts) for parts in zip(*patches))

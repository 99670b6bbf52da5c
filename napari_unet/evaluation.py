"""Score a model on images with ground-truth masks: IoU, Dice and pixel error pooled over all pixels, and
with instances=True the object metrics of the DSB 2018 / StarDist (ap50, map, f1_50) pooled over all objects."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.metrics import (
    IOU_THRESHOLDS,
    as_instances,
    confusion_counts,
    instance_counts,
    instance_scores,
    scores_from_counts,
)


def _load(item, kind: str, index: int) -> tuple[np.ndarray, str]:
    """An array and a name for messages: the file stem for paths, '<kind> <index>' for arrays."""
    if isinstance(item, (str, os.PathLike)):
        from napari_unet.io import read_image

        return read_image(item), Path(item).stem
    return np.asarray(item), f"{kind} {index}"


class Tally:
    """Scores of predictions against masks, one image at a time: per image, and pooled over all pixels (and
    objects, with instances=True). What evaluate() reports; baselines are scored with it too."""

    def __init__(self, instances: bool = False):
        self.instances = instances
        self.pixels = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        self.objects = np.zeros((len(IOU_THRESHOLDS), 3), dtype=np.int64)
        self.per_image: list[dict] = []

    def add(self, predicted: np.ndarray, mask: np.ndarray, name: str = "") -> dict:
        counts = confusion_counts(predicted, mask)
        for key, value in counts.items():
            self.pixels[key] += value
        row = {"name": name, "index": len(self.per_image), **scores_from_counts(counts)}
        if self.instances:
            image_counts = instance_counts(as_instances(mask), predicted)
            self.objects += image_counts
            row.update(instance_scores(image_counts))
        self.per_image.append(row)
        return row

    def result(self) -> dict:
        pooled = {**scores_from_counts(self.pixels), **(instance_scores(self.objects) if self.instances else {})}
        return {**pooled, "n_images": len(self.per_image), "per_image": self.per_image}


def evaluate(model, images, masks, *, threshold: float = 0.5, progress=None, cancel=None,
             test_time_augmentation: bool | int = False, instances: bool = False, precision: str | None = None,
             min_size: int | None = None, channels=None) -> dict:
    """Predict each image and compare with its mask (mask > 0 is foreground; predicted label > 0 likewise).

    images/masks: equally long lists of 2D arrays or file paths (an (N, Y, X) array counts as N images).
    Returns {"iou", "dice", "pixel_error", "n_images", "per_image": [{"name", "iou", "dice",
    "pixel_error"}, ...]}; the totals pool the pixel counts of all images (not a mean of ratios).
    progress(done, total) counts images; cancel() is polled between images.
    test_time_augmentation: predict with the flips/rotations the model was trained for averaged (True: all;
    2 or 4: that many; prediction.forward_function).
    instances: also predict objects (the model's own method) and add "ap50", "map" (mean over IoU
    0.50…0.95), "f1_50", "n_true", "n_predicted", pooled over all objects of all images, and per image.
    Masks may then be instance label images (a 0/1 mask is split into its connected components).
    precision: as for predict (None: bfloat16 where the CPU has it).
    min_size: instances smaller than this (px) are dropped (None: the model's own).
    channels: which of the images' channels the model reads, as for predict.
    """
    from napari_unet.errors import Cancelled
    from napari_unet.prediction import predict
    from napari_unet.registry import load_model

    model = load_model(model)
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise NapariUNetError(f"{len(images)} images but {len(masks)} masks: give one mask per image")
    if not images:
        raise NapariUNetError("no images to evaluate: give at least one image with its mask")
    tally = Tally(instances)
    for index, (image_item, mask_item) in enumerate(zip(images, masks)):
        if cancel is not None and cancel():
            raise Cancelled("evaluation cancelled")
        image, name = _load(image_item, "image", index)
        mask, mask_name = _load(mask_item, "mask", index)
        image_spatial = image.shape[:2]
        if mask.ndim != 2 or mask.shape != image_spatial:
            raise NapariUNetError(
                f"mask '{mask_name}' is {'×'.join(map(str, mask.shape))} but its image '{name}' is "
                f"{'×'.join(map(str, image_spatial))}: a mask must have exactly its image's Y×X shape"
            )
        labels = predict(model, image, output="instances" if instances else "labels", threshold=threshold,
                         test_time_augmentation=test_time_augmentation, precision=precision, min_size=min_size,
                         channels=channels)
        tally.add(labels, mask, name)
        if progress is not None:
            progress(index + 1, len(images))
    return tally.result()

"""Score a model on images with ground-truth masks: IoU, Dice and pixel error pooled over all pixels, and
with instances=True the object metrics of the DSB 2018 / StarDist (ap50, map, f1_50) pooled over all objects.
A model with several classes (ModelMetadata.classes) is scored per class on class-id masks, and on the mean."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.scoring.metrics import (
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
        from napari_unet.storage.io import read_image

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


class ClassTally:
    """Per-class scores of class-id predictions against class-id masks (value k = class k, 255 not scored): IoU and
    Dice per class pooled over all pixels and their mean; with instances, AP per object class and their mean."""

    def __init__(self, class_names: list[str], object_values: list[int], instances: bool = False):
        self.class_names, self.object_values, self.instances = list(class_names), list(object_values), instances
        self.pixels = [{"tp": 0, "fp": 0, "fn": 0, "tn": 0} for _ in class_names]
        self.wrong, self.total = 0, 0
        self.objects = {value: np.zeros((len(IOU_THRESHOLDS), 3), dtype=np.int64) for value in self.object_values}
        self.per_image: list[dict] = []

    def add(self, predicted: np.ndarray, mask: np.ndarray, name: str = "", objects: np.ndarray | None = None) -> dict:
        """predicted: class ids (0 background, 1..n); mask: the truth as painted (255: not scored); objects: the
        model's instances of its object classes (needed with instances), scored where the mask is painted."""
        from napari_unet.labels.masks import IGNORE_LABEL

        predicted, mask = np.asarray(predicted), np.asarray(mask)
        valid = mask != IGNORE_LABEL
        classes, object_scores = {}, {}
        for value, class_name in enumerate(self.class_names, start=1):
            counts = confusion_counts(predicted == value, mask == value, valid)
            for key, count in counts.items():
                self.pixels[value - 1][key] += count
            classes[class_name] = scores_from_counts(counts)
            if self.instances and value in self.object_values:
                found = np.where(valid & (predicted == value), objects, 0)
                image_counts = instance_counts(as_instances(mask == value), found)
                self.objects[value] += image_counts
                object_scores[class_name] = instance_scores(image_counts)
        wrong, total = int(np.count_nonzero((predicted != mask) & valid)), int(np.count_nonzero(valid))
        self.wrong, self.total = self.wrong + wrong, self.total + total
        row = {"name": name, "index": len(self.per_image), **_means(classes, object_scores),
               "pixel_error": wrong / total if total else 0.0,
               "classes": {key: {**classes[key], **object_scores.get(key, {})} for key in classes}}
        self.per_image.append(row)
        return row

    def result(self) -> dict:
        classes = {name: scores_from_counts(counts) for name, counts in zip(self.class_names, self.pixels)}
        objects = {self.class_names[value - 1]: instance_scores(counts) for value, counts in self.objects.items()}
        return {**_means(classes, objects), "pixel_error": self.wrong / self.total if self.total else 0.0,
                "classes": {key: {**classes[key], **objects.get(key, {})} for key in classes},
                "n_images": len(self.per_image), "per_image": self.per_image}


def _means(classes: dict, objects: dict) -> dict:
    """The mean over classes of IoU and Dice, and over object classes of the object metrics."""
    means = {key: float(np.mean([c[key] for c in classes.values()])) for key in ("iou", "dice")}
    for key in ("ap50", "map", "f1_50"):
        if objects:
            means[key] = float(np.mean([o[key] for o in objects.values()]))
    return means


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
    A model with several classes: masks hold class ids (value k = its class k, 255 = not scored); the result's
    "iou" and "dice" are the means over classes, "classes" holds each class's {"iou", "dice"} (and, with
    instances, "ap50", "map", "f1_50" … of the object classes, whose mean is the result's "ap50" …).
    precision: as for predict (None: bfloat16 where the CPU has it).
    min_size: instances smaller than this (px) are dropped (None: the model's own).
    channels: which of the images' channels the model reads, as for predict.
    """
    from napari_unet.errors import Cancelled
    from napari_unet.inference.prediction import predict
    from napari_unet.storage.registry import load_model

    model = load_model(model)
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise NapariUNetError(f"{len(images)} images but {len(masks)} masks: give one mask per image")
    if not images:
        raise NapariUNetError("no images to evaluate: give at least one image with its mask")
    metadata = model.metadata
    several = metadata.instance_method == "classes"
    if several:
        from napari_unet.labels.classes import SegmentationClass, check_label_values
        from napari_unet.labels.postprocess import model_instances, model_labels

        declared = [SegmentationClass(name) for name in metadata.classes]
        tally = ClassTally(metadata.classes, metadata.object_class_values, instances)
    else:
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
        if several:  # classes and objects from one prediction, each by the model's own rule
            check_label_values(mask, declared, mask_name)
            outputs = np.asarray(predict(model, image, output="raw", test_time_augmentation=test_time_augmentation,
                                         precision=precision, channels=channels))
            objects = model_instances(outputs, metadata, model.config.n_classes, threshold=threshold,
                                      min_size=min_size) if instances else None
            tally.add(model_labels(outputs, metadata, threshold), mask, name, objects)
        else:
            tally.add(predict(model, image, output="instances" if instances else "labels", threshold=threshold,
                              test_time_augmentation=test_time_augmentation, precision=precision, min_size=min_size,
                              channels=channels), mask, name)
        if progress is not None:
            progress(index + 1, len(images))
    return tally.result()

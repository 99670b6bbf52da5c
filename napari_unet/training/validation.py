"""Validation during training: score pairs with the prediction engine, re-fit the output offset."""

from __future__ import annotations

import numpy as np

from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.model import SegmentationModel
from napari_unet.training.config import TrainHistory
from napari_unet.training.inputs import PreparedPair


def validation_probabilities(model: SegmentationModel, raw_image: np.ndarray, precision: str | None = None) -> np.ndarray:
    """(Y, X, n_classes) probabilities of one raw (Y, X, C) image, exactly as prediction computes them.

    precision: the training's own (a model whose weights change in place must be predicted in the precision
    it computes in: precision.with_precision)."""
    from napari_unet.inference.prediction import predict_probabilities

    return predict_probabilities(model, raw_image, precision=precision)


def score_pairs(model: SegmentationModel, pairs: list[PreparedPair], threshold: float = 0.5,
                probability_maps: list[np.ndarray] | None = None, precision: str | None = None) -> dict[str, float]:
    """Pooled IoU/Dice/pixel error over annotated pixels (mean over foreground classes for n > 1; a model of several
    classes: over its classes, each object class's boundary output counted as the class).

    probability_maps: the pairs' (Y, X, n_classes) maps if already predicted (else predicted here).
    """
    from napari_unet.labels.masks import target_classes
    from napari_unet.labels.postprocess import model_labels

    n_classes = model.config.n_classes
    classes = [1] if n_classes == 1 else list(range(1, n_classes))
    lookup = target_classes(model.metadata)  # several classes: scored as classes, not outputs
    if lookup is not None:
        classes = list(range(1, model.metadata.class_outputs))
    counts = {k: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for k in classes}
    wrong = total = 0
    from napari_unet.scoring.metrics import confusion_counts, scores_from_counts

    for index, pair in enumerate(pairs):
        if probability_maps is not None:
            probabilities = probability_maps[index]
        else:
            probabilities = validation_probabilities(model, pair.raw_image, precision)
        mask = pair.mask if lookup is None else lookup[pair.mask]
        if n_classes == 1:
            predicted = (probabilities[..., 0] >= threshold).astype(np.uint8)
        elif lookup is not None:
            predicted = model_labels(probabilities, model.metadata)
        else:
            predicted = np.argmax(probabilities, axis=-1).astype(np.uint8)
        valid = mask != IGNORE_LABEL
        wrong += int(np.count_nonzero((predicted != mask) & valid))
        total += int(np.count_nonzero(valid))
        for k in classes:
            for key, value in confusion_counts(predicted == k, mask == k, valid).items():
                counts[k][key] += value
    per_class = [scores_from_counts(counts[k]) for k in classes]
    return {
        "iou": float(np.mean([s["iou"] for s in per_class])),
        "dice": float(np.mean([s["dice"] for s in per_class])),
        "pixel_error": wrong / total if total else 0.0,
    }


def refit_output_offset(trained: SegmentationModel, pairs: list[PreparedPair], threshold: float, history: TrainHistory,
                         precision: str | None = None) -> None:
    """Fit the output offset on the validation pairs: the annotations just trained on decide it, not
    the parent's (a shipped model's data-set offset would be wrong on the user's masks)."""
    from napari_unet.labels.calibration import fit_output_offset, shift_probabilities

    trained.metadata.output_offset = (0.0, 0.0)
    maps = [validation_probabilities(trained, pair.raw_image, precision) for pair in pairs]
    fit = fit_output_offset(maps, [pair.mask for pair in pairs], threshold=threshold, n_classes=trained.config.n_classes)
    trained.metadata.output_offset = fit.offset
    history.output_offset = fit.offset
    moved = [shift_probabilities(m, fit.offset) for m in maps]
    scores = score_pairs(trained, pairs, threshold, probability_maps=moved)
    history.val_iou, history.val_dice = scores.get("iou"), scores.get("dice")

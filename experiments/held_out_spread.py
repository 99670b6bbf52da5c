"""How precisely do the held-out nuclei images measure a model, and is one model's lead over another real?

    .venv/bin/python experiments/held_out_spread.py [MODEL ...] [--split test|validation] [--resamples 4000]

MODEL: a shipped model's name or a .keras file (default: nuclei). Each model predicts instances on the recipe's
held-out test images (or its validation images) once, with its own post-processing; Otsu + watershed is scored on
the same images. A bootstrap over images (resampled with replacement, the same draws for every model, so pairs
stay paired) gives each model's pooled AP@0.5 and foreground IoU a 95 % interval, overall and for seen and unseen
kinds of images, and, for every model after the first, the interval of its difference from the first and the share
of draws in which it is ahead. The models' verdicts ("within the spread") rest on these intervals. Prints JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def per_image_counts(predicted: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """(images, 6): TP, FP, FN of objects at IoU > 0.5, then TP, FP, FN of foreground pixels."""
    from napari_unet.scoring.metrics import as_instances, confusion_counts, instance_counts

    rows = []
    for labels, mask in zip(predicted, masks):
        objects = instance_counts(as_instances(mask), labels, thresholds=(0.5,))[0]
        pixels = confusion_counts(labels, mask)
        rows.append([*objects, pixels["tp"], pixels["fp"], pixels["fn"]])
    return np.asarray(rows, dtype=np.float64)


def pooled(counts: np.ndarray) -> np.ndarray:
    """(..., 2): AP@0.5 and foreground IoU from counts summed over images (the last-but-one axis)."""
    total = counts.sum(axis=-2)
    return np.stack([total[..., 0] / total[..., 0:3].sum(axis=-1), total[..., 3] / total[..., 3:6].sum(axis=-1)],
                    axis=-1)


def spread(counts_by_model: dict[str, np.ndarray], chosen: np.ndarray, draws: np.ndarray) -> dict:
    """Point values on the chosen images, 95 % intervals over the draws (rows of image indices) and paired
    differences against the first model."""
    names = list(counts_by_model)
    points = {name: pooled(counts[chosen]) for name, counts in counts_by_model.items()}
    resampled = {name: pooled(counts[draws]) for name, counts in counts_by_model.items()}  # (resamples, 2)
    result = {}
    for name in names:
        point = points[name]
        low, high = np.percentile(resampled[name], [2.5, 97.5], axis=0)
        row = {metric: {"value": round(float(point[i]), 4), "interval_95": [round(float(low[i]), 4),
                                                                            round(float(high[i]), 4)]}
               for i, metric in enumerate(("ap50", "iou"))}
        if name != names[0]:
            difference = resampled[name] - resampled[names[0]]
            low, high = np.percentile(difference, [2.5, 97.5], axis=0)
            for i, metric in enumerate(("ap50", "iou")):
                row[metric][f"minus_{names[0]}"] = {
                    "value": round(float(point[i] - points[names[0]][i]), 4),
                    "interval_95": [round(float(low[i]), 4), round(float(high[i]), 4)],
                    "share_of_draws_ahead": round(float(np.mean(difference[:, i] > 0)), 3)}
        result[name] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["nuclei"], help="shipped names or .keras files")
    parser.add_argument("--split", choices=["test", "validation"], default="test")
    parser.add_argument("--resamples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from napari_unet.inference.prediction import predict
    from napari_unet.storage.registry import load_model
    from napari_unet.training.recipes import load_instances, of_seen_kind, otsu_watershed, recipe_by_name

    recipe = recipe_by_name("nuclei")
    stems = recipe.test_stems if args.split == "test" else recipe.validation_stems
    images, masks = load_instances(recipe, stems)
    counts_by_model = {}  # in order: the first model is the reference of the differences
    for name in args.models:
        model = load_model(name)
        counts_by_model[name] = per_image_counts([predict(model, image, output="instances") for image in images],
                                                 masks)
    counts_by_model["otsu_watershed"] = per_image_counts([otsu_watershed(image) for image in images], masks)

    rng = np.random.default_rng(args.seed)
    seen = np.asarray(of_seen_kind(recipe, stems))
    result = {"split": args.split, "images": len(stems), "resamples": args.resamples}
    for part, chosen in (("all", np.arange(len(stems))), ("seen_kinds", np.flatnonzero(seen)),
                         ("unseen_kinds", np.flatnonzero(~seen))):
        if len(chosen) == 0:
            continue
        # Resample within each part separately, so every draw keeps the part's number of images.
        draws = chosen[rng.integers(0, len(chosen), size=(args.resamples, len(chosen)))]
        result[part] = {"images": int(len(chosen)), **spread(counts_by_model, chosen, draws)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

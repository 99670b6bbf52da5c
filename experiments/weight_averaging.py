"""Which weights of a recipe run to ship: the best epoch on validation, the last epoch, or the mean of the
last N epochs (stochastic weight averaging, TrainConfig.average_last_epochs). One training run, three models.

    .venv/bin/python experiments/weight_averaging.py membranes [--average 15] [--set KEY=VALUE ...]
        [--recipe-set unet.dropout=0.5]
    .venv/bin/python experiments/weight_averaging.py nuclei --output DIR [--average 20] [--set seed=1 ...]

Trains the recipe of napari_unet/training/recipes.py on its split (its settings, plus average_last_epochs),
keeps the weights of every epoch's end that matter, fits each model's output offset on the validation images
as the recipe does, and prints validation and held-out pixel error / IoU at threshold 0.5 for each (1 view).
The three models share one trajectory, so the comparison is free of the run-to-run spread between seeds.
Binary (membranes) recipes: pixel error at threshold 0.5. Boundary-class (nuclei) recipes: each candidate
goes through the recipe's own measure_instances_and_save (post-processing chosen on validation, held-out AP
with 1 and 8 views, by kind) into DIR/<candidate>/, so a winner is a shippable model with its card. About as
long as the recipe plus ~10 min per nuclei candidate on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=["membranes", "nuclei"])
    parser.add_argument("--output", type=Path, help="nuclei: folder for the candidates' models and cards")
    parser.add_argument("--average", type=int, default=15, help="epochs averaged (default 15: the last quarter of 60)")
    parser.add_argument("--recipe-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override Recipe fields (JSON values), e.g. core_fraction=0.5; unet.KEY=VALUE for UNetConfig")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override recipe settings (JSON values); augmentation.KEY=VALUE for AugmentConfig fields")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from napari_unet.inference.prediction import predict
    from napari_unet.labels.calibration import fit_output_offset
    from napari_unet.scoring.evaluation import evaluate
    from napari_unet.training import TrainConfig, loop
    from napari_unet.training.recipes import load_split, recipe_by_name, train_from_scratch

    recipe_fields = _key_values(args.recipe_set)
    unet = _pop_prefixed(recipe_fields, "unet")
    recipe = dataclasses.replace(recipe_by_name(args.recipe), **recipe_fields)
    if unet:  # e.g. unet.dropout=0.5
        recipe = dataclasses.replace(recipe, unet=dataclasses.replace(recipe.unet, **unet))
    overrides = _key_values(args.set)
    augmentation = _pop_prefixed(overrides, "augmentation")
    settings = {**recipe.train_settings, "average_last_epochs": args.average, **overrides}
    if augmentation:  # e.g. augmentation.object_brightness_probability=0.5
        settings["augmentation"] = dataclasses.replace(settings["augmentation"], **augmentation)
    config = TrainConfig(**settings)
    train, validation, test = (load_split(recipe, stems) for stems in
                               (recipe.train_stems, recipe.validation_stems, recipe.test_stems))

    kept: dict[str, list] = {}
    end_epoch = loop.TrainingRun.end_epoch

    def remembering_end_epoch(run, epoch, losses, started):  # the last epoch's weights, before _finish
        end_epoch(run, epoch, losses, started)
        kept["last"] = run.trained.keras_model.get_weights()
        kept["best"] = run.best_weights
        kept["best_epoch"], kept["best_val_iou"] = run.history.best_epoch, run.best_metrics.get("iou")
        print(f"epoch {epoch}: loss {np.mean(losses):.4f} val_iou {run.history.epochs[-1]['val_iou']:.4f}", flush=True)

    loop.TrainingRun.end_epoch = remembering_end_epoch
    averaged, history, training = train_from_scratch(recipe, *train, config, validation=validation)
    print(f"best single epoch val IoU {history.best_epoch_val_iou}, average of {history.averaged_epochs}: "
          f"{history.val_iou}", flush=True)
    # (name, weights (None: the averaged model as trained), what its card's training record says instead of the run's)
    candidates = (
        ("best epoch on validation", kept["best"], {"best_epoch": kept["best_epoch"], "best_val_iou": kept["best_val_iou"],
                                                   "averaged_epochs": 0, "best_single_epoch_val_iou": None}),
        ("last epoch", kept["last"], {"best_epoch": None, "averaged_epochs": 0}),
        (f"mean of the last {args.average} epochs", None, {}),
    )
    if recipe.targets == "boundaries":
        return _measure_instance_candidates(recipe, averaged, training, candidates, args.output)

    rows = []
    for name, weights, _ in candidates:
        candidate = averaged.copy()
        if weights is not None:
            candidate.keras_model.set_weights(weights)
        candidate.metadata.output_offset = (0.0, 0.0)
        fit = fit_output_offset([predict(candidate, image, output="probabilities") for image in validation[0]],
                                validation[1])
        candidate.metadata.output_offset = fit.offset
        val = evaluate(candidate, *validation, threshold=0.5)
        held_out = evaluate(candidate, *test, threshold=0.5)
        rows.append((name, fit.offset, val, held_out))
        print(f"{name}: offset {fit.offset}, validation {val['pixel_error']:.4f}, held-out pixel error "
              f"{held_out['pixel_error']:.4f} IoU {held_out['iou']:.4f}", flush=True)
    print("\n| weights | output offset | validation pixel error | held-out pixel error | held-out IoU |")
    print("|---|---|---|---|---|")
    for name, offset, val, held_out in rows:
        print(f"| {name} | {offset} | {val['pixel_error']:.4f} | {held_out['pixel_error']:.4f} | {held_out['iou']:.4f} |")
    return 0


def _key_values(items: list[str]) -> dict:
    """KEY=VALUE arguments with JSON values."""
    return {key: json.loads(value) for key, value in (item.split("=", 1) for item in items)}


def _pop_prefixed(values: dict, prefix: str) -> dict:
    """The PREFIX.KEY entries of `values`, removed from it, keyed by KEY (the fields of a nested dataclass)."""
    return {key.split(".", 1)[1]: values.pop(key) for key in list(values) if key.startswith(prefix + ".")}


def _measure_instance_candidates(recipe, averaged, training: dict, candidates, output: Path | None) -> int:
    """Each candidate measured and saved as the recipe would ship it, its card's training record saying which
    weights it holds; a table of their instance metrics."""
    from napari_unet.training.recipes import keep_and_measure

    if output is None:
        raise SystemExit("nuclei: give --output DIR for the candidates' models and cards")
    rows = []
    for name, weights, record in candidates:
        candidate = averaged.copy()
        if weights is not None:
            candidate.keras_model.set_weights(weights)
        kept = f"{name}; the run also summed weights for the averaged candidate, which does not change training"
        card = keep_and_measure(recipe, candidate, {**training, **record, "kept": kept}, output / name.split()[0])
        rows.append((name, card["metrics_validation"], card["metrics_held_out"]))
    print("\n| weights | validation AP@0.5 | held-out AP@0.5 (1 / 8 views) | held-out mean AP | held-out IoU |")
    print("|---|---|---|---|---|")
    for name, val, held_out in rows:
        single, views = held_out["single_pass"], held_out["with_test_time_augmentation"]
        print(f"| {name} | {val['ap50']:.4f} | {single['ap50']:.4f} / {views['ap50']:.4f} | {single['map']:.4f} "
              f"| {single['iou']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

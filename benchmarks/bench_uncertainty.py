"""Does the uncertainty map point at real errors, and does correcting where it points save work?

    .venv/bin/python benchmarks/bench_uncertainty.py ranks  [--views 1 8] [--tile 64] [--nuclei-images 30]
    .venv/bin/python benchmarks/bench_uncertainty.py rounds [--start membranes|nuclei] [--seconds 30] [--tiles 3]
                                                            [--random-seeds 3]

ranks: on held-out images (ISBI slices 20-24 with the shipped `membranes` model; the shipped `nuclei`
model's held-out test images, evenly picked), split into tiles, the Spearman rank correlation between a
tile's mean uncertainty and its fraction of wrong pixels (labels > 0 vs mask > 0), for every
uncertainty method (napari_unet.inference.uncertainty.METHODS) and number of test-time-augmentation views.

rounds: a scripted user on nuclei_dsb2018 (images: see _pool_and_evaluation) corrects `--tiles` tiles
per round, either the *Next* tiles (most uncertain, not yet corrected, over all images) or random
uncorrected tiles (same tile size, so the same number of corrected pixels; one user per seed); the
corrected tiles hold the ground truth, the rest of each pair is 255 ("not annotated"). Three
Project.round calls per user with a TrainConfig time budget; prints the evaluation IoU per round
(the active model's: a rolled-back round keeps the previous IoU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO_ROOT, ROUND_CASES, SHARED_DATA, round_case_stems


def _held_out(name: str, n_nuclei: int) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(model name, [(image, mask)]) of the shipped model's held-out images (as its model card lists them)."""
    from napari_unet.storage.io import read_image

    if name == "isbi":
        folder, model, stems = SHARED_DATA / "isbi2012", "membranes", [f"{n:02d}" for n in range(20, 25)]
        suffix = ".png"
    else:
        card = json.loads((REPO_ROOT / "napari_unet" / "models" / "nuclei.json").read_text())
        test = card["data"]["split"]["test_held_out"]
        picks = np.linspace(0, len(test) - 1, min(n_nuclei, len(test))).round().astype(int)
        folder, model, stems, suffix = SHARED_DATA / "nuclei_dsb2018", "nuclei", [test[i] for i in picks], ".tif"
    return model, [(read_image(folder / "images" / f"{s}{suffix}"), read_image(folder / "masks" / f"{s}{suffix}"))
                   for s in stems]


def ranks(views_list: list[int], tile_size: int, n_nuclei: int) -> dict:
    from scipy.stats import spearmanr

    from napari_unet import load_model
    from napari_unet.inference.channels import as_planes
    from napari_unet.inference.prediction import predict_probabilities
    from napari_unet.inference.uncertainty import METHODS, tiles, uncertainty_map
    from napari_unet.labels.postprocess import semantic_labels

    results = {}
    print("| data | views | method | tiles | Spearman rho | wrong px in top 10% tiles / all tiles | seconds |")
    print("|---|---|---|---|---|---|---|")
    for data in ("isbi", "nuclei"):
        model_name, pairs = _held_out(data, n_nuclei)
        model = load_model(model_name)
        n_classes = model.config.n_classes
        for views in views_list:
            started = time.perf_counter()
            wrong_fractions, maps = [], {method: [] for method in METHODS}
            for image, mask in pairs:
                # The views' mean and mean of squares from one pass: every method from the same prediction.
                plane = as_planes(np.asarray(image), model.config.n_channels)
                probabilities, squares = predict_probabilities(model, plane, test_time_augmentation=views,
                                                               with_squares=True)
                labels = semantic_labels(probabilities[..., 0] if n_classes == 1 else probabilities, 0.5, n_classes,
                                         model.metadata.background_threshold)
                wrong = (labels > 0) != (np.asarray(mask) > 0)
                grid = tiles(wrong.shape, tile_size)
                wrong_fractions += [float(wrong[tile].mean()) for tile in grid]
                for method in METHODS:
                    if method != "entropy" and views == 1:
                        continue
                    uncertainty = uncertainty_map(probabilities, squares, method)
                    maps[method] += [float(uncertainty[tile].mean()) for tile in grid]
            seconds = time.perf_counter() - started
            for method, scores in maps.items():
                if not scores:
                    continue
                rho = float(spearmanr(scores, wrong_fractions).statistic)
                # What Next would show first: the most uncertain tenth of the tiles, against an average tile.
                top = np.argsort(scores)[::-1][: max(1, len(scores) // 10)]
                enrichment = float(np.mean(np.array(wrong_fractions)[top]) / max(np.mean(wrong_fractions), 1e-12))
                results[f"{data}/{views}/{method}"] = {"spearman": round(rho, 3), "top_tenth_enrichment": round(enrichment, 2)}
                print(f"| {data} ({model_name}, {len(pairs)} images) | {views} | {method} | {len(scores)} | "
                      f"{rho:.3f} | {enrichment:.1f}x | {seconds:.0f} |", flush=True)
    return results


def _truth_mask(mask: np.ndarray, corrected: np.ndarray) -> np.ndarray:
    from napari_unet.labels.masks import IGNORE_LABEL, labels_from_ground_truth

    labels = labels_from_ground_truth(mask).astype(np.int32)
    return np.where(corrected, labels, IGNORE_LABEL).astype(labels.dtype if labels.max() < 255 else np.int32)


def _pool_and_evaluation(start: str) -> tuple[list[str], list[str]]:
    """Images the scripted user corrects and images every round is scored on.

    membranes: the nuclei picks of project_rounds.py (ROUND_CASES; a model that has never seen nuclei);
    nuclei: a kind of image the shipped nuclei model never saw (its held-out 512x640 fields).
    """
    import csv

    folder = SHARED_DATA / "nuclei_dsb2018"
    if start == "nuclei":
        card = json.loads((REPO_ROOT / "napari_unet" / "models" / "nuclei.json").read_text())
        with open(folder / "manifest.csv") as manifest:
            sizes = {row["id"]: (int(row["height"]), int(row["width"])) for row in csv.DictReader(manifest)}
        unseen = [stem for stem in card["data"]["split"]["test_held_out"] if sizes[stem] == (512, 640)]
        return unseen[:3], unseen[3:7]
    case = ROUND_CASES["nuclei"]
    pool, evaluation = case["pick"](round_case_stems(folder, case["size"]))
    return list(pool), list(evaluation)


def _scripted_rounds(start: str, seconds: float, tiles_per_round: int, tile_size: int, random_seeds: int,
                     n_rounds: int = 3) -> dict:
    from napari_unet import predict
    from napari_unet.errors import NapariUNetError
    from napari_unet.inference.uncertainty import next_tile, tiles
    from napari_unet.labels.masks import labels_from_ground_truth
    from napari_unet.project import Project
    from napari_unet.storage.io import find_pairs, read_image
    from napari_unet.training import TrainConfig

    folder = SHARED_DATA / "nuclei_dsb2018"
    files = {image.stem: (image, mask) for image, mask in find_pairs(folder / "images", folder / "masks")}
    pool_stems, eval_stems = _pool_and_evaluation(start)
    pool = {stem: tuple(read_image(path) for path in files[stem]) for stem in pool_stems}
    config = TrainConfig(seconds=seconds)
    summary = {"start": start, "seconds": seconds, "tiles_per_round": tiles_per_round, "tile_size": tile_size,
               "pool": list(pool_stems), "evaluate": list(eval_stems)}
    runs = [("next", 0)] + [("random", seed) for seed in range(random_seeds)]
    for strategy, seed in runs:
        rng = np.random.default_rng(seed)
        root = Path(tempfile.mkdtemp(prefix=f"uncertainty-{strategy}-")) / "project"
        project = Project.init(root, start)
        for stem in eval_stems:
            image, mask = (read_image(path) for path in files[stem])
            project.add_pair(image, labels_from_ground_truth(mask), evaluation=True, name=stem)
        corrected = {stem: np.zeros(image.shape[:2], bool) for stem, (image, _) in pool.items()}
        rows = []
        for number in range(1, n_rounds + 1):
            model = project.load_model(project.active)
            for _ in range(tiles_per_round):
                if strategy == "next":  # the Next button over every image: the most uncertain uncorrected tile
                    best = None
                    for stem, (image, _) in pool.items():
                        uncertainty = _uncertainty_of(predict, model, image, stem, number)
                        tile = next_tile(uncertainty, corrected[stem], tile_size)
                        if tile is not None:
                            score = float(uncertainty[tile].mean())
                            if best is None or score > best[0]:
                                best = (score, stem, tile)
                    _, stem, tile = best
                else:
                    choices = [(stem, tile) for stem, (image, _) in pool.items()
                               for tile in tiles(image.shape[:2], tile_size) if not corrected[stem][tile].any()]
                    stem, tile = choices[rng.integers(len(choices))]
                corrected[stem][tile] = True
            for stem, (image, mask) in pool.items():
                if not corrected[stem].any():
                    continue
                if stem in project.training.names():
                    project.training.remove(stem)
                project.add_pair(image, _truth_mask(mask, corrected[stem]), name=stem, sparse=True)
            started = time.monotonic()
            n_corrected = int(sum(c.sum() for c in corrected.values()))
            try:
                record = project.round(config).record
            except NapariUNetError as refused:  # e.g. every corrected tile is background: nothing to learn yet
                rows.append({"round": number, "corrected_pixels": n_corrected, "skipped": str(refused),
                             "iou_active": rows[-1]["iou_active"] if rows else None})
                print(f"{strategy:6s} {seed} round {number}: {n_corrected} corrected px, no round: {refused}", flush=True)
                continue
            after = record.eval.after["iou"] if record.kept else record.eval.before["iou"]
            row = {"round": number, "corrected_pixels": n_corrected,
                   "iou_before": round(record.eval.before["iou"], 4),
                   "iou_after": round(record.eval.after["iou"], 4), "kept": record.kept,
                   "iou_active": round(after, 4), "wall_seconds": round(time.monotonic() - started, 1)}
            rows.append(row)
            print(f"{strategy:6s} {seed} round {number}: {row['corrected_pixels']} corrected px, IoU "
                  f"{row['iou_before']:.3f} -> {row['iou_after']:.3f} ({'kept' if row['kept'] else 'rolled back'}), "
                  f"{row['wall_seconds']} s", flush=True)
        summary[f"{strategy}-{seed}"] = rows
    return summary


_CACHE: dict = {}


def _uncertainty_of(predict, model, image, stem, number):
    """One prediction per image and round (Next is pressed several times on the same prediction)."""
    key = (stem, number)
    if key not in _CACHE:
        _CACHE[key] = predict(model, image, output="probabilities", with_uncertainty=True)[1]
    return _CACHE[key]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rank_parser = commands.add_parser("ranks")
    rank_parser.add_argument("--views", type=int, nargs="+", default=[1, 8])
    rank_parser.add_argument("--tile", type=int, default=64)
    rank_parser.add_argument("--nuclei-images", type=int, default=30)
    round_parser = commands.add_parser("rounds")
    round_parser.add_argument("--start", default="membranes")
    round_parser.add_argument("--seconds", type=float, default=30.0)
    round_parser.add_argument("--tiles", type=int, default=3, help="tiles corrected per round")
    round_parser.add_argument("--tile", type=int, default=64)
    round_parser.add_argument("--random-seeds", type=int, default=3, help="random-tile users (seeds 0..N-1)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "ranks":
        summary = ranks(args.views, args.tile, args.nuclei_images)
    else:
        summary = _scripted_rounds(args.start, args.seconds, args.tiles, args.tile, args.random_seeds)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Live mode against ilastik's approach: evaluation IoU as a scripted user corrects more and more, in one run.

    .venv/bin/python benchmarks/bench_live.py [--start membranes] [--tiles 16] [--burst 3] [--no-focus]

The image of bench_round.py (a 512² DSB 2018 nuclei crop): the user corrects the left half one 64² tile at a
time (its ground truth stands for the strokes; only touched tiles count, as in the dock); the right half is the
evaluation pair. After each new tile, live mode (live.LiveTrainer: one open training run) trains one burst of
--burst seconds and is scored on the right half. The baseline in the same run is ilastik's pixel classifier as
a user would get it from scikit-image: a random forest on multiscale features (`fit_segmenter`), trained on the
same touched pixels, predicting the right half. Prints elapsed seconds since the first stroke and both IoUs.
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

from common import forest_classifier, forest_features, nuclei_half_corrected

TILE = 64


def _forest_iou(image, labels, touched, eval_image, eval_truth) -> tuple[float, float]:
    """IoU of scikit-image's random forest on multiscale features, trained on the touched pixels; its seconds."""
    from skimage.future import fit_segmenter, predict_segmenter

    started = time.perf_counter()
    training_labels = np.where(touched, (labels > 0).astype(np.uint8) + 1, 0)  # 0 = unlabelled, 1 bg, 2 fg
    classifier = fit_segmenter(training_labels, forest_features(image), forest_classifier())
    predicted = predict_segmenter(forest_features(eval_image), classifier) == 2
    seconds = time.perf_counter() - started
    truth = eval_truth > 0
    union = np.logical_or(predicted, truth).sum()
    return (float(np.logical_and(predicted, truth).sum() / union) if union else 1.0), seconds


def run(start: str, n_tiles: int, burst_seconds: float, case: tuple | None = None,
        overrides: dict | None = None, focus: bool = True) -> list[dict]:
    """case: (512² image, its labels with the right half 255, right-half image, right-half truth); None:
    common.nuclei_half_corrected().
    overrides: TrainConfig fields for live mode (None: live mode's own defaults). focus: tell live mode which
    pixels the user changed (touched pixels where the truth differs from the start's prediction), as the dock
    does, so half of the patches are centred on them; False: every annotated pixel alike."""
    from napari_unet.project import Project
    from napari_unet.training.live import LiveTrainer, live_mask

    image, corrected, eval_image, eval_truth = case if case is not None else nuclei_half_corrected()
    truth_left = np.where(corrected == 255, 0, corrected)[:, :256]
    left = image[:, :256]
    root = Path(tempfile.mkdtemp(prefix="bench-live-")) / "project"
    project = Project.init(root, start)
    project.add_pair(eval_image, eval_truth, evaluation=True, name="right-half")
    if overrides:
        from napari_unet.training import TrainConfig

        trainer = LiveTrainer(project, start, TrainConfig(validation_fraction=0.0, **overrides))
    else:
        trainer = LiveTrainer(project, start)
    order = [(r, c) for r in range(0, 512, TILE) for c in range(0, 256, TILE)]
    order = [order[i] for i in np.random.default_rng(0).permutation(len(order))][:n_tiles]
    touched = np.zeros(left.shape, dtype=bool)
    if focus:
        from napari_unet.inference.prediction import predict

        wrong = (np.asarray(predict(project.load_model(start), left, output="labels")) > 0) != (truth_left > 0)
    rows = []
    first_stroke = time.perf_counter()
    for number, (r, c) in enumerate(order, start=1):
        touched[r:r + TILE, c:c + TILE] = True
        if not np.any(truth_left[touched] > 0):
            continue  # nothing to learn from yet (a user would not start with an empty corner either)
        project.add_pair(left, live_mask(truth_left, touched, margin=0), name="live", replace=True,
                         corrected_pixels=int(touched.sum()))
        trainer.reload({"live": touched & wrong} if focus else None)
        burst = trainer.train(burst_seconds)
        live_at = time.perf_counter() - first_stroke
        forest_iou, forest_seconds = _forest_iou(left, truth_left, touched, eval_image, eval_truth)
        rows.append({"tiles": number, "corrected_px": int(touched.sum()), "seconds": round(live_at, 1),
                     "live_steps": burst.total_steps, "live_iou": round(burst.iou, 3),
                     "forest_iou": round(forest_iou, 3), "forest_seconds": round(forest_seconds, 2)})
        print(f"{number:3d} tiles ({touched.sum():6d} px) at {live_at:6.1f} s: live U-Net IoU {burst.iou:.3f} "
              f"({burst.total_steps} steps) | forest IoU {forest_iou:.3f} ({forest_seconds:.1f} s) | load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="membranes")
    parser.add_argument("--tiles", type=int, default=16, help="tiles of 64² the user corrects (the left half has 32)")
    parser.add_argument("--burst", type=float, default=3.0, help="seconds of training after each tile")
    parser.add_argument("--no-focus", action="store_true",
                        help="do not tell live mode which pixels were corrected (the dock always does)")
    args = parser.parse_args()
    print(json.dumps(run(args.start, args.tiles, args.burst, focus=not args.no_focus)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

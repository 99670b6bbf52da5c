"""Where a fine-tuning round's time goes: one *Fine-tune* click on one corrected nuclei image, profiled.

    .venv/bin/python benchmarks/bench_round.py [--start membranes] [--set seconds=45 --set learning_rate=1e-3 ...]

The cross-domain case: a 512² crop of a DSB 2018 nuclei image (never trained on by the shipped models'
recipes), its left half corrected (the ground truth stands for the user's labels, the right half is
"not annotated", 255), its right half the evaluation pair. One Project.round with TrainConfig's
defaults (or the --set overrides), from the `membranes` model (a new domain).
Phases come from the round's own log and progress callbacks; the patch sampler is timed by wrapping it.
Prints a table (seconds per phase, share of the round) and the IoU on the uncorrected half before/after.
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

from common import nuclei_half_corrected, train_config_overrides


def run(start: str, overrides: dict) -> dict:
    from napari_unet.project import Project
    from napari_unet.training import TrainConfig, sampling

    image, corrected, eval_image, eval_truth = nuclei_half_corrected()
    root = Path(tempfile.mkdtemp(prefix="bench-round-")) / "project"
    project = Project.init(root, start)
    project.add_pair(image, corrected, name="left-half-corrected", sparse=True)
    project.add_pair(eval_image, eval_truth, evaluation=True, name="right-half")
    config = TrainConfig(**overrides)

    marks: list[tuple[str, float]] = []
    steps: list[float] = []
    epochs: list[float] = []
    sampling_seconds = [0.0]
    original = sampling.PatchSampler.sample_batch

    def timed_sample(self, batch_size):
        started = time.perf_counter()
        try:
            return original(self, batch_size)
        finally:
            sampling_seconds[0] += time.perf_counter() - started

    sampling.PatchSampler.sample_batch = timed_sample

    def log(text: str) -> None:
        marks.append((text, time.perf_counter()))

    def progress(event) -> None:
        now = time.perf_counter()
        (steps if event.kind == "step" else epochs).append(now)

    started = time.perf_counter()
    try:
        record = project.round(config, log=log, progress=progress).record
    finally:
        sampling.PatchSampler.sample_batch = original
    finished = time.perf_counter()
    at = {}
    for text, t in marks:  # the first line starting with each of these words marks a phase
        for word in ("scoring the new version", "scoring", "fine-tuning"):
            if text.startswith(word):
                at.setdefault(word, t)
                break
    t_score_parent = at["fine-tuning"] - at["scoring"]
    first_step_end = steps[0]
    step_times = np.diff([first_step_end, *steps[1:]]) if len(steps) > 1 else np.array([])
    epoch_events = [t for t in epochs[:-1]]  # the last is "done"
    # validation = from an epoch's last step to its epoch event
    validation = 0.0
    for epoch_end in epoch_events:
        before = [s for s in steps if s <= epoch_end]
        validation += epoch_end - (before[-1] if before else epoch_end)
    training_end = epochs[-1]  # "done": after the best weights and the offset re-fit
    last_epoch = epoch_events[-1] if epoch_events else steps[-1]
    t_setup_first_step = first_step_end - at["fine-tuning"]
    phases = {
        "before training (lock, snapshot, load parent)": at["scoring"] - started,
        "score parent on evaluation pair": t_score_parent,
        "finetune setup + first step (incl. trace)": t_setup_first_step,
        "steps 2..n (sampling + train step)": float(step_times.sum()) - (validation - 0.0),
        "  of which patch sampling + augmentation": sampling_seconds[0],
        "validation passes (per epoch)": validation,
        "finish (best weights, offset re-fit)": training_end - last_epoch,
        "score new version + guard + save": finished - at["scoring the new version"],
    }
    total = finished - started
    evaluation = record.eval
    return {"start": start, "overrides": overrides, "total_seconds": round(total, 1), "steps": record.training.steps,
            "median_step_seconds": round(float(np.median(step_times)), 3) if step_times.size else None,
            "phases": {k: round(v, 2) for k, v in phases.items()},
            "iou_before": round(evaluation.before["iou"], 3), "iou_after": round(evaluation.after["iou"], 3),
            "verdict": evaluation.verdict, "kept": record.kept, "load": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="membranes")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig override")
    args = parser.parse_args()
    result = run(args.start, train_config_overrides(args.set))
    print(f"round from '{result['start']}' {result['overrides'] or '(defaults)'}: {result['total_seconds']} s, "
          f"{result['steps']} steps (median {result['median_step_seconds']} s), IoU on the uncorrected half "
          f"{result['iou_before']} -> {result['iou_after']} ({result['verdict']}), load {result['load']:.1f}")
    for name, seconds in result["phases"].items():
        print(f"  {name:<50} {seconds:7.2f} s  {100 * seconds / result['total_seconds']:5.1f} %")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

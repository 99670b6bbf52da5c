"""Several classes on real images: nuclei and the ring of cytoplasm-like pixels around them, one project round.

    .venv/bin/python benchmarks/two_classes.py [--start nuclei] [--ring 4] [--seconds S]

nuclei_dsb2018 fields (the picks of project_rounds.py "nuclei": three 256x256 fields to correct, four others to
evaluate on). Class 1 "nucleus" is every nucleus of the ground truth; class 2 "rim" is the ring of `--ring` px
around each nucleus (outside it, not on another nucleus): a second class that the image shows only through its
nearness to a nucleus. The project starts from the shipped one-class model, so the round gives it a new output
layer; TrainConfig's defaults otherwise. Prints the round's per-class IoU before and after, and evaluate()'s
per-class IoU, Dice and AP of the nuclei on the evaluation fields, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import SHARED_DATA


def two_class_mask(instances: np.ndarray, ring: int) -> np.ndarray:
    """uint8: 1 on nuclei, 2 on the `ring` px around them (not on a nucleus), 0 elsewhere."""
    from scipy import ndimage

    nuclei = instances > 0
    near = ndimage.distance_transform_edt(~nuclei) <= ring
    mask = np.zeros(instances.shape, np.uint8)
    mask[near & ~nuclei] = 2
    mask[nuclei] = 1
    return mask


def run(start: str, ring: int, seconds: float | None) -> dict:
    from napari_unet.labels.classes import SegmentationClass
    from napari_unet.project import Project
    from napari_unet.scoring.evaluation import evaluate
    from napari_unet.storage.io import find_pairs, read_image
    from napari_unet.training import TrainConfig

    folder = SHARED_DATA / "nuclei_dsb2018"
    files = {image.stem: (image, mask) for image, mask in find_pairs(folder / "images", folder / "masks")}
    # project_rounds.py's picks: every 5th of the first 40 fields of 256x256, three to correct, four to evaluate on
    stems = [stem for stem in sorted(files) if read_image(files[stem][0]).shape[:2] == (256, 256)][:40:5]
    train_stems, eval_stems = stems[:3], stems[3:7]
    root = Path(tempfile.mkdtemp(prefix="two-classes-")) / "project"
    project = Project.init(root, start, classes=[SegmentationClass("nucleus"), SegmentationClass("rim", objects=False)])
    loaded = {stem: (read_image(files[stem][0]), two_class_mask(read_image(files[stem][1]), ring))
              for stem in [*train_stems, *eval_stems]}
    for stem in eval_stems:
        project.add_pair(*loaded[stem], evaluation=True, name=stem)
    for stem in train_stems:
        project.add_pair(*loaded[stem], name=stem)
    config = TrainConfig() if seconds is None else TrainConfig(seconds=seconds)
    started = time.monotonic()
    outcome = project.round(config, log=lambda text: print(f"[round] {text}", file=sys.stderr, flush=True))
    round_seconds = time.monotonic() - started
    scores = evaluate(outcome.model, [loaded[s][0] for s in eval_stems], [loaded[s][1] for s in eval_stems],
                      instances=True)
    return {"start": start, "ring_px": ring, "train": train_stems, "evaluation_fields": eval_stems,
            "round_seconds": round(round_seconds, 1), "kept": outcome.kept, "reason": outcome.reason,
            "round_eval": outcome.record.eval.to_json(),
            "evaluate": {"mean_iou": round(scores["iou"], 4), "mean_dice": round(scores["dice"], 4),
                         "classes": {name: {key: round(float(value), 4) for key, value in values.items()}
                                     for name, values in scores["classes"].items()}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="nuclei")
    parser.add_argument("--ring", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    print(json.dumps(run(args.start, args.ring, args.seconds), indent=2))


if __name__ == "__main__":
    main()

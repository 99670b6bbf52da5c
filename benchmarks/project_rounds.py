"""A scripted user: three project rounds on real data, then one round on deliberately wrong masks.

    .venv/bin/python benchmarks/project_rounds.py nuclei   [--start membranes] [--out DIR]
    .venv/bin/python benchmarks/project_rounds.py isbi     [--start membranes]

Each round adds one more corrected image (its ground truth stands for the user's corrections) and runs
Project.round with TrainConfig's defaults; the evaluation pairs are fixed images never trained on.
The last round trains on inverted masks: the guard must roll it back and keep the previous version.
Prints one line per round and a JSON summary (for the README and the notes).
isbi: the shipped `membranes` is a final model trained on every ISBI slice, so its evaluation slices are not
new to it; start from a model trained on slices 00-17 (--start FILE.keras) to measure a round there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROUND_CASES, SHARED_DATA, round_case_stems, train_config_overrides


def run(case_name: str, start: str, out: Path | None, learning_rate: float | None = None,
        overrides: dict | None = None) -> dict:
    from napari_unet.labels.masks import labels_from_ground_truth
    from napari_unet.project import Project
    from napari_unet.storage.io import find_pairs, read_image
    from napari_unet.training import TrainConfig

    case = ROUND_CASES[case_name]
    folder = SHARED_DATA / case["folder"]
    files = {image.stem: (image, mask) for image, mask in find_pairs(folder / "images", folder / "masks")}
    train_stems, eval_stems = case["pick"](round_case_stems(folder, case["size"]))
    root = out or Path(tempfile.mkdtemp(prefix=f"rounds-{case_name}-")) / "project"
    project = Project.init(root, start)
    for stem in eval_stems:
        image, mask = (read_image(path) for path in files[stem])
        project.add_pair(image, labels_from_ground_truth(mask), evaluation=True, name=stem)
    overrides = dict(overrides or {})
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    config = TrainConfig(**overrides)
    rows = []
    for number, stem in enumerate(train_stems, start=1):
        image, mask = (read_image(path) for path in files[stem])
        project.add_pair(image, labels_from_ground_truth(mask), name=stem)
        started = time.monotonic()
        record = project.round(config).record
        rows.append({**_row(record), "pairs": number, "wall_seconds": round(time.monotonic() - started, 1)})
        print(_line(rows[-1]), flush=True)
    # The "user" inverts every mask by mistake: background painted as foreground and back.
    for name in project.training.names():
        image, mask = project.training.load(name)
        project.training.remove(name)
        project.add_pair(image, (mask == 0).astype(np.uint8), name=name)
    started = time.monotonic()
    record = project.round(config).record
    rows.append({**_row(record), "pairs": len(train_stems), "wrong_masks": True,
                 "wall_seconds": round(time.monotonic() - started, 1)})
    print(_line(rows[-1]), flush=True)
    return {"case": case_name, "start": start, "train": list(train_stems), "evaluate": list(eval_stems),
            "settings": {"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch,
                         "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                         "patch_size": config.patch_size},
            "rounds": rows, "active_at_end": project.active, "project": str(root)}


def _row(record) -> dict:
    return {"round": record.round, "version": record.version, "kept": record.kept,
            "before": record.eval.before, "after": record.eval.after,
            "interval": record.eval.delta_iou_interval, "verdict": record.eval.verdict,
            "reason": record.reason, "steps": record.training.steps}


def _line(row: dict) -> str:
    flag = " (WRONG MASKS)" if row.get("wrong_masks") else ""
    return (f"round {row['round']}{flag}: {row['pairs']} pair(s), IoU {row['before']['iou']:.3f} -> {row['after']['iou']:.3f}, "
            f"Dice {row['before']['dice']:.3f} -> {row['after']['dice']:.3f}, {row['verdict']}, "
            f"{'kept' if row['kept'] else 'ROLLED BACK'}, {row['wall_seconds']} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(ROUND_CASES))
    parser.add_argument("--start", default="membranes", help="model the project starts from (default: membranes)")
    parser.add_argument("--out", type=Path, default=None, help="project folder (default: a temporary one)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: TrainConfig's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig override")
    args = parser.parse_args()
    summary = run(args.case, args.start, args.out, args.lr, train_config_overrides(args.set))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

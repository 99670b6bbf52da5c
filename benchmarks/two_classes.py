"""Several classes on real images: nuclei and the ring of cytoplasm-like pixels around them, one project round.

    .venv/bin/python benchmarks/two_classes.py [--start nuclei] [--ring 4] [--seconds S] [--seed 0]

nuclei_dsb2018 fields (the picks of project_rounds.py "nuclei": three 256x256 fields to correct, four others to
evaluate on). Class 1 "nucleus" is every nucleus of the ground truth; class 2 "rim" is the ring of `--ring` px
around each nucleus (outside it, not on another nucleus): a second class that the image shows only through its
nearness to a nucleus. The project starts from the shipped one-class model, so the round gives it a new output
layer; TrainConfig's defaults otherwise. Prints the round's per-class IoU before and after, evaluate()'s
per-class IoU, Dice and AP of the nuclei on the evaluation fields (whose truth objects are the connected regions of
the class, so touching nuclei count as one), and the nuclei's AP@0.5 against the true nucleus instances and the
nucleus and rim pixel IoU, before (the start model's own instances) and after the round: on the four evaluation
fields (about 50 nuclei: one object moves AP by 0.02) and on the start model's held-out test fields (its card's
split, all sizes: the 74 fields it never trained on and the round did not use, 2,832 nuclei), as JSON.
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


def field_scores(model, images: list[np.ndarray], instances: list[np.ndarray], ring: int) -> dict:
    """AP@0.5 of the model's nucleus objects against the true nucleus instances, and the pixel IoU of the nuclei and
    of their rim (two_class_mask), pooled over the images; a model of several classes counts its class 1 (nucleus)
    and 2 (rim), a one-class model its foreground as nuclei (and no rim)."""
    from napari_unet.inference.prediction import predict
    from napari_unet.labels.postprocess import model_instances, model_labels
    from napari_unet.scoring.metrics import (
        IOU_THRESHOLDS,
        confusion_counts,
        instance_counts,
        instance_scores,
        scores_from_counts,
    )

    several = model.metadata.instance_method == "classes"
    counts = np.zeros((len(IOU_THRESHOLDS), 3), dtype=np.int64)
    pixels = [{"tp": 0, "fp": 0, "fn": 0, "tn": 0} for _ in range(2)]
    for image, truth in zip(images, instances):
        outputs = np.asarray(predict(model, image, output="raw"))
        labels = model_labels(outputs, model.metadata)
        classes = labels if several else (labels > 0).astype(np.uint8)
        objects = np.where(classes == 1, model_instances(outputs, model.metadata, model.config.n_classes), 0)
        counts += instance_counts(truth, objects)
        true_classes = two_class_mask(truth, ring)
        for value in (1, 2):
            for key, count in confusion_counts(classes == value, true_classes == value).items():
                pixels[value - 1][key] += count
    return {"nucleus_ap50": round(instance_scores(counts)["ap50"], 4),
            "nucleus_iou": round(scores_from_counts(pixels[0])["iou"], 4),
            "rim_iou": round(scores_from_counts(pixels[1])["iou"], 4),
            "n_true": int(sum(len(np.unique(t)) - 1 for t in instances)), "n_images": len(images)}


def held_out_fields(start: str, used: list[str], files: dict) -> list[str]:
    """The start model's held-out test fields (its card's split) not used by the round: images it never trained on."""
    from napari_unet.storage.shipped import SHIPPED_MODELS_DIR

    card = json.loads((SHIPPED_MODELS_DIR / f"{start}.json").read_text())
    return [stem for stem in card["data"]["split"]["test_held_out"] if stem in files and stem not in used]


def run(start: str, ring: int, seconds: float | None, seed: int = 0) -> dict:
    from napari_unet.labels.classes import SegmentationClass
    from napari_unet.project import Project
    from napari_unet.scoring.evaluation import evaluate
    from napari_unet.storage.io import find_pairs, read_image
    from napari_unet.storage.registry import load_model
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
    config = TrainConfig(seed=seed) if seconds is None else TrainConfig(seconds=seconds, seed=seed)
    started = time.monotonic()
    outcome = project.round(config, log=lambda text: print(f"[round] {text}", file=sys.stderr, flush=True))
    round_seconds = time.monotonic() - started
    scores = evaluate(outcome.model, [loaded[s][0] for s in eval_stems], [loaded[s][1] for s in eval_stems],
                      instances=True)
    nuclei = {}
    for name, fields in (("evaluation_fields", eval_stems), ("held_out_fields", held_out_fields(start, stems, files))):
        images = [read_image(files[stem][0]) for stem in fields]
        truths = [read_image(files[stem][1]).astype(np.int64) for stem in fields]
        nuclei[name] = {"before": field_scores(load_model(start), images, truths, ring),
                        "after": field_scores(outcome.model, images, truths, ring)}
    return {"start": start, "ring_px": ring, "seed": seed, "true_instances": nuclei,
            "output_layer": outcome.model.metadata.class_names, "train": train_stems, "evaluation_fields": eval_stems,
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
    parser.add_argument("--seed", type=int, default=0, help="the round's TrainConfig.seed (its validation pair too)")
    args = parser.parse_args()
    print(json.dumps(run(args.start, args.ring, args.seconds, args.seed), indent=2))


if __name__ == "__main__":
    main()

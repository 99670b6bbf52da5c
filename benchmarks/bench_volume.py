"""3-D objects on a real volume: the shipped `nuclei` model on the 3-D test volume that the stardist package ships.

    .venv/bin/pip install stardist        # the "experiments" extra; the volume is read from the installed package
    .venv/bin/python benchmarks/bench_volume.py [--anisotropy 2] [--json]

stardist's `test_image_nuclei_3d` (stardist/data/images/img3d.tif and mask3d.tif: 31 × 61 × 57 voxels, 51 synthetic
nuclei about 7 planes deep and 14 px wide, i.e. Z steps about twice the pixel size) predicted three ways with
napari_unet.predict(..., output="instances"):

- plane by plane (stack=None): each plane labelled on its own, ids restart in every plane;
- stitched (stack="z"): the planes' objects joined by overlap (stacks.stitch_planes);
- three views (stack="z", anisotropy=A): XY, XZ and YZ probabilities averaged on cubic voxels, one 3-D
  seeded watershed (stacks.volume_instances).

Scores are 3-D: AP@0.5 = TP / (TP + FP + FN) with objects matched at IoU > 0.5 over whole volumes, its mean over
IoU 0.5-0.95, and the pixel IoU of the foreground (napari_unet.scoring.metrics). Nothing is copied into the repository.

Measured (`.venv/bin/python benchmarks/bench_volume.py`, shared 2-CPU machine, stardist 0.9.2):

    plane by plane               AP@0.5 0.000  mAP 0.000  ids  15  pixel IoU 0.63  0.4 s
    stitched                     AP@0.5 0.069  mAP 0.030  ids  26  pixel IoU 0.63  0.4 s
    three views (anisotropy 2)   AP@0.5 0.661  mAP 0.244  ids  47  pixel IoU 0.69  1.6 s

On the CLI, `napari-unet predict -m nuclei img3d.tif -o out --instances --stack z --anisotropy 2` (which runs on
the model's ONNX twin) scores the same AP@0.5, 0.661.
Three views by anisotropy (--anisotropy; above 2 with stacks.ISOTROPIC_LIMIT raised in a scratch run): 1.0: 0.333,
1.5: 0.541, 2.0: 0.661, 2.5: 0.793, 3.0: 0.698.
With --corrected-planes 3 (planes 8, 15, 22 of the three-view prediction replaced by the true mask's, added with
Project.add_volume, one round with the default settings; --seed 0, 1, 2): three views 0.655, 0.719, 0.719 (all
kept; the version predicts the side views with its parent's network); stitched 0.118, 0.159, 0.169
(docs/volumes-and-time.md).
Why stitching fails here: the 2-D model labels the out-of-focus light above and below a nucleus as nucleus
(51,337 foreground voxels predicted, 41,468 true), so the objects of nuclei lying on top of each other overlap
from plane to plane and chain into one (9 of the 26 stitched objects span all 31 planes). Stitching the true
objects of each plane scores 0.577 (61 ids: the caps of the nuclei are too small to reach IoU 0.25 with the
next plane). The XZ and YZ views see the gap between stacked nuclei, which is what the three-view average adds.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anisotropy", type=float, default=2.0,
                        help="Z step / XY pixel size for the three-view run (default 2, the nuclei's extents)")
    parser.add_argument("--corrected-planes", type=int, default=0, metavar="N",
                        help="also correct N planes (the true mask's, evenly spaced; with XZ/YZ views at anisotropy "
                             "<= 2: volume_pairs.py), run one fine-tuning round, and score the round's model")
    parser.add_argument("--adapt", default="auto", choices=("auto", "off"),
                        help="with --corrected-planes: TrainConfig.adapt for the round (new-domain adaptation)")
    parser.add_argument("--seed", type=int, default=0, help="with --corrected-planes: TrainConfig.seed for the round")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from stardist.data import test_image_nuclei_3d
    except ImportError:
        raise SystemExit("needs the stardist package for its test volume: .venv/bin/pip install stardist") from None

    from napari_unet import load_model, predict
    from napari_unet.scoring.metrics import instance_counts, instance_scores, pooled_scores

    image, truth = test_image_nuclei_3d(return_mask=True)
    model = load_model("nuclei")
    predict(model, image[:2], output="probabilities", precision="float32")  # warm-up: tracing
    runs = {
        "plane by plane": dict(),
        "stitched": dict(stack="z"),
        f"three views (anisotropy {args.anisotropy:g})": dict(stack="z", anisotropy=args.anisotropy),
    }
    def score(model, options: dict) -> dict:
        started = time.perf_counter()
        objects = predict(model, image, output="instances", precision="float32", **options)
        seconds = time.perf_counter() - started
        scores = instance_scores(instance_counts(truth, objects))
        return {"ap50": round(scores["ap50"], 3), "map": round(scores["map"], 3),
                "n_predicted": int(len(set(objects[objects > 0].tolist()))), "n_true": scores["n_true"],
                "pixel_iou": round(pooled_scores([(objects, truth)])["iou"], 3), "seconds": round(seconds, 1)}

    rows = {name: score(model, options) for name, options in runs.items()}
    if args.corrected_planes:
        rows.update(after_correcting(image, truth, args.corrected_planes, args.anisotropy, args.adapt, args.seed, score))
    if args.json:
        print(json.dumps({"volume": list(image.shape), "runs": rows}))
        return
    print(f"stardist test_image_nuclei_3d {'×'.join(map(str, image.shape))}, {next(iter(rows.values()))['n_true']} nuclei, "
          "model nuclei (float32)")
    for name, row in rows.items():
        if "round_seconds" in row:
            print(f"  one round on {row['pairs']} pairs, {row['round_seconds']:.0f} s, kept: {row['kept']} "
                  f"({row['reason']}); thresholds chosen on the volume: {row['thresholds']}")
        print(f"  {name:<28} AP@0.5 {row['ap50']:.3f}  mAP {row['map']:.3f}  ids {row['n_predicted']:>3}  "
              f"pixel IoU {row['pixel_iou']:.2f}  {row['seconds']:.1f} s")


def after_correcting(image, truth, n_planes: int, anisotropy: float, adapt: str, seed: int, score) -> dict:
    """Correct `n_planes` planes as a user would: predict the volume with `nuclei` (three views at this anisotropy),
    replace those planes of the prediction by the true mask's (the user's corrections), add the volume's corrected
    planes to a new project started from `nuclei` (Project.add_volume: XY planes, XZ/YZ views at anisotropy <= 2,
    the volume kept for scoring rounds), run one round with the default settings, and score the round's model (kept
    or not) both ways against the true mask."""
    import tempfile

    import numpy as np

    from napari_unet import load_model, predict
    from napari_unet.project import Project

    planes = [int(round(z)) for z in np.linspace(0, image.shape[0] - 1, n_planes + 2)[1:-1]]
    prediction = np.asarray(predict(load_model("nuclei"), image, output="instances", stack="z", anisotropy=anisotropy,
                                    precision="float32"), dtype=np.int32)
    labels = prediction.copy()
    labels[planes] = np.where(truth[planes] > 0, truth[planes].astype(np.int32) + int(prediction.max()), 0)
    with tempfile.TemporaryDirectory() as folder:
        project = Project.init(folder, "nuclei")
        pairs = project.add_volume(image, labels, planes, name="img3d", anisotropy=anisotropy, prediction=prediction)
        started = time.perf_counter()
        from napari_unet.training import TrainConfig

        outcome = project.round(TrainConfig(adapt=adapt, seed=seed))
        seconds = time.perf_counter() - started
        tuned = outcome.model
        chosen = outcome.record.adaptation.get("volume_post_processing") or {}
        rows = {}
        for name, options in (("stitched", dict(stack="z")),
                              (f"three views (anisotropy {anisotropy:g})", dict(stack="z", anisotropy=anisotropy))):
            rows[f"{name}, after correcting planes {', '.join(map(str, planes))}"] = dict(
                score(tuned, options), pairs=len(pairs), round_seconds=round(seconds, 1),
                kept=bool(outcome.record.kept), reason=str(outcome.record.reason),
                thresholds=[chosen.get("seed_threshold"), chosen.get("background_threshold")] if chosen else None,
                eval=[outcome.record.eval.before["iou"], outcome.record.eval.after["iou"]])
    return rows


if __name__ == "__main__":
    main()

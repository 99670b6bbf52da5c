"""Which change lets one round on three corrected planes of a volume raise its three-view 3-D result?

    .venv/bin/pip install stardist        # the "experiments" extra; the volume is read from the installed package
    .venv/bin/python experiments/volume_round_levers.py --seeds 0 1 2 [--json]

The setting of benchmarks/bench_volume.py --corrected-planes 3: stardist's 3-D test volume predicted with `nuclei`
from three views (anisotropy 2), planes 8, 15 and 22 replaced by the true mask's, added with Project.add_volume, one
round with the default settings. Each lever is scored by three-view AP@0.5 against the true mask (kept or not):

- own side views: the round's version with its own network for all three views (its thresholds chosen in 3-D
  by the round), as rounds were before this experiment;
- side views N: the round with N XZ and N YZ pairs each way (volume_pairs.SIDE_VIEWS is the default), more of
  the side views annotated with the volume as it stands to hold what the model predicts from them;
- new XY, parent's side views: the round's version for the XY planes, the parent's XZ and YZ views, thresholds
  chosen the product's way (3-D AP@0.5 on the corrections and the prediction left as it was);
- XY only, parent's side views: the same, from a round given no side views (only what it is shown changes).

Decision rule, written before the first run: a lever becomes the default if its mean three-view AP@0.5 over the
seeds is at least the parent's + 0.02 and no seed is below the parent's - 0.03; of several, the highest mean.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace

import numpy as np

ANISOTROPY = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--side-views", type=int, nargs="*", default=[12], help="side-view counts to try besides the default")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from stardist.data import test_image_nuclei_3d

    from napari_unet import load_model, predict
    from napari_unet.scoring.metrics import instance_counts, instance_scores
    from napari_unet.training.volume_checks import choose_volume_post_processing

    image, truth = test_image_nuclei_3d(return_mask=True)
    parent = load_model("nuclei")
    prediction = np.asarray(predict(parent, image, output="instances", stack="z", anisotropy=ANISOTROPY,
                                    precision="float32"), dtype=np.int32)
    planes = [int(round(z)) for z in np.linspace(0, image.shape[0] - 1, 5)[1:-1]]
    labels = prediction.copy()
    labels[planes] = np.where(truth[planes] > 0, truth[planes].astype(np.int32) + int(prediction.max()), 0)

    def ap50(objects) -> float:
        return round(float(instance_scores(instance_counts(truth, objects))["ap50"]), 3)

    results = {"parent": ap50(prediction)}
    print(f"parent three views AP@0.5 {results['parent']:.3f}", flush=True)
    for seed in args.seeds:
        row = {}
        for side_views in [None, 0, *args.side_views]:
            model, check = one_round(image, labels, planes, prediction, seed, side_views)
            own = replace(model, side_views=None)  # the product now keeps the parent's (the last rows)
            choose_volume_post_processing(own, [check])  # its thresholds chosen for its own map, as rounds did
            if side_views is None:
                row["own side views"] = ap50(predict(own, image, output="instances", stack="z",
                                                     anisotropy=ANISOTROPY, precision="float32"))
            if side_views in (None, 0):
                name = "new XY, parent's side views" if side_views is None else "XY only, parent's side views"
                row[name] = ap50(hybrid_objects(own, parent, image, check))
            if side_views:
                row[f"side views {side_views}"] = ap50(predict(own, image, output="instances", stack="z",
                                                               anisotropy=ANISOTROPY, precision="float32"))
            print(f"seed {seed} side views {side_views}: {row}", flush=True)
        results[f"seed {seed}"] = row
    levers = sorted({name for key, row in results.items() if key.startswith("seed") for name in row})
    summary = {}
    for name in levers:
        values = [results[f"seed {seed}"][name] for seed in args.seeds]
        passes = np.mean(values) >= results["parent"] + 0.02 and min(values) >= results["parent"] - 0.03
        summary[name] = {"values": values, "mean": round(float(np.mean(values)), 3), "passes": bool(passes)}
    results["summary"] = summary
    if args.json:
        print(json.dumps(results))
    else:
        for name, row in summary.items():
            print(f"{name:<32} {' '.join(f'{v:.3f}' for v in row['values'])}  mean {row['mean']:.3f}  "
                  f"{'passes' if row['passes'] else 'fails'} the rule")


def one_round(image, labels, planes, prediction, seed: int, side_views: int | None):
    """The round's model (kept or not) and the volume check it was scored on, with `side_views` XZ/YZ pairs each way
    (None: the default)."""
    import napari_unet.training.volume_pairs as pairs_module
    from napari_unet.project import Project
    from napari_unet.training import TrainConfig

    original = pairs_module.volume_pairs
    if side_views is not None:
        def with_side_views(*args, **kwargs):
            kwargs["side_views"] = side_views
            return original(*args, **kwargs)
        pairs_module.volume_pairs = with_side_views
    try:
        with tempfile.TemporaryDirectory() as folder:
            project = Project.init(folder, "nuclei")
            project.add_volume(image, labels, planes, name="img3d", anisotropy=ANISOTROPY, prediction=prediction)
            outcome = project.round(TrainConfig(seed=seed))
            return outcome.model, project.volume_checks()[0]
    finally:
        pairs_module.volume_pairs = original


def hybrid_objects(xy_model, side_model, image, check):
    """3-D objects of the whole image with `xy_model` for the XY planes and `side_model`'s side-view network for the
    XZ and YZ planes (SegmentationModel.side_views), thresholds chosen on the check's volume as a round chooses them."""
    from napari_unet import predict
    from napari_unet.training.volume_checks import choose_volume_post_processing

    hybrid = replace(xy_model, side_views=side_model.side_view_model)
    choose_volume_post_processing(hybrid, [check])
    return predict(hybrid, image, output="instances", stack="z", anisotropy=ANISOTROPY, precision="float32")


if __name__ == "__main__":
    main()

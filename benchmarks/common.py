"""What several benchmarks share: their data cases, the forest baseline, a scripted project round, --set parsing.

Imported by the scripts beside it (`from common import ...`): a script run as `python benchmarks/x.py` has this
folder on its import path. The scripts read napari_unet as installed (`pip install -e .` from the repository).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# The nuclei image of bench_round.py and bench_live.py: 520×696, 133 nuclei (also the `nuclei` sample; not in
# the nuclei recipe's training).
NUCLEI_IMAGE_ID = "4596961c789d3b41"

# project_rounds.py's fixed picks (pick: stems -> (to correct, to evaluate on)), far from the shipped models'
# training images where possible (see each model card).
ROUND_CASES = {
    # nuclei_dsb2018: three 256x256 fields to correct, four others to evaluate on
    "nuclei": {"folder": "nuclei_dsb2018", "pick": lambda stems: (stems[:3], stems[3:7]), "size": (256, 256)},
    # ISBI slices the shipped membranes model never trained on (20-24): correct 20-22, evaluate on 23-24
    "isbi": {"folder": "isbi2012", "pick": lambda stems: (["20", "21", "22"], ["23", "24"]), "size": None},
}


def nuclei_half_corrected() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(512² crop of NUCLEI_IMAGE_ID, its labels with the right half 255 "not annotated", the right half's image,
    the right half's truth): a user who corrected the left half, scored on the right."""
    from napari_unet.labels.masks import labels_from_ground_truth
    from napari_unet.storage.io import read_image

    folder = SHARED_DATA / "nuclei_dsb2018"
    image = read_image(folder / "images" / f"{NUCLEI_IMAGE_ID}.tif")[:512, :512]
    truth = labels_from_ground_truth(read_image(folder / "masks" / f"{NUCLEI_IMAGE_ID}.tif"))[:512, :512]
    corrected = truth.copy()
    corrected[:, 256:] = 255  # the user corrected the left half only
    return image, corrected, image[:, 256:], truth[:, 256:]


def round_case_stems(folder: Path, size: tuple[int, int] | None) -> list[str]:
    """The image stems a ROUND_CASES pick chooses from: all of `folder`'s, or every 5th of the first 40 of `size`."""
    from napari_unet.storage.io import read_image

    stems = sorted(p.stem for p in (folder / "images").iterdir())
    if size is None:
        return stems
    return [s for s in stems if read_image(folder / "images" / f"{s}.tif").shape[:2] == size][:40:5]


def train_config_overrides(items: list[str]) -> dict:
    """TrainConfig fields from --set FIELD=VALUE items, each converted to its field's type ("None": None)."""
    from napari_unet.training import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {}
    for item in items:
        key, _, text = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown TrainConfig field {key!r}")
        kind = fields[key].type
        kind = kind if isinstance(kind, str) else kind.__name__
        if text == "None":
            values[key] = None
        elif kind == "bool":
            values[key] = text.lower() in ("1", "true", "yes")
        elif kind.startswith("int"):
            values[key] = int(text)
        elif kind.startswith("float"):
            values[key] = float(text)
        elif kind.startswith("tuple"):
            values[key] = tuple(part for part in text.split(",") if part)
        else:
            values[key] = text
    return values


# ------------------------------------------------------------------------------------------- the forest baseline
def forest_features(image: np.ndarray) -> np.ndarray:
    """(Y, X, features) of ilastik's default set as scikit-image offers it: intensity, edges, texture, sigma 1..16."""
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(image, intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16)


def forest_classifier():
    """The random forest of the baseline (bench_live.py and new_domain.py fit the same one)."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, random_state=0)


# ------------------------------------------------------------------------- instance scores and a scripted round
def instance_scores(predicted: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    """Pooled AP@0.5 and foreground IoU, as evaluate(instances=True) computes them."""
    from napari_unet.scoring.evaluation import Tally

    tally = Tally(instances=True)
    for labels, truth in zip(predicted, truths):
        tally.add(labels, truth)
    result = tally.result()
    return {"ap50": round(result["ap50"], 4), "iou": round(result["iou"], 4), "n_true": result["n_true"],
            "n_predicted": result["n_predicted"]}


def result_row(method: str, k: int, predicted: list[np.ndarray], truths: list[np.ndarray], train_seconds: float,
               predict_seconds: float, **extra) -> dict:
    """One row of new_domain.py's and stained_proxy.py's tables: a method's scores with k corrected images."""
    return {"method": method, "k": k, **instance_scores(predicted, truths), "train_seconds": round(train_seconds, 1),
            "predict_seconds_per_image": round(predict_seconds / len(predicted), 2),
            "load": round(os.getloadavg()[0], 1), **extra}


def predict_instances(model, images: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Instances of every image (whole images, the model's own post-processing) and the seconds it took."""
    from napari_unet.inference.prediction import predict

    started = time.perf_counter()
    labels = [np.asarray(predict(model, image, output="instances")) for image in images]
    return labels, time.perf_counter() - started


def unet_round(start: str, pairs: list[tuple[str, np.ndarray, np.ndarray]], test: list[tuple[np.ndarray, np.ndarray]],
               seconds: float | None, overrides: dict) -> dict | None:
    """One round of the product's loop on the k corrected pairs (stem, image, labels), as `napari-unet project
    init/add/round` runs it, scored on `test`; None when TrainConfig lacks an override's field."""
    from napari_unet.project import Project
    from napari_unet.training import TrainConfig

    missing = [key for key in overrides if key not in TrainConfig.__dataclass_fields__]
    label = " ".join(f"{key}={'+'.join(value) if isinstance(value, tuple) else value}"
                     for key, value in overrides.items()) or "defaults"
    if missing:
        print(f"skipped: TrainConfig has no field {', '.join(missing)} (unet-round {label}, k={len(pairs)})", flush=True)
        return None
    folder = Path(tempfile.mkdtemp(prefix="new-domain-"))
    try:
        project = Project.init(folder / "project", start)
        for stem, image, truth in pairs:
            project.add_pair(image, truth, name=stem)
        outcome = project.round(TrainConfig(seconds=seconds, **overrides))
        predicted, predict_seconds = predict_instances(project.load_model(project.active), [image for image, _ in test])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    training = outcome.record.training
    return result_row("unet-round", len(pairs), predicted, [truth for _, truth in test], training.seconds,
                      predict_seconds, config=label, kept=outcome.kept, steps=training.steps,
                      stopped=training.stopped_reason, round_seconds=outcome.record.seconds,
                      round_eval=outcome.record.eval.after["iou"], start=start,
                      adaptation=outcome.record.adaptation or {})

"""Which nuclei a model misses, by brightness: the share of truth nuclei found (matched at IoU > 0.5), per bin of
mean intensity relative to the median nucleus of the same image.

    .venv/bin/python experiments/dim_nuclei.py [MODEL ...] [--held-out]

MODEL: a shipped name or a .keras path (default: nuclei). Validation images of the nuclei recipe by default
(they choose things; --held-out only reports). Each model turns its output into instances by its own rule
(predict(..., output="instances")). Why: on validation, the nuclei the shipped model missed were far dimmer
than those it found, which is what AugmentConfig.object_brightness_probability trains against.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

BINS = (0.0, 0.5, 0.75, np.inf)  # mean intensity / the image's median nucleus


def found_by_brightness(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> list[tuple[float, bool]]:
    """(relative brightness, found at IoU > 0.5) for every truth nucleus of one image."""
    from scipy import ndimage as ndi

    from napari_unet.scoring.metrics import instance_ious

    plane = np.asarray(image, dtype=np.float64)
    plane = plane.mean(axis=-1) if plane.ndim == 3 else plane
    ids = np.unique(truth[truth > 0])
    if ids.size == 0:
        return []
    background = np.median(plane[truth == 0]) if (truth == 0).any() else 0.0
    brightness = np.asarray(ndi.mean(plane, truth, ids)) - background
    relative = brightness / np.median(brightness)
    found = (instance_ious(truth, predicted) > 0.5).any(axis=1)  # rows: truth ids in sorted order, as `ids`
    return list(zip(relative.tolist(), found.tolist()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["nuclei"])
    parser.add_argument("--held-out", action="store_true", help="the recipe's held-out images instead of validation")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from napari_unet.inference.prediction import predict
    from napari_unet.storage.registry import load_model
    from napari_unet.training.recipes import load_instances, recipe_by_name

    recipe = recipe_by_name("nuclei")
    images, truths = load_instances(recipe, recipe.test_stems if args.held_out else recipe.validation_stems)
    edges = " | ".join(f"{low:g}–{high:g}" for low, high in zip(BINS[:-1], BINS[1:]))
    print(f"| model | found, by brightness / image median: {edges} | all |")
    print("|---|" + "---|" * (len(BINS) - 1) + "---|")
    for name in args.models:
        model = load_model(name)
        rows = [row for image, truth in zip(images, truths)
                for row in found_by_brightness(image, truth, predict(model, image, output="instances"))]
        relative, found = np.array([r for r, _ in rows]), np.array([f for _, f in rows])
        cells = []
        for low, high in zip(BINS[:-1], BINS[1:]):
            chosen = (relative >= low) & (relative < high)
            cells.append(f"{found[chosen].mean():.3f} of {chosen.sum()}")
        print(f"| {name} | " + " | ".join(cells) + f" | {found.mean():.3f} of {found.size} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

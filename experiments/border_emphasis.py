"""How much the U-Net paper's border weights stress the lines where two nuclei touch, per target rule.

    .venv/bin/python experiments/border_emphasis.py [--every 10] [--rule CORE_FRACTION,W0,SIGMA ...]

The weights are normalised to mean 1 over each image (training/sampling.border_weight_map) and computed
between the "interior" regions of the targets, so the target rule changes them: core targets put the seeds
of touching nuclei a radius apart, and the weight between them falls. Prints the mean weight on the pixels
where two truth nuclei touch, over every `--every`-th training image of the nuclei recipe. No training.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

DEFAULT_RULES = ("0,10,5", "0.5,10,5", "0.5,10,10", "0.5,60,7")  # core fraction, w0, sigma


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=10, help="use every N-th training image (default 10)")
    parser.add_argument("--rule", nargs="*", default=list(DEFAULT_RULES), metavar="CORE_FRACTION,W0,SIGMA")
    args = parser.parse_args()
    from napari_unet.labels.instances import INTERIOR, boundary_targets, near_another_object
    from napari_unet.training.recipes import load_split, recipe_by_name
    from napari_unet.training.sampling import border_weight_map

    recipe = recipe_by_name("nuclei")
    _, labels = load_split(recipe, recipe.train_stems[:: args.every])
    touching = [near_another_object(label, 1) for label in labels]
    for rule in args.rule:
        core_fraction, w0, sigma = (float(value) for value in rule.split(","))
        means = []
        for label, line in zip(labels, touching):
            if not line.any():
                continue
            targets = boundary_targets(label, touching_width=recipe.touching_width, core_fraction=core_fraction)
            weights = border_weight_map(targets, objects_are_background=False, w0=w0, sigma=sigma, n_classes=3,
                                        object_class=INTERIOR)
            means.append(float(weights[line].mean()))
        print(f"core fraction {core_fraction:g}, w0 {w0:g}, sigma {sigma:g}: mean weight where nuclei touch "
              f"{np.mean(means):.1f} (image mean 1; {len(means)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

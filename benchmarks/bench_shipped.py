"""Prediction time of the shipped model against the previous shipped architecture, in one run.

    .venv/bin/python benchmarks/bench_shipped.py [--sizes 512 2048] [--repeats 3]

Times napari_unet.predict of the shipped `membranes` model (plain, with 2 views and with all 8 views
of test-time augmentation, each including the model's output offset)
and of a width-16, depth-3 U-Net without batch norm (the architecture shipped before; random
weights, same cost) on the same smooth synthetic uint8 images. Prints seconds and ratios.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _median_seconds(function, repeats: int) -> float:
    function()  # warm-up: tracing, first allocation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from scipy import ndimage as ndi

    from napari_unet import load_model, predict
    from napari_unet.model import UNetConfig, new_model

    shipped = load_model("membranes")
    previous = new_model(UNetConfig(base_width=16, depth=3))
    config = shipped.config
    print(f"shipped: width {config.base_width}, depth {config.depth}, batch norm {config.batch_norm}, "
          f"symmetries {shipped.metadata.symmetries}; baseline: width 16, depth 3, no batch norm")
    print("| size | baseline s | shipped s | shipped / baseline | 2 views s | 2 views / plain "
          "| 8 views s | 8 views / plain | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        image = (ndi.gaussian_filter(rng.random((size, size)), 3) * 255).astype(np.uint8)
        repeats = args.repeats if size <= 1024 else 1
        base = _median_seconds(lambda image=image: predict(previous, image, output="probabilities"), repeats)
        plain = _median_seconds(lambda image=image: predict(shipped, image, output="probabilities"), repeats)
        two = _median_seconds(
            lambda image=image: predict(shipped, image, output="probabilities", test_time_augmentation=2), repeats
        )
        augmented = _median_seconds(
            lambda image=image: predict(shipped, image, output="probabilities", test_time_augmentation=True), repeats
        )
        print(f"| {size}² | {base:.2f} | {plain:.2f} | {plain / base:.2f}x | {two:.2f} | {two / plain:.1f}x | "
              f"{augmented:.2f} | {augmented / plain:.1f}x | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""float32 vs bfloat16 on this CPU: matmul rate, the U-Net forward pass and the training step.

    .venv/bin/python benchmarks/bench_precision.py [--model nuclei] [--size 1024] [--repeats 5]
    .venv/bin/python benchmarks/bench_precision.py --accuracy

Prints the CPU's bfloat16 features (napari_unet.inference.precision.cpu_features), tf.matmul 2048³ in both
precisions, then for the model: forward (the engine's compiled function) on one SIZE² tile and a
training step (TrainConfig's batch and patch size, frozen batch norm: the finetune step) in float32
and under the mixed_bfloat16 policy, all in one run, as ratios: the fastest of --repeats interleaved calls
after one warm-up call. --accuracy instead scores both shipped models on their cards' held-out images
(ISBI pixel error with 1 and 8 views, nuclei AP@0.5 / mean AP / IoU) in both precisions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from common import SHARED_DATA


def _fastest_seconds(calls: dict, repeats: int) -> dict:
    """The fastest of `repeats` timings of each call, the calls interleaved: on a shared machine other jobs
    only ever slow a call down, and interleaving exposes both precisions to the same load."""
    for call in calls.values():
        call()
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            started = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - started)
    return {key: float(np.min(values)) for key, values in times.items()}


def matmul_rates(repeats: int) -> dict:
    import tensorflow as tf

    n = 2048
    matrices = {dtype.name: tf.cast(tf.random.normal((n, n)), dtype) for dtype in (tf.float32, tf.bfloat16)}
    seconds = _fastest_seconds({key: (lambda a=a: tf.matmul(a, a).numpy()) for key, a in matrices.items()}, repeats)
    return {key: 2 * n**3 / value / 1e9 for key, value in seconds.items()}


def model_rates(name: str, size: int, repeats: int) -> dict:
    import keras

    from napari_unet.inference.precision import with_precision
    from napari_unet.inference.prediction import forward_function
    from napari_unet.model import unet_flops
    from napari_unet.storage.registry import load_model
    from napari_unet.training import TrainConfig
    from napari_unet.training.loop import make_train_step

    defaults = TrainConfig()  # the step a fine-tuning round runs: its batch, patch size and frozen batch norm
    n, side = defaults.batch_size, defaults.patch_size
    base = load_model(name)
    rng = np.random.default_rng(0)
    image = rng.random((1, size, size, base.config.n_channels), dtype=np.float32)
    batch = rng.random((n, side, side, base.config.n_channels), dtype=np.float32)
    labels = rng.integers(0, max(2, base.config.n_classes), (n, side, side)).astype(np.int32)
    weights = np.ones((n, side, side), dtype=np.float32)
    flops = unet_flops(base.config, size, size)
    train_flops = 3 * unet_flops(base.config, side, side) * n
    precisions = ("float32", "bfloat16")
    forwards = {p: forward_function(with_precision(base, p)) for p in precisions}
    outputs = {p: forward(image).numpy() for p, forward in forwards.items()}
    steps = {}
    for p in precisions:
        trainee = with_precision(base, p).copy()
        for layer in trainee.keras_model.layers:
            layer.trainable = not (defaults.freeze_batch_norm and layer.__class__.__name__ == "BatchNormalization")
        steps[p] = make_train_step(trainee.keras_model, keras.optimizers.Adam(1e-4), base.config.n_classes,
                                   base.config.n_channels, 1.0)
    forward_seconds = _fastest_seconds({p: (lambda f=f: f(image).numpy()) for p, f in forwards.items()}, repeats)
    step_seconds = _fastest_seconds({p: (lambda s=s: float(s(batch, labels, weights)[0])) for p, s in steps.items()},
                                    repeats)
    return {p: {"forward_s": forward_seconds[p], "forward_gflops": flops / forward_seconds[p] / 1e9,
                "step_s": step_seconds[p], "patches_per_s": n / step_seconds[p],
                "train_gflops": train_flops / step_seconds[p] / 1e9,
                "max_abs_diff": float(np.abs(outputs[p] - outputs["float32"]).max())} for p in precisions}


def accuracy() -> None:
    import json

    from napari_unet.scoring.evaluation import evaluate
    from napari_unet.storage.io import read_image
    from napari_unet.storage.registry import load_model
    from napari_unet.storage.shipped import SHIPPED_MODELS_DIR

    data = SHARED_DATA
    card = json.loads((SHIPPED_MODELS_DIR / "membranes.json").read_text())
    stems = card["metrics_held_out"]["images"]
    images = [read_image(data / "isbi2012" / "images" / f"{s}.png") for s in stems]
    masks = [(read_image(data / "isbi2012" / "masks" / f"{s}.png") > 0).astype(np.uint8) for s in stems]
    membranes = load_model("membranes")
    for views in (False, True):
        errors = {p: evaluate(membranes, images, masks, test_time_augmentation=views, precision=p)["pixel_error"]
                  for p in ("float32", "bfloat16")}
        difference = errors["bfloat16"] - errors["float32"]
        print(f"membranes, ISBI {stems[0]}-{stems[-1]}, {8 if views else 1} view(s): pixel error float32 "
              f"{errors['float32']:.4f}, bfloat16 {errors['bfloat16']:.4f} (difference {difference:+.4f})")
    card = json.loads((SHIPPED_MODELS_DIR / "nuclei.json").read_text())
    stems = card["data"]["split"]["test_held_out"]
    folder = data / "nuclei_dsb2018"
    images = [read_image(folder / "images" / f"{s}.tif") for s in stems]
    masks = [read_image(folder / "masks" / f"{s}.tif") for s in stems]
    nuclei = load_model("nuclei")
    scores = {p: evaluate(nuclei, images, masks, instances=True, precision=p) for p in ("float32", "bfloat16")}
    for key in ("ap50", "map", "iou"):
        print(f"nuclei, {len(stems)} held-out images: {key} float32 {scores['float32'][key]:.4f}, bfloat16 "
              f"{scores['bfloat16'][key]:.4f} (difference {scores['bfloat16'][key] - scores['float32'][key]:+.4f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy", action="store_true", help="held-out accuracy of the shipped models instead")
    args = parser.parse_args()
    if args.accuracy:
        accuracy()
        return 0
    from napari_unet.inference.precision import cpu_features

    print(f"CPU bfloat16 features: {cpu_features()}; load {os.getloadavg()[0]:.1f}")
    rates = matmul_rates(args.repeats)
    print(f"tf.matmul 2048³: float32 {rates['float32']:.0f} GFLOP/s, bfloat16 {rates['bfloat16']:.0f} GFLOP/s "
          f"({rates['bfloat16'] / rates['float32']:.2f}x)")
    results = model_rates(args.model, args.size, args.repeats)
    print(f"| {args.model} | forward {args.size}² s | GFLOP/s | % f32 matmul | training step s | patches/s | train GFLOP/s "
          f"| % f32 matmul | max |Δp| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for precision, r in results.items():
        forward_share = 100 * r["forward_gflops"] / rates["float32"]
        print(f"| {precision} | {r['forward_s']:.3f} | {r['forward_gflops']:.0f} | {forward_share:.0f}% "
              f"| {r['step_s']:.3f} | {r['patches_per_s']:.1f} | {r['train_gflops']:.0f} "
              f"| {100 * r['train_gflops'] / rates['float32']:.0f}% | {r['max_abs_diff']:.4f} |")
    f32, bf16 = results["float32"], results["bfloat16"]
    print(f"bfloat16 / float32 speed: forward {f32['forward_s'] / bf16['forward_s']:.2f}x, "
          f"training step {f32['step_s'] / bf16['step_s']:.2f}x; load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

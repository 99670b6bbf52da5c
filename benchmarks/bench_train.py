"""Training speed and the fine-tuning gain, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_train.py [--width 16] [--steps 30] [--hitl]

1. Throughput (patches/s, batch 4 x 256²) of the engine's compiled train step (train.make_train_step:
   BCE + Dice with ignore weights, Adam) vs a plain Keras script: model.compile(BCE) + model.fit on
   the same patches, short epochs as an interactive fine-tune would use. Also the engine's full step
   including numpy patch sampling and augmentation (what finetune() really runs).
2. Wall time of the default finetune() (4 epochs x 30 steps) on two 512² ISBI pairs (slices 05, 06),
   from a fresh base-width-16 model, incl. tracing and validation.
3. --hitl (about 2-3 min): the human-in-the-loop gain with its honest control. A weak F=8 base is
   trained on full-resolution slices 00-02; the new images are the same tissue at half resolution.
   Fine-tune (defaults) on corrected slices 05, 06 vs the same budget on the old slices 00-02;
   scores on held-out slices 20-24 at the new resolution.
The box is shared: the load average is printed; compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from common import SHARED_DATA

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ISBI = SHARED_DATA / "isbi2012"


def _load(slices, step=1):
    from napari_unet.storage.io import read_image

    images = [read_image(ISBI / "images" / f"{i:02d}.png")[::step, ::step] for i in slices]
    masks = [read_image(ISBI / "masks" / f"{i:02d}.png")[::step, ::step] for i in slices]
    return images, masks


def _load_average() -> str:
    return f"load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""


def throughput(width: int, steps: int) -> None:
    import keras

    from napari_unet.model import UNetConfig, new_model
    from napari_unet.training import PatchSampler, make_train_step, prepare_pairs
    from napari_unet.training.augment import PairAugmenter

    keras.utils.set_random_seed(0)
    batch, patch = 4, 256
    model = new_model(UNetConfig(base_width=width))
    pairs = prepare_pairs(model, *_load([0, 1, 2]))
    plain_sampler = PatchSampler(pairs, patch, rng=np.random.default_rng(0))
    batches = [plain_sampler.sample_batch(batch) for _ in range(steps)]

    engine_model = model.copy()
    step_fn = make_train_step(engine_model.keras_model, keras.optimizers.Adam(1e-4), 1, 1, 1.0)
    full_sampler = PatchSampler(pairs, patch, rng=np.random.default_rng(0), augmenter=PairAugmenter(seed=0))
    baseline = model.copy().keras_model
    baseline.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches]).astype(np.float32)[..., None]

    def run_engine():
        for images, labels, weights in batches:
            float(step_fn(images, labels, weights)[0])

    def run_engine_with_sampling():
        for _ in range(steps):
            float(step_fn(*full_sampler.sample_batch(batch))[0])

    def run_sampling_only():
        for _ in range(steps):
            full_sampler.sample_batch(batch)

    def run_fit():  # one epoch of `steps` steps, as a fine-tune reporting progress per epoch would run
        baseline.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)

    paths = {
        "Keras model.fit (BCE), one call per epoch [baseline]": run_fit,
        "engine train step (BCE+Dice, ignore weights)": run_engine,
        "engine step + numpy sampling + augmentation": run_engine_with_sampling,
    }
    for run in paths.values():  # warm-up: tracing and oneDNN primitive caches
        run()
    seconds = {name: [] for name in paths}
    for _ in range(3):  # interleaved rounds, so load changes on the shared box hit every path alike
        for name, run in paths.items():
            started = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - started) / steps)
    started = time.perf_counter()
    run_sampling_only()
    sampling_ms = 1000 * (time.perf_counter() - started) / steps

    per_step = {name: statistics.median(values) for name, values in seconds.items()}
    baseline_step = per_step["Keras model.fit (BCE), one call per epoch [baseline]"]
    print(
        f"## 1. training throughput, F={width}, batch {batch} x {patch}², 3 rounds x {steps} steps, median  ({_load_average()})"
    )
    print(f"{'path':<54} {'s/step':>8} {'patches/s':>10} {'vs fit':>7}")
    for name, step_seconds in per_step.items():
        print(f"{name:<54} {step_seconds:8.3f} {batch / step_seconds:10.1f} {baseline_step / step_seconds:7.2f}")
    print(f"   (sampling + augmentation alone: {sampling_ms:.1f} ms per batch)")


def default_finetune(width: int) -> None:
    import keras

    from napari_unet.model import UNetConfig, new_model
    from napari_unet.training import finetune

    keras.utils.set_random_seed(0)
    model = new_model(UNetConfig(base_width=width), name="membranes", class_names=["membrane"])
    images, masks = _load([5, 6])
    first_step = []
    started = time.perf_counter()
    _, history = finetune(model, images, masks,
                          progress=lambda e: first_step.append(time.perf_counter() - started) if not first_step else None)
    seconds = time.perf_counter() - started
    print(f"\n## 2. default finetune() on two 512² ISBI pairs, F={width}  ({_load_average()})")
    print(f"wall {seconds:.1f} s for {history.steps} steps x 4 patches ({history.epochs and len(history.epochs)} epochs, "
          f"first step incl. tracing {first_step[0]:.1f} s, "
          f"{(seconds - first_step[0]) / max(1, history.steps - 1):.3f} s/step after)")


def hitl() -> None:
    import keras

    from napari_unet.model import UNetConfig, new_model
    from napari_unet.scoring.evaluation import evaluate
    from napari_unet.training import finetune

    keras.utils.set_random_seed(0)
    start = new_model(UNetConfig(base_width=8), name="membranes", class_names=["membrane"])
    base, _ = finetune(start, *_load([0, 1, 2]), learning_rate=1e-3, epochs=1, steps_per_epoch=150,
                       validation_fraction=0, augment=False, seed=0)
    held_out = _load(range(20, 25), step=2)
    rows = [("base (150 steps on full-res 00-02)", evaluate(base, *held_out))]
    for seed in (0, 1):
        tuned, _ = finetune(base, *_load([5, 6], step=2), seed=seed)
        rows.append((f"fine-tune on corrected half-res 05, 06 (seed {seed})", evaluate(tuned, *held_out)))
    for seed in (0, 1):
        control, _ = finetune(base, *_load([0, 1, 2]), seed=seed)
        rows.append((f"control: same budget on old full-res 00-02 (seed {seed})", evaluate(control, *held_out)))
    print(f"\n## 3. human-in-the-loop gain, held-out 20-24 at half resolution ({_load_average()})")
    print(f"{'model':<58} {'IoU':>7} {'pixel error':>12}")
    for name, scores in rows:
        print(f"{name:<58} {scores['iou']:7.4f} {scores['pixel_error']:12.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hitl", action="store_true", help="also run the fine-tuning gain with its control (~2-3 min)")
    args = parser.parse_args()
    if not (ISBI / "images").is_dir():
        raise SystemExit(f"ISBI data not found at {ISBI}")
    throughput(args.width, args.steps)
    default_finetune(args.width)
    if args.hitl:
        hitl()


if __name__ == "__main__":
    main()

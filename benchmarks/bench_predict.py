"""Prediction speed: the engine (tiled, one tf.function) vs a plain Keras script (model.predict on the
whole padded image), and the engine's GFLOP/s as a share of the tf.matmul rate measured in the same run.

    .venv/bin/python benchmarks/bench_predict.py [--width 64] [--sizes 512 2048 4096] [--repeats 3]
    .venv/bin/python benchmarks/bench_predict.py --model nuclei --sizes 512 1024 2048 4096

Goals: engine >= naive at every size, engine >= 85 % of the float32 matmul rate. The engine is
timed in float32 (also with the Keras graph as built, i.e. without model.inference_function's rearranged
graph) and in bfloat16 (precision.py; the default where the CPU has it). The box is shared, so the
load average is printed with every row and each time is the fastest of the repeats (load only slows a run
down); compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """A uint8 image with blobs at several scales (cheap to make at 4096²: upsampled coarse noise)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    coarse = ndi.gaussian_filter(rng.random((size // 8 + 1, size // 8 + 1)), 2)
    image = ndi.zoom(coarse, 8, order=1)[:size, :size]
    image = image + 0.05 * rng.standard_normal((size, size))
    image = (image - image.min()) / (image.max() - image.min())
    return (image * 255).astype(np.uint8)


def matmul_rate(n: int = 4096, repeats: int = 5) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.matmul(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def naive_predict(model, image: np.ndarray) -> np.ndarray:
    """What a plain Keras script does: normalise, reflect-pad to the size multiple, model.predict, crop."""
    from napari_unet.inference.normalize import normalize

    multiple = model.config.size_multiple
    height, width = image.shape
    padded = np.pad(normalize(image), ((0, -height % multiple), (0, -width % multiple)), mode="reflect")
    return model.keras_model.predict(padded[None, ..., None], verbose=0)[0, :height, :width, 0]


def engine_flops(model, shape) -> tuple[float, int, int]:
    """FLOPs the engine actually computes (all tiles, padded), the tile count and tile side."""
    from napari_unet.inference.prediction import tile_grid_for
    from napari_unet.model import unet_flops

    rows, cols = tile_grid_for(model, shape)
    n_tiles = len(rows.starts) * len(cols.starts)
    return n_tiles * unet_flops(model.config, rows.size, cols.size), n_tiles, rows.size


def keras_graph_twin(model):
    """The same model whose engine calls the Keras graph as built (no model.inference_function)."""
    from napari_unet.inference import prediction
    from napari_unet.model import SegmentationModel

    twin = SegmentationModel(model.keras_model, model.metadata, model.source)
    rearranged = prediction.inference_function
    prediction.inference_function = lambda keras_model, config: None
    try:
        predict_warm(twin)
    finally:
        prediction.inference_function = rearranged
    return twin


def predict_warm(model) -> None:
    """Trace the engine's tf.functions (float32 and bfloat16) before timing."""
    from napari_unet.inference.prediction import predict

    for warm in (64, 96):
        for precision in ("float32", "bfloat16"):
            predict(model, smooth_image(warm), output="probabilities", precision=precision)


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a shipped model name instead of a random U-Net")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3, help="repeats for images up to 1024² (1 above)")
    parser.add_argument("--skip-naive-above", type=int, default=4096, help="no naive run above this side")
    args = parser.parse_args()

    from napari_unet.inference.prediction import predict
    from napari_unet.model import UNetConfig, new_model

    peak = matmul_rate()
    print(f"tf.matmul 4096³: {peak:.0f} GFLOP/s   load average {os.getloadavg()[0]:.2f}")
    if args.model:
        from napari_unet.storage.registry import load_model

        model = load_model(args.model)
    else:
        model = new_model(UNetConfig(base_width=args.width, depth=args.depth))
    predict_warm(model)
    as_built = keras_graph_twin(model)
    for warm in (64, 96):  # let Keras' predict generalise its shapes
        naive_predict(model, smooth_image(warm))

    header = (
        "| size | tiles | engine float32 s | Keras graph s | naive s | engine/naive | engine GFLOP/s | % matmul "
        "| engine bfloat16 s | bf16/f32 speed | bfloat16 GFLOP/s | % f32 matmul | load |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in args.sizes:
        image = smooth_image(size)
        repeats = args.repeats if size <= 1024 else 1
        flops, n_tiles, tile = engine_flops(model, image.shape)
        engine_seconds = timed(lambda image=image: predict(model, image, output="probabilities", precision="float32"),
                               repeats)
        built_seconds = timed(lambda image=image: predict(as_built, image, output="probabilities", precision="float32"),
                              repeats)
        reduced_seconds = timed(lambda image=image: predict(model, image, output="probabilities", precision="bfloat16"),
                                repeats)
        if size <= args.skip_naive_above:
            naive_seconds = timed(lambda image=image: naive_predict(model, image), repeats)
            naive_text = f"{naive_seconds:.2f} | {naive_seconds / engine_seconds:.2f}x"
        else:
            naive_text = "skipped | -"
        gflops = flops / engine_seconds / 1e9
        print(
            f"| {size}² | {n_tiles}×{tile}² | {engine_seconds:.2f} | {built_seconds:.2f} | {naive_text} | {gflops:.0f} "
            f"| {100 * gflops / peak:.0f}% "
            f"| {reduced_seconds:.2f} | {engine_seconds / reduced_seconds:.2f}x | {flops / reduced_seconds / 1e9:.0f} "
            f"| {100 * flops / reduced_seconds / 1e9 / peak:.0f}% | {os.getloadavg()[0]:.2f} |",
            flush=True,
        )
    print(f"model: {args.model or f'random, base_width={args.width} depth={args.depth}'}; "
          f"tf.matmul re-measured: {matmul_rate():.0f} GFLOP/s")


if __name__ == "__main__":
    main()

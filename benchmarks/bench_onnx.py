"""ONNX Runtime against TensorFlow for the U-Net's forward pass on this CPU, in one run.

    pip install onnxruntime tf2onnx    # not dependencies of napari-unet: only this benchmark needs them
    .venv/bin/python benchmarks/bench_onnx.py [--model nuclei] [--sizes 512 1024] [--repeats 5]

The shipped model is converted with tf2onnx (opset 17, input (None, None, None, C)) and run by an ONNX
Runtime CPU session (all cores, all graph optimisations). Compared with the engine's compiled TensorFlow
forward pass in float32 and in bfloat16 (precision.py), on the same random tile: the fastest of --repeats
interleaved calls after a warm-up, and the largest difference in probability from TensorFlow float32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from napari_unet.model import unet_flops
    from napari_unet.precision import cpu_features, with_precision
    from napari_unet.prediction import forward_function
    from napari_unet.registry import load_model

    model = load_model(args.model)
    n_channels = model.config.n_channels
    started = time.perf_counter()
    path = Path(tempfile.mkdtemp()) / f"{args.model}.onnx"
    tf2onnx.convert.from_keras(model.keras_model, input_signature=[tf.TensorSpec((None, None, None, n_channels), tf.float32)],
                               opset=17, output_path=str(path))
    conversion = time.perf_counter() - started
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    paths = {
        "TensorFlow float32": forward_function(with_precision(model, "float32")),
        "TensorFlow bfloat16": forward_function(with_precision(model, "bfloat16")),
    }
    print(f"onnxruntime {onnxruntime.__version__}, tf2onnx {tf2onnx.__version__}, conversion {conversion:.1f} s; "
          f"CPU bfloat16 features {sorted(cpu_features()) or 'none'}; load {os.getloadavg()[0]:.1f}")
    print("| size | path | fastest s | GFLOP/s | vs TF float32 | max |Δp| |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        tile = np.random.default_rng(0).random((1, size, size, n_channels), dtype=np.float32)
        calls = {name: (lambda f=forward, t=tile: f(t).numpy()) for name, forward in paths.items()}
        calls["ONNX Runtime float32"] = lambda t=tile: session.run(None, {input_name: t})[0]
        outputs = {name: call() for name, call in calls.items()}
        times = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                begun = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - begun)
        flops = unet_flops(model.config, size, size)
        reference = min(times["TensorFlow float32"])
        for name, values in times.items():
            fastest = min(values)
            difference = float(np.abs(outputs[name] - outputs["TensorFlow float32"]).max())
            print(f"| {size}² | {name} | {fastest:.3f} | {flops / fastest / 1e9:.0f} | {reference / fastest:.2f}x "
                  f"| {difference:.1e} |")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

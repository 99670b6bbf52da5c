"""ONNX Runtime against TensorFlow for the U-Net's forward pass on this CPU, in one run.

    .venv/bin/python benchmarks/bench_onnx.py [--model nuclei] [--sizes 512 1024] [--repeats 5]
    .venv/bin/python benchmarks/bench_onnx.py --startup [--repeats 3]

--startup: what the dock's quick start is for. A fresh process per run, interleaved: from nothing imported
to the instances of the model's own sample (nuclei: the 520x696 field) through predict(), on the shipped
model's ONNX twin (onnx_engine.py) vs on TensorFlow (import TensorFlow + Keras the dock's way, load the
.keras, trace, predict). Then the same second prediction in each process, warm.

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

_STARTUP = """
import sys, time
started = time.perf_counter()
from napari_unet._sample_data import load_em_membranes, load_nuclei
from napari_unet.inference.prediction import predict
from napari_unet.storage.shipped import shipped_model_path
image = load_em_membranes()[0] if sys.argv[2] == "membranes" else load_nuclei("nuclei")[0]
if sys.argv[1] == "onnx":
    from napari_unet.inference.onnx_engine import load_onnx_twin
    model = load_onnx_twin(shipped_model_path(sys.argv[2]))
else:
    from napari_unet.storage.registry import load_model
    model = load_model(sys.argv[2])
loaded = time.perf_counter()
predict(model, image, output="instances")
first = time.perf_counter()
predict(model, image, output="instances")
print(loaded - started, first - started, time.perf_counter() - first)
"""


def startup(model: str, repeats: int) -> None:
    import subprocess

    rows = {"ONNX Runtime (twin)": [], "TensorFlow": []}
    for _ in range(repeats):
        for name, engine in (("ONNX Runtime (twin)", "onnx"), ("TensorFlow", "tensorflow")):
            output = subprocess.run([sys.executable, "-c", _STARTUP, engine, model], capture_output=True, text=True,
                                    check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
            rows[name].append([float(value) for value in output.split()[-3:]])
    print(f"{model}, fresh process per run, {repeats} runs each (median), load {os.getloadavg()[0]:.1f}")
    print("| engine | imports + model ready s | first instances s | a second prediction s |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        ready, first, second = np.median(np.array(values), axis=0)
        print(f"| {name} | {ready:.2f} | {first:.2f} | {second:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--startup", action="store_true", help="cold start to a first prediction, ONNX twin vs TensorFlow")
    args = parser.parse_args()
    if args.startup:
        startup(args.model, args.repeats)
        return 0

    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from napari_unet.inference.precision import cpu_features, with_precision
    from napari_unet.inference.prediction import forward_function
    from napari_unet.model import unet_flops
    from napari_unet.storage.registry import load_model

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

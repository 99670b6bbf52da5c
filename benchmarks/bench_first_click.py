"""The first Predict in a freshly opened napari: click → labels on screen, and the GUI thread's stalls.

    xvfb-run -a .venv/bin/python benchmarks/bench_first_click.py [--waits 0 5] [--sample nuclei] [--ab]

Each case runs in a fresh process (nothing imported or traced yet) as a new user (an empty $NAPARI_UNET_HOME,
so the shipped model is chosen): a viewer with the sample image, the
dock opened, then Predict clicked WAIT seconds after the dock opened (0 = at once; the dock prepares the
model in the background from the moment it opens). Measured: seconds from the click to the prediction
layer being in the viewer and drawn, and the GUI-thread stalls (a 20 ms QTimer's late beats) from
opening the dock until 1 s after the labels appeared. The baseline row is the same viewer idle for 3 s
before the dock opens (what the machine, Xvfb and Qt cost by themselves). The dock starts its worker process
as it opens; --ab also runs each case without the ONNX twin in napari's process (the first Predict then waits
for the worker process to import TensorFlow and load the model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PERIOD = 0.020


def _stalls(beats: list[float], origin: float | None = None) -> dict:
    gaps = np.diff(beats) - PERIOD
    worst = np.argsort(gaps)[::-1][:5]
    return {"beats": len(beats), "p99_ms": 1000 * float(np.percentile(gaps, 99)), "max_ms": 1000 * float(gaps.max()),
            # the five longest stalls: (ms, when they began in s after `origin`)
            "worst": [(round(1000 * float(gaps[i])), round(beats[i] - (origin or beats[0]), 2)) for i in worst]}


def one_case(wait: float, sample: str, onnx: bool = True) -> dict:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unet._sample_data import load_em_membranes, load_nuclei
    from napari_unet._widgets.launch import DOCK_NAME, PLUGIN

    if not onnx:  # the A/B baseline: every prediction waits for the worker process
        import napari_unet.inference.onnx_engine

        napari_unet.inference.onnx_engine.onnx_runtime_available = lambda: False
    image, _ = load_em_membranes() if sample == "em_membranes" else load_nuclei(sample)
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name=sample)
    app = QApplication.instance()
    beats: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start(int(PERIOD * 1000))

    def spin(seconds: float, until=None) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not (until and until()):
            app.processEvents()
            time.sleep(0.001)

    spin(3.0)
    idle = _stalls(beats)
    beats.clear()
    opened = time.perf_counter()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK_NAME)
    dock_open_seconds = time.perf_counter() - opened  # the GUI thread builds the dock: a stall by itself
    spin(wait)
    layer_names = {layer.name for layer in viewer.layers}
    clicked = time.perf_counter()
    widget.predict_tab.predict()
    spin(120.0, until=lambda: any(layer.name not in layer_names and layer.__class__.__name__ == "Labels"
                                  for layer in viewer.layers))
    app.processEvents()  # the draw of the new layer
    shown = time.perf_counter()
    spin(1.0)
    timer.stop()
    result = {"wait_s": wait, "onnx": onnx, "engine": widget.predict_tab.engine,
              "click_to_labels_s": shown - clicked, "dock_open_to_labels_s": shown - opened,
              "dock_open_s": dock_open_seconds, "click_at_s": clicked - opened,
              "idle": idle, "with_dock": _stalls(beats, opened), "load": os.getloadavg()[0]}
    viewer.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=float, nargs="+", default=[0.0, 5.0])
    parser.add_argument("--sample", default="nuclei", choices=["nuclei", "nuclei_sparse", "em_membranes"])
    parser.add_argument("--ab", action="store_true",
                        help="also run each case without the ONNX twins (first Predict waits for TensorFlow), interleaved")
    parser.add_argument("--no-onnx", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(one_case(args.one, args.sample, onnx=not args.no_onnx)), flush=True)
        return 0
    rows = []
    for wait in args.waits:
        for no_onnx in [False, True] if args.ab else [False]:
            command = [sys.executable, __file__, "--one", str(wait), "--sample", args.sample]
            command += ["--no-onnx"] * no_onnx
            with tempfile.TemporaryDirectory() as home:  # a new user: no project or settings from earlier runs
                output = subprocess.run(command, capture_output=True, text=True, check=True,
                                        env={**os.environ, "NAPARI_UNET_HOME": home}).stdout
            rows.append(json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:]))
    print("| click after dock opened | first Predict on | click → labels s | dock open → labels s "
          "| GUI stall p99 ms | stall max ms | idle viewer p99 / max ms | load |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        dock, idle = row["with_dock"], row["idle"]
        print(f"| {row['wait_s']:.0f} s | {row['engine']} | {row['click_to_labels_s']:.2f} | {row['dock_open_to_labels_s']:.2f} "
              f"| {dock['p99_ms']:.0f} | {dock['max_ms']:.0f} | {idle['p99_ms']:.0f} / {idle['max_ms']:.0f} "
              f"| {row['load']:.1f} |")
    for row in rows:
        print(f"click after {row['wait_s']:.0f} s: building the dock took {row['dock_open_s']:.2f} s; longest stalls "
              f"(ms, s after the dock opened; click at {row['click_at_s']:.1f} s): {row['with_dock']['worst']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

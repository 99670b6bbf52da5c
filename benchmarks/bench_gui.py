"""GUI-thread stalls while a fine-tuning round runs in the dock, and while painting with Live on, against an
idle viewer in the same run.

    xvfb-run -a .venv/bin/python benchmarks/bench_gui.py [--seconds 20]

A 20 ms QTimer on the GUI thread records when it actually fires. A stall is a gap between two beats
minus the 20 ms period. Measured three times in one run: with the viewer idle (the baseline: what the
machine, Xvfb and Qt cost), while the dock's Fine-tune runs a project round on a 512² image with
the shipped `membranes` model, and while a scripted user paints a brush stroke every 150 ms (through the
layer's paint API, as the brush does) into the prediction with Live training in the background.
Prints p50 / p99 / max stall (wall clock) and, per beat, the GUI
thread's own CPU time (what the test suite asserts, because load cannot inflate it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import tempfile
import time

import numpy as np


def _stalls(beats: list[tuple[float, float]], period: float) -> dict:
    walls = np.diff([wall for wall, _ in beats]) - period
    cpus = np.diff([cpu for _, cpu in beats])
    worst = int(np.argmax(walls))
    return {"beats": len(beats), "p50_ms": 1000 * float(np.percentile(walls, 50)),
            "p99_ms": 1000 * float(np.percentile(walls, 99)), "max_ms": 1000 * float(walls.max()),
            "gui_cpu_max_ms": 1000 * float(cpus.max()),
            # the longest stall: when it began (s into the window) and the GUI thread's own CPU time in it
            "worst_at_s": round(beats[worst][0] - beats[0][0], 2), "worst_cpu_ms": round(1000 * float(cpus[worst]), 1)}


def make_project(root: str, image: np.ndarray, mask: np.ndarray) -> None:
    """The project the dock's round uses, made in a process of its own: making one loads the start model, and
    TensorFlow must never be imported into napari's process (the dock leaves that to its worker process)."""
    from napari_unet.project import Project

    Project.init(root, "membranes").add_pair(image, mask, name="em")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement window")
    parser.add_argument("--live-runs", type=int, default=4, help="how many times Live is switched on and painted into")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unet._sample_data import load_em_membranes
    from napari_unet._widgets.launch import PLUGIN

    image, mask = load_em_membranes()
    folder = tempfile.mkdtemp(prefix="bench-gui-")
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="em")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    app = QApplication.instance()
    period = 0.020

    def record(seconds: float, while_running=None, on_tick=None) -> list[tuple[float, float]]:
        beats: list[tuple[float, float]] = []
        timer = QTimer()
        timer.timeout.connect(lambda: beats.append((time.perf_counter(), time.thread_time())))
        timer.start(int(period * 1000))
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and (while_running is None or not while_running()):
            app.processEvents()
            if on_tick is not None and len(beats) % 10 == 0:
                on_tick()
            time.sleep(0.001)
        timer.stop()
        return beats

    widget.session.worker.ready.wait(120)  # the worker process's start-up stays out of the idle window
    record(3.0)  # let the first draws settle
    idle = _stalls(record(args.seconds), period)
    left = mask.copy()
    left[:, 256:] = 255
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(make_project, f"{folder}/project", image, left).result()
    widget.session.set_project(f"{folder}/project")
    tab = widget.finetune_tab
    tab.epochs_spin.setValue(100)
    tab.seconds_spin.setValue(int(args.seconds))
    job = tab.start()
    record(3.0, while_running=lambda: bool(tab.plot.losses))  # until training runs
    training = _stalls(record(args.seconds, while_running=lambda: job.done), period)
    while not job.done:
        app.processEvents()
        time.sleep(0.01)
    # Live: predict, then --live-runs times: switch Live on, paint a stroke every 150 ms while it trains.
    predict_job = widget.predict_tab.predict()
    while not predict_job.done:
        app.processEvents()
        time.sleep(0.01)
    live_tab = widget.live_tab
    labels = viewer.layers["em prediction"]
    predicted = np.array(labels.data)
    labels.brush_size = 10
    rng = np.random.default_rng(0)
    live_rows = []
    for _ in range(args.live_runs):
        labels.data = predicted.copy()  # every run starts from the same prediction, with a fresh live layer
        for layer in [layer for layer in viewer.layers if layer.name == "em live"]:
            viewer.layers.remove(layer)
        live_tab.image_combo.reset_choices()
        live_tab.image_combo.select("em")
        started = time.perf_counter()
        live_tab.live_check.setChecked(True)
        strokes = QTimer()
        strokes.timeout.connect(
            lambda: labels.paint(tuple(int(v) for v in rng.integers(0, 512, 2)), int(rng.integers(0, 2))))
        strokes.start(150)
        seen = {"first_change_s": None, "changes": 0, "bursts": 0, "last": None, "burst": None}

        # the live layer as the user sees it: when it first changes, how often it changes
        def watch(seen=seen, started=started) -> None:
            layer = live_tab.live_layer
            if live_tab.last_burst is not seen["burst"]:
                seen["burst"], seen["bursts"] = live_tab.last_burst, seen["bursts"] + 1
            if layer is None or layer not in viewer.layers:
                return
            digest = hash(np.asarray(layer.data).tobytes())
            if seen["last"] is not None and digest != seen["last"]:
                seen["changes"] += 1
            if seen["first_change_s"] is None and np.any(np.asarray(layer.data)):
                seen["first_change_s"] = time.perf_counter() - started
            seen["last"] = digest

        row = _stalls(record(args.seconds, on_tick=watch), period)
        strokes.stop()
        row.update(live_steps=live_tab.last_burst.total_steps if live_tab.last_burst else 0,
                   first_change_s=seen["first_change_s"], changes=seen["changes"], bursts=seen["bursts"])
        live_rows.append(row)
        live_tab.live_check.setChecked(False)
        while live_tab.running:
            app.processEvents()
            time.sleep(0.01)
    print("| state | beats | stall p50 ms | stall p99 ms | stall max ms | GUI-thread CPU per beat, max ms |")
    print("|---|---|---|---|---|---|")
    rows = [("idle viewer (baseline)", idle), ("fine-tuning round running", training)]
    rows += [(f"painting with Live on, run {i + 1} ({row['live_steps']} live steps)", row)
             for i, row in enumerate(live_rows)]
    for name, row in rows:
        print(f"| {name} | {row['beats']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} | "
              f"{row['gui_cpu_max_ms']:.1f} |")
    for name, row in [("round", training)] + [(f"live run {i + 1}", row) for i, row in enumerate(live_rows)]:
        print(f"{name}: longest stall began {row['worst_at_s']} s into the window; the GUI thread's own CPU in it "
              f"{row['worst_cpu_ms']} ms (the rest: waiting for Python's lock or the OS)")
    print("| Live run | live layer first changed, s after Live was switched on | live layer changes | bursts shown |")
    print("|---|---|---|---|")
    for i, row in enumerate(live_rows):
        first = "never" if row["first_change_s"] is None else f"{row['first_change_s']:.1f}"
        print(f"| {i + 1} | {first} | {row['changes']} | {row['bursts']} |")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

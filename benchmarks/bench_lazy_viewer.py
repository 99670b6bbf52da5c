"""The dock's lazy prediction in napari against the core's zarr → zarr prediction: one model, one run.

    xvfb-run -a .venv/bin/python benchmarks/bench_lazy_viewer.py --sizes 8192 16384 [--model nuclei] [--repeats 1]

For each size N, a synthetic N² uint8 zarr of blobs (bench_lazy_labels.make_image, made once under --images,
outside the repository), then, each part in its own fresh process so its peak memory is its own:
  core    prediction.predict(model, dask.array.from_zarr(image)).to_zarr(labels): the core's lazy path (dask
          threads, blocks of prediction.BLOCK_SIZE), the model loaded and traced before the clock starts;
  viewer  a real napari viewer (shown; under Xvfb without a display) as a new user, the image opened as a lazy
          layer, zoomed in at its centre (one screen pixel per image pixel), the dock opened and its model warmed up (as after
          a user has looked around); then Predict pressed: seconds until the dock's job is done (every region
          written into the Labels layer's zarr store, the display refreshed), the first region's arrival, the
          GUI thread's stalls (a 20 ms timer's late beats), time spent on the GUI thread writing and refreshing,
          peak RSS of napari's process and of the worker process, CPU seconds of each.
The ratio viewer/core is what counts (the machine is shared: compare within one run). The two label arrays are
compared pixel for pixel.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

PERIOD = 0.020  # s between the stall timer's beats


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_stats(pid: int) -> dict:
    """Peak RSS (VmHWM) and CPU seconds of another process (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"peak_mb": peak, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


def display_server_pid() -> int | None:
    """The Xvfb serving $DISPLAY (its software rendering is part of the viewer's cost), if there is one."""
    display = os.environ.get("DISPLAY", "")
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"Xvfb") and display.encode() in command:
            return int(entry.name)
    return None


def run_core(image_path: Path, labels_path: Path, model_name: str) -> dict:
    import dask.array as da
    import zarr

    from napari_unet.inference.prediction import predict
    from napari_unet.storage.registry import load_model

    model = load_model(model_name)
    source = zarr.open_array(str(image_path), mode="r")
    predict(model, np.asarray(source[:512, :512]))  # load and trace before the clock starts
    cpu_before, started = cpu_seconds(), time.perf_counter()
    labels = predict(model, da.from_zarr(source))
    labels.to_zarr(str(labels_path))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "cpu_s": cpu_seconds() - cpu_before, "peak_mb": peak_mb(), "labels": str(labels_path)}


def run_viewer(image_path: Path, model_name: str, profile: str | None = None) -> dict:
    import napari
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unet._widgets import _lazy_prediction
    from napari_unet._widgets.launch import DOCK_NAME, PLUGIN
    from napari_unet.inference.lazy_labels import open_zarr_image

    QApplication.instance() or QApplication([])

    def spin(seconds: float, until=lambda: False) -> None:
        """Run Qt's event loop (no busy waiting) for `seconds` or until `until()`."""
        loop, deadline = QEventLoop(), time.perf_counter() + seconds
        check = QTimer()
        check.timeout.connect(lambda: (until() or time.perf_counter() > deadline) and loop.quit())
        check.start(50)
        loop.exec_() if hasattr(loop, "exec_") else loop.exec()
        check.stop()

    # GUI-thread work of the dock, timed where the dock calls it.
    gui_work = {"write_s": [], "refresh_s": []}
    write_region, refresh_now = _lazy_prediction.write_region, _lazy_prediction.DisplayRefresher.refresh_now

    def timed_write(*args, **kwargs):
        started = time.perf_counter()
        try:
            return write_region(*args, **kwargs)
        finally:
            gui_work["write_s"].append(time.perf_counter() - started)

    def timed_refresh(self):
        started = time.perf_counter()
        try:
            return refresh_now(self)
        finally:
            gui_work["refresh_s"].append(time.perf_counter() - started)

    _lazy_prediction.write_region = timed_write
    _lazy_prediction.DisplayRefresher.refresh_now = timed_refresh

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)  # a canvas of about 1200 x 900 px beside the dock
    started = time.perf_counter()
    image = viewer.add_image(open_zarr_image(image_path), name="blobs")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK_NAME)
    session = widget.session
    session.select_model(model_name)  # before the dock's warm-up starts: it prepares this model
    spin(1.0)
    layers_s = time.perf_counter() - started
    size = image.data.shape[-1]
    viewer.camera.center = (size / 2, size / 2)
    viewer.camera.zoom = 1.0  # a screen pixel per image pixel: the canvas shows about its own size
    spin(600.0, until=lambda: session.is_warm(model_name))  # the dock's warm-up: the worker has loaded, traced
    if not session.is_warm(model_name):
        raise SystemExit(f"the worker process did not prepare '{model_name}' in 600 s")
    spin(1.0)
    visible = _lazy_prediction.visible_region(image)
    memory_before = peak_mb()

    beats: list[float] = []
    beat_timer = QTimer()
    beat_timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    beat_timer.start(int(PERIOD * 1000))
    worker_before = process_stats(session.worker.pid)
    xvfb = display_server_pid()
    xvfb_before = process_stats(xvfb) if xvfb else {"cpu_s": 0.0}
    cpu_before = cpu_seconds()
    profiler = None
    if profile:  # where the GUI thread spends its time (cProfile: the GUI thread only)
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    clicked = time.perf_counter()
    job = widget.predict_tab.predict()
    arrivals = []  # (s after the click, tiles done) of each result, as the GUI thread receives it
    job._relay.progress.connect(lambda value: arrivals.append((round(time.perf_counter() - clicked, 2), value.tiles_done)))
    spin(24 * 3600.0, until=lambda: job.done)
    seconds = time.perf_counter() - clicked
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    beat_timer.stop()
    worker = process_stats(session.worker.pid)
    xvfb_cpu = process_stats(xvfb)["cpu_s"] - xvfb_before["cpu_s"] if xvfb else float("nan")
    gaps = np.diff(beats) - PERIOD
    labels_layer = viewer.layers["blobs prediction"]
    result = {
        "seconds": seconds, "first_region_s": arrivals[0][0] if arrivals else None, "arrivals": arrivals,
        "error": repr(job.error) if job.error is not None else None, "visible": visible,
        "layers_s": layers_s, "napari_peak_before_mb": memory_before, "napari_peak_mb": peak_mb(),
        "napari_cpu_s": cpu_seconds() - cpu_before, "worker_peak_mb": worker["peak_mb"],
        "worker_cpu_s": worker["cpu_s"] - worker_before["cpu_s"], "xvfb_cpu_s": xvfb_cpu,
        "stall_p99_ms": 1000 * float(np.percentile(gaps, 99)), "stall_max_ms": 1000 * float(gaps.max()),
        # the five longest stalls: (ms, when they began in s after the click; Predict adds the Labels layer at once)
        "worst_stalls": [(round(1000 * float(gaps[i])), round(beats[i] - clicked, 2)) for i in np.argsort(gaps)[::-1][:5]],
        "regions": len(gui_work["write_s"]), "write_total_s": sum(gui_work["write_s"]),
        "write_max_ms": 1000 * max(gui_work["write_s"], default=0.0),
        "writes_ms": [round(1000 * spent) for spent in gui_work["write_s"]], "refreshes": len(gui_work["refresh_s"]),
        "refresh_total_s": sum(gui_work["refresh_s"]), "refresh_max_ms": 1000 * max(gui_work["refresh_s"], default=0.0),
        "labels": labels_layer.metadata[_lazy_prediction.LAZY_KEY],
    }
    session.close()
    return result


def same_labels(first: str, second: str) -> float:
    """Fraction of equal pixels, read a band of rows at a time."""
    import zarr

    a, b = zarr.open_array(first, mode="r"), zarr.open_array(second, mode="r")
    equal, band = 0, 2048
    for row in range(0, a.shape[0], band):
        equal += int(np.count_nonzero(np.asarray(a[row:row + band]) == np.asarray(b[row:row + band])))
    return equal / a.size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--repeats", type=int, default=1, help="core and viewer runs per size, interleaved")
    parser.add_argument("--images", default="/tmp/napari-unet-bench", help="where the synthetic images are kept")
    parser.add_argument("--profile", help="write a cProfile of napari's GUI thread during the viewer's prediction here "
                        "(<file>-<size>)")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: core|viewer, prints JSON
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        if args.part == "core":
            result = run_core(Path(args.image), Path(args.out), args.model)
        else:
            result = run_viewer(Path(args.image), args.model, args.profile)
        print("RESULT " + json.dumps(result, default=str), flush=True)
        os._exit(0)  # TensorFlow's and Qt's C++ destructors at exit are not part of the measurement

    from bench_lazy_labels import make_image

    rows = []
    for size in args.sizes:
        image_path = Path(args.images) / f"blobs-{size}.zarr"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        make_image(image_path, size)
        print(f"image {size}² uint8 at {image_path} (made/checked in {time.perf_counter() - started:.0f} s)", flush=True)
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="bench-lazy-viewer-") as work:
                parts = {}
                for part in ("core", "viewer"):
                    command = [sys.executable, __file__, "--part", part, "--image", str(image_path), "--model", args.model,
                               "--out", str(Path(work) / "core-labels.zarr")]
                    if args.profile:
                        command += ["--profile", f"{args.profile}-{size}"]
                    if part == "viewer" and not os.environ.get("DISPLAY"):
                        command = ["xvfb-run", "-a", "-s", "-screen 0 1920x1200x24", *command]
                    load = os.getloadavg()[0]
                    environment = {**os.environ, "NAPARI_UNET_HOME": str(Path(work) / "home")}  # a new user
                    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
                    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
                    if not lines:
                        print(completed.stdout[-3000:], completed.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"the {part} part failed")
                    parts[part] = {**json.loads(lines[-1][7:]), "load": f"{load:.1f}→{os.getloadavg()[0]:.1f}"}
                    print(f"{size}² {part}: {json.dumps(parts[part])}", flush=True)
                equal = same_labels(parts["core"]["labels"], parts["viewer"]["labels"])
                rows.append({"size": size, "core": parts["core"], "viewer": parts["viewer"], "equal": equal})
                shutil.rmtree(Path(work) / "home", ignore_errors=True)
    print(f"\nmodel {args.model}; {os.cpu_count()} cores; the canvas shows about 1000 x 700 px at the image's centre\n")
    print("| image | core s | viewer s | viewer / core | view shown after s | GUI stall p99 / max ms | GUI writes (chunks): "
          "n, total s, max ms | refreshes: n, total s, max ms | peak RSS core / napari / worker MB | CPU s core / napari / "
          "worker / Xvfb | equal px | load core, viewer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        core, viewer = row["core"], row["viewer"]
        print(f"| {row['size']}² uint8 | {core['seconds']:.0f} | {viewer['seconds']:.0f} | "
              f"**{viewer['seconds'] / core['seconds']:.2f}x** | {viewer['first_region_s'] or float('nan'):.1f} | "
              f"{viewer['stall_p99_ms']:.0f} / {viewer['stall_max_ms']:.0f} | {viewer['regions']}, "
              f"{viewer['write_total_s']:.1f}, {viewer['write_max_ms']:.0f} | {viewer['refreshes']}, "
              f"{viewer['refresh_total_s']:.1f}, {viewer['refresh_max_ms']:.0f} | {core['peak_mb']:.0f} / "
              f"{viewer['napari_peak_mb']:.0f} / {viewer['worker_peak_mb']:.0f} | {core['cpu_s']:.0f} / "
              f"{viewer['napari_cpu_s']:.0f} / {viewer['worker_cpu_s']:.0f} / {viewer['xvfb_cpu_s']:.0f} | {row['equal']:.6f} | "
              f"{core['load']}, {viewer['load']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

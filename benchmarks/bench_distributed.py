"""Batch prediction on a local dask cluster (1 and 2 workers) vs the plain single-process path.

    .venv/bin/python benchmarks/bench_distributed.py [--images 20] [--model nuclei] [--workers 1 2]

Each mode runs in its own process (clean memory figures) on the first N images of
../shared/data/nuclei_dsb2018/images: plain = the CLI's loop (read -> prediction.predict -> write);
local:N = `napari-unet predict --scheduler local:N`'s path (distributed.py). Reported: start-up (model
load, or cluster start + model install on every worker, then one warm-up prediction per image shape in
every process: TF/oneDNN prepare kernels once per new shape), prediction time for the folder, throughput,
its ratio to plain, and peak resident memory (client + all workers). Compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nuclei_dsb2018" / "images"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def warm_up(model, shapes) -> None:
    """One prediction per image shape: TF/oneDNN prepare kernels per new shape, once per process."""
    from napari_unet.inference.prediction import predict

    rng = np.random.default_rng(0)
    for shape in shapes:
        predict(model, (rng.random(shape) * 255).astype(np.uint8))


def warm_up_worker(shapes, dask_worker=None) -> None:
    from napari_unet.inference.distributed import PLUGIN_NAME

    warm_up(dask_worker.plugins[PLUGIN_NAME].model, shapes)


def run_mode(mode: str, n_images: int, model_name: str) -> dict:
    from napari_unet.storage.io import list_images, read_image, write_labels
    from napari_unet.storage.registry import load_model, resolve

    paths = list_images(DATA)[:n_images]
    shapes = sorted({read_image(path).shape for path in paths})
    out = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    started = time.perf_counter()
    if mode == "plain":
        from napari_unet.inference.prediction import predict

        model = load_model(model_name)
        warm_up(model, shapes)
        ready = time.perf_counter()
        for path in paths:
            write_labels(out / f"{path.stem}.tif", predict(model, read_image(path)))
        done = time.perf_counter()
        memory = peak_mb()
    else:
        from napari_unet.inference.distributed import cluster_client, install_model, parse_scheduler, predict_on_cluster

        with cluster_client(parse_scheduler(mode), timeout=60) as client:
            install_model(client, resolve(model_name)[0])
            client.run(warm_up_worker, shapes)
            ready = time.perf_counter()
            images = ((out / f"{path.stem}.tif", read_image(path)) for path in paths)
            for target, labels in predict_on_cluster(client, images, total=len(paths)):
                write_labels(target, labels)
            done = time.perf_counter()
            memory = peak_mb() + sum(client.run(peak_mb).values())
    return {"mode": mode, "images": len(paths), "startup_s": ready - started, "predict_s": done - ready,
            "peak_mb": memory, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode and print JSON
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.images, args.model)))
        return
    rows = []
    for mode in ["plain", *(f"local:{n}" for n in args.workers)]:
        result = subprocess.run([sys.executable, __file__, "--mode", mode, "--images", str(args.images),
                                 "--model", args.model], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    baseline = rows[0]["images"] / rows[0]["predict_s"]
    print(f"{args.images} images of nuclei_dsb2018, model '{args.model}', {os.cpu_count()} cores")
    print("| mode | start-up s | predict s | images/s | vs plain | peak memory MB (all processes) | load |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        rate = row["images"] / row["predict_s"]
        print(f"| {row['mode']} | {row['startup_s']:.1f} | {row['predict_s']:.2f} | {rate:.2f} | "
              f"{rate / baseline:.2f}x | {row['peak_mb']:.0f} | {row['load']:.1f} |")


if __name__ == "__main__":
    main()

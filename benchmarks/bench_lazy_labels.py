"""A 32768 x 32768 zarr image predicted into zarr labels on disk, the visible region first (lazy_labels.py).

    .venv/bin/python benchmarks/bench_lazy_labels.py [--size 32768] [--seconds 150] [--region 2048]

Makes (once) a synthetic uint8 image of blobs at --image (default /tmp/napari-unet-bench/big.zarr, ~100 MB
compressed, outside the repository), then, with the shipped 'nuclei' model:
  baseline  prediction.predict on an in-memory 2048² crop (Mpx/s), in the same run;
  lazy      predict_regions into a new zarr store, the visible region (1000² at the centre) first, for
            --seconds: time to the first visible result, Mpx/s, the total extrapolated from the tile rate
            (the whole image takes too long on 2 shared cores), peak resident memory;
Each part runs in its own process so peak memory is its own. Compare ratios within one run. The same in napari,
through the dock and its worker process: benchmarks/bench_lazy_viewer.py.
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

import numpy as np

VISIBLE = 1000  # px side of the region on screen, at the image's centre


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_image(path: Path, size: int, chunk: int = 1024) -> None:
    """Blobs 10-20 px wide on a dim noisy background, written chunk by chunk (never whole in memory)."""
    import zarr
    from scipy import ndimage as ndi

    if path.exists():
        return
    store = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(chunk, chunk), dtype=np.uint8)
    rng = np.random.default_rng(0)
    coarse = rng.random((size // 8 + 2, size // 8 + 2)).astype(np.float32)
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            patch = ndi.zoom(coarse[y // 8 : (y + chunk) // 8 + 2, x // 8 : (x + chunk) // 8 + 2], 8, order=1)
            patch = ndi.gaussian_filter(patch[:chunk, :chunk], 2)
            blobs = (patch > 0.62) * 150 + 30 + rng.normal(0, 8, patch.shape)
            store[y : y + chunk, x : x + chunk] = np.clip(blobs, 0, 255).astype(np.uint8)


def visible_region(size: int):
    centre = size // 2
    return (), ((centre - VISIBLE // 2, centre + VISIBLE // 2), (centre - VISIBLE // 2, centre + VISIBLE // 2))


def run_baseline(image_path: Path) -> dict:
    import zarr

    from napari_unet.inference.prediction import predict
    from napari_unet.storage.registry import load_model

    model = load_model("nuclei")
    crop = zarr.open_array(str(image_path), mode="r")[:2048, :2048]
    predict(model, crop[:1024, :1024])  # trace once
    started = time.perf_counter()
    predict(model, crop)
    seconds = time.perf_counter() - started
    return {"mpx_per_s": crop.size / 1e6 / seconds, "seconds": seconds, "peak_mb": peak_mb()}


def run_lazy(image_path: Path, seconds: float, region_size: int) -> dict:
    from napari_unet.inference.lazy_labels import create_labels_store, open_zarr_image, predict_regions
    from napari_unet.storage.registry import load_model

    model = load_model("nuclei")
    image = open_zarr_image(image_path)
    folder = Path(tempfile.mkdtemp(prefix="bench-lazy-"))
    labels = create_labels_store(folder / "labels.zarr", image.shape)
    visible = visible_region(image.shape[0])
    started = time.perf_counter()
    first = None
    pixels = 0
    try:
        for result in predict_regions(model, image, visible=lambda: visible, region_size=region_size):
            labels[result.key] = result.labels
            pixels += result.labels.size if result.mask is None else int(result.mask.sum())
            elapsed = time.perf_counter() - started
            if first is None:
                first = {"first_s": elapsed, "first_region": result.region}
                first_done = result.tiles_done
            if elapsed > seconds:
                break
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    after_first = elapsed - first["first_s"]
    tiles_per_s = (result.tiles_done - first_done) / after_first if after_first > 0 else float("nan")
    return {**first, "seconds": elapsed, "mpx": pixels / 1e6, "mpx_per_s": pixels / 1e6 / elapsed,
            "tiles_done": result.tiles_done, "tiles_total": result.tiles_total, "tiles_per_s": tiles_per_s,
            "total_s_estimate": first["first_s"] + (result.tiles_total - first_done) / tiles_per_s,
            "peak_mb": peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32768)
    parser.add_argument("--image", default="/tmp/napari-unet-bench/big.zarr")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--region", type=int, default=None, help="region size (default: lazy_labels.REGION_SIZE)")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part, print JSON
    args = parser.parse_args()
    from napari_unet.inference.lazy_labels import REGION_SIZE

    region_size = args.region or REGION_SIZE
    image_path = Path(args.image)
    if args.part:
        part = {"baseline": lambda: run_baseline(image_path),
                "lazy": lambda: run_lazy(image_path, args.seconds, region_size)}[args.part]
        print(json.dumps(part(), default=str), flush=True)
        os._exit(0)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    make_image(image_path, args.size)
    print(f"image {args.size}² uint8 at {image_path} (made/checked in {time.perf_counter() - started:.0f} s); "
          f"region {region_size} px; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")

    def part(name: str) -> dict:
        command = [sys.executable, __file__, "--part", name, "--image", str(image_path), "--seconds", str(args.seconds),
                   "--region", str(region_size)]
        return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])

    baseline, lazy = part("baseline"), part("lazy")
    print(f"baseline: predict() on an in-memory 2048² crop: {baseline['mpx_per_s']:.3f} Mpx/s "
          f"({baseline['seconds']:.1f} s), peak {baseline['peak_mb']:.0f} MB")
    print(f"lazy: first visible region {lazy['first_region']} after {lazy['first_s']:.1f} s; "
          f"{lazy['mpx']:.0f} Mpx in {lazy['seconds']:.0f} s = {lazy['mpx_per_s']:.3f} Mpx/s "
          f"({lazy['mpx_per_s'] / baseline['mpx_per_s']:.2f}x the baseline); tiles {lazy['tiles_done']}/"
          f"{lazy['tiles_total']} at {lazy['tiles_per_s']:.2f}/s -> whole image ~{lazy['total_s_estimate'] / 3600:.1f} h "
          f"(extrapolated); peak {lazy['peak_mb']:.0f} MB; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

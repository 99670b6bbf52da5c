"""A volume too large for memory: 3-D objects predicted plane by plane into a zarr array on disk.

    .venv/bin/python benchmarks/bench_big_volume.py make /tmp/big.zarr            # 512 x 2048 x 2048 uint16, ~4 GB raw
    .venv/bin/python benchmarks/bench_big_volume.py predict /tmp/big.zarr --planes 64 [--json]

`make` writes a synthetic volume of nuclei (ellipsoids on a jittered grid, twice as wide as deep, blurred, with
noise) into a zarr array chunked one plane deep, plane by plane (the volume is never in memory). `predict` runs
napari_unet.inference.prediction.predict_stack_into with the shipped `nuclei` model on the first --planes planes (a dask view
of the zarr, read one plane at a time) into an int32 zarr array (chunks 1 x 512 x 512): each plane's objects,
stitched to the plane before, then one relabelling pass. It prints the time, the planes per second, the process's
peak resident memory (getrusage) and its resident memory once the model was loaded, and the load (os.getloadavg),
so a run on a shared machine says how shared it was. The peak does not grow with the number of planes (compare
--planes 8 with --planes 64); the time does, linearly. Measured on all 512 planes (2 shared cores, bfloat16):
2,290 s, 4.47 s per plane, peak 1.28 GB (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

NUCLEUS_RADIUS = 10  # px in X and Y; half that in Z (Z steps twice the pixel size)
GRID_STEP = 32  # px between nucleus centres in X and Y (jittered), planes between them: 12


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def current_rss_gb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def nucleus_centres(depth: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) float centres (z, y, x) on a jittered grid, and a radius each: (N, 4)."""
    z, y, x = np.meshgrid(np.arange(6, depth, 12), np.arange(16, side, GRID_STEP), np.arange(16, side, GRID_STEP),
                          indexing="ij")
    centres = np.stack([z.ravel(), y.ravel(), x.ravel()], axis=1).astype(np.float64)
    centres += rng.uniform(-1, 1, centres.shape) * (3, 6, 6)
    radii = rng.uniform(0.8, 1.2, len(centres)) * NUCLEUS_RADIUS
    return np.column_stack([centres, radii])


def render_plane(z: int, nuclei: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """uint16 plane z: the nuclei's cross-sections (ellipsoids, Z radius half the XY radius), blurred, plus noise."""
    from scipy import ndimage as ndi

    plane = np.zeros((side, side), dtype=np.float32)
    dz = (z - nuclei[:, 0]) * 2.0  # in XY pixels
    cut = nuclei[np.abs(dz) < nuclei[:, 3]]
    cut_radii = np.sqrt(cut[:, 3] ** 2 - ((z - cut[:, 0]) * 2.0) ** 2)
    for (_, cy, cx, _), radius in zip(cut, cut_radii):
        r = int(np.ceil(radius))
        y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r + 1, side), max(int(cx) - r, 0), min(int(cx) + r + 1, side)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        plane[y0:y1, x0:x1][disc] = 3000.0
    plane = ndi.gaussian_filter(plane, 1.5)
    plane += rng.normal(500, 80, plane.shape).astype(np.float32)
    return np.clip(plane, 0, 65535).astype(np.uint16)


def make(path: str, depth: int, side: int) -> None:
    import zarr

    rng = np.random.default_rng(0)
    nuclei = nucleus_centres(depth, side, rng)
    image = zarr.open_array(path, mode="w-", shape=(depth, side, side), chunks=(1, 512, 512), dtype=np.uint16)
    started = time.perf_counter()
    for z in range(depth):
        image[z] = render_plane(z, nuclei, side, rng)
    print(f"wrote {path}: {depth} x {side} x {side} uint16, {len(nuclei)} nuclei, {time.perf_counter() - started:.0f} s, "
          f"peak RSS {peak_rss_gb():.2f} GB")


def predict(path: str, planes: int, as_json: bool) -> None:
    import dask.array as da
    import zarr

    from napari_unet import load_model
    from napari_unet.inference.prediction import predict_stack_into

    image = da.from_zarr(path)
    depth = image.shape[0]
    planes = min(planes, depth)
    slab = image[:planes]
    out_path = f"{path.rstrip('/')}.objects-{planes}.zarr"
    out = zarr.open_array(out_path, mode="w", shape=slab.shape, chunks=(1, 512, 512), dtype=np.int32)
    model = load_model("nuclei")
    predict_stack_into(model, np.asarray(slab[0][:256, :256])[None].repeat(2, axis=0),
                       np.zeros((2, 256, 256), np.int32))  # warm-up: tracing
    model_rss = current_rss_gb()
    load_before = os.getloadavg()
    started = time.perf_counter()

    def show(done: int, total: int) -> None:  # a line per plane, so a long run can be read while it goes
        print(f"  {done}/{total} steps, {time.perf_counter() - started:.0f} s, peak RSS {peak_rss_gb():.2f} GB, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)

    predict_stack_into(model, slab, out, stack="z", progress=show)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()
    n_objects = int(max(int(np.asarray(out[z]).max()) for z in range(planes)))
    row = {"volume": list(image.shape), "planes": planes, "seconds": round(seconds, 1),
           "seconds_per_plane": round(seconds / planes, 2), "extrapolated_full_depth_minutes": round(
               seconds / planes * depth / 60, 1), "peak_rss_gb": round(peak_rss_gb(), 2),
           "rss_after_model_gb": round(model_rss, 2), "objects": n_objects, "output": out_path,
           "load_1min_before_after": [round(load_before[0], 1), round(load_after[0], 1)]}
    if as_json:
        print(json.dumps(row))
        return
    print(f"{planes} of {depth} planes of {image.shape[1]} x {image.shape[2]} into {out_path}: {seconds:.0f} s "
          f"({row['seconds_per_plane']} s/plane; all {depth} planes: ~{row['extrapolated_full_depth_minutes']} min), "
          f"{n_objects} objects, peak RSS {row['peak_rss_gb']} GB (after loading the model: {row['rss_after_model_gb']} GB), "
          f"load {row['load_1min_before_after'][0]} -> {row['load_1min_before_after'][1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    making = commands.add_parser("make", help="write the synthetic volume")
    making.add_argument("path")
    making.add_argument("--depth", type=int, default=512)
    making.add_argument("--side", type=int, default=2048)
    predicting = commands.add_parser("predict", help="predict its first planes into a zarr array")
    predicting.add_argument("path")
    predicting.add_argument("--planes", type=int, default=64)
    predicting.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "make":
        make(args.path, args.depth, args.side)
    else:
        predict(args.path, args.planes, args.json)


if __name__ == "__main__":
    main()

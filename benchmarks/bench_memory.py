"""Peak memory of prediction: a big numpy image, and a huge zarr image predicted block-wise into zarr.

    .venv/bin/python benchmarks/bench_memory.py [--width 16] [--numpy-size 8192] [--zarr-size 32768]

Each case runs in its own subprocess and reports its peak RSS (resource.getrusage ru_maxrss), next to
the RSS of the same process after importing TensorFlow and building the model (the fixed cost).
Goal: 8192² uint8 at width 16 under 2.5 GB; the zarr case never loads the image whole.
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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def smooth_uint8(height: int, width: int, seed: int = 0):
    """A uint8 image with blobs, made without float copies of the full image (zoomed coarse noise)."""
    import numpy as np
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    coarse = (ndi.gaussian_filter(rng.random((height // 16 + 1, width // 16 + 1)), 2) * 255).astype(np.uint8)
    return ndi.zoom(coarse, 16, order=1)[:height, :width]


def run_case(case: str, size: int, width: int, workdir: str) -> dict:
    import numpy as np

    from napari_unet.inference.prediction import predict
    from napari_unet.model import UNetConfig, new_model

    model = new_model(UNetConfig(base_width=width))
    predict(model, smooth_uint8(64, 64))  # trace the forward function before measuring the fixed cost
    baseline = peak_rss_mb()
    start = time.perf_counter()
    if case == "numpy":
        image = smooth_uint8(size, size)
        labels = predict(model, image)
        detail = f"labels {labels.shape} {labels.dtype}, foreground {labels.mean():.3f}"
    else:
        import dask.array as da
        import zarr

        source = zarr.open_array(Path(workdir) / "image.zarr", mode="r")
        labels = predict(model, da.from_zarr(source))
        labels.to_zarr(str(Path(workdir) / "labels.zarr"), overwrite=True)
        written = zarr.open_array(Path(workdir) / "labels.zarr", mode="r")
        corner = np.asarray(written[:512, :512])
        detail = f"zarr labels {written.shape} chunks {written.chunks}, corner foreground {corner.mean():.3f}"
    seconds = time.perf_counter() - start
    return {"case": case, "size": size, "seconds": seconds, "baseline_mb": baseline, "peak_mb": peak_rss_mb(), "detail": detail}


def make_zarr(path: Path, size: int, chunk: int = 1024) -> None:
    """Write a size² uint8 zarr one row of chunks at a time (never the whole image in memory)."""
    import numpy as np
    import zarr

    array = zarr.open_array(path, mode="w", shape=(size, size), chunks=(chunk, chunk), dtype=np.uint8)
    for row in range(0, size, chunk):
        array[row : row + chunk] = smooth_uint8(min(chunk, size - row), size, seed=row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--numpy-size", type=int, default=8192)
    parser.add_argument("--zarr-size", type=int, default=32768, help="0 to skip the zarr case")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # inside the measuring subprocess
        size = args.numpy_size if args.case == "numpy" else args.zarr_size
        print(json.dumps(run_case(args.case, size, args.width, args.workdir)))
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-") as workdir:
        cases = ["numpy"]
        if args.zarr_size:
            start = time.perf_counter()
            make_zarr(Path(workdir) / "image.zarr", args.zarr_size)
            print(f"wrote {args.zarr_size}² uint8 zarr in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            cases.append("zarr")
        for case in cases:
            command = [sys.executable, __file__, "--case", case, "--workdir", workdir, "--width", str(args.width),
                       "--numpy-size", str(args.numpy_size), "--zarr-size", str(args.zarr_size)]
            load_before = os.getloadavg()[0]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append({**json.loads(output.strip().splitlines()[-1]), "load": f"{load_before:.1f}→{os.getloadavg()[0]:.1f}"})
    print("| case | image | seconds | MPix/s | RSS after import+model MB | peak RSS MB | load | detail |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        megapixels = row["size"] ** 2 / 1e6
        print(f"| {row['case']} | {row['size']}² uint8 | {row['seconds']:.0f} | {megapixels / row['seconds']:.2f} | "
              f"{row['baseline_mb']:.0f} | {row['peak_mb']:.0f} | {row['load']} | {row['detail']} |")
    print(f"model: base_width={args.width} depth=3, goal: numpy case peak < 2500 MB")


if __name__ == "__main__":
    main()

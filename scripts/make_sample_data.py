"""Generate the synthetic sample images (with ground truth) that napari-unet ships in sample_data/.

The real EM data the shipped model is trained on (ISBI 2012) may not be redistributed with the
project, so the samples are drawn here from a fixed seed with numpy/scipy/scikit-image only:

* em_membranes.tif (512×512 uint8) + em_membranes_mask.tif (1 = membrane): an EM-like section —
  a warped Voronoi tiling of cells with dark membranes of varying thickness, textured cytoplasm,
  vesicle- and mitochondria-like organelles, blur and shot/read noise. Close enough to ISBI 2012
  that the shipped 'membranes' model segments it sensibly.
* nuclei.tif (512×512 uint16) + nuclei_labels.tif (int32 instance labels, 0 = background): a
  fluorescence-like field of bright ellipses (some touching) with uneven illumination and noise.

Run from the repository root:  .venv/bin/python scripts/make_sample_data.py
Same seed, same library versions → the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import draw, measure, segmentation

SEED = 2012
REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = REPO_ROOT / "sample_data"


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean, unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-12)


def cell_tiling(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Irregular cells: Voronoi regions of scattered seeds, on a smoothly warped grid.

    Seeds come from a mixture of densities so both large and small neurite profiles appear,
    as in ISBI's slices.
    """
    height, width = shape
    n_large, n_small = 45, 45
    seeds = np.concatenate([
        rng.uniform(0, 1, (n_large, 2)) * (height, width),
        # small profiles cluster, like bundles of thin neurites
        (rng.uniform(0, 1, (6, 2)) * (height, width))[rng.integers(0, 6, n_small)]
        + rng.normal(0, 22, (n_small, 2)),
    ])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    warp = 14.0
    yy_warped = yy + warp * smooth_noise(rng, shape, 28)
    xx_warped = xx + warp * smooth_noise(rng, shape, 28)
    # additive weights make some cells bigger than their Voronoi share (power diagram)
    weights = rng.uniform(0, 900, len(seeds))
    best = np.full(shape, np.inf)
    labels = np.zeros(shape, dtype=np.int32)
    for index, (seed_y, seed_x) in enumerate(seeds, start=1):
        distance = (yy_warped - seed_y) ** 2 + (xx_warped - seed_x) ** 2 - weights[index - 1]
        closer = distance < best
        best[closer] = distance[closer]
        labels[closer] = index
    # split non-contiguous pieces into their own cells
    return measure.label(labels, connectivity=1, background=-1)


def make_em_membranes(rng: np.random.Generator, shape: tuple[int, int] = (512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like uint8 image and its membrane mask (uint8, 1 = membrane)."""
    labels = cell_tiling(rng, shape)
    boundaries = segmentation.find_boundaries(labels, mode="inner")
    distance_to_boundary = ndi.distance_transform_edt(~boundaries)
    # membrane half-thickness varies smoothly between ~1.5 and ~4.5 px
    half_thickness = 3.0 + 1.2 * smooth_noise(rng, shape, 40)
    half_thickness = np.clip(half_thickness, 1.5, 4.5)
    membrane = distance_to_boundary <= half_thickness

    # cytoplasm: a per-cell grey level, slow shading and fine grain
    cell_level = rng.normal(0, 12, labels.max() + 1)
    image = 160.0 + cell_level[labels] + 10 * smooth_noise(rng, shape, 60)
    image += 9 * smooth_noise(rng, shape, 1.5) + 5 * smooth_noise(rng, shape, 4)

    # organelles inside cells (not membrane in the ground truth): vesicle rings and
    # mitochondria-like darker ellipses with internal texture
    organelles = np.zeros(shape, dtype=np.float64)
    interior = ~membrane & (distance_to_boundary > 7)
    candidates = np.argwhere(interior)
    for y, x in candidates[rng.choice(len(candidates), 420, replace=False)]:
        radius = rng.uniform(2.0, 4.0)
        ring_r, ring_c = draw.circle_perimeter(int(y), int(x), int(round(radius)), shape=shape)
        organelles[ring_r, ring_c] += rng.uniform(55, 90)
    for y, x in candidates[rng.choice(len(candidates), 14, replace=False)]:
        radii = rng.uniform(6, 14), rng.uniform(3, 6)
        rr, cc = draw.ellipse(int(y), int(x), *radii, shape=shape, rotation=rng.uniform(0, np.pi))
        organelles[rr, cc] += rng.uniform(40, 65)
    organelles = np.where(interior, organelles, 0)
    image -= ndi.gaussian_filter(organelles, 0.6)

    # a few large dark smudges, like ISBI's dark patches (debris / dense cytoplasm)
    for _ in range(2):
        y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        yy, xx = np.ogrid[0:shape[0], 0:shape[1]]
        image -= 55 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * rng.uniform(10, 18) ** 2))

    # membranes: dark, with a soft profile across their width and varying contrast along them
    membrane_darkness = 85 + 15 * smooth_noise(rng, shape, 20)
    profile = np.clip(1.0 - distance_to_boundary / (half_thickness + 1.0), 0, 1) ** 0.6
    image -= membrane_darkness * profile

    image = ndi.gaussian_filter(image, 1.0)
    # shot noise (Poisson on a scaled copy) plus read noise
    image = np.clip(image, 1, None)
    image = rng.poisson(image / 2.0) * 2.0 + rng.normal(0, 5, shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, membrane.astype(np.uint8)


def make_nuclei(rng: np.random.Generator, shape: tuple[int, int] = (512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like uint16 image of nuclei and their instance labels (int32, 0 = background)."""
    labels = np.zeros(shape, dtype=np.int32)
    height, width = shape
    n_nuclei = 0
    attempts = 0
    while n_nuclei < 70 and attempts < 2000:
        attempts += 1
        y, x = rng.uniform(12, height - 12), rng.uniform(12, width - 12)
        radius_major = rng.uniform(11, 20)
        radius_minor = radius_major * rng.uniform(0.6, 1.0)
        rr, cc = draw.ellipse(y, x, radius_major, radius_minor, shape=shape, rotation=rng.uniform(0, np.pi))
        overlap = np.count_nonzero(labels[rr, cc]) / len(rr)
        # allow small overlaps so some nuclei touch; the earlier nucleus keeps the shared pixels
        if overlap > 0.12:
            continue
        n_nuclei += 1
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = n_nuclei

    brightness = rng.uniform(0.5, 1.0, n_nuclei + 1)
    brightness[0] = 0
    signal = brightness[labels] * (1 + 0.15 * smooth_noise(rng, shape, 2.5))  # chromatin texture
    signal = ndi.gaussian_filter(signal, 1.8)
    yy, xx = np.mgrid[0:height, 0:width] / max(shape)
    illumination = 1.0 - 0.45 * ((yy - 0.3) ** 2 + (xx - 0.35) ** 2)  # vignetting, off-centre
    photons = 220 + 2400 * signal * illumination + 60 * smooth_noise(rng, shape, 50)
    image = rng.poisson(np.clip(photons, 0, None)) + rng.normal(0, 25, shape)
    image = np.clip(image, 0, 65535).astype(np.uint16)
    return image, labels


def write_samples(output_dir: Path = OUTPUT_DIR, seed: int = SEED) -> list[Path]:
    import tifffile

    rng = np.random.default_rng(seed)
    em_image, em_mask = make_em_membranes(rng)
    nuclei_image, nuclei_labels = make_nuclei(rng)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "em_membranes.tif": em_image,
        "em_membranes_mask.tif": em_mask,
        "nuclei.tif": nuclei_image,
        "nuclei_labels.tif": nuclei_labels,
    }
    written = []
    for name, array in files.items():
        path = output_dir / name
        tifffile.imwrite(path, array, compression="zlib", compressionargs={"level": 9})
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR, help="folder to write into (default: sample_data/)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    for path in write_samples(args.output, args.seed):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()

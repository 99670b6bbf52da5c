"""Make the sample images (with ground truth) that napari-unet ships in sample_data/.

The real EM data the shipped model is trained on (ISBI 2012) may not be redistributed with the
project, so the EM sample is drawn here from a fixed seed with numpy/scipy/scikit-image only. The
nuclei samples are two real fluorescence images of the 2018 Data Science Bowl (CC0), copied from
../shared/data/nuclei_dsb2018 with their instance masks; both are in the held-out test split of the
`nuclei` model (never trained on):

* em_membranes.tif (512×512 uint8) + em_membranes_mask.tif (1 = membrane): an EM-like section —
  a warped Voronoi tiling of cells with dark membranes of varying thickness, textured cytoplasm,
  vesicle- and mitochondria-like organelles, blur and shot/read noise. Close enough to ISBI 2012
  that the shipped 'membranes' model segments it sensibly.
* nuclei.tif (520×696 uint8) + nuclei_labels.tif: a dense field, 133 nuclei, many touching
  (DSB id 4596961c789d3b41…).
* nuclei_sparse.tif (256×256 uint8) + nuclei_sparse_labels.tif: a sparse field, 14 nuclei
  (DSB id 813f41ef376c3cbc…).

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


# (sample file stem, DSB 2018 id in ../shared/data/nuclei_dsb2018): CC0, credited in sample_data/README.md
NUCLEI_SAMPLES = (("nuclei", "4596961c789d3b41"), ("nuclei_sparse", "813f41ef376c3cbc"))
NUCLEI_DIR = REPO_ROOT.parent / "shared" / "data" / "nuclei_dsb2018"


def real_nuclei(dsb_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, uint16 instance labels) of one DSB 2018 image, as stored in ../shared/data."""
    import tifffile

    image_path, mask_path = NUCLEI_DIR / "images" / f"{dsb_id}.tif", NUCLEI_DIR / "masks" / f"{dsb_id}.tif"
    if not image_path.is_file() or not mask_path.is_file():
        raise SystemExit(f"{image_path} is missing: the nuclei samples are copied from ../shared/data/nuclei_dsb2018")
    return tifffile.imread(image_path), tifffile.imread(mask_path).astype(np.uint16)


def write_samples(output_dir: Path = OUTPUT_DIR, seed: int = SEED) -> list[Path]:
    import tifffile

    rng = np.random.default_rng(seed)
    em_image, em_mask = make_em_membranes(rng)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {"em_membranes.tif": em_image, "em_membranes_mask.tif": em_mask}
    for stem, dsb_id in NUCLEI_SAMPLES:
        files[f"{stem}.tif"], files[f"{stem}_labels.tif"] = real_nuclei(dsb_id)
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

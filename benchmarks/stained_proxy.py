"""Stained colour nuclei, a proxy: does a round learn an H&E-like image faster when its start reads the channels
mixed as the corrections separate them (the "channel_mix" adaptation lever)?

    .venv/bin/python benchmarks/stained_proxy.py [--corrected 4] [--epochs 8] [--json PATH]

Real stained tissue is not in ../shared/data, so this builds its stand-in from real nuclei shapes: held-out
fluorescence images of nuclei_dsb2018 (the shipped `nuclei` recipe's test split, 256² images), each turned into
an H&E-like RGB image by colour composition (skimage.color.hed2rgb): the haematoxylin density is the
fluorescence (percentile-normalised), the eosin density a cytoplasm ring around every nucleus plus a smooth
stroma texture, then a little noise. Nuclei are purple on pink, the eosin ring is dark too in the channels'
mean, and the instance masks are the data set's own. SYNTHETIC COLOUR: a check of the mechanism on real
morphology, not a number for real tissue.

The first --corrected images are corrected, the next 8 scored (AP@0.5 and foreground IoU pooled, as
evaluate --instances). Rows: the shipped `nuclei` model zero-shot on the grey conversion (what a user gets
with channels="grey"), zero-shot on the true haematoxylin plane (an upper reference no user has), and one
round from `nuclei` (Project, as `napari-unet project init/add/round`) at a fixed number of steps (--epochs x
30, no time budget, so rows compare whatever the load) with the default adaptation levers, and with
"channel_mix" added.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import result_row, unet_round

N_TEST = 8
SIDE = (256, 256)


def stained(image: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """The H&E-like uint8 RGB stand-in of one fluorescence image (module docstring)."""
    from scipy import ndimage
    from skimage.color import hed2rgb

    rng = np.random.default_rng(seed)
    grey = image.astype(np.float32) if image.ndim == 2 else image[..., :3].astype(np.float32).mean(axis=-1)
    low, high = np.percentile(grey, [1, 99.8])
    haematoxylin = np.clip((grey - low) / max(high - low, 1e-6), 0, 1) * 1.2
    nuclei = labels > 0
    ring = ndimage.binary_dilation(nuclei, iterations=6) & ~nuclei
    stroma = ndimage.gaussian_filter(rng.random(grey.shape), 6)
    stroma = (stroma - stroma.min()) / max(np.ptp(stroma), 1e-6)
    eosin = 0.5 * ring + 0.3 * stroma
    rgb = hed2rgb(np.stack([haematoxylin, eosin, np.zeros_like(eosin)], axis=-1))
    return (np.clip(rgb + rng.normal(0, 0.01, rgb.shape), 0, 1) * 255).astype(np.uint8)


def cases(n_corrected: int) -> tuple[list, list]:
    """(corrected [(stem, rgb, labels)], test [(rgb, labels, haematoxylin plane)]) from the nuclei test split."""
    from napari_unet.labels.masks import labels_from_ground_truth
    from napari_unet.storage.io import read_image
    from napari_unet.training.recipes import NUCLEI_DIR, image_sizes, nuclei_split

    sizes = image_sizes(NUCLEI_DIR)
    stems = [stem for stem in nuclei_split()[2] if sizes.get(stem) == SIDE][:n_corrected + N_TEST]
    made = []
    for index, stem in enumerate(stems):
        image = read_image(NUCLEI_DIR / "images" / f"{stem}.tif")
        labels = labels_from_ground_truth(read_image(NUCLEI_DIR / "masks" / f"{stem}.tif"))
        grey = image if image.ndim == 2 else image[..., :3].mean(axis=-1)
        made.append((stem, stained(image, labels, index), labels, grey))
    return [(stem, rgb, labels) for stem, rgb, labels, _ in made[:n_corrected]], \
        [(rgb, labels, grey) for _, rgb, labels, grey in made[n_corrected:]]


def main(argv: list[str] | None = None) -> int:
    from napari_unet.inference.prediction import predict
    from napari_unet.storage.registry import load_model
    from napari_unet.training import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrected", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of 30 steps of the round (no time budget)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    corrected, test = cases(args.corrected)
    truths = [labels for _, labels, _ in test]
    model = load_model("nuclei")
    rows = []
    print("| method | k | AP@0.5 | IoU | train s | objects found/true | load | note |\n|---|---|---|---|---|---|---|---|")

    def report(row: dict) -> None:
        rows.append(row)
        print(f"| {row['method']} | {row['k']} | {row['ap50']:.3f} | {row['iou']:.3f} | {row['train_seconds']:.0f} | "
              f"{row['n_predicted']}/{row['n_true']} | {row['load']:.1f} | {row.get('note', '')} |", flush=True)

    for method, planes, channels in (("zero-shot, grey", [rgb for rgb, _, _ in test], "grey"),
                                     ("zero-shot, true haematoxylin plane", [h for _, _, h in test], None)):
        started = time.perf_counter()
        predicted = [np.asarray(predict(model, plane, output="instances", channels=channels)) for plane in planes]
        report(result_row(method, 0, predicted, truths, 0.0, time.perf_counter() - started))
    defaults = TrainConfig().adapt_levers
    for label, levers in (("round, default levers", defaults), ("round, + channel_mix", (*defaults, "channel_mix"))):
        row = unet_round("nuclei", corrected, [(rgb, labels) for rgb, labels, _ in test], None,
                         {"epochs": args.epochs, "adapt_levers": levers})
        row["method"] = label
        row["note"] = f"start: {row['adaptation'].get('start')}; candidates {row['adaptation'].get('candidates')}"
        report(row)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`napari-unet models` and `napari-unet export`: the models there are, and one written for other programs."""

from __future__ import annotations

import sys

from napari_unet.cli.options import add_json_option, add_model_option


def add_models_command(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list shipped models and stored fine-tuned versions with their metrics")
    add_json_option(parser)
    parser.set_defaults(func=run_models_command)


def run_models_command(args) -> int:
    import json

    from napari_unet.storage.registry import list_models
    from napari_unet.storage.store import ModelStore

    store = ModelStore()
    entries = list_models(store)
    shipped = [entry for entry in entries if entry.is_shipped]
    versions = [entry for entry in entries if not entry.is_shipped]
    if args.json:
        print(json.dumps({
            "shipped": [{"name": e.name, "path": e.path, "description": e.description, "metrics": e.metrics}
                        for e in shipped],
            "versions": [{"name": e.name, "parent": e.parent, "created": e.created, "metrics": e.metrics,
                          "path": e.path} for e in versions],
            "store": str(store.root)}))
        return 0

    def scores(metrics: dict) -> str:
        parts = [f"{key} {metrics[key]:.4f}" for key in ("iou", "eval_iou", "val_iou", "dice", "pixel_error")
                 if isinstance(metrics.get(key), (int, float))]
        return ", ".join(parts) or "-"

    print("shipped models:")
    for entry in shipped:
        print(f"  {entry.name:<24} {scores(entry.metrics)}")
    if not shipped:
        print("  (none installed)")
    print(f"stored versions ({store.root}):")
    for entry in versions:
        parent = f"  from {entry.parent}" if entry.parent else ""
        print(f"  {entry.name:<24} {scores(entry.metrics)}{parent}  {entry.created[:19]}")
    if not versions:
        print("  (none yet)")
    return 0


def add_export_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a model as a bioimage.io package (Keras, ONNX and TensorFlow weights) for other programs",
        description=(
            "A bioimage.io model package (spec 0.5): the .keras weights, ONNX (opset 17, e.g. for DeepImageJ) and a "
            "TensorFlow SavedModel, a test input and output, the model card, the U-Net citation and the normalisation "
            "the model needs. Who made it and its licence must be given. Needs the extra: "
            "pip install \"napari-unet-loop[bioimageio]\"."
        ),
    )
    add_model_option(parser)
    parser.add_argument("--bioimageio", required=True, metavar="OUT.zip", help="the package file to write")
    parser.add_argument("--author", action="append", default=[], metavar="NAME",
                        help="an author of the model (repeat for several); required")
    parser.add_argument("--license", default="", metavar="SPDX",
                        help="licence of the model, an SPDX id (e.g. CC-BY-4.0, MIT); required")
    parser.add_argument("--description", default="", metavar="TEXT",
                        help="one-paragraph description (default: the model's)")
    parser.add_argument("--test-image", default=None, metavar="IMAGE",
                        help="image for the package's test input, centre-cropped to at most 256 px (default: a shipped sample)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.zip if it exists")
    parser.set_defaults(func=run_export_command)


def run_export_command(args) -> int:
    import time
    from pathlib import Path

    from napari_unet.storage.bioimageio import PackageAuthorship, export_bioimageio
    from napari_unet.storage.io import read_image
    from napari_unet.storage.registry import load_model

    authorship = PackageAuthorship(authors=args.author, license=args.license, description=args.description)
    authorship.check()  # before loading anything: a missing author or licence is known at once
    test_image = read_image(args.test_image) if args.test_image else None
    model = load_model(args.model)
    started = time.perf_counter()
    path = export_bioimageio(model, Path(args.bioimageio), authorship, test_image=test_image, overwrite=args.force,
                          progress=lambda stage: print(f"[export] {stage}", file=sys.stderr, flush=True))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.0f} s)")
    return 0

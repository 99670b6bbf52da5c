"""`napari-unet predict` and `napari-unet evaluate`: a model run over image files, written or scored."""

from __future__ import annotations

import sys

from napari_unet.cli.options import (
    add_channels_option,
    add_json_option,
    add_min_size_option,
    add_model_option,
    add_stack_options,
    add_tta_option,
    check_min_size,
    check_stack_named,
    check_stack_options,
)
from napari_unet.cli.startup import import_tensorflow_quietly
from napari_unet.inference.channels import parse_channels


def add_predict_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images with a model and write OUTDIR/<name>.tif",
        description=(
            "Predict labels (default), instances or probabilities for image files or folders of images. "
            "Each output is a TIFF with the input's Y×X shape, named after the input's file stem. A zarr volume or "
            "time-lapse (a .zarr folder) with --instances --stack z|t is predicted plane by plane into "
            "OUTDIR/<name>.zarr (int32, one plane per chunk), never holding the whole stack in memory."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders of images, or zarr arrays (.zarr folders; with --instances --stack)")
    add_model_option(parser, "shipped/stored model name, .keras path or bioimage.io package (.zip) with Keras weights")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    parser.add_argument("--threshold", type=float, default=0.5, metavar="T",
                        help="foreground probability threshold (default 0.5)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--instances", action="store_true", help="write instance labels (int32) instead of 0/1 labels")
    kind.add_argument("--probabilities", action="store_true", help="write float32 probabilities instead of labels")
    add_min_size_option(parser)
    add_channels_option(parser)
    add_stack_options(parser)
    add_tta_option(parser)
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write OUTDIR/<name>_uncertainty.tif: float32, the image's shape, 0-1, higher = less "
                             "sure (entropy; with --tta also the views' disagreement) — where to correct first")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="predict on a dask cluster: a scheduler's address (tcp://host:8786), its scheduler file "
                             "(*.json), or local:N to start N local worker processes; each worker loads the model "
                             "once (see the README for SLURM and Kubernetes)")
    parser.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the scheduler and its first worker (default 10)")
    parser.set_defaults(func=run_predict_command)


def expand_inputs(inputs: list[str]) -> list:
    from pathlib import Path

    from napari_unet.errors import NapariUNetError
    from napari_unet.inference.lazy_labels import is_zarr
    from napari_unet.storage.io import list_images

    paths = []
    for text in inputs:
        path = Path(text)
        if is_zarr(path):
            paths.append(path)
        elif path.is_dir():
            found = list_images(path)
            if not found:
                raise NapariUNetError(f"no images (.tif, .png, .jpg) found in folder '{path}'")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise NapariUNetError(f"cannot read '{path}': no such file or folder")
    return paths


class TextProgress:
    """One stderr line, rewritten in place: 'image 2/5 name: tiles 12/40' (or 'planes 3/64' for a zarr stack)."""

    def __init__(self, n_images: int):
        self.n_images, self.image_number, self.name, self.shown, self.unit = n_images, 0, "", False, "tiles"

    def start(self, name: str, unit: str = "tiles") -> None:
        self.image_number += 1
        self.name, self.unit = name, unit

    def __call__(self, done: int, total: int) -> None:
        self.shown = True
        print(f"\r[predict] image {self.image_number}/{self.n_images} {self.name}: {self.unit} {done}/{total}   ",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)


def run_predict_command(args) -> int:
    from pathlib import Path

    from napari_unet.errors import NapariUNetError
    from napari_unet.inference.onnx_engine import is_onnx
    from napari_unet.inference.prediction import predict
    from napari_unet.storage.io import read_image, write_labels
    from napari_unet.storage.registry import load_model, quick_twin

    check_min_size(args)
    check_stack_options(args)
    inputs = expand_inputs(args.inputs)
    output_dir = Path(args.output)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NapariUNetError(f"cannot create the output folder '{output_dir}': {exc.strerror or exc} — "
                              "choose a folder you can write to with -o") from exc
    from napari_unet.inference.lazy_labels import is_zarr

    targets, written = {}, {}
    for path in inputs:
        if is_zarr(path):
            check_zarr_input(args, path)
        target = output_dir / f"{path.stem}{'.zarr' if is_zarr(path) else '.tif'}"
        targets[target] = path
        for output_file in (target, *([uncertainty_target(target)] if args.uncertainty else [])):
            if output_file.exists() and output_file.resolve() == path.resolve():
                raise NapariUNetError(f"the output '{output_file}' would overwrite the input '{path}': "
                                      "choose another -o OUTDIR")
            if is_zarr(path) and output_file.exists():
                raise NapariUNetError(f"'{output_file}' exists: a zarr output is never written over; remove it or "
                                      "choose another -o OUTDIR")
            if output_file in written:
                raise NapariUNetError(f"'{written[output_file]}' and '{path}' would both be written to "
                                      f"'{output_file}': rename one")
            written[output_file] = path
    output = "instances" if args.instances else "probabilities" if args.probabilities else "labels"
    options = dict(output=output, threshold=args.threshold, test_time_augmentation=args.tta, precision=args.precision,
                   min_size=args.min_size, channels=parse_channels(args.channels), stack=args.stack,
                   anisotropy=args.anisotropy)
    if args.scheduler and args.uncertainty:
        raise NapariUNetError("--uncertainty is not available with --scheduler: predict the uncertainty maps without "
                              "a cluster, or drop --uncertainty")
    model = None if args.scheduler else quick_twin(args.model, len(inputs), args.precision)
    if model is None:
        import_tensorflow_quietly()
    if args.scheduler:
        return run_predict_on_cluster(args, targets, options, output_dir)
    model = model or load_model(args.model)
    progress = TextProgress(len(inputs))
    try:
        for target, path in targets.items():
            if is_zarr(path):
                progress.start(path.name, "planes")
                predict_zarr_stack(model, path, target, args, progress)
                continue
            image = check_stack_named(args, read_image(path), path, model.config.n_channels)
            progress.start(path.name)
            result = predict(model, image, progress=progress, with_uncertainty=args.uncertainty, **options)
            if args.uncertainty:
                result, uncertainty = result
                write_labels(uncertainty_target(target), uncertainty)
            write_labels(target, result)
    finally:
        progress.close()
    engine = " (on its ONNX twin: a small job starts sooner without TensorFlow)" if is_onnx(model) else ""
    print(f"wrote {len(written)} file(s) to {output_dir}{engine}", file=sys.stderr)
    return 0


def check_zarr_input(args, path) -> None:
    """Refuse, in one line naming the fix, what a zarr input cannot be predicted with (it is never read whole)."""
    from napari_unet.errors import NapariUNetError
    from napari_unet.labels.stacks import uses_three_views

    if not args.instances or args.stack not in ("z", "t"):
        raise NapariUNetError(f"'{path}' is a zarr array: it is predicted plane by plane into a zarr of objects with "
                              "--instances --stack z (a volume) or --stack t (a time-lapse); for labels of a large "
                              "image, open it in napari and press Predict")
    if args.uncertainty or args.scheduler:
        raise NapariUNetError(f"'{path}' is a zarr array, predicted plane by plane: drop "
                              f"{'--uncertainty' if args.uncertainty else '--scheduler'} for it")
    if uses_three_views(args.anisotropy):
        raise NapariUNetError(f"'{path}' is a zarr array, predicted plane by plane, and three views (--anisotropy "
                              f"{args.anisotropy:g}) need the whole volume in memory: drop --anisotropy to stitch its "
                              "planes, or predict a TIFF of it")


def predict_zarr_stack(model, path, target, args, progress) -> None:
    """A zarr (Z, Y, X) volume or (T, Y, X) time-lapse into `target`, a new int32 zarr of its objects, plane by plane
    (prediction.predict_stack_into); a failed or cancelled run leaves no half-written output behind."""
    import shutil

    import numpy as np

    from napari_unet.inference.lazy_labels import create_labels_store, open_zarr_image
    from napari_unet.inference.prediction import model_and_planes, predict_stack_into

    image = open_zarr_image(path)
    channels = parse_channels(args.channels)
    _, planes = model_and_planes(model, image, None, channels)  # checks the layout before anything is written
    out = create_labels_store(target, tuple(planes.shape[:-1]), dtype=np.int32)
    try:
        predict_stack_into(model, image, out, stack=args.stack, threshold=args.threshold, channels=channels,
                           progress=progress, min_size=args.min_size, test_time_augmentation=args.tta,
                           precision=args.precision)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def uncertainty_target(target):
    """Where `predict --uncertainty` writes the uncertainty map beside the result `target`."""
    return target.with_name(f"{target.stem}_uncertainty.tif")


def run_predict_on_cluster(args, targets: dict, options: dict, output_dir) -> int:
    """`predict --scheduler`: the client reads and writes the files, the workers run prediction.predict."""
    from napari_unet.inference.distributed import cluster_client, install_model, parse_scheduler, predict_on_cluster
    from napari_unet.storage.io import read_image, write_labels
    from napari_unet.storage.registry import read_model_metadata, resolve

    choice = parse_scheduler(args.scheduler)
    model_file, _ = resolve(args.model)
    if not model_file.is_file():
        from napari_unet.errors import NapariUNetError

        raise NapariUNetError(f"cannot read the model '{model_file}': no such file")
    report = lambda done, total: print(f"\r[predict] images {done}/{total} done on the cluster   ",  # noqa: E731
                                       end="", file=sys.stderr, flush=True)
    with cluster_client(choice, timeout=args.scheduler_timeout) as client:
        n_workers = len(client.scheduler_info()["workers"])
        print(f"[predict] {n_workers} dask worker(s) at {client.scheduler.address}", file=sys.stderr, flush=True)
        install_model(client, model_file)
        metadata = read_model_metadata(model_file)
        n_channels = metadata.config.n_channels if metadata else 1
        images = ((target, check_stack_named(args, read_image(path), path, n_channels))
                  for target, path in targets.items())
        try:
            for target, result in predict_on_cluster(client, images, total=len(targets), progress=report, **options):
                write_labels(target, result)
        finally:
            print(file=sys.stderr, flush=True)
    print(f"wrote {len(targets)} file(s) to {output_dir}", file=sys.stderr)
    return 0


def add_evaluate_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on images with ground-truth masks (IoU, Dice, pixel error; --instances: AP)",
        description=("Masks are matched to images by file stem; mask > 0 is foreground. Totals pool all pixels "
                     "(and, with --instances, all objects: ap50 = TP/(TP+FP+FN) at IoU > 0.5, as the DSB 2018 and "
                     "StarDist define it)."),
    )
    add_model_option(parser)
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    parser.add_argument("--masks", required=True, metavar="DIR", help="folder of masks with the same file stems")
    parser.add_argument("--threshold", type=float, default=0.5, metavar="T",
                        help="foreground probability threshold (default 0.5)")
    add_channels_option(parser)
    add_tta_option(parser)
    parser.add_argument("--instances", action="store_true",
                        help="also score objects (masks may be instance label images): ap50, map (IoU 0.50-0.95), f1_50")
    add_min_size_option(parser)
    add_json_option(parser)
    parser.set_defaults(func=run_evaluate_command)


def run_evaluate_command(args) -> int:
    import json

    from napari_unet.scoring.evaluation import evaluate
    from napari_unet.storage.io import find_pairs

    check_min_size(args)
    pairs = find_pairs(args.images, args.masks)
    report = lambda done, total: print(f"\r[evaluate] image {done}/{total}   ", end="", file=sys.stderr, flush=True)  # noqa: E731
    result = evaluate(args.model, [image for image, _ in pairs], [mask for _, mask in pairs],
                      threshold=args.threshold, progress=None if args.json else report,
                      test_time_augmentation=args.tta, instances=args.instances, precision=args.precision,
                      min_size=args.min_size, channels=parse_channels(args.channels))
    if args.json:
        print(json.dumps(result))
        return 0
    print(file=sys.stderr)
    objects = ("ap50", "map", "f1_50") if args.instances else ()
    print(f"{'image':<24} {'IoU':>7} {'Dice':>7} {'pixel error':>12}" + "".join(f" {key:>7}" for key in objects))
    for row in [*result["per_image"], {**result, "name": f"all {result['n_images']} (pooled)"}]:
        print(f"{row['name']:<24} {row['iou']:7.4f} {row['dice']:7.4f} {row['pixel_error']:12.4f}"
              + "".join(f" {row[key]:7.4f}" if key in row else f" {'':>7}" for key in objects))
    if "classes" in result:  # several classes: the pooled row above is their mean
        print(f"{'class':<24} {'IoU':>7} {'Dice':>7} {'':>12}" + "".join(f" {key:>7}" for key in objects))
        for name, scores in result["classes"].items():
            print(f"{name:<24} {scores['iou']:7.4f} {scores['dice']:7.4f} {'':>12}"
                  + "".join(f" {scores[key]:7.4f}" if key in scores else f" {'':>7}" for key in objects))
    return 0

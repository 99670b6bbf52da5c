"""The `napari-unet` command line: the same work as the widgets, headless.

Each subcommand lives in its own `add_<name>_command(subparsers)` function below and sets
`func=` to a handler taking the parsed args and returning an exit code. User errors
(NapariUNetError) print as one line on stderr and exit 2; heavy imports happen inside handlers
so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from napari_unet._version import __version__
from napari_unet.channels import parse_channels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net segmentation: predict, evaluate and fine-tune models, headless or in napari.",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


# Subcommands register themselves here (one function per command, defined below or imported).
COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from napari_unet.errors import Cancelled, NapariUNetError

    # napari's process never imports TensorFlow (the dock's worker process does); predict may not need it.
    if args.command not in ("gui", "predict"):
        _import_tensorflow_quietly()
    try:
        return int(args.func(args) or 0)
    except NapariUNetError as exc:
        cause = exc.__cause__  # e.g. bioimageio.py's "needs the bioimageio extra": said the same way as below
        line = missing_extra(cause, args.command) if isinstance(cause, ImportError) else None
        print(line or f"napari-unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a face whose extra is not installed: one line naming the extra
        line = missing_extra(exc, args.command)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except Cancelled:
        print(f"napari-unet {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted", file=sys.stderr)
        return 130


# The modules only an extra installs ([project.optional-dependencies] in pyproject.toml): import name → (what to
# name, the extras that install it). onnx, tf2onnx and onnxruntime come with both: a command's own extra is named.
OPTIONAL_MODULES = {
    "napari": ("napari", ("gui",)), "npe2": ("npe2", ("gui",)), "magicgui": ("magicgui", ("gui",)),
    "qtpy": ("qtpy", ("gui",)), "PyQt6": ("PyQt6", ("gui",)),
    "onnx": ("onnx", ("gui", "bioimageio")), "tf2onnx": ("tf2onnx", ("gui", "bioimageio")),
    "onnxruntime": ("onnxruntime", ("gui", "bioimageio")),
    "bioimageio": ("bioimageio.core", ("bioimageio",)), "pydantic": ("pydantic", ("bioimageio",)),
}
COMMAND_EXTRA = {"gui": "gui", "export": "bioimageio"}


def missing_extra(exc: ImportError, command: str) -> str | None:
    """`napari-unet CMD needs MODULE: pip install "napari-unet-loop[EXTRA]"` when `exc` is an optional module that
    is not installed (or qtpy finding no Qt binding); None for anything else, whose traceback should show."""
    import importlib.util

    top = (exc.name or "").partition(".")[0]
    if not top and type(exc).__module__.partition(".")[0] == "qtpy":  # napari installed without a Qt binding
        top = "PyQt6"
    elif top not in OPTIONAL_MODULES:
        return None
    elif top in sys.modules:
        if sys.modules[top] is not None:  # installed, failing inside: a broken install or a bug, not an extra
            return None
    else:
        try:
            if importlib.util.find_spec(top) is not None:
                return None
        except (ImportError, ValueError):
            pass
    shown, extras = OPTIONAL_MODULES[top]
    extra = COMMAND_EXTRA[command] if COMMAND_EXTRA.get(command) in extras else extras[0]
    return f'napari-unet {command} needs {shown}: pip install "napari-unet-loop[{extra}]"'


# What TensorFlow prints at import before its logging is set up (so TF_CPP_MIN_LOG_LEVEL cannot stop it).
_TENSORFLOW_IMPORT_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up chatter kept off the terminal; anything else it prints is shown.

    Done before any command but `gui`: napari's process never imports it (the dock's worker process does).
    """
    import tempfile

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if line.strip() and not any(noise in line for noise in _TENSORFLOW_IMPORT_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)




def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run predict → correct → fine-tune → predict headless on sample data and print before/after scores",
        description=(
            "The whole human-in-the-loop cycle without a display: predict with a shipped model, simulate a "
            "user's correction with ground truth on one part (left half of the EM sample, or the first images "
            "of --data), fine-tune for a time budget, predict again, and score the part never trained on."
        ),
    )
    parser.add_argument("--data", metavar="DIR",
                        help="folder with images/ and masks/ (matched by file name); default: the shipped EM-like sample")
    parser.add_argument("--sample", default="em_membranes", choices=("em_membranes", "nuclei", "nuclei_sparse"),
                        help="shipped sample to use when no --data is given (default: em_membranes)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="model to start from (default: the sample's own: membranes for EM, nuclei for nuclei)")
    parser.add_argument("--seconds", type=float, default=60.0, metavar="S",
                        help="fine-tuning time budget in seconds (default: 60)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.set_defaults(func=_run_demo_command)


def _run_demo_command(args) -> int:
    import json

    from napari_unet.demo import format_summary, run_demo

    log = (lambda text: None) if args.json else (lambda text: print(f"[demo] {text}", file=sys.stderr, flush=True))
    result = run_demo(data_dir=args.data, model_name=args.model, seconds=args.seconds, log=log, sample=args.sample)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_summary(result))
    return 0


COMMANDS.append(add_demo_command)


def add_predict_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images with a model and write OUTDIR/<name>.tif",
        description=(
            "Predict labels (default), instances or probabilities for image files or folders of images. "
            "Each output is a TIFF with the input's Y×X shape, named after the input's file stem."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("-m", "--model", required=True, metavar="MODEL",
                        help="shipped/stored model name, .keras path or bioimage.io package (.zip) with Keras weights")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    parser.add_argument("--threshold", type=float, default=0.5, metavar="T",
                        help="foreground probability threshold (default 0.5)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--instances", action="store_true", help="write instance labels (int32) instead of 0/1 labels")
    kind.add_argument("--probabilities", action="store_true", help="write float32 probabilities instead of labels")
    _add_min_size_option(parser)
    _add_channels_option(parser)
    _add_stack_options(parser)
    _add_tta_option(parser)
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write OUTDIR/<name>_uncertainty.tif: float32, the image's shape, 0-1, higher = less "
                             "sure (entropy; with --tta also the views' disagreement) — where to correct first")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="predict on a dask cluster: a scheduler's address (tcp://host:8786), its scheduler file "
                             "(*.json), or local:N to start N local worker processes; each worker loads the model "
                             "once (see the README for SLURM and Kubernetes)")
    parser.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the scheduler and its first worker (default 10)")
    parser.set_defaults(func=_run_predict_command)


def _expand_inputs(inputs: list[str]) -> list:
    from pathlib import Path

    from napari_unet.errors import NapariUNetError
    from napari_unet.io import list_images

    paths = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise NapariUNetError(f"no images (.tif, .png, .jpg) found in folder '{path}'")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise NapariUNetError(f"cannot read '{path}': no such file or folder")
    return paths


class _TextProgress:
    """One stderr line, rewritten in place: 'image 2/5 name: tiles 12/40'."""

    def __init__(self, n_images: int):
        self.n_images, self.image_number, self.name, self.shown = n_images, 0, "", False

    def start(self, name: str) -> None:
        self.image_number += 1
        self.name = name

    def __call__(self, done: int, total: int) -> None:
        self.shown = True
        print(f"\r[predict] image {self.image_number}/{self.n_images} {self.name}: tiles {done}/{total}   ",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)


def _run_predict_command(args) -> int:
    from pathlib import Path

    from napari_unet.errors import NapariUNetError
    from napari_unet.io import read_image, write_labels
    from napari_unet.onnx_engine import is_onnx
    from napari_unet.prediction import predict
    from napari_unet.registry import load_model, quick_twin

    _check_min_size(args)
    _check_stack_options(args)
    inputs = _expand_inputs(args.inputs)
    output_dir = Path(args.output)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NapariUNetError(f"cannot create the output folder '{output_dir}': {exc.strerror or exc} — "
                              "choose a folder you can write to with -o") from exc
    targets, written = {}, {}
    for path in inputs:
        target = output_dir / f"{path.stem}.tif"
        targets[target] = path
        for output_file in (target, *([uncertainty_target(target)] if args.uncertainty else [])):
            if output_file.exists() and output_file.resolve() == path.resolve():
                raise NapariUNetError(f"the output '{output_file}' would overwrite the input '{path}': "
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
        _import_tensorflow_quietly()
    if args.scheduler:
        return _predict_on_cluster(args, targets, options, output_dir)
    model = model or load_model(args.model)
    progress = _TextProgress(len(inputs))
    try:
        for target, path in targets.items():
            image = _check_stack_named(args, read_image(path), path, model.config.n_channels)
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


def uncertainty_target(target):
    """Where `predict --uncertainty` writes the uncertainty map beside the result `target`."""
    return target.with_name(f"{target.stem}_uncertainty.tif")


def _predict_on_cluster(args, targets: dict, options: dict, output_dir) -> int:
    """`predict --scheduler`: the client reads and writes the files, the workers run prediction.predict."""
    from napari_unet.distributed import cluster_client, install_model, parse_scheduler, predict_on_cluster
    from napari_unet.io import read_image, write_labels
    from napari_unet.registry import read_model_metadata, resolve

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
        images = ((target, _check_stack_named(args, read_image(path), path, n_channels))
                  for target, path in targets.items())
        try:
            for target, result in predict_on_cluster(client, images, total=len(targets), progress=report, **options):
                write_labels(target, result)
        finally:
            print(file=sys.stderr, flush=True)
    print(f"wrote {len(targets)} file(s) to {output_dir}", file=sys.stderr)
    return 0


COMMANDS.append(add_predict_command)


def add_evaluate_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on images with ground-truth masks (IoU, Dice, pixel error; --instances: AP)",
        description=("Masks are matched to images by file stem; mask > 0 is foreground. Totals pool all pixels "
                     "(and, with --instances, all objects: ap50 = TP/(TP+FP+FN) at IoU > 0.5, as the DSB 2018 and "
                     "StarDist define it)."),
    )
    parser.add_argument("-m", "--model", required=True, metavar="MODEL", help="shipped/stored model name or .keras path")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    parser.add_argument("--masks", required=True, metavar="DIR", help="folder of masks with the same file stems")
    parser.add_argument("--threshold", type=float, default=0.5, metavar="T",
                        help="foreground probability threshold (default 0.5)")
    _add_channels_option(parser)
    _add_tta_option(parser)
    parser.add_argument("--instances", action="store_true",
                        help="also score objects (masks may be instance label images): ap50, map (IoU 0.50-0.95), f1_50")
    _add_min_size_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=_run_evaluate_command)


def _add_min_size_option(parser) -> None:
    parser.add_argument("--min-size", type=_pixel_count, default=None, metavar="PX",
                        help="with --instances: drop objects smaller than PX pixels (default: the model's own, chosen "
                             "on its validation images, e.g. 32 for nuclei; lower it for small nuclei)")


def _check_min_size(args) -> None:
    from napari_unet.errors import NapariUNetError

    if args.min_size is not None and not args.instances:
        raise NapariUNetError("--min-size drops small objects of --instances: add --instances, or drop --min-size")


def _pixel_count(text: str) -> int:
    """argparse type: a whole number of pixels >= 1 (argparse prints the message and exits with 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in pixels: give a whole number >= 1, e.g. 8")
    return value


def _add_channels_option(parser) -> None:
    parser.add_argument("--channels", default=None, metavar="C",
                        help="which of the images' channels the model reads: 'grey' (converted) or numbers such as "
                             "0 or 0,2 (default: all, as they are; a mismatch with the model is refused and named)")


def _add_stack_options(parser) -> None:
    parser.add_argument("--stack", default=None, choices=("z", "t", "planes"),
                        help="with --instances on a stack: what its first axis is: z (planes of a volume: one id per "
                             "3-D object), t (frames of a time-lapse, (T, Y, X) or (T, Z, Y, X): ids kept over time) "
                             "or planes (each plane labelled on its own); a stack with --instances needs it")
    parser.add_argument("--link", dest="stack", action="store_const", const="t",
                        help="the same as --stack t: objects keep their id from frame to frame")
    parser.add_argument("--anisotropy", type=float, default=None, metavar="A",
                        help="with --stack z (or t on volumes): the Z step divided by the XY pixel size; up to 2 the "
                             "volume is also predicted on its XZ and YZ planes and segmented in 3-D (about 3x the "
                             "work), above it (or unset) the planes' objects are stitched by overlap")


def _check_stack_options(args) -> None:
    from napari_unet.errors import NapariUNetError

    if args.stack in ("z", "t") and not args.instances:
        raise NapariUNetError(f"--stack {args.stack} gives the objects of --instances one id across planes: add "
                              "--instances, or drop --stack")
    if args.anisotropy is not None and args.stack not in ("z", "t"):
        raise NapariUNetError("--anisotropy is the Z spacing of a volume: add --stack z (or --stack t for a "
                              "time-lapse of volumes), or drop --anisotropy")


def _check_stack_named(args, image, path, n_channels: int):
    """`image`, unless it is a stack asked for --instances without --stack (its ids would restart in every plane)."""
    from napari_unet.errors import NapariUNetError
    from napari_unet.stacks import stack_depth

    if args.instances and args.stack is None and stack_depth(image.shape, n_channels, parse_channels(args.channels)):
        shape = "×".join(str(n) for n in image.shape)
        raise NapariUNetError(f"'{path}' is a stack ({shape}): say what its first axis is with --stack z (a volume: "
                              "3-D objects), --stack t (a time-lapse: ids kept over frames) or --stack planes "
                              "(each plane on its own)")
    return image


def _add_tta_option(parser) -> None:
    parser.add_argument("--tta", nargs="?", type=int, const=8, default=1, choices=(2, 4, 8), metavar="VIEWS",
                        help="test-time augmentation: average VIEWS flips/rotations the model was trained for "
                             "(2, 4 or 8 = all, the default with plain --tta); that many times slower, slightly more accurate")
    _add_precision_option(parser)


def _add_precision_option(parser) -> None:
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="compute in bfloat16 or float32 (default auto: bfloat16 where the CPU has it natively, "
                             "AMX or AVX512-BF16; the environment variable NAPARI_UNET_PRECISION also sets it)")


def _run_evaluate_command(args) -> int:
    import json

    from napari_unet.evaluation import evaluate
    from napari_unet.io import find_pairs

    _check_min_size(args)
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


COMMANDS.append(add_evaluate_command)


def add_gui_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "gui",
        help="open napari with the U-Net dock (predict, correct, fine-tune, models) and a sample or your images",
        description=(
            "Open napari with napari-unet's dock docked and load a sample image (default: the EM membranes "
            "sample) or the given images. Keys: Shift+U predict, Shift+T add the correction to the training set, "
            "Shift+N the next uncertain tile."
        ),
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files or image/mask folders to open")
    parser.add_argument("--sample", metavar="NAME", help="sample to load when no IMAGE is given (em_membranes, nuclei)")
    parser.set_defaults(func=_run_gui_command)


def _run_gui_command(args) -> int:
    from napari_unet._widgets.launch import has_display, open_gui
    from napari_unet.errors import NapariUNetError

    if not has_display():
        raise NapariUNetError(
            "no display found (DISPLAY is not set): run it on a desktop, through 'xvfb-run -a napari-unet gui' "
            "for a virtual one, or use 'napari-unet demo' for the headless loop"
        )
    import napari  # without the gui extra: main() prints the one line naming it

    open_gui(images=args.images, sample=args.sample)
    napari.run()  # returns after the dock has stopped its workers (they have left TensorFlow)
    return 0


COMMANDS.append(add_gui_command)


def add_finetune_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on image/mask pairs and save it as OUT.keras (and as a new stored version)",
        description=(
            "Masks are matched to images by file stem and use 0 = background, 1 = foreground, 255 = not "
            "annotated (left out of training). Part of the data is held out for validation; the best "
            "weights are kept. Progress goes to stderr."
        ),
    )
    parser.add_argument("-m", "--model", required=True, metavar="MODEL",
                        help="shipped/stored model name or .keras path to start from")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of training images")
    parser.add_argument("--masks", required=True, metavar="DIR", help="folder of masks with the same file stems")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.keras", help="where to save the fine-tuned model")
    parser.add_argument("--epochs", type=int, default=None, metavar="N", help=f"epochs (default {_train_default('epochs')})")
    parser.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                        help=f"training steps per epoch (default {_train_default('steps_per_epoch')})")
    parser.add_argument("--lr", type=float, default=None, metavar="LR",
                        help=f"Adam learning rate (default {_train_default('learning_rate'):g}; ~1e-3 from scratch)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help=f"random seed (default {_train_default('seed')})")
    _add_precision_option(parser)
    parser.add_argument("--name", default=None, metavar="NAME", help="name of the stored version (default <model>-vN)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.keras if it exists (never the input model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the result on stdout")
    parser.set_defaults(func=_run_finetune_command)


def _run_finetune_command(args) -> int:
    import json
    from pathlib import Path

    from napari_unet.errors import NapariUNetError
    from napari_unet.io import find_pairs, read_image

    output = Path(args.output)
    if output.suffix != ".keras":
        raise NapariUNetError(f"-o must name a .keras file, not '{output}': e.g. -o {output.stem or 'model'}.keras")
    input_path = Path(args.model)
    if input_path.exists() and output.exists() and output.resolve() == input_path.resolve():
        raise NapariUNetError(f"-o '{output}' is the input model: choose another file (the input is never overwritten)")
    if output.exists() and not args.force:
        raise NapariUNetError(f"'{output}' already exists: choose another -o or pass --force to overwrite it")
    if output.exists() and output.is_dir():
        raise NapariUNetError(f"'{output}' is a folder: -o must name a .keras file")
    pairs = find_pairs(args.images, args.masks)
    images = [read_image(image_path) for image_path, _ in pairs]
    masks = [read_image(mask_path) for _, mask_path in pairs]
    names = [image_path.name for image_path, _ in pairs]

    from napari_unet.registry import load_model
    from napari_unet.training import finetune

    model = load_model(args.model)
    overrides = {key: value for key, value in (("epochs", args.epochs), ("steps_per_epoch", args.steps_per_epoch),
                                               ("learning_rate", args.lr), ("seed", args.seed),
                                               ("precision", args.precision)) if value is not None}

    report = _training_report("finetune")

    tuned, history = finetune(model, images, masks, names=names, progress=report, **overrides)

    from napari_unet.model import save_model
    from napari_unet.store import ModelStore, pair_fingerprint

    save_model(tuned, output)
    version = None
    try:
        record = ModelStore().save_version(
            tuned, history, training_pairs=[pair_fingerprint(i, m, n) for i, m, n in zip(images, masks, names)],
            name=args.name,
        )
        version = record["name"]
    except NapariUNetError as exc:  # the requested file exists; the store copy is a convenience
        print(f"napari-unet finetune: warning: not added to the model store: {exc}", file=sys.stderr)
    result = {
        "epochs": len(history.epochs),
        "steps": history.steps,
        "seconds": round(history.seconds, 2),
        "final_loss": history.final_loss,
        "val_iou": history.val_iou,
        "stopped_reason": history.stopped_reason,
        "model": str(output),
        "version": version,
    }
    if args.json:
        print(json.dumps(result))
    else:
        score = f", validation IoU {history.val_iou:.4f}" if history.val_iou is not None else ""
        print(f"saved {output} ({history.steps} steps in {history.seconds:.0f} s{score}"
              f"{f'; stored as {version}' if version else ''})")
    return 0


COMMANDS.append(add_finetune_command)


def add_models_command(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list shipped models and stored fine-tuned versions with their metrics")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=_run_models_command)


def _run_models_command(args) -> int:
    import json

    from napari_unet.registry import list_models
    from napari_unet.store import ModelStore

    store = ModelStore()
    entries = list_models(store)
    shipped = [{key: e[key] for key in ("name", "path", "description", "metrics")} for e in entries if e["kind"] == "shipped"]
    versions = [{key: e[key] for key in ("name", "parent", "created", "metrics", "path")}
                for e in entries if e["kind"] == "version"]
    if args.json:
        print(json.dumps({"shipped": shipped, "versions": versions, "store": str(store.root)}))
        return 0

    def scores(metrics: dict) -> str:
        parts = [f"{key} {metrics[key]:.4f}" for key in ("iou", "eval_iou", "val_iou", "dice", "pixel_error")
                 if isinstance((metrics or {}).get(key), (int, float))]
        return ", ".join(parts) or "-"

    print("shipped models:")
    for entry in shipped or [{"name": "(none installed)", "metrics": {}}]:
        print(f"  {entry['name']:<24} {scores(entry['metrics'])}")
    print(f"stored versions ({store.root}):")
    for entry in versions or [{"name": "(none yet)", "metrics": {}, "parent": None, "created": ""}]:
        parent = f"  from {entry['parent']}" if entry.get("parent") else ""
        print(f"  {entry['name']:<24} {scores(entry['metrics'])}{parent}  {str(entry.get('created') or '')[:19]}")
    return 0


COMMANDS.append(add_models_command)


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
    parser.add_argument("-m", "--model", required=True, metavar="MODEL", help="shipped/stored model name or .keras path")
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
    parser.set_defaults(func=_run_export_command)


def _run_export_command(args) -> int:
    import time
    from pathlib import Path

    from napari_unet.bioimageio import PackageAuthorship, export_bioimageio
    from napari_unet.io import read_image
    from napari_unet.registry import load_model

    authorship = PackageAuthorship(authors=args.author, license=args.license, description=args.description)
    authorship.check()  # before loading anything: a missing author or licence is known at once
    test_image = read_image(args.test_image) if args.test_image else None
    model = load_model(args.model)
    started = time.perf_counter()
    path = export_bioimageio(model, Path(args.bioimageio), authorship, test_image=test_image, overwrite=args.force,
                          progress=lambda stage: print(f"[export] {stage}", file=sys.stderr, flush=True))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.0f} s)")
    return 0


COMMANDS.append(add_export_command)


def add_project_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "project",
        help="the correction loop as a project: pairs, evaluation pairs, rounds with evidence and rollback",
        description=(
            "A project is a folder of training pairs, evaluation pairs (never trained on), the model versions "
            "made in it and a log of rounds. Each round fine-tunes the active version, scores it against its "
            "parent on the evaluation pairs, and keeps it only if it passes the guard."
        ),
    )
    commands = parser.add_subparsers(dest="project_command", metavar="ACTION", required=True)
    init = commands.add_parser("init", help="a new project starting from MODEL")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("-m", "--model", required=True, metavar="MODEL", help="shipped/stored model name or .keras path")
    init.set_defaults(func=_run_project_init)
    add = commands.add_parser("add", help="add a training pair, or an evaluation pair with --eval")
    add.add_argument("dir", metavar="DIR")
    add.add_argument("--image", required=True, metavar="IMG")
    add.add_argument("--mask", required=True, metavar="MASK",
                     help="0 = background, other values = objects (ids or 1), 255 = not annotated; for --eval: > 0 is foreground")
    add.add_argument("--eval", action="store_true", help="an evaluation pair: scored every round, never trained on")
    add.add_argument("--name", default=None, metavar="NAME", help="pair name (default: the image's file stem)")
    add.set_defaults(func=_run_project_add)
    run = commands.add_parser("round", help="fine-tune, score against the parent, keep or roll back, record")
    run.add_argument("dir", metavar="DIR")
    run.add_argument("--seconds", type=float, default=None, metavar="S", help="time budget for training (default: none)")
    run.add_argument("--epochs", type=int, default=None, metavar="N", help=f"epochs (default {_train_default('epochs')})")
    run.add_argument("--seed", type=int, default=None, metavar="S", help=f"random seed (default {_train_default('seed')})")
    _add_precision_option(run)
    run.add_argument("--json", action="store_true", help="print the round's record as one JSON object")
    run.set_defaults(func=_run_project_round)
    status = commands.add_parser("status", help="the active version and every round's scores")
    status.add_argument("dir", metavar="DIR")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_run_project_status)
    retrain = commands.add_parser("retrain", help="repeat a recorded round and report how close the result is")
    retrain.add_argument("dir", metavar="DIR")
    retrain.add_argument("round", type=int, metavar="ROUND")
    retrain.add_argument("--json", action="store_true", help="print one JSON object")
    retrain.set_defaults(func=_run_project_retrain)


def _train_default(name: str):
    """TrainConfig's default for `name`: the one place defaults live (importing it does not load TensorFlow)."""
    from napari_unet.training import TrainConfig

    return getattr(TrainConfig(), name)


def _run_project_init(args) -> int:
    from napari_unet.project import Project

    project = Project.init(args.dir, args.model)
    print(f"project '{project.root}' starts from '{args.model}'")
    return 0


def _run_project_add(args) -> int:
    from pathlib import Path

    from napari_unet.errors import NapariUNetError
    from napari_unet.io import read_image
    from napari_unet.project import Project

    project = Project.open(args.dir)
    image, mask = read_image(args.image), read_image(args.mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != image.shape[:2]:
        raise NapariUNetError(
            f"mask '{args.mask}' is {'×'.join(map(str, mask.shape))} but image '{args.image}' is "
            f"{'×'.join(map(str, image.shape))}: a mask must have its image's height and width"
        )
    pair = project.add_pair(image, mask, evaluation=args.eval, name=args.name or Path(args.image).stem,
                            source_image=str(args.image), source_labels=str(args.mask))
    print(f"added {'evaluation' if args.eval else 'training'} pair '{pair.name}' to '{project.root}'")
    return 0


def _run_project_round(args) -> int:
    import json
    from dataclasses import replace

    from napari_unet.project import Project
    from napari_unet.training import TrainConfig

    project = Project.open(args.dir)
    config = TrainConfig()
    overrides = {key: value for key, value in (("seconds", args.seconds), ("epochs", args.epochs),
                                               ("seed", args.seed), ("precision", args.precision)) if value is not None}
    config = replace(config, **overrides)
    log = (lambda text: None) if args.json else (lambda text: print(f"[round] {text}", file=sys.stderr, flush=True))
    outcome = project.round(config, progress=None if args.json else _training_report("round"), log=log)
    from napari_unet.project import public_record

    record = public_record(outcome.record)
    if args.json:
        print(json.dumps(record))
    else:
        print(_round_line(record))
    return 0


def _round_line(record: dict) -> str:
    before, after = record["eval"]["before"], record["eval"]["after"]
    state = "kept" if record["kept"] else "ROLLED BACK"
    return (f"round {record['round']}: {record['parent']} -> {record['version']} ({state}); IoU {before['iou']:.4f} -> "
            f"{after['iou']:.4f}, Dice {before['dice']:.4f} -> {after['dice']:.4f}; {record['seconds']:.0f} s"
            f"\n  {record['reason']}")


def _run_project_status(args) -> int:
    import json

    from napari_unet.project import Project

    status = Project.open(args.dir).status()
    if args.json:
        print(json.dumps(status))
        return 0
    print(f"project {status['project']}: {status['training_pairs']} training pair(s), "
          f"{status['evaluation_pairs']} evaluation pair(s); started from {status['start_model']}")
    print(f"active version: {status['active']}")
    for record in status["rounds"]:
        print(_round_line(record))
    return 0


def _run_project_retrain(args) -> int:
    import json

    from napari_unet.project import Project

    report = Project.open(args.dir).retrain(args.round, progress=None if args.json else _training_report("retrain"))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"round {report['round']} repeated ({report['steps']} of {report['recorded_steps']} steps): evaluation IoU "
              f"{report['eval_recorded']['iou']:.4f} recorded, {report['eval_retrained']['iou']:.4f} now "
              f"(difference {report['iou_difference']:+.4f}); largest weight difference {report['max_weight_difference']:.2e}")
    return 0


def _training_report(prefix: str):
    """A progress callback printing one rewritten stderr line per step and one line per epoch."""

    def report(event) -> None:
        if event.kind == "step":
            eta = f", ~{event.eta_seconds:.0f} s left" if event.eta_seconds is not None else ""
            print(f"\r[{prefix}] epoch {event.epoch}/{event.epochs} step {event.step}/{event.total_steps} "
                  f"loss {event.loss:.4f}{eta}   ", end="", file=sys.stderr, flush=True)
        elif event.kind == "epoch":
            score = f" val IoU {event.val_iou:.4f}" if event.val_iou is not None else ""
            print(f"\r[{prefix}] epoch {event.epoch}/{event.epochs} done: loss {event.loss:.4f}{score}            ",
                  file=sys.stderr, flush=True)

    return report


COMMANDS.append(add_project_command)


if __name__ == "__main__":
    sys.exit(main())

"""Options shared by several commands, defined once, and the checks and progress lines that go with them."""

from __future__ import annotations

import argparse
import sys

from napari_unet.inference.channels import parse_channels

MODEL_HELP = "shipped/stored model name or .keras path"
JSON_HELP = "print one JSON object instead of a table"


def add_model_option(parser, help: str = MODEL_HELP) -> None:
    """`-m/--model MODEL`, required: what every command that runs a model starts from."""
    parser.add_argument("-m", "--model", required=True, metavar="MODEL", help=help)


def add_json_option(parser, help: str = JSON_HELP) -> None:
    """`--json`: machine-readable output on stdout, progress lines off."""
    parser.add_argument("--json", action="store_true", help=help)


def add_min_size_option(parser) -> None:
    parser.add_argument("--min-size", type=pixel_count, default=None, metavar="PX",
                        help="with --instances: drop objects smaller than PX pixels (default: the model's own, chosen "
                             "on its validation images, e.g. 32 for nuclei; lower it for small nuclei)")


def check_min_size(args) -> None:
    from napari_unet.errors import NapariUNetError

    if args.min_size is not None and not args.instances:
        raise NapariUNetError("--min-size drops small objects of --instances: add --instances, or drop --min-size")


def pixel_count(text: str) -> int:
    """argparse type: a whole number of pixels >= 1 (argparse prints the message and exits with 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in pixels: give a whole number >= 1, e.g. 8")
    return value


def add_channels_option(parser) -> None:
    parser.add_argument("--channels", default=None, metavar="C",
                        help="which of the images' channels the model reads: 'grey' (converted) or numbers such as "
                             "0 or 0,2 (default: all, as they are; a mismatch with the model is refused and named)")


def add_stack_options(parser) -> None:
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


def check_stack_options(args) -> None:
    from napari_unet.errors import NapariUNetError

    if args.stack in ("z", "t") and not args.instances:
        raise NapariUNetError(f"--stack {args.stack} gives the objects of --instances one id across planes: add "
                              "--instances, or drop --stack")
    if args.anisotropy is not None and args.stack not in ("z", "t"):
        raise NapariUNetError("--anisotropy is the Z spacing of a volume: add --stack z (or --stack t for a "
                              "time-lapse of volumes), or drop --anisotropy")


def check_stack_named(args, image, path, n_channels: int):
    """`image`, unless it is a stack asked for --instances without --stack (its ids would restart in every plane)."""
    from napari_unet.errors import NapariUNetError
    from napari_unet.labels.stacks import stack_depth

    if args.instances and args.stack is None and stack_depth(image.shape, n_channels, parse_channels(args.channels)):
        shape = "×".join(str(n) for n in image.shape)
        raise NapariUNetError(f"'{path}' is a stack ({shape}): say what its first axis is with --stack z (a volume: "
                              "3-D objects), --stack t (a time-lapse: ids kept over frames) or --stack planes "
                              "(each plane on its own)")
    return image


def add_tta_option(parser) -> None:
    parser.add_argument("--tta", nargs="?", type=int, const=8, default=1, choices=(2, 4, 8), metavar="VIEWS",
                        help="test-time augmentation: average VIEWS flips/rotations the model was trained for "
                             "(2, 4 or 8 = all, the default with plain --tta); that many times slower, slightly more accurate")
    add_precision_option(parser)


def add_precision_option(parser) -> None:
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="compute in bfloat16 or float32 (default auto: bfloat16 where the CPU has it natively, "
                             "AMX or AVX512-BF16; the environment variable NAPARI_UNET_PRECISION also sets it)")


def train_default(name: str):
    """TrainConfig's default for `name`: the one place defaults live (importing it does not load TensorFlow)."""
    from napari_unet.training import TrainConfig

    return getattr(TrainConfig(), name)


def training_report(prefix: str):
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

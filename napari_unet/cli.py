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

    try:
        return int(args.func(args) or 0)
    except NapariUNetError as exc:
        print(f"napari-unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"napari-unet {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


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
    parser.add_argument("--data", metavar="DIR", help="folder with images/ and masks/ (matched by file name); default: the shipped EM-like sample")
    parser.add_argument("--model", default="membranes", metavar="NAME", help="model to start from (default: membranes)")
    parser.add_argument("--seconds", type=float, default=60.0, metavar="S", help="fine-tuning time budget in seconds (default: 60)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.set_defaults(func=_run_demo_command)


def _run_demo_command(args) -> int:
    import json

    from napari_unet.demo import format_summary, run_demo

    log = (lambda text: None) if args.json else (lambda text: print(f"[demo] {text}", file=sys.stderr, flush=True))
    result = run_demo(data_dir=args.data, model_name=args.model, seconds=args.seconds, log=log)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_summary(result))
    return 0


COMMANDS.append(add_demo_command)

"""The `napari-unet` command line: the same work as the widgets, headless.

One module per command group (predict.py: predict, evaluate; training.py: finetune, project; models.py: models,
export; launch.py: demo, gui); options used by several commands are defined once in options.py. Each group's
`add_<name>_command(subparsers)` sets `func=` to a handler taking the parsed args and returning an exit code.
User errors (NapariUNetError) print as one line on stderr and exit 2; heavy imports happen inside handlers so
`--help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from napari_unet._version import __version__
from napari_unet.cli.extras import missing_extra
from napari_unet.cli.launch import add_demo_command, add_gui_command
from napari_unet.cli.models import add_export_command, add_models_command
from napari_unet.cli.predict import add_evaluate_command, add_predict_command
from napari_unet.cli.startup import import_tensorflow_quietly
from napari_unet.cli.training import add_finetune_command, add_project_command

__all__ = ["COMMANDS", "build_parser", "main", "missing_extra"]

# The subcommands, in the order `napari-unet --help` lists them.
COMMANDS = [add_demo_command, add_predict_command, add_evaluate_command, add_gui_command, add_finetune_command,
            add_models_command, add_export_command, add_project_command]


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
        import_tensorflow_quietly()
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

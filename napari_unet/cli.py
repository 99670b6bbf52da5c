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

"""`napari-unet demo` and `napari-unet gui`: the correction loop shown headless on sample data, or opened in napari."""

from __future__ import annotations

import sys

from napari_unet.cli.options import add_json_option


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
    add_json_option(parser, "print the result as JSON instead of a table")
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args) -> int:
    import json

    from napari_unet.demo import format_summary, run_demo

    log = (lambda text: None) if args.json else (lambda text: print(f"[demo] {text}", file=sys.stderr, flush=True))
    result = run_demo(data_dir=args.data, model_name=args.model, seconds=args.seconds, log=log, sample=args.sample)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_summary(result))
    return 0


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
    parser.set_defaults(func=run_gui_command)


def run_gui_command(args) -> int:
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

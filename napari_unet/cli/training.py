"""`napari-unet finetune` and `napari-unet project`: training a model once, or in rounds kept only when they help."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from napari_unet.cli.options import (
    add_json_option,
    add_model_option,
    add_precision_option,
    train_default,
    training_report,
)

if TYPE_CHECKING:
    from napari_unet.storage.records import RoundRecord


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
    add_model_option(parser, "shipped/stored model name or .keras path to start from")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of training images")
    parser.add_argument("--masks", required=True, metavar="DIR", help="folder of masks with the same file stems")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.keras", help="where to save the fine-tuned model")
    parser.add_argument("--epochs", type=int, default=None, metavar="N", help=f"epochs (default {train_default('epochs')})")
    parser.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                        help=f"training steps per epoch (default {train_default('steps_per_epoch')})")
    parser.add_argument("--lr", type=float, default=None, metavar="LR",
                        help=f"Adam learning rate (default {train_default('learning_rate'):g}; ~1e-3 from scratch)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help=f"random seed (default {train_default('seed')})")
    add_precision_option(parser)
    parser.add_argument("--name", default=None, metavar="NAME", help="name of the stored version (default <model>-vN)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.keras if it exists (never the input model)")
    add_json_option(parser, "print one JSON object with the result on stdout")
    parser.set_defaults(func=run_finetune_command)


def run_finetune_command(args) -> int:
    import json
    from pathlib import Path

    from napari_unet.errors import NapariUNetError
    from napari_unet.storage.io import find_pairs, read_image

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

    from napari_unet.storage.registry import load_model
    from napari_unet.training import finetune

    model = load_model(args.model)
    overrides = {key: value for key, value in (("epochs", args.epochs), ("steps_per_epoch", args.steps_per_epoch),
                                               ("learning_rate", args.lr), ("seed", args.seed),
                                               ("precision", args.precision)) if value is not None}

    report = training_report("finetune")

    tuned, history = finetune(model, images, masks, names=names, progress=report, **overrides)

    from napari_unet.model import save_model
    from napari_unet.storage.store import ModelStore, pair_fingerprint

    save_model(tuned, output)
    version = None
    try:
        record = ModelStore().save_version(
            tuned, history, training_pairs=[pair_fingerprint(i, m, n) for i, m, n in zip(images, masks, names)],
            name=args.name,
        )
        version = record.name
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
    add_model_option(init)
    add_class_options(init)
    init.set_defaults(func=run_project_init)
    classes = commands.add_parser("classes", help="show the project's classes; add, rename or recolour them, or say "
                                                  "which are objects and which regions",
                                  description="Label value k is class k (0 background, 255 not annotated); what a "
                                              "value means never changes, so painted pairs stay valid.")
    classes.add_argument("dir", metavar="DIR")
    classes.add_argument("--add", default=None, metavar="NAMES",
                         help="classes to add after the existing ones, e.g. 'membrane' or 'membrane:#ffff00'")
    classes.add_argument("--regions", default=None, metavar="NAMES",
                         help="classes (existing or added) that are regions, not objects to separate (e.g. cytoplasm)")
    classes.add_argument("--objects", default=None, metavar="NAMES",
                         help="existing classes whose regions are objects to separate into instances")
    classes.add_argument("--rename", default=None, metavar="OLD:NEW",
                         help="rename classes, e.g. 'rim:cytoplasm' (comma-separated for several)")
    classes.add_argument("--colour", default=None, metavar="NAME:#RRGGBB",
                         help="recolour classes, e.g. 'nucleus:#ff0000' (comma-separated for several)")
    add_json_option(classes, "print the classes as one JSON object")
    classes.set_defaults(func=run_project_classes)
    add = commands.add_parser("add", help="add a training pair, or an evaluation pair with --eval")
    add.add_argument("dir", metavar="DIR")
    add.add_argument("--image", required=True, metavar="IMG")
    add.add_argument("--mask", required=True, metavar="MASK",
                     help="0 = background, other values = objects (ids or 1), 255 = not annotated; for --eval: > 0 is "
                          "foreground. With several classes: value k = class k")
    add.add_argument("--eval", action="store_true", help="an evaluation pair: scored every round, never trained on")
    add.add_argument("--name", default=None, metavar="NAME", help="pair name (default: the image's file stem)")
    add.set_defaults(func=run_project_add)
    run = commands.add_parser("round", help="fine-tune, score against the parent, keep or roll back, record")
    run.add_argument("dir", metavar="DIR")
    run.add_argument("--seconds", type=float, default=None, metavar="S", help="time budget for training (default: none)")
    run.add_argument("--epochs", type=int, default=None, metavar="N", help=f"epochs (default {train_default('epochs')})")
    run.add_argument("--seed", type=int, default=None, metavar="S", help=f"random seed (default {train_default('seed')})")
    add_precision_option(run)
    add_json_option(run, "print the round's record as one JSON object")
    run.set_defaults(func=run_project_round)
    status = commands.add_parser("status", help="the active version and every round's scores")
    status.add_argument("dir", metavar="DIR")
    add_json_option(status, "print one JSON object")
    status.set_defaults(func=run_project_status)
    retrain = commands.add_parser("retrain", help="repeat a recorded round and report how close the result is")
    retrain.add_argument("dir", metavar="DIR")
    retrain.add_argument("round", type=int, metavar="ROUND")
    add_json_option(retrain, "print one JSON object")
    retrain.set_defaults(func=run_project_retrain)


def add_class_options(parser) -> None:
    parser.add_argument("--classes", default=None, metavar="NAMES",
                        help="what you paint, in label-value order: e.g. 'nucleus,cytoplasm' (label 1 nucleus, 2 "
                             "cytoplasm), colours optional ('nucleus:#ff0000'); default: one class, any label > 0")
    parser.add_argument("--regions", default=None, metavar="NAMES",
                        help="classes that are regions, not objects to separate into instances (e.g. cytoplasm)")


def _parsed_classes(names: str, regions: str | None, existing: list | None = None):
    """The classes named on the command line, all objects but the --regions ones (which may also name `existing`
    classes, for project classes)."""
    from napari_unet.errors import NapariUNetError
    from napari_unet.labels.classes import SegmentationClass, parse_classes

    classes = parse_classes(names)
    region_names = set(_names(regions))
    unknown = region_names - {c.name for c in classes} - set(existing or [])
    if unknown:
        raise NapariUNetError(f"--regions names {', '.join(sorted(unknown))}, which --classes/--add does not: "
                              "name classes given with them")
    return [SegmentationClass(c.name, c.colour, c.name not in region_names) for c in classes]


def _names(text: str | None) -> list[str]:
    """'a, b' -> ['a', 'b']."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _name_pairs(text: str | None, option: str, form: str) -> dict[str, str]:
    """'a:b, c:d' -> {'a': 'b', 'c': 'd'}; anything else is refused in one line naming the form."""
    from napari_unet.errors import NapariUNetError

    pairs = {}
    for item in _names(text):
        key, colon, value = item.partition(":")
        if not colon or not key.strip() or not value.strip():
            raise NapariUNetError(f"{option} {item!r} is not {form}: write e.g. {option} {form}")
        pairs[key.strip()] = value.strip()
    return pairs


def run_project_init(args) -> int:
    from napari_unet.errors import NapariUNetError
    from napari_unet.labels.classes import describe
    from napari_unet.project import Project

    if args.regions and not args.classes:
        raise NapariUNetError("--regions names some of the --classes: give --classes too")
    classes = _parsed_classes(args.classes, args.regions) if args.classes else None
    project = Project.init(args.dir, args.model, classes=classes)
    print(f"project '{project.root}' starts from '{args.model}'"
          + (f"; classes: {describe(project.classes)}" if classes else ""))
    return 0


def run_project_classes(args) -> int:
    import json

    from napari_unet.project import Project

    project = Project.open(args.dir)
    renames, colours = _name_pairs(args.rename, "--rename", "OLD:NEW"), _name_pairs(args.colour, "--colour", "NAME:#rrggbb")
    if renames:  # first, so that the other options name the classes by their new names
        project.edit_classes(rename=renames)
    existing = [c.name for c in project.classes]
    if args.add:
        project.set_classes([*project.classes, *_parsed_classes(args.add, args.regions, existing)])
    regions = [name for name in _names(args.regions) if name in existing or not args.add]  # else the added ones
    if colours or args.objects or regions:
        note = project.edit_classes(colours=colours, objects=_names(args.objects), regions=regions)
        if note:
            print(note, file=sys.stderr)
    classes = project.classes
    if args.json:
        print(json.dumps({"classes": [c.to_dict() for c in classes]}))
        return 0
    for value, c in enumerate(classes, start=1):
        print(f"{value:>3}  {c.name}" + (f"  {c.colour}" if c.colour else "") + ("" if c.objects else "  (region)"))
    return 0


def run_project_add(args) -> int:
    from pathlib import Path

    from napari_unet.project import Project
    from napari_unet.storage.io import read_image
    from napari_unet.training.training_set import check_pair_shapes

    project = Project.open(args.dir)
    image, mask = read_image(args.image), read_image(args.mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    check_pair_shapes(image, mask, image_name=args.image, labels_name=args.mask,
                      fix="a mask must have its image's height and width")
    pair = project.add_pair(image, mask, evaluation=args.eval, name=args.name or Path(args.image).stem,
                            source_image=str(args.image), source_labels=str(args.mask))
    print(f"added {'evaluation' if args.eval else 'training'} pair '{pair.name}' to '{project.root}'")
    return 0


def run_project_round(args) -> int:
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
    outcome = project.round(config, progress=None if args.json else training_report("round"), log=log)
    if args.json:
        print(json.dumps(outcome.record.public_json()))
    else:
        print(round_line(outcome.record))
    return 0


def round_line(record: RoundRecord) -> str:
    before, after = record.eval.before, record.eval.after
    state = "kept" if record.kept else "ROLLED BACK"
    classes = record.eval.classes
    mean = "mean IoU" if classes else "IoU"
    per_class = "".join(f"\n  {name}: IoU {c['before']['iou']:.4f} -> {c['after']['iou']:.4f} ({c['verdict']})"
                        for name, c in classes.items())
    return (f"round {record.round}: {record.parent} -> {record.version} ({state}); {mean} {before['iou']:.4f} -> "
            f"{after['iou']:.4f}, Dice {before['dice']:.4f} -> {after['dice']:.4f}; {record.seconds:.0f} s"
            f"{per_class}\n  {record.reason}")


def run_project_status(args) -> int:
    import json

    from napari_unet.project import Project

    project = Project.open(args.dir)
    status = project.status()
    if args.json:
        print(json.dumps(status))
        return 0
    print(f"project {status['project']}: {status['training_pairs']} training pair(s), "
          f"{status['evaluation_pairs']} evaluation pair(s); started from {status['start_model']}")
    if len(status["classes"]) > 1:
        print("classes: " + ", ".join(f"{value} {c['name']}" for value, c in enumerate(status["classes"], start=1)))
    print(f"active version: {status['active']}")
    for record in project.rounds():
        print(round_line(record))
    return 0


def run_project_retrain(args) -> int:
    import json

    from napari_unet.project import Project

    report = Project.open(args.dir).retrain(args.round, progress=None if args.json else training_report("retrain"))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"round {report['round']} repeated ({report['steps']} of {report['recorded_steps']} steps): evaluation IoU "
              f"{report['eval_recorded']['iou']:.4f} recorded, {report['eval_retrained']['iou']:.4f} now "
              f"(difference {report['iou_difference']:+.4f}); largest weight difference {report['max_weight_difference']:.2e}")
    return 0

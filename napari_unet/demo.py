"""The whole human-in-the-loop cycle, headless: predict → "correct" → fine-tune → predict again.

A user's correction is simulated with ground truth on one part of the data (the left half of
one image, or the first images of a folder); everything else is marked 255 = not annotated or
left out, and before/after scores are measured only there, so the comparison is on pixels the
fine-tuning never saw labels for. No Qt, no napari: the CLI (`napari-unet demo`) prints the result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.labels.masks import IGNORE_LABEL, labels_from_ground_truth

DEFAULT_SECONDS = 60.0


@dataclass
class DemoCase:
    """Images with ground truth, split into the part shown to fine-tuning and the held-out part.

    `train_masks` carry IGNORE_LABEL wherever the simulated user did not annotate; `held_out`
    marks, per image, the pixels that are scored (never annotated for training).
    """

    description: str
    images: list[np.ndarray]
    truths: list[np.ndarray]
    train_masks: list[np.ndarray | None]  # None: image not used for training at all
    held_out: list[np.ndarray]  # bool, same shape as each truth
    split: str


@dataclass
class DemoResult:
    data: str
    model: str
    split: str
    before: dict
    after: dict
    timings: dict
    finetune: dict
    held_out_pixels: int
    trained_pixels: int
    improved: bool
    verdict: str
    kept: bool = True
    evaluation: dict = field(default_factory=dict)  # the round's eval record: sources, units, interval

    def to_dict(self) -> dict:
        return asdict(self)


def _binary_truth(mask: np.ndarray) -> np.ndarray:
    """Foreground 1 wherever the mask is > 0 (instance labels become one class): what is scored."""
    return (np.asarray(mask) > 0).astype(np.uint8)


DEFAULT_MODELS = {"em_membranes": "membranes", "nuclei": "nuclei", "nuclei_sparse": "nuclei"}


def sample_case(sample: str = "em_membranes") -> DemoCase:
    """A shipped sample (EM-like membranes, or a real nuclei field): annotate the left half, score the right half."""
    from napari_unet._sample_data import load_em_membranes, load_nuclei, sample_path

    if sample not in DEFAULT_MODELS:
        raise NapariUNetError(f"no sample named '{sample}': choose one of {', '.join(DEFAULT_MODELS)}")
    image, mask = load_em_membranes() if sample == "em_membranes" else load_nuclei(sample)
    return half_split_case(image, mask, f"sample {sample_path(sample + '.tif').name}")


def half_split_case(image: np.ndarray, labels: np.ndarray, description: str) -> DemoCase:
    """One image: its left half is the user's correction (labels as painted), its right half is held out."""
    truth = _binary_truth(labels)
    labels = labels_from_ground_truth(labels)
    width = truth.shape[-1]
    train_mask = np.full(truth.shape, IGNORE_LABEL, dtype=np.uint8 if labels.max(initial=0) < IGNORE_LABEL else np.int32)
    train_mask[..., : width // 2] = labels[..., : width // 2]
    held_out = np.zeros(truth.shape, dtype=bool)
    held_out[..., width // 2 :] = True
    return DemoCase(description, [image], [truth], [train_mask], [held_out],
                    split=f"left half (x < {width // 2}) corrected, right half held out")


def folder_case(data_dir: str | Path) -> DemoCase:
    """A folder with images/ and masks/ (matched by stem): the first images are the corrections,
    the last ⌊n/2⌋ are held out; a single pair is split into halves like the sample."""
    from napari_unet.storage.io import find_pairs, read_image

    data_dir = Path(data_dir)
    if not (data_dir / "images").is_dir() or not (data_dir / "masks").is_dir():
        raise NapariUNetError(
            f"'{data_dir}' has no images/ and masks/ folders: --data needs DIR/images/*.tif|png and "
            "DIR/masks/* with the same file names"
        )
    pairs = find_pairs(data_dir / "images", data_dir / "masks")
    images, truths, labels = [], [], []
    for image_path, mask_path in pairs:
        image, mask = read_image(image_path), read_image(mask_path)
        if mask.shape != image.shape[: mask.ndim] or mask.ndim != 2:
            raise NapariUNetError(
                f"mask '{mask_path.name}' is {'×'.join(map(str, mask.shape))} but its image is "
                f"{'×'.join(map(str, image.shape))}: masks must be 2D with the image's height and width"
            )
        images.append(image)
        truths.append(_binary_truth(mask))
        labels.append(labels_from_ground_truth(mask))
    if len(pairs) == 1:
        return half_split_case(images[0], labels[0], f"{data_dir} (1 image)")
    n_held_out = len(pairs) // 2
    n_train = len(pairs) - n_held_out
    train_masks = [mask if i < n_train else None for i, mask in enumerate(labels)]
    held_out = [np.full(t.shape, i >= n_train) for i, t in enumerate(truths)]
    names = [p[0].stem for p in pairs]
    return DemoCase(
        f"{data_dir} ({len(pairs)} images)", images, truths, train_masks, held_out,
        split=f"corrected: {', '.join(names[:n_train])}; held out: {', '.join(names[n_train:])}",
    )


def evaluation_pairs(case: DemoCase) -> list[tuple[np.ndarray, np.ndarray]]:
    """The held-out part of each image as (image crop, truth crop): what the round is scored on.

    A half-split image gives its right half; a held-out image is used whole.
    """
    pairs = []
    for image, truth, held_out in zip(case.images, case.truths, case.held_out):
        if not held_out.any():
            continue
        columns = np.flatnonzero(held_out.any(axis=0))
        rows = np.flatnonzero(held_out.any(axis=1))
        window = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
        pairs.append((np.asarray(image)[window], np.asarray(truth)[window]))
    return pairs


def run_demo(
    data_dir: str | Path | None = None,
    model_name: str | None = None,
    seconds: float = DEFAULT_SECONDS,
    log: Callable[[str], None] | None = None,
    project_dir: str | Path | None = None,
    sample: str = "em_membranes",
) -> DemoResult:
    """Predict → simulated correction → one project round bounded by `seconds` → predict, and score.

    The round is the core's (project.Project.round) with TrainConfig's defaults and a time budget; the
    held-out part becomes the project's evaluation pairs, so "did it help?" is the project's own rule.
    project_dir: where the demo's project goes (default: a temporary folder, removed afterwards).
    sample: the shipped sample to use without data_dir; model_name defaults to the sample's own model.
    """
    if not seconds > 0:
        raise NapariUNetError(f"--seconds must be positive, not {seconds}: give the fine-tuning budget in seconds, e.g. 60")
    import tempfile
    from dataclasses import replace

    from napari_unet.project import Project
    from napari_unet.storage.registry import load_model
    from napari_unet.training import TrainConfig

    log = log or (lambda text: None)
    timings: dict[str, float] = {}
    started = time.monotonic()
    case = folder_case(data_dir) if data_dir else sample_case(sample)
    model_name = model_name or DEFAULT_MODELS.get(sample, "membranes")
    timings["load_data"] = time.monotonic() - started
    log(f"loading model '{model_name}' …")
    started = time.monotonic()
    model = load_model(model_name)
    timings["load_model"] = time.monotonic() - started

    with tempfile.TemporaryDirectory(prefix="napari-unet-demo-") as scratch:
        project = Project.init(Path(project_dir or Path(scratch) / "project"), model_name)
        for index, (image, mask) in enumerate(zip(case.images, case.train_masks)):
            if mask is not None:
                project.add_pair(image, mask, name=f"corrected_{index}")
        for index, (image, truth) in enumerate(evaluation_pairs(case)):
            project.add_pair(image, truth, evaluation=True, name=f"held_out_{index}")
        # A time-bounded round: the budget, not the step count, ends training.
        config = replace(TrainConfig(), seconds=seconds, epochs=10_000, early_stopping_patience=0)
        log(f"one round: score '{model_name}', fine-tune for about {seconds:.0f} s, score again …")
        started = time.monotonic()
        outcome = project.round(config, log=log)
        timings["round"] = time.monotonic() - started
    record = outcome.record
    return DemoResult(
        data=case.description,
        model=model_name,
        split=case.split,
        before=record.eval.before,
        after=record.eval.after,
        timings={k: round(v, 2) for k, v in {**timings, "finetune": record.training.seconds}.items()},
        finetune={
            "steps": int(record.training.steps),
            "seconds": record.training.seconds,
            "learning_rate": config.learning_rate,
            "stopped_reason": record.training.stopped_reason,
            "budget_seconds": seconds,
            "output_offset_before": [float(v) for v in model.metadata.output_offset],
            "output_offset_after": [float(v) for v in outcome.model.metadata.output_offset],
        },
        held_out_pixels=int(sum(np.count_nonzero(h) for h in case.held_out)),
        trained_pixels=int(sum(np.count_nonzero(m != IGNORE_LABEL) for m in case.train_masks if m is not None)),
        improved=record.eval.verdict == "helped",
        verdict=outcome.reason,
        kept=record.kept,
        evaluation=record.eval.to_json(),
    )


def format_summary(result: DemoResult) -> str:
    """A short human-readable report: what ran, how long each phase took, before/after scores."""
    rows = [
        "napari-unet demo — predict → correct → fine-tune → predict (one project round)",
        f"  data:   {result.data}",
        f"  model:  {result.model}",
        f"  split:  {result.split}",
        f"          ({result.trained_pixels:,} annotated pixels for training, {result.held_out_pixels:,} held-out pixels scored)",
        "",
        "  phase              seconds",
    ]
    for phase, label in (("load_model", "load model*"), ("round", "round"), ("finetune", "  of which training")):
        extra = ""
        if phase == "finetune":
            extra = f"   {result.finetune['steps']} steps, lr {result.finetune['learning_rate']:g}"
        rows.append(f"  {label:<17}{result.timings.get(phase, 0.0):8.1f}{extra}")
    offsets = result.finetune.get("output_offset_before"), result.finetune.get("output_offset_after")
    if None not in offsets:
        rows.append(f"  output offset (dy, dx) {tuple(offsets[0])} → {tuple(offsets[1])}, re-fitted on the corrected part")
    rows += ["", "  held-out scores    before    after    change"]
    for key, label in (("iou", "IoU"), ("dice", "Dice"), ("pixel_error", "pixel error")):
        b, a = result.before[key], result.after[key]
        rows.append(f"  {label:<17}{b:8.4f} {a:8.4f}  {a - b:+8.4f}")
    interval = result.evaluation.get("delta_iou_interval")
    if interval:
        rows.append(f"  IoU change, 95% interval over {result.evaluation.get('units')} evaluation tiles: "
                    f"{interval[0]:+.4f} to {interval[1]:+.4f}")
    rows += ["", f"  → {result.verdict}",
             "  (* includes starting TensorFlow; the round scores the model before and after, and trains)"]
    return "\n".join(rows)

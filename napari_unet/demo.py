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

from napari_unet.masks import IGNORE_LABEL  # noqa: E402  (the one definition)
DEFAULT_SECONDS = 60.0
DEFAULT_LEARNING_RATE = 1e-4  # the safe interactive default (cpu-calibration §5)


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
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _binary_truth(mask: np.ndarray) -> np.ndarray:
    """Foreground 1 wherever the mask is > 0 (instance labels become one class); keep 255 as ignore."""
    mask = np.asarray(mask)
    truth = (mask > 0).astype(np.uint8)
    return truth


def sample_case() -> DemoCase:
    """The shipped EM-like sample: annotate the left half, score the right half."""
    from napari_unet._sample_data import load_em_membranes, sample_path

    image, mask = load_em_membranes()
    return half_split_case(image, _binary_truth(mask), f"sample {sample_path('em_membranes.tif').name}")


def half_split_case(image: np.ndarray, truth: np.ndarray, description: str) -> DemoCase:
    """One image: its left half is the user's correction, its right half is held out."""
    width = truth.shape[-1]
    train_mask = np.full(truth.shape, IGNORE_LABEL, dtype=np.uint8)
    train_mask[..., : width // 2] = truth[..., : width // 2]
    held_out = np.zeros(truth.shape, dtype=bool)
    held_out[..., width // 2 :] = True
    return DemoCase(description, [image], [truth], [train_mask], [held_out],
                    split=f"left half (x < {width // 2}) corrected, right half held out")


def folder_case(data_dir: str | Path) -> DemoCase:
    """A folder with images/ and masks/ (matched by stem): the first images are the corrections,
    the last ⌊n/2⌋ are held out; a single pair is split into halves like the sample."""
    from napari_unet.io import find_pairs, read_image

    data_dir = Path(data_dir)
    if not (data_dir / "images").is_dir() or not (data_dir / "masks").is_dir():
        raise NapariUNetError(
            f"'{data_dir}' has no images/ and masks/ folders: --data needs DIR/images/*.tif|png and "
            "DIR/masks/* with the same file names"
        )
    pairs = find_pairs(data_dir / "images", data_dir / "masks")
    images, truths = [], []
    for image_path, mask_path in pairs:
        image, mask = read_image(image_path), read_image(mask_path)
        if mask.shape != image.shape[: mask.ndim] or mask.ndim != 2:
            raise NapariUNetError(
                f"mask '{mask_path.name}' is {'×'.join(map(str, mask.shape))} but its image is "
                f"{'×'.join(map(str, image.shape))}: masks must be 2D with the image's height and width"
            )
        images.append(image)
        truths.append(_binary_truth(mask))
    if len(pairs) == 1:
        return half_split_case(images[0], truths[0], f"{data_dir} (1 image)")
    n_held_out = len(pairs) // 2
    n_train = len(pairs) - n_held_out
    train_masks = [truth if i < n_train else None for i, truth in enumerate(truths)]
    held_out = [np.full(t.shape, i >= n_train) for i, t in enumerate(truths)]
    names = [p[0].stem for p in pairs]
    return DemoCase(
        f"{data_dir} ({len(pairs)} images)", images, truths, train_masks, held_out,
        split=f"corrected: {', '.join(names[:n_train])}; held out: {', '.join(names[n_train:])}",
    )


def score_held_out(model, case: DemoCase, threshold: float = 0.5) -> tuple[dict, list[np.ndarray]]:
    """Predict every image and pool the scores over the held-out pixels only."""
    from napari_unet.metrics import pooled_scores
    from napari_unet.prediction import predict

    labels = [predict(model, image, output="labels", threshold=threshold) for image in case.images]
    scores = pooled_scores((predicted, truth, valid) for predicted, truth, valid in zip(labels, case.truths, case.held_out))
    return scores, labels


def run_demo(
    data_dir: str | Path | None = None,
    model_name: str = "membranes",
    seconds: float = DEFAULT_SECONDS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run predict → simulated correction → fine-tune (for about `seconds`) → predict, and score.

    Fine-tuning stops at the time budget through finetune()'s cancel check, which keeps the
    best model so far.
    """
    if seconds <= 0:
        raise NapariUNetError(f"--seconds must be positive, not {seconds}: give the fine-tuning budget in seconds, e.g. 60")
    from napari_unet.registry import load_model
    from napari_unet.train import TrainConfig, finetune

    log = log or (lambda text: None)
    timings: dict[str, float] = {}

    started = time.monotonic()
    case = folder_case(data_dir) if data_dir else sample_case()
    timings["load_data"] = time.monotonic() - started

    log(f"loading model '{model_name}' …")
    started = time.monotonic()
    model = load_model(model_name)
    timings["load_model"] = time.monotonic() - started
    if model.config.n_classes != 1:
        raise NapariUNetError(
            f"model '{model_name}' has {model.config.n_classes} classes; the demo scores one foreground class: "
            "use a one-class model such as 'membranes'"
        )

    log("predicting before fine-tuning …")
    started = time.monotonic()
    before, _ = score_held_out(model, case)
    timings["predict_before"] = time.monotonic() - started

    train_images = [image for image, mask in zip(case.images, case.train_masks) if mask is not None]
    train_masks = [mask for mask in case.train_masks if mask is not None]
    for mask, held_out in zip(case.train_masks, case.held_out):
        if mask is not None and np.any(mask[held_out] != IGNORE_LABEL):
            raise AssertionError("held-out pixels leaked into the training masks")  # a bug, not user input

    log(f"fine-tuning for about {seconds:.0f} s …")
    deadline = [None]
    last_event = {}

    def on_progress(event) -> None:
        if deadline[0] is None:  # the clock starts once training runs (after loading/tracing set-up)
            deadline[0] = time.monotonic() + seconds
        last_event["step"] = event.step
        last_event["loss"] = event.loss

    def out_of_time() -> bool:
        return deadline[0] is not None and time.monotonic() >= deadline[0]

    # Enough steps that the time budget, not the step count, ends training on a fast machine.
    config = TrainConfig(
        epochs=100, steps_per_epoch=25, learning_rate=learning_rate, batch_size=4, patch_size=256, seed=0,
        **_no_early_stopping(),
    )
    started = time.monotonic()
    tuned, history = finetune(model, train_images, train_masks, config=config, progress=on_progress, cancel=out_of_time)
    timings["finetune"] = time.monotonic() - started

    log("predicting after fine-tuning …")
    started = time.monotonic()
    after, _ = score_held_out(tuned, case)
    timings["predict_after"] = time.monotonic() - started

    delta_iou = after["iou"] - before["iou"]
    delta_error = after["pixel_error"] - before["pixel_error"]
    # Changes this small are within run-to-run noise (cpu-calibration §4-5), so they count as none.
    negligible = abs(delta_error) < 0.002 and abs(delta_iou) < 0.005
    improved = not negligible and delta_error < 0 and delta_iou > 0
    if negligible:
        verdict = (f"fine-tuning made no measurable difference on the held-out part (IoU {delta_iou:+.3f}, "
                   f"pixel error {delta_error:+.4f})")
    elif improved:
        verdict = f"fine-tuning helped on the held-out part: IoU {delta_iou:+.3f}, pixel error {delta_error:+.4f}"
    else:
        verdict = (f"fine-tuning did NOT help on the held-out part (IoU {delta_iou:+.3f}, pixel error "
                   f"{delta_error:+.4f}): more corrections or a longer fine-tune (--seconds) may be needed")

    return DemoResult(
        data=case.description,
        model=model_name,
        split=case.split,
        before={k: float(before[k]) for k in ("iou", "dice", "pixel_error")},
        after={k: float(after[k]) for k in ("iou", "dice", "pixel_error")},
        timings={k: round(v, 2) for k, v in timings.items()},
        finetune={
            "steps": int(history.steps),
            "seconds": round(float(history.seconds), 2),
            "learning_rate": learning_rate,
            "final_loss": None if history.final_loss is None else float(history.final_loss),
            "stopped_reason": str(history.stopped_reason),
            "budget_seconds": seconds,
            "output_offset_before": [float(v) for v in model.metadata.output_offset],
            "output_offset_after": [float(v) for v in tuned.metadata.output_offset],
        },
        held_out_pixels=int(sum(np.count_nonzero(h) for h in case.held_out)),
        trained_pixels=int(sum(np.count_nonzero(m != IGNORE_LABEL) for m in train_masks)),
        improved=bool(improved),
        verdict=verdict,
    )


def _no_early_stopping() -> dict:
    """TrainConfig's early-stopping field, switched off when it exists (the budget is time here)."""
    from dataclasses import fields

    from napari_unet.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    for name in ("early_stopping_patience", "patience", "early_stopping"):
        if name in names:
            return {name: 0 if name != "early_stopping" else False}
    return {}


def format_summary(result: DemoResult) -> str:
    """A short human-readable report: what ran, how long each phase took, before/after scores."""
    rows = [
        f"napari-unet demo — predict → correct → fine-tune → predict",
        f"  data:   {result.data}",
        f"  model:  {result.model}",
        f"  split:  {result.split}",
        f"          ({result.trained_pixels:,} annotated pixels for training, {result.held_out_pixels:,} held-out pixels scored)",
        "",
        "  phase              seconds",
    ]
    for phase, label in (("load_model", "load model*"), ("predict_before", "predict (before)"),
                         ("finetune", "fine-tune"), ("predict_after", "predict (after)")):
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
    rows += ["", f"  → {result.verdict}",
             "  (* includes starting TensorFlow; fine-tune time includes preparing data and compiling)"]
    return "\n".join(rows)

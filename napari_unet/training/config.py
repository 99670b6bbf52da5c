"""Training settings (TrainConfig) and what training reports (TrainProgress, TrainHistory)."""

from __future__ import annotations

from dataclasses import dataclass, field

from napari_unet.errors import NapariUNetError
from napari_unet.training.augment import AugmentConfig

LR_SCHEDULES = ("constant", "cosine", "step")


@dataclass
class TrainConfig:
    """Training settings. Defaults: a fine-tune round well under a minute on 2 CPU cores (120 steps of 8 x 128²)."""

    epochs: int = 4
    steps_per_epoch: int = 30
    # 8 patches of 128² per step, measured against 4 of 256² (benchmarks/bench_round.py, the shipped `membranes`
    # model on a corrected half of a nuclei image, 120 steps): IoU on the other half 0.064 -> 0.884 instead of
    # 0.842, for half the arithmetic per step; 4 x 128² gave 0.875, 60 steps of 8 x 128² only 0.425.
    batch_size: int = 8
    patch_size: int | None = 128  # None: the model's tile_size
    # Fine-tuning default, measured (benchmarks/project_rounds.py, 120 steps): from `membranes` on nuclei, round-1
    # IoU 0.255 at 1e-4 vs 0.575 at 3e-4 (round 3: 0.816 vs 0.858); on ISBI slices it already knows, no change
    # either way. ~1e-3 trains from scratch.
    learning_rate: float = 3e-4
    lr_schedule: str = "constant"  # "constant", "cosine" (to 1% at the end), "step" (x0.1 at 50% and 75%)
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    foreground_fraction: float = 0.5  # share of patches centred on a random foreground pixel
    # Held-out share when no validation set is given: whole pairs if that is >= 1 pair, else a strip
    # of that share of every pair (never sampled for training). 0 switches validation off.
    validation_fraction: float = 0.2
    early_stopping_patience: int = 10  # epochs without a better score before stopping; 0 = never stop early
    dice_weight: float = 1.0  # loss = cross-entropy + dice_weight * soft Dice loss
    border_weight: bool = False  # U-Net paper weight map: w_c + w0 * exp(-(d1 + d2)² / 2 sigma²)
    border_w0: float = 10.0
    border_sigma: float = 5.0
    threshold: float = 0.5  # for validation scores of 1-class models
    seed: int = 0
    # Time budget in seconds from the first step (None: no limit): training stops after the step that
    # crosses it, then validates and finishes, so a round's wall time is predictable.
    seconds: float | None = None
    # What the objects are for a one-class model after training: "auto" (read off the training masks,
    # instances.objects_in_masks), "components" (the foreground objects) or "enclosed" (regions between
    # foreground boundaries). A version never inherits its parent's meaning blindly.
    objects: str = "auto"
    # "auto": bfloat16 where the CPU computes it natively (precision.default_precision), else float32. The
    # weights stay float32 and the saved version is a float32 model either way; only float32 is bit-for-bit
    # repeatable across CPUs.
    precision: str = "auto"
    # Fine-tuning keeps the parent's batch-norm statistics (the layers run in inference mode, their scale and
    # offset stay): with small batches of small patches from one or two images, re-estimating them hurts.
    # Measured (benchmarks/bench_round.py, 120 steps from `membranes`): IoU 0.064 -> 0.919 frozen vs 0.884,
    # and ~15 % faster steps. Training from scratch needs them learnt: False.
    freeze_batch_norm: bool = True
    # Stochastic weight averaging (Izmailov et al. 2018) over epochs: > 0 keeps the mean of the weights at the
    # end of each of the last N epochs instead of the best-scoring epoch, when all epochs ran; 1 = the last
    # epoch (what a run without validation should keep). 0: the best epoch, as scored on validation (or by
    # training loss without any). On membranes the mean of 15 scored as the last epoch (experiments/weight_averaging.py).
    average_last_epochs: int = 0
    # A new kind of image (the parent scores below adaptation.NEW_DOMAIN_IOU on the corrections): "auto" adapts
    # the start and the training with the levers in adapt_levers (adaptation.py), "off" trains as configured.
    # Used by Project.round and live mode; finetune() itself only widens the model to the images' channels.
    adapt: str = "auto"
    adapt_levers: tuple[str, ...] = ("polarity", "batch_norm_stats", "train_batch_norm", "learning_rate", "extend")

    def check(self) -> None:
        problems = []
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            problems.append("epochs, steps_per_epoch and batch_size must be >= 1")
        if not (self.learning_rate > 0):  # also catches NaN
            problems.append(f"learning_rate must be > 0, not {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), not {self.validation_fraction}")
        if not 0 <= self.foreground_fraction <= 1:
            problems.append(f"foreground_fraction must be in [0, 1], not {self.foreground_fraction}")
        if self.objects not in ("auto", "components", "enclosed"):
            problems.append(f"objects must be auto, components or enclosed, not {self.objects!r}")
        if self.seconds is not None and not (self.seconds > 0):
            problems.append(f"seconds (the time budget) must be > 0, not {self.seconds}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            problems.append(f"precision must be auto, float32 or bfloat16, not {self.precision!r}")
        if not 0 <= self.average_last_epochs <= self.epochs:
            problems.append(f"average_last_epochs must be in [0, epochs={self.epochs}], not {self.average_last_epochs}")
        if self.patch_size is not None and self.patch_size < 8:
            problems.append(f"patch_size must be at least 8 px, not {self.patch_size}")
        from napari_unet.training.adaptation import ADAPT_MODES, LEVERS

        if self.adapt not in ADAPT_MODES:
            problems.append(f"adapt must be one of {', '.join(ADAPT_MODES)}, not {self.adapt!r}")
        unknown = sorted(set(self.adapt_levers) - set(LEVERS))
        if unknown:
            problems.append(f"unknown adapt_levers {', '.join(unknown)}: choose among {', '.join(LEVERS)}")
        if problems:
            raise NapariUNetError("invalid training settings: " + "; ".join(problems))


@dataclass
class TrainProgress:
    """One progress event: kind "step" after each step, "epoch" after each epoch, "done" at the end."""

    kind: str
    step: int
    total_steps: int
    epoch: int
    epochs: int
    loss: float | None = None  # this step's loss ("step"), the epoch's mean loss ("epoch"/"done")
    val_iou: float | None = None
    val_dice: float | None = None
    eta_seconds: float | None = None
    best_val_iou: float | None = None
    learning_rate: float | None = None
    seconds: float = 0.0


@dataclass
class TrainHistory:
    """What happened: per-epoch dicts (epoch, loss, val_iou, val_dice, val_pixel_error, seconds, lr)."""

    epochs: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    best_epoch: int | None = None
    cancelled: bool = False
    stopped_reason: str = "completed"  # or "cancelled", "early stopping", "non-finite loss", "time budget"
    final_loss: float | None = None
    val_iou: float | None = None  # of the returned (best or averaged) weights
    val_dice: float | None = None
    # Re-fitted on the validation pairs after training (calibration.py); None when not re-fitted.
    output_offset: tuple[float, float] | None = None
    settings: dict = field(default_factory=dict)
    averaged_epochs: int = 0  # how many epochs' weights the returned model averages (average_last_epochs)
    best_epoch_val_iou: float | None = None  # the best single epoch's, when the average was kept instead

    @property
    def losses(self) -> list[float]:
        return [epoch["loss"] for epoch in self.epochs]

"""finetune(): train a U-Net on image/mask pairs — a user's corrections, or a whole data set from scratch.

Masks use 0 = background, 1 = foreground (class ids 0..n-1 for n-class models) and
IGNORE_LABEL = 255 = "not annotated": those pixels are left out of the loss and of the validation
scores, so a user can correct a few regions of a prediction and train on just those.

One call does: check the pairs -> normalise every image once with the model's percentiles (exactly
as prediction does) -> split off validation data -> per step, sample a batch of patches in numpy
(half centred on a foreground pixel so rare foreground is seen), augment them (augment.py) -> one
compiled tf.function step (BCE or softmax CE + soft Dice, optional U-Net border weights) with a fresh
Adam -> per epoch, score the validation images with the prediction engine and keep the best weights.
The input model is never changed: training runs on a copy (precision.copy_in).

Callbacks: progress(TrainProgress) after every step and epoch; cancel() is polled between steps and
ends training with the best model so far (history.cancelled = True). A non-finite loss stops training
and restores the best weights so far, or the starting ones (history.stopped_reason = "non-finite loss").
TrainConfig.seconds bounds training in time (stopped_reason = "time budget"); validation still runs.
"""

from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.training.config import LR_SCHEDULES, TrainConfig, TrainHistory, TrainProgress
from napari_unet.training.inputs import check_mask, prepare_pairs, split_pairs, split_validation
from napari_unet.training.loop import finetune, make_train_step
from napari_unet.training.losses import segmentation_loss
from napari_unet.training.sampling import PatchSampler, border_weight_map
from napari_unet.training.validation import score_pairs, validation_probabilities

__all__ = [
    "IGNORE_LABEL", "LR_SCHEDULES", "PatchSampler", "TrainConfig", "TrainHistory", "TrainProgress", "border_weight_map",
    "check_mask", "finetune", "make_train_step", "prepare_pairs", "score_pairs", "segmentation_loss", "split_pairs",
    "split_validation", "validation_probabilities",
]

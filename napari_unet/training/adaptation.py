"""Starting well on a kind of image the parent has not seen, from the evidence a round already has.

A round (and Live) starts from a parent model and the user's corrections. Before training, `adapt`:

1. gives the parent the images' channels (channels.widen_input), so colour and fluorescence channels are
   learnt from instead of collapsed to grey;
2. scores the parent on the corrections (foreground IoU on the annotated pixels). At or above
   NEW_DOMAIN_IOU the parent already knows this kind of image and the round trains exactly as configured:
   nothing changes on the parent's own domain;
3. below it (a new domain), pulls the levers the config allows (TrainConfig.adapt_levers):
   - "polarity": also try the image inverted (dark objects on a bright background, as in brightfield or
     stained tissue, reach a fluorescence-trained parent as bright on dark);
   - "channel_mix" (not a default; measured in docs/new-kinds-of-image.md): for an image of 2-4 channels read
     by a parent widened from one channel, also start from
     the parent reading the mix of channels that best separates the corrected objects from the background
     (fitted_channel_mix: a ridge least-squares fit on the annotated pixels), as colour deconvolution isolates
     the haematoxylin stain of nuclei, instead of the channels' mean;
   - "batch_norm_stats": re-estimate the batch-norm statistics on the user's images (no labels needed;
     Li et al. 2016, "AdaBN"), so the parent's features are centred for this domain;
   the candidate start scoring best on the corrections wins (the parent as it is is one of them); then
   - "train_batch_norm": batch norm is trained, not frozen with the parent's statistics;
   - "learning_rate": NEW_DOMAIN_LEARNING_RATE instead of the fine-tuning default;
   - "extend": a round given a time budget trains while the budget lasts and the validation score still
     rises (early stopping), instead of stopping after the configured epochs; without a budget it trains
     the configured epochs, as the user asked;
   - "sample_errors" (not a default; measured in docs/new-kinds-of-image.md): half of the training patches
     are centred where the chosen start is wrong on the corrections (error_focus), the rest as usual.

What was found and done is returned as a record for the round's log and the version's card.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from napari_unet.inference.channels import image_channels, widen_input
from napari_unet.labels.masks import IGNORE_LABEL

# Below this foreground IoU on the corrections, the parent is far from what the user wants: a new domain.
# Measured starts (benchmarks/new_domain.py): `nuclei` on brightfield 0.0-0.1, `membranes` on fluorescence
# nuclei ~0.1, `membranes` on its own ISBI slices and `nuclei` on held-out fluorescence images > 0.75.
NEW_DOMAIN_IOU = 0.5
ADAPT_MODES = ("auto", "off")
LEVERS = ("polarity", "channel_mix", "batch_norm_stats", "train_batch_norm", "learning_rate", "extend", "sample_errors")
# Probes on a new domain (grey tissue images, 120 s): batch norm trained with 1e-3 lifted the evaluation
# pairs 0.04 -> 0.81 where frozen with 3e-4 reached 0.55.
NEW_DOMAIN_LEARNING_RATE = 1e-3
# The epochs a new-domain round with a time budget may use (the budget or early stopping ends it first).
NEW_DOMAIN_EPOCHS = 1000
NEW_DOMAIN_PATIENCE = 6
# The corrections are scored on at most this side per image (the box around the annotated pixels).
SCORE_SIDE = 512
# Batch-norm statistics are averaged over this many patches of PATCH_SIDE px from the user's images.
STAT_PATCHES = 16
PATCH_SIDE = 256


def has_batch_norm(model) -> bool:
    return any(layer.__class__.__name__ == "BatchNormalization" for layer in model.keras_model.layers)


def with_channels_of(model, images):
    """`model` widened to the channel count of `images` (2D planes, (Y, X) or (Y, X, C)) when they have more
    channels than it reads; the model itself otherwise."""
    wanted = max((image_channels(image) for image in images), default=1)
    if wanted > model.config.n_channels and model.config.n_channels == 1:
        return widen_input(model, wanted)
    return model


def inverted(model):
    """A copy of `model` that reads its input the other way round (normalize.NormalizationConfig.invert)."""
    copy = model.copy()
    normalization = model.metadata.normalization
    copy.metadata = replace(copy.metadata, normalization=replace(normalization, invert=not normalization.invert))
    return copy


def _scored_box(mask: np.ndarray) -> tuple[slice, slice]:
    """At most SCORE_SIDE² px around the annotated pixels of a training mask."""
    rows, cols = np.nonzero(mask != IGNORE_LABEL)
    box = []
    for where, length in ((rows, mask.shape[0]), (cols, mask.shape[1])):
        low, high = int(where.min()), int(where.max()) + 1
        if high - low > SCORE_SIDE:
            centre = (low + high) // 2
            low = max(0, min(length - SCORE_SIDE, centre - SCORE_SIDE // 2))
            high = low + SCORE_SIDE
        box.append(slice(low, high))
    return box[0], box[1]


def corrections_iou(model, images, masks, precision: str | None = None) -> float:
    """Foreground IoU of `model`'s labels against the user's masks on their annotated pixels (masks: 0 =
    background, IGNORE_LABEL = not annotated, other values foreground), pooled over the pairs."""
    from napari_unet.inference.prediction import predict

    intersection = union = 0
    for image, mask in zip(images, masks):
        mask = np.asarray(mask)
        if not np.any(mask != IGNORE_LABEL):
            continue
        rows, cols = _scored_box(mask)
        crop = np.asarray(image)[rows, cols]
        truth_mask = mask[rows, cols]
        annotated = truth_mask != IGNORE_LABEL
        predicted = np.asarray(predict(model, crop, output="labels", precision=precision)) > 0
        truth = truth_mask > 0
        intersection += int(np.sum(predicted & truth & annotated))
        union += int(np.sum((predicted | truth) & annotated))
    return intersection / union if union else 1.0


def reestimate_batch_norm(model, images, seed: int = 0):
    """A copy of `model` whose batch-norm statistics are those of `images` (raw 2D planes; no labels needed).

    Patches are normalised as training and prediction normalise them; the statistics are the running mean
    over STAT_PATCHES patches of every layer's batch statistics, each layer seeing the layers before it
    already normalised with the new statistics' batch (training-mode forward passes)."""
    from napari_unet.training.inputs import prepare_image

    copy = model.copy()
    layers = [layer for layer in copy.keras_model.layers if layer.__class__.__name__ == "BatchNormalization"]
    if not layers:
        return copy
    rng = np.random.default_rng(seed)
    multiple = model.config.size_multiple
    planes = [prepare_image(image, f"image {i}", model)[1] for i, image in enumerate(images)]
    patches = []
    for index in range(STAT_PATCHES):
        plane = planes[index % len(planes)]
        side_y = min(PATCH_SIDE, plane.shape[0] // multiple * multiple) or multiple
        side_x = min(PATCH_SIDE, plane.shape[1] // multiple * multiple) or multiple
        if plane.shape[0] < side_y or plane.shape[1] < side_x:
            continue
        y = int(rng.integers(0, plane.shape[0] - side_y + 1))
        x = int(rng.integers(0, plane.shape[1] - side_x + 1))
        patches.append(plane[y:y + side_y, x:x + side_x])
    momenta = [layer.momentum for layer in layers]
    try:
        for count, patch in enumerate(patches):
            for layer in layers:
                layer.momentum = count / (count + 1)  # a running mean: patch k weighs 1/(k+1)
            copy.keras_model(patch[None], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return copy


def adapt(parent, images, masks, config, *, log: Callable[[str], None] | None = None, precision: str | None = None):
    """(start model, training config, record): see the module docstring.

    images, masks: the corrections the round trains on (raw 2D planes and training masks). config: a
    TrainConfig; config.adapt "off" only widens the channels."""
    log = log or (lambda text: None)
    start = with_channels_of(parent, images)
    record: dict = {"new_domain": False}
    if "widened" in start.metadata.info:
        record["widened"] = start.metadata.info["widened"]
    if start is not parent:
        log(f"the images have {start.config.n_channels} channels: the model now reads all of them")
    if config.adapt == "off":
        return start, config, record
    levers = set(config.adapt_levers)
    parent_iou = corrections_iou(start, images, masks, precision)
    record["parent_iou"] = round(parent_iou, 4)
    if parent_iou >= NEW_DOMAIN_IOU:
        return start, config, record
    log(f"a new kind of image: the model scores IoU {parent_iou:.2f} on the corrections; adapting")
    record["new_domain"] = True
    candidates = start_candidates(start, parent_iou, images, masks, levers, seed=config.seed, precision=precision)
    if "batch_norm_stats" in levers and has_batch_norm(start):
        for name, (model, _) in list(candidates.items()):
            adapted = reestimate_batch_norm(model, images, seed=config.seed)
            label = ("batch-norm statistics re-estimated" if name == "as it is"
                     else f"{name}, batch-norm statistics re-estimated")
            candidates[label] = (adapted, corrections_iou(adapted, images, masks, precision))
    chosen = max(candidates, key=lambda key: candidates[key][1])
    start = candidates[chosen][0]
    record["candidates"] = {key: round(score, 4) for key, (_, score) in candidates.items()}
    record["start"] = chosen
    if "widened" in start.metadata.info:
        record["widened"] = start.metadata.info["widened"]
    log(f"starting from the parent {chosen} (IoU {candidates[chosen][1]:.2f} on the corrections)")
    changes = {}
    if "train_batch_norm" in levers and has_batch_norm(start):
        changes["freeze_batch_norm"] = False
    if "learning_rate" in levers:
        changes["learning_rate"] = max(config.learning_rate, NEW_DOMAIN_LEARNING_RATE)
    if "extend" in levers and config.seconds:
        changes["epochs"] = max(config.epochs, NEW_DOMAIN_EPOCHS)
        changes["early_stopping_patience"] = NEW_DOMAIN_PATIENCE
    record["training"] = {key: value for key, value in changes.items()}
    return start, replace(config, **changes), record


def error_focus(model, images, masks, names, config, record: dict, precision: str | None = None) -> dict | None:
    """The "sample_errors" lever on a new domain (record from adapt): {pair name: bool (Y, X) map of the annotated
    pixels where `model`'s foreground disagrees with the mask}, where training patches are centred more often
    (PatchSampler's focus maps); the wrong share of annotated pixels goes into the record. None otherwise."""
    from napari_unet.inference.prediction import predict

    if not record.get("new_domain") or "sample_errors" not in config.adapt_levers:
        return None
    focus, wrong, annotated_total = {}, 0, 0
    for name, image, mask in zip(names, images, masks):
        mask = np.asarray(mask)
        annotated = mask != IGNORE_LABEL
        predicted = np.asarray(predict(model, np.asarray(image), output="labels", precision=precision)) > 0
        focus[name] = annotated & (predicted != (mask > 0))
        wrong, annotated_total = wrong + int(focus[name].sum()), annotated_total + int(annotated.sum())
    record.setdefault("training", {})["sample_errors"] = round(wrong / max(1, annotated_total), 4)
    return focus


# Pixels fitted_channel_mix samples from the annotated pixels in all; the ridge term relative to the mean of
# the normal matrix's diagonal keeps weights of nearly collinear channels (a colour image's) small.
MIX_PIXELS = 200_000
MIX_RIDGE = 1e-2


def fitted_channel_mix(model, images, masks, seed: int = 0) -> np.ndarray | None:
    """Per-channel weights w such that the image's channels, normalised as `model` normalises them (its
    polarity included), mixed as sum_c w_c x_c are about 1 on the corrected objects and 0 on the background:
    a ridge least-squares fit on the annotated pixels, scaled so the objects' mean is 1. None when the
    corrections hold only one class or the fit cannot make objects brighter than the background."""
    from napari_unet.training.inputs import prepare_image

    rng = np.random.default_rng(seed)
    values, targets = [], []
    for index, (image, mask) in enumerate(zip(images, masks)):
        mask = np.asarray(mask)
        annotated = mask != IGNORE_LABEL
        if not annotated.any():
            continue
        normalized = prepare_image(image, f"image {index}", model)[1]
        pixels, labels = normalized[annotated], mask[annotated] > 0
        take = rng.choice(len(pixels), min(len(pixels), MIX_PIXELS // max(1, len(images))), replace=False)
        values.append(pixels[take].astype(np.float64))
        targets.append(labels[take].astype(np.float64))
    if not values:
        return None
    matrix, target = np.concatenate(values), np.concatenate(targets)
    if target.min() == target.max():
        return None
    normal = matrix.T @ matrix
    ridge = MIX_RIDGE * np.trace(normal) / len(normal)
    weights = np.linalg.solve(normal + ridge * np.eye(len(normal)), matrix.T @ target)
    objects = float(np.mean(matrix[target > 0] @ weights))
    background = float(np.mean(matrix[target == 0] @ weights))
    if not objects > background or objects <= 0:
        return None
    return weights / objects


def start_candidates(start, start_iou: float, images, masks, levers, seed: int = 0,
                     precision: str | None = None) -> dict:
    """{name: (model, IoU on the corrections)}: `start` as it is, and by the levers "polarity" (read inverted)
    and "channel_mix" (a parent widened from one channel reading the channels mixed as fitted_channel_mix
    finds, as it is and inverted)."""
    candidates = {"as it is": (start, start_iou)}
    if "polarity" in levers:
        flipped = inverted(start)
        candidates["inverted"] = (flipped, corrections_iou(flipped, images, masks, precision))
    widened = start.metadata.info.get("widened") or {}
    if "channel_mix" in levers and start.config.n_channels > 1 and widened.get("from_channels") == 1:
        for name, (base, _) in list(candidates.items()):
            weights = fitted_channel_mix(base, images, masks, seed=seed)
            if weights is None:
                continue
            mixed = widen_input(base, start.config.n_channels, channel_weights=weights)
            mixed.metadata.info["widened"] = {**widened, "channel_weights": [round(float(w), 4) for w in weights],
                                              "mix": "fitted on the corrections (adaptation.fitted_channel_mix)"}
            label = "channels mixed as the corrections separate them" + ("" if name == "as it is" else f", {name}")
            candidates[label] = (mixed, corrections_iou(mixed, images, masks, precision))
    return candidates


def start_score(model, images, masks, precision: str | None = None) -> tuple[float, str]:
    """(IoU on the corrections, how) of the best start a round from `model` could take on a new kind of image
    (start_candidates: as it is, read inverted, channels mixed); how is "as it is" or the candidate's name."""
    model = with_channels_of(model, images)
    as_it_is = corrections_iou(model, images, masks, precision)
    if as_it_is >= NEW_DOMAIN_IOU:
        return as_it_is, "as it is"
    from napari_unet.training.config import TrainConfig

    levers = {"polarity", "channel_mix"} & set(TrainConfig().adapt_levers)  # the start levers a default round pulls
    candidates = start_candidates(model, as_it_is, images, masks, levers, precision=precision)
    best = max(candidates, key=lambda name: candidates[name][1])
    return candidates[best][1], best


def mean_uncertainty(model, image, precision: str | None = None) -> float:
    """Mean uncertainty (uncertainty.py's default map) of `model` on at most SCORE_SIDE² px of `image`'s centre."""
    from napari_unet.inference.prediction import predict

    image = np.asarray(image)
    top, left = (max(0, (side - SCORE_SIDE) // 2) for side in image.shape[:2])
    crop = image[top:top + SCORE_SIDE, left:left + SCORE_SIDE]
    model = with_channels_of(model, [crop])
    _, uncertainty = predict(model, crop, output="labels", with_uncertainty=True, precision=precision)
    return float(np.mean(uncertainty))


def propose_start(candidates: dict, images, masks=None, precision: str | None = None) -> dict:
    """Which of `candidates` ({name: SegmentationModel}) to start a project or Live from, and why in one line.

    With corrections (masks): the best start_score, the evidence a round uses. Without: the lowest mean
    uncertainty on the first image, which is only a first guess (a model can be sure and wrong on a kind
    of image it never saw), and the line says so. Returns {"name", "reason", "scores", "by"}."""
    if not candidates:
        raise ValueError("no candidate models to choose from")
    if masks:
        scores = {name: start_score(model, images, masks, precision) for name, model in candidates.items()}
        best = max(scores, key=lambda name: scores[name][0])
        others = ", ".join(f"{name} {score:.2f}" for name, (score, _) in scores.items() if name != best)
        how = scores[best][1]
        read = {"as it is": "", "inverted": " read inverted (dark objects on a bright background)"}.get(how, f" ({how})")
        reason = (f"'{best}' fits your corrections best: IoU {scores[best][0]:.2f}{read} before any training"
                  + (f" (then {others})" if others else ""))
        return {"name": best, "reason": reason, "by": "corrections",
                "scores": {name: round(score, 4) for name, (score, _) in scores.items()}}
    scores = {name: mean_uncertainty(model, images[0], precision) for name, model in candidates.items()}
    best = min(scores, key=scores.get)
    others = ", ".join(f"{name} {score:.2f}" for name, score in scores.items() if name != best)
    reason = (f"'{best}' is the least unsure on this image (mean uncertainty {scores[best]:.2f}"
              + (f"; {others}" if others else "") + "): a first guess until you correct a region")
    return {"name": best, "reason": reason, "by": "uncertainty", "scores": {k: round(v, 4) for k, v in scores.items()}}


# The seed and background thresholds of a boundary_watershed version tried on a new kind of image (None: the
# most probable class decides). The parent's were chosen on the parent's own validation images.
SEED_THRESHOLDS = (0.5, 0.65, 0.8)
BACKGROUND_THRESHOLDS = (None, 0.3, 0.1)


def scored_regions(masks, regions=None) -> list[tuple[slice, slice]]:
    """Per instance mask, the box of its scored pixels: the whole mask, or the bounding box of `regions[i]`
    (e.g. a held-out stripe)."""
    boxes = []
    for index, mask in enumerate(masks):
        region = None if regions is None else np.asarray(regions[index])
        if region is None or not region.any():
            boxes.append((slice(0, mask.shape[0]), slice(0, mask.shape[1])))
            continue
        rows, cols = np.nonzero(region)
        boxes.append((slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)))
    return boxes


def choose_thresholds(model, ap50, n_objects: int) -> dict:
    """The grid search both 2-D and volume rounds use: the seed and background thresholds of SEED_THRESHOLDS x
    BACKGROUND_THRESHOLDS with the highest `ap50(seed, background)`, set on the model's metadata. The current
    setting is kept unless another scores higher."""
    metadata = model.metadata
    current = (metadata.seed_threshold, metadata.background_threshold)
    scores = {current: ap50(*current)}
    for seed in SEED_THRESHOLDS:
        for background in BACKGROUND_THRESHOLDS:
            if (seed, background) not in scores:
                scores[(seed, background)] = ap50(seed, background)
    best = max(scores, key=lambda key: (scores[key], key == current))
    model.metadata = replace(metadata, seed_threshold=best[0], background_threshold=best[1])
    return {"seed_threshold": best[0], "background_threshold": best[1], "ap50": round(scores[best], 4),
            "before_ap50": round(scores[current], 4), "n_objects": int(n_objects)}


def choose_post_processing(model, images, instance_masks, regions=None, precision: str | None = None) -> dict | None:
    """Re-choose a boundary_watershed model's seed and background thresholds on the user's instance masks (AP@0.5
    pooled over their objects), as the shipped recipes chose them on validation images; sets them on the model.

    regions: per image the pixels to score (e.g. held-out stripes; None: all). Returns {"seed_threshold",
    "background_threshold", "ap50", "before_ap50", "n_objects"}, or None when the model has another method or the
    masks hold no objects. The current setting is kept unless another scores higher."""
    from napari_unet.inference.prediction import predict
    from napari_unet.labels.postprocess import model_instances
    from napari_unet.scoring.evaluation import Tally

    metadata = model.metadata
    if metadata.instance_method != "boundary_watershed":
        return None
    crops = []
    for image, mask, (rows, cols) in zip(images, instance_masks, scored_regions(instance_masks, regions)):
        truth = np.where(np.asarray(mask)[rows, cols] == IGNORE_LABEL, 0, np.asarray(mask)[rows, cols])
        if truth.any():
            crops.append((np.asarray(predict(model, np.asarray(image)[rows, cols], output="probabilities",
                                             precision=precision)), truth))
    if not crops:
        return None
    n_classes = model.config.n_classes

    def ap50(seed, background) -> float:
        tally = Tally(instances=True)
        settings = replace(metadata, seed_threshold=seed, background_threshold=background)
        for probabilities, truth in crops:
            tally.add(model_instances(probabilities, settings, n_classes), truth)
        return float(tally.result()["ap50"])

    return choose_thresholds(model, ap50, n_objects=sum(len(np.unique(truth)) - 1 for _, truth in crops))

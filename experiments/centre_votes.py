"""Centre votes: does a second output, each nucleus pixel's offset to its nucleus's centre, seed touching nuclei
better than the cores of the shipped nuclei recipe?

    .venv/bin/python experiments/centre_votes.py train --output DIR [--steps 8000] [--seed 0]
    .venv/bin/python experiments/centre_votes.py measure --output DIR

`train`: the nuclei recipe of napari_unet/training/recipes.py unchanged (same split, targets, border weights,
augmentation, bfloat16, Adam with cosine decay over 8000 steps of 4 x 256²) plus a 1x1 convolution on the last
decoder features that regresses (dy, dx) / OFFSET_SCALE from each nucleus pixel to its nucleus's centroid
(L1, object pixels only; objects cut by the patch edge are left out, their centre is unknown). The offsets are
computed after augmentation from the augmented instance labels, so flips, rotations, zoom and elastic
deformation need no vector algebra. Keeps the last epoch. DIR gets `two_heads.keras` and `nuclei.keras` (the
softmax head alone, a normal model whose post-processing the recipe's own grid can choose).

`measure`: on the validation images, the recipe's own post-processing grid for the softmax head of this run
(a paired baseline: same weights), and a grid for the votes: every foreground pixel votes for its centre; vote
peaks become seeds ("watershed": watershed on -P(core) from the peaks; "nearest": each pixel goes to the peak
nearest its vote; "split": the recipe's instances, each object holding two or more peaks split between them).
The best of each on validation is then measured once on the held-out images. Prints JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.training.sampling import PatchSampler

OFFSET_SCALE = 10.0  # px per output unit: nucleus radii are 3-40 px
OFFSET_WEIGHT = 1.0
NEAREST_REACH = 8.0  # px: a vote farther than this from every peak joins no peak
ID_SHIFT = 256  # instance ids ride through the augmenter above its 255 fill value


class HeadSampler(PatchSampler):
    """The recipe's patches plus the targets of an extra head, computed from the instance labels augmented alongside
    (instance_targets)."""

    def __init__(self, pairs, instances, patch_size, **kwargs):
        super().__init__(pairs, patch_size, **kwargs)
        self.instances = []
        for labels, image, (oy, ox) in zip(instances, self.images, self.offsets):
            shifted = np.where(labels > 0, labels.astype(np.float32) + ID_SHIFT, 0).astype(np.float32)
            pad = ((oy, image.shape[0] - labels.shape[0] - oy), (ox, image.shape[1] - labels.shape[1] - ox))
            self.instances.append(np.pad(shifted, pad, mode="constant", constant_values=IGNORE_LABEL))

    def sample_patch(self):
        index, window = self.draw_window()
        image_patch = self.images[index][window]
        masks = [self.masks[index][window], self.weights[index][window], self.instances[index][window]]
        if self.augmenter is not None:
            image_patch, masks = self.augmenter(image_patch, masks)
        mask_patch, weight_patch, instance_patch = masks
        weight_patch = np.where(mask_patch == IGNORE_LABEL, 0.0, weight_patch).astype(np.float32)
        labels = np.where(mask_patch == IGNORE_LABEL, 0, mask_patch).astype(np.int32)
        return (image_patch, labels, weight_patch, *self.instance_targets(np.rint(instance_patch).astype(np.int64)))

    def instance_targets(self, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """The extra head's targets from a patch's augmented ids (objects >= ID_SHIFT, IGNORE_LABEL unannotated)."""
        raise NotImplementedError


class VoteSampler(HeadSampler):
    """Each patch's centre offsets."""

    def instance_targets(self, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        return centre_offsets(ids)


def centre_offsets(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y, X, 2) offsets to each object's centroid / OFFSET_SCALE, and (Y, X) weights: 1 on the pixels of objects
    that do not touch the patch edge (ids >= ID_SHIFT are objects)."""
    objects = ids >= ID_SHIFT
    offsets = np.zeros(ids.shape + (2,), dtype=np.float32)
    weights = np.zeros(ids.shape, dtype=np.float32)
    if not objects.any():
        return offsets, weights
    _, inverse = np.unique(ids[objects], return_inverse=True)
    compact = np.zeros(ids.shape, dtype=np.int64)
    compact[objects] = inverse + 1
    ys, xs = np.nonzero(objects)
    index = compact[objects]
    counts = np.bincount(index)
    centre_y = np.bincount(index, weights=ys) / np.maximum(counts, 1)
    centre_x = np.bincount(index, weights=xs) / np.maximum(counts, 1)
    edge = np.unique(np.concatenate([compact[0], compact[-1], compact[:, 0], compact[:, -1]]))
    whole = np.ones(counts.size, dtype=bool)
    whole[edge] = False
    whole[0] = False
    offsets[ys, xs, 0] = (centre_y[index] - ys) / OFFSET_SCALE
    offsets[ys, xs, 1] = (centre_x[index] - xs) / OFFSET_SCALE
    weights[ys, xs] = whole[index]
    return offsets, weights


def two_head_model(keras_model):
    """The U-Net with a second 1x1 head on its last decoder features: (dy, dx) / OFFSET_SCALE, float32."""
    import keras
    from keras import layers

    features = keras_model.get_layer("dec0_relu2").output
    offsets = layers.Conv2D(2, 1, name="centre_offsets", dtype=keras_model.get_layer("dec0_conv2").dtype_policy)(features)
    offsets = layers.Activation("linear", dtype="float32", name="centre_offsets_f32")(offsets)
    return keras.Model(keras_model.inputs, [keras_model.outputs[0], offsets], name="unet_votes")


def vote_loss(outputs, targets):
    """L1 between predicted and true centre offsets, averaged over the pixels of whole objects."""
    import tensorflow as tf

    (predicted,), (offsets, offset_weights) = outputs, targets
    error = tf.reduce_sum(tf.abs(predicted - offsets), axis=-1) * offset_weights
    return OFFSET_WEIGHT * tf.reduce_sum(error) / tf.maximum(tf.reduce_sum(offset_weights), 1.0)


def train(output: Path, steps: int, seed: int) -> None:
    train_with_head(output, steps, seed, sampler_class=VoteSampler, build_network=two_head_model, head_loss=vote_loss,
                    target_shapes=[(None, None, None, 2), (None, None, None)], network_file="two_heads.keras",
                    record={"offset_scale": OFFSET_SCALE, "offset_weight": OFFSET_WEIGHT})


def train_with_head(output: Path, steps: int, seed: int, *, sampler_class, build_network, head_loss,
                    target_shapes, network_file: str, record: dict) -> None:
    """The nuclei recipe's training (split, targets, border weights, augmentation, precision, Adam with cosine
    decay) with extra heads: loss = the recipe's loss + head_loss(extra outputs, the sampler's extra targets).
    Keeps the last step: DIR/network_file (all heads) and DIR/nuclei.keras (the softmax head, a normal model)."""
    import keras
    import tensorflow as tf

    from napari_unet.inference import precision
    from napari_unet.model import save_model
    from napari_unet.training import TrainConfig
    from napari_unet.training.augment import PairAugmenter
    from napari_unet.training.inputs import prepare_pairs
    from napari_unet.training.loop import learning_rate_schedule
    from napari_unet.training.losses import segmentation_loss
    from napari_unet.training.recipes import load_split, recipe_by_name, recipe_model
    from napari_unet.training.sampling import border_weight_maps

    output.mkdir(parents=True, exist_ok=True)
    recipe = recipe_by_name("nuclei")
    config = TrainConfig(**{**recipe.train_settings, "seed": seed, "epochs": steps // 100})
    keras.utils.set_random_seed(seed)
    model = recipe_model(recipe)
    images, labels = load_split(recipe, recipe.train_stems)
    pairs = prepare_pairs(model, images, labels)
    augmenter = PairAugmenter(config.augmentation, seed=seed, mask_fill=IGNORE_LABEL)
    sampler = sampler_class(pairs, labels, config.patch_size, rng=np.random.default_rng(seed), augmenter=augmenter,
                            foreground_fraction=config.foreground_fraction,
                            weight_maps=border_weight_maps(model, config, pairs))
    trained = precision.copy_in(model, precision.resolve(config.precision))  # as the recipe trains
    network = build_network(trained.keras_model)
    variables = network.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate_schedule(config, steps))
    optimizer.build(variables)

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32),
                                  tf.TensorSpec((None, None, None), tf.int32),
                                  tf.TensorSpec((None, None, None), tf.float32),
                                  *(tf.TensorSpec(shape, tf.float32) for shape in target_shapes)])
    def train_step(batch, classes, weights, *targets):
        with tf.GradientTape() as tape:
            probabilities, *head_outputs = network(batch, training=True)
            class_loss = segmentation_loss(probabilities, classes, weights, 3, config.dice_weight)
            extra_loss = head_loss(head_outputs, targets)
            loss = class_loss + extra_loss
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return class_loss, extra_loss

    started, log = time.monotonic(), []
    for step in range(1, steps + 1):
        batch = [np.stack(parts) for parts in zip(*(sampler.sample_patch() for _ in range(config.batch_size)))]
        class_loss, extra_loss = train_step(*batch)
        log.append((float(class_loss), float(extra_loss)))
        if step % 100 == 0:
            recent = np.mean(log[-100:], axis=0)
            print(f"[{time.monotonic() - started:7.1f}s] step {step}/{steps} class loss {recent[0]:.4f} "
                  f"head loss {recent[1]:.4f}", flush=True)
        if step % 2000 == 0 or step == steps:
            network.save(output / network_file)
    trained_float = precision.copy_in(trained, "float32")
    save_model(trained_float, output / "nuclei.keras")
    (output / "training.json").write_text(json.dumps({"steps": steps, "seed": seed,
                                                      "seconds": round(time.monotonic() - started), **record}))
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)


def predict_heads(network, model, image: np.ndarray) -> list[np.ndarray]:
    """Every output of a head network for one raw image, (Y, X, C) float32 each: one pass of the image normalised as
    the recipe does, reflect-padded to a multiple of 16 and cropped back."""
    from napari_unet.training.inputs import prepare_image

    _, normalized = prepare_image(image, "image", model)
    height, width = normalized.shape[:2]
    pad = ((0, -height % 16), (0, -width % 16), (0, 0))
    outputs = network(np.pad(normalized, pad, mode="reflect")[None], training=False)
    return [np.asarray(output[0, :height, :width], dtype=np.float32) for output in outputs]


def predict_two(network, model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y, X, 3) probabilities and (Y, X, 2) offsets in px for one raw image."""
    probabilities, offsets = predict_heads(network, model, image)
    return probabilities, offsets * OFFSET_SCALE


def vote_map(probabilities, offsets, background_threshold: float, sigma: float):
    from scipy import ndimage as ndi

    foreground = probabilities[..., 0] < background_threshold
    ys, xs = np.nonzero(foreground)
    height, width = foreground.shape
    vy = np.clip(np.rint(ys + offsets[ys, xs, 0]), 0, height - 1).astype(np.int64)
    vx = np.clip(np.rint(xs + offsets[ys, xs, 1]), 0, width - 1).astype(np.int64)
    votes = np.bincount(vy * width + vx, minlength=height * width).reshape(height, width).astype(np.float32)
    return foreground, ndi.gaussian_filter(votes, sigma), (ys, xs, vy, vx)


def vote_instances(probabilities, offsets, *, method: str, background_threshold: float, sigma: float,
                   min_distance: int, min_votes: float, min_size: int, recipe_setting: dict) -> np.ndarray:
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree
    from skimage.feature import peak_local_max

    from napari_unet.labels.instances import drop_small_objects, instances_from_boundary_probabilities, seeded_watershed

    foreground, votes, (ys, xs, vy, vx) = vote_map(probabilities, offsets, background_threshold, sigma)
    peaks = peak_local_max(votes, min_distance=min_distance, threshold_abs=min_votes, exclude_border=False)
    voted = np.stack([vy, vx], axis=1)
    if method == "split":
        labels = instances_from_boundary_probabilities(probabilities, **recipe_setting)
        if len(peaks) == 0:
            return labels
        owner = labels[peaks[:, 0], peaks[:, 1]]
        counts = np.bincount(owner, minlength=labels.max() + 1)
        counts[0] = 0
        lookup = np.full(labels.shape, -1, dtype=np.int64)  # the row of each foreground pixel's vote
        lookup[ys, xs] = np.arange(ys.size)
        next_id = labels.max() + 1
        for label in np.flatnonzero(counts >= 2):
            inside = np.nonzero(labels == label)
            rows = lookup[inside]  # pixels outside the vote mask vote for themselves
            points = np.where(rows[:, None] >= 0, voted[np.maximum(rows, 0)], np.stack(inside, axis=1))
            _, nearest = cKDTree(peaks[owner == label]).query(points)
            for k in range(1, int(counts[label])):
                labels[inside[0][nearest == k], inside[1][nearest == k]] = next_id
                next_id += 1
        return drop_small_objects(labels, min_size)
    if method == "nearest":  # Panoptic-DeepLab's grouping; votes far from every peak are left to their components
        labels = np.zeros(foreground.shape, dtype=np.int32)
        if len(peaks):
            distance, nearest = cKDTree(peaks).query(voted)
            near = distance <= NEAREST_REACH
            labels[ys[near], xs[near]] = nearest[near] + 1
        leftover, _ = ndi.label(foreground & (labels == 0))  # foreground no peak claimed keeps ids of its own
        labels = np.where(leftover > 0, leftover + len(peaks), labels).astype(np.int32)
    else:
        markers = np.zeros(foreground.shape, dtype=np.int32)
        markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
        labels = seeded_watershed(probabilities[..., 1], markers, foreground)
    return drop_small_objects(labels, min_size)


VOTE_GRID = dict(method=("watershed", "nearest", "split"), background_threshold=(0.1, 0.3, 0.5), sigma=(1.0, 2.0),
                 min_distance=(3, 5, 8), min_votes=(3.0, 6.0, 12.0, 20.0), min_size=(16, 32))


def measure(output: Path) -> None:
    def skip(setting: dict) -> bool:  # split's foreground is the recipe's own; the vote mask only places the votes
        return setting["method"] == "split" and setting["background_threshold"] != 0.1

    measure_heads(output, "two_heads.keras", "votes", predict_two, vote_instances, VOTE_GRID, skip)


def measure_heads(output: Path, network_file: str, name: str, predict_parts, head_instances, grid: dict, skip) -> None:
    """The paired comparison of an extra head against the same weights' softmax with the recipe's post-processing.

    predict_parts(network, model, image) -> (softmax, *head outputs), one pass per image, feeds both rules;
    head_instances(softmax, *head outputs, recipe_setting=..., **setting) labels one image for each setting of
    `grid` that skip(setting) lets through. The best of each rule on validation is measured once on the held-out
    images; DIR/measured.json."""
    import keras

    from napari_unet.labels.instances import instances_from_boundary_probabilities
    from napari_unet.model import load_model_file
    from napari_unet.training.recipes import (
        POST_PROCESSING_FIELDS,
        choose_post_processing_on,
        held_out_by_kind,
        instance_summary,
        load_instances,
        pooled_scores,
        recipe_by_name,
    )

    recipe = recipe_by_name("nuclei")
    model = load_model_file(output / "nuclei.keras")
    network = keras.models.load_model(output / network_file, compile=False)
    result = {}
    images, masks = load_instances(recipe, recipe.validation_stems)
    outputs = [predict_parts(network, model, image) for image in images]
    by_setting, _ = choose_post_processing_on([parts[0] for parts in outputs], masks, log=lambda *_: None,
                                              merge_thresholds=())
    best_recipe = max(by_setting, key=lambda key: by_setting[key]["ap50"])
    recipe_setting = dict(zip(POST_PROCESSING_FIELDS, best_recipe))  # the merge threshold is not chosen here
    result["validation_recipe_post_processing"] = {"setting": recipe_setting, **instance_summary(by_setting[best_recipe])}
    print(json.dumps(result), flush=True)
    scores = {}
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        if skip(setting):
            continue
        predicted = [head_instances(*parts, recipe_setting=recipe_setting, **setting) for parts in outputs]
        scores[values] = instance_summary(pooled_scores(predicted, masks))
        print(json.dumps({"validation": setting, **scores[values]}), flush=True)
    best_head = max(scores, key=lambda key: scores[key]["ap50"])
    head_setting = dict(zip(grid, best_head))
    result[f"validation_{name}"] = {"setting": head_setting, **scores[best_head]}
    result[f"validation_{name}_best_ap50_by_method"] = {
        method: max(score["ap50"] for key, score in scores.items() if key[0] == method) for method in grid["method"]}

    images, masks = load_instances(recipe, recipe.test_stems)
    outputs = [predict_parts(network, model, image) for image in images]
    recipe_predicted = [instances_from_boundary_probabilities(parts[0], **recipe_setting) for parts in outputs]
    head_predicted = [head_instances(*parts, recipe_setting=recipe_setting, **head_setting) for parts in outputs]
    result["held_out_recipe_post_processing"] = instance_summary(pooled_scores(recipe_predicted, masks))
    result[f"held_out_{name}"] = instance_summary(pooled_scores(head_predicted, masks))
    # held_out_by_kind scores a model against a baseline; here the baseline slot holds the recipe's post-processing
    kinds = held_out_by_kind(recipe, masks, head_predicted, recipe_predicted)
    groups = {**{kind: scores for kind, scores in kinds.items() if kind != "by_size"}, **kinds["by_size"]}
    result[f"held_out_{name}_by_kind"] = {kind: {name: scores["single_pass"]["ap50"], "recipe_post_processing":
                                                 scores["otsu_watershed_baseline"]["ap50"]}
                                          for kind, scores in groups.items()}
    text = json.dumps(result, indent=1)
    (output / "measured.json").write_text(text)
    print(text, flush=True)


def main(train, measure) -> int:
    """The command line of a head experiment: `train` and `measure` of the file run."""
    parser = argparse.ArgumentParser(description=(sys.modules[train.__module__].__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=["train", "measure"])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "train":
        train(args.output, args.steps, args.seed)
    else:
        measure(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(train, measure))

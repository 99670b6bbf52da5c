"""Star-convex polygons (StarDist, Schmidt et al. 2018): do radial distances with polygon non-maximum suppression
separate touching nuclei better than the cores of the shipped nuclei recipe?

    .venv/bin/python experiments/star_convex.py train --output DIR [--steps 8000] [--seed 0]
    .venv/bin/python experiments/star_convex.py measure --output DIR

Needs `pip install stardist` (its C++ geometry only: star distances, polygon NMS, polygons to labels; its
TensorFlow models are not used, so its csbdeep/Keras-2 code never loads).

`train`: the nuclei recipe unchanged (centre_votes.train_with_head: same split, targets, border weights,
augmentation, precision, schedule) plus StarDist's heads on the last decoder features: a 3x3 convolution
(STAR_FEATURES channels, as StarDist's `net_conv_after_unet`), then a sigmoid object probability (each object
pixel's distance to the background over the object's largest) and N_RAYS radial distances to the object's edge.
Loss as StarDist's: binary cross-entropy of the probability + the distances' L1, weighted by the true probability.
Targets come from the instance labels augmented alongside each patch (stardist.geometry.star_dist).

`measure`: on the validation images, the recipe's post-processing grid for the softmax head of the same weights
(a paired baseline), and a grid for the star heads: "polygons" (StarDist's own: NMS of the polygons over pixels
whose probability passes prob_thresh, rendered to labels), "seeds" (the kept polygons' centres as watershed
seeds on -P(core) inside the recipe's foreground, so the edges stay the softmax head's), "polygon_markers" (the
kept polygons themselves as the watershed's markers, cut to that foreground) and "split" (the recipe's own instances,
each holding two or more kept polygon centres split between those polygons). The best of each on
validation is then measured once on the held-out images. Prints JSON; DIR/measured.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_unet.labels.masks import IGNORE_LABEL

from centre_votes import ID_SHIFT, HeadSampler, main, measure_heads, predict_heads, train_with_head  # (beside this file)

N_RAYS = 32  # StarDist's default for 2-D nuclei
DISTANCE_SCALE = 10.0  # px per output unit
DISTANCE_WEIGHT = 1.0  # x the L1 in DISTANCE_SCALE units = 0.1 x in px (StarDist: 0.2 x in px)
STAR_FEATURES = 64
# (distances, NMS result) by (id of an image's distances, prob_thresh, nms_thresh); holding the array keeps its id unique
_KEPT: dict[tuple, tuple] = {}


class StarSampler(HeadSampler):
    """The recipe's patches plus star-distance targets from the instance labels augmented alongside."""

    def instance_targets(self, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        return star_targets(ids)


def star_targets(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, X, N_RAYS) distances / DISTANCE_SCALE, (Y, X) object probability (StarDist's normalised distance
    transform), (Y, X) weight of the probability loss: 0 where the patch is not annotated."""
    from stardist.geometry import star_dist
    from stardist.utils import edt_prob

    objects = ids >= ID_SHIFT
    labels = np.zeros(ids.shape, dtype=np.uint16)
    if objects.any():
        _, inverse = np.unique(ids[objects], return_inverse=True)
        labels[objects] = inverse + 1
    distances = star_dist(labels, N_RAYS).astype(np.float32) / DISTANCE_SCALE
    probability = edt_prob(labels).astype(np.float32)
    weights = (ids != IGNORE_LABEL).astype(np.float32)
    return distances, probability, weights


def star_network(keras_model):
    """The U-Net with StarDist's heads beside its softmax: outputs (softmax, probability, distances), float32."""
    import keras
    from keras import layers

    features = keras_model.get_layer("dec0_relu2").output
    dtype = keras_model.get_layer("dec0_conv2").dtype_policy
    hidden = layers.Conv2D(STAR_FEATURES, 3, padding="same", activation="relu", name="star_features",
                           dtype=dtype)(features)
    probability = layers.Conv2D(1, 1, name="star_logit", dtype=dtype)(hidden)
    probability = layers.Activation("sigmoid", dtype="float32", name="star_probability")(probability)
    distances = layers.Conv2D(N_RAYS, 1, name="star_distances", dtype=dtype)(hidden)
    distances = layers.Activation("linear", dtype="float32", name="star_distances_f32")(distances)
    return keras.Model(keras_model.inputs, [keras_model.outputs[0], probability, distances], name="unet_star")


def star_loss(outputs, targets):
    """StarDist's: cross-entropy of the object probability + DISTANCE_WEIGHT x the rays' mean L1 weighted by the
    true probability (so the centre's rays count most and the background's not at all)."""
    import tensorflow as tf

    (probability, distances), (true_distances, true_probability, weights) = outputs, targets
    predicted = tf.clip_by_value(probability[..., 0], 1e-7, 1.0 - 1e-7)
    cross_entropy = -(true_probability * tf.math.log(predicted) + (1.0 - true_probability) * tf.math.log(1.0 - predicted))
    probability_loss = tf.reduce_sum(cross_entropy * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
    error = tf.reduce_mean(tf.abs(distances - true_distances), axis=-1) * true_probability
    distance_loss = tf.reduce_sum(error) / tf.maximum(tf.reduce_sum(true_probability), 1.0)
    return probability_loss + DISTANCE_WEIGHT * distance_loss


def train(output: Path, steps: int, seed: int) -> None:
    train_with_head(output, steps, seed, sampler_class=StarSampler, build_network=star_network, head_loss=star_loss,
                    target_shapes=[(None, None, None, N_RAYS), (None, None, None), (None, None, None)],
                    network_file="star_heads.keras",
                    record={"n_rays": N_RAYS, "distance_scale": DISTANCE_SCALE, "distance_weight": DISTANCE_WEIGHT,
                            "star_features": STAR_FEATURES})


def predict_star(network, model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, X, 3) softmax, (Y, X) object probability and (Y, X, N_RAYS) distances in px for one raw image."""
    softmax, probability, distances = predict_heads(network, model, image)
    return softmax, probability[..., 0], np.maximum(distances, 1e-3) * DISTANCE_SCALE


def star_instances(softmax, probability, distances, *, method: str, prob_thresh: float, nms_thresh: float,
                   background_threshold: float, min_size: int, recipe_setting: dict | None = None) -> np.ndarray:
    """Labels from the star heads ("polygons"), or a watershed on -P(core) in the softmax's foreground from the kept
    polygons' centres ("seeds") or from the polygons themselves ("polygon_markers": the softmax's edges)."""
    from stardist.geometry import polygons_to_label
    from stardist.nms import non_maximum_suppression

    from napari_unet.labels.instances import drop_small_objects, seeded_watershed

    key = (id(distances), prob_thresh, nms_thresh)  # the grid's other settings reuse an image's NMS
    if key not in _KEPT or _KEPT[key][0] is not distances:
        _KEPT[key] = distances, non_maximum_suppression(distances, probability, nms_thresh=nms_thresh,
                                                        prob_thresh=prob_thresh)
    points, kept_probability, kept_distances = _KEPT[key][1]
    if method == "polygons":
        labels = polygons_to_label(kept_distances, points, probability.shape, prob=kept_probability)
        return drop_small_objects(labels.astype(np.int32), min_size)
    if method == "split":
        return split_at_polygons(softmax, points, kept_probability, kept_distances, recipe_setting)
    foreground = softmax[..., 0] < background_threshold
    if method == "polygon_markers":
        markers = polygons_to_label(kept_distances, points, probability.shape, prob=kept_probability).astype(np.int32)
    else:
        markers = np.zeros(probability.shape, dtype=np.int32)
        if len(points):
            markers[points[:, 0], points[:, 1]] = np.arange(1, len(points) + 1)
    return drop_small_objects(seeded_watershed(softmax[..., 1], markers, foreground), min_size)


def split_at_polygons(softmax, points, kept_probability, kept_distances, recipe_setting: dict) -> np.ndarray:
    """The recipe's instances, each object holding two or more kept polygon centres split between those polygons by a
    watershed on -P(core) inside it; objects with one centre or none keep the recipe's outline."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed
    from stardist.geometry import polygons_to_label

    from napari_unet.labels.instances import drop_small_objects, instances_from_boundary_probabilities

    labels = instances_from_boundary_probabilities(softmax, **recipe_setting)
    if len(points) < 2:
        return labels
    owner = labels[points[:, 0], points[:, 1]]
    centres = np.bincount(owner, minlength=int(labels.max()) + 1)
    centres[0] = 0
    if not (centres >= 2).any():
        return labels
    polygons = polygons_to_label(kept_distances, points, labels.shape, prob=kept_probability)  # polygon i has id i + 1
    boxes = ndi.find_objects(labels)  # each object is split within its own box, not the whole image
    next_id = int(labels.max()) + 1
    for label in np.flatnonzero(centres >= 2):
        box = boxes[label - 1]
        inside = labels[box] == label
        own = np.flatnonzero(owner == label) + 1
        markers = np.where(inside & np.isin(polygons[box], own), polygons[box], 0)
        parts = watershed(-softmax[box][..., 1], markers, mask=inside)
        for part in np.unique(parts[parts > 0])[1:]:  # the first part keeps the object's id
            labels[box][parts == part] = next_id
            next_id += 1
    return drop_small_objects(labels, recipe_setting["min_size"])


STAR_GRID = dict(method=("polygons", "seeds", "polygon_markers", "split"), prob_thresh=(0.3, 0.4, 0.5, 0.6, 0.7),
                 nms_thresh=(0.2, 0.3, 0.4, 0.5), background_threshold=(0.1, 0.2, 0.3), min_size=(0, 16, 32))


def measure(output: Path) -> None:
    def skip(setting: dict) -> bool:  # polygons ignore the softmax's foreground; split uses the recipe's setting
        first = setting["background_threshold"] == STAR_GRID["background_threshold"][0]
        if setting["method"] == "split":
            return not first or setting["min_size"] != STAR_GRID["min_size"][0]
        return setting["method"] == "polygons" and not first

    measure_heads(output, "star_heads.keras", "star", predict_star, star_instances, STAR_GRID, skip)


if __name__ == "__main__":
    raise SystemExit(main(train, measure))

"""The loss: weighted cross-entropy over annotated pixels plus soft Dice."""

from __future__ import annotations


def segmentation_loss(probabilities, labels, weights, n_classes: int, dice_weight: float = 1.0, classes=None):
    """Weighted cross-entropy over pixels with weight > 0, plus dice_weight x soft Dice loss.

    probabilities: (B, H, W, n_classes) model output (sigmoid or softmax); labels (B, H, W) int;
    weights (B, H, W) float32, 0 on IGNORE_LABEL pixels (they add nothing to either term).
    classes: (n_classes, classes) 0/1 matrix, the class each output is part of (an object class's core and
    boundary outputs are one class): the Dice term is then taken per class, on the summed outputs, so a class
    counts once however many outputs it has. None: each output is a class.
    """
    import tensorflow as tf

    epsilon = 1e-7
    probabilities = tf.clip_by_value(tf.cast(probabilities, tf.float32), epsilon, 1.0 - epsilon)
    valid = tf.cast(weights > 0, tf.float32)
    if n_classes == 1:
        target = tf.cast(labels, tf.float32)
        predicted = probabilities[..., 0]
        cross_entropy = -(target * tf.math.log(predicted) + (1.0 - target) * tf.math.log(1.0 - predicted))
        targets, outputs = target[..., None], predicted[..., None]
    else:
        targets = tf.one_hot(labels, n_classes, dtype=tf.float32)
        cross_entropy = -tf.reduce_sum(targets * tf.math.log(probabilities), axis=-1)
        outputs = probabilities
        if classes is not None:
            matrix = tf.constant(classes, tf.float32)
            targets, outputs = tf.tensordot(targets, matrix, 1), tf.tensordot(probabilities, matrix, 1)
        targets, outputs = targets[..., 1:], outputs[..., 1:]  # Dice of the foreground classes
    loss = tf.reduce_sum(cross_entropy * weights) / tf.maximum(tf.reduce_sum(weights), epsilon)
    if dice_weight:
        mask = valid[..., None]
        intersection = tf.reduce_sum(outputs * targets * mask, axis=(0, 1, 2))
        total = tf.reduce_sum(outputs * mask, axis=(0, 1, 2)) + tf.reduce_sum(targets * mask, axis=(0, 1, 2))
        dice = (2.0 * intersection + 1.0) / (total + 1.0)
        if n_classes == 1:
            dice_loss = 1.0 - dice[0]  # with no foreground in the batch this still pushes predictions to 0
        else:  # mean over the classes present in the batch, so an absent class is left to cross-entropy
            present = tf.cast(tf.reduce_sum(targets * mask, axis=(0, 1, 2)) > 0, tf.float32)
            dice_loss = tf.reduce_sum((1.0 - dice) * present) / tf.maximum(tf.reduce_sum(present), 1.0)
        loss = loss + dice_weight * dice_loss
    return loss

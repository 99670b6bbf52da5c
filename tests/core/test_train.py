"""finetune(): input checks, loss with ignored pixels, sampling, validation, callbacks, cancel, NaN, seeds."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from napari_unet.errors import NapariUNetError
from napari_unet.model import UNetConfig, new_model
from napari_unet.training import (
    IGNORE_LABEL,
    PatchSampler,
    TrainConfig,
    border_weight_map,
    check_mask,
    finetune,
    prepare_pairs,
    segmentation_loss,
    split_validation,
)

QUICK = dict(epochs=2, steps_per_epoch=2, batch_size=2)


def _pair(size=64, seed=0, shape=None):
    """A bright rectangle on noise; mask 1 on the rectangle."""
    rng = np.random.default_rng(seed)
    height, width = shape or (size, size)
    mask = np.zeros((height, width), np.uint8)
    y, x = rng.integers(0, max(1, height // 2)), rng.integers(0, max(1, width // 2))
    mask[y : y + max(4, height // 3), x : x + max(4, width // 3)] = 1
    image = (mask * 80 + rng.normal(60, 10, (height, width))).clip(0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture(scope="module")
def tiny_model():
    return new_model(UNetConfig(base_width=4, depth=2), tile_size=64, name="tiny")


def _weights(model):
    return [w.copy() for w in model.keras_model.get_weights()]


def test_finetune_returns_a_new_model_and_leaves_the_input_unchanged(tiny_model):
    before = _weights(tiny_model)
    events = []
    pairs = [_pair(seed=0), _pair(80, seed=1)]  # different sizes are fine
    tuned, history = finetune(tiny_model, [p[0] for p in pairs], [p[1] for p in pairs], progress=events.append,
                              learning_rate=1e-3, **QUICK)
    assert tuned is not tiny_model and tuned.keras_model is not tiny_model.keras_model
    for old, new in zip(before, _weights(tiny_model)):
        np.testing.assert_array_equal(old, new)
    assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(tuned)))
    assert history.steps == 4 and len(history.epochs) == 2 and history.stopped_reason == "completed"
    assert [e.kind for e in events].count("step") == 4
    assert [e.kind for e in events].count("epoch") == 2 and events[-1].kind == "done"
    assert all(e.total_steps == 4 for e in events)
    assert events[0].eta_seconds is not None and events[-1].eta_seconds == 0
    # validation (a strip of each of the two pairs) was scored every epoch
    assert all(e["val_iou"] is not None for e in history.epochs)
    # the best epoch's weights are returned (history.val_iou is re-scored after the output offset is re-fitted)
    assert history.best_epoch == max(history.epochs, key=lambda e: e["val_iou"])["epoch"]
    assert 0 <= history.val_iou <= 1
    assert tuned.metadata.info["training"]["parent"] == "tiny"


def test_same_seed_gives_same_losses_and_another_seed_differs(tiny_model):
    image, mask = _pair()
    runs = [finetune(tiny_model, [image], [mask], seed=seed, **QUICK)[1].losses for seed in (3, 3, 4)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=0, atol=1e-6)
    assert not np.allclose(runs[0], runs[2], rtol=0, atol=1e-6)


def test_cancel_returns_the_best_model_so_far(tiny_model):
    image, mask = _pair()
    calls = {"n": 0}

    def cancel_after_three_steps():
        calls["n"] += 1
        return calls["n"] > 3

    tuned, history = finetune(tiny_model, [image], [mask], cancel=cancel_after_three_steps, epochs=5,
                              steps_per_epoch=2, batch_size=2)
    assert history.cancelled and history.stopped_reason == "cancelled"
    assert history.steps == 3
    assert history.best_epoch is not None and tuned is not tiny_model


def test_non_finite_loss_stops_and_keeps_finite_weights(tiny_model):
    image, mask = _pair()
    tuned, history = finetune(tiny_model, [image], [mask], learning_rate=1e30, validation_fraction=0, **QUICK)
    assert history.stopped_reason == "non-finite loss"
    assert history.steps < 4
    assert all(np.all(np.isfinite(w)) for w in tuned.keras_model.get_weights())
    assert all(math.isfinite(loss) for loss in history.losses)


def test_an_image_smaller_than_a_patch_is_padded_and_trains(tiny_model):
    image, mask = _pair(shape=(24, 40))
    tuned, history = finetune(tiny_model, [image], [mask], validation_fraction=0, patch_size=64, **QUICK)
    assert history.steps == 4 and math.isfinite(history.final_loss)


def test_ignored_pixels_do_not_change_the_loss():
    rng = np.random.default_rng(0)
    probabilities = rng.uniform(0.05, 0.95, (2, 16, 16, 1)).astype(np.float32)
    labels = rng.integers(0, 2, (2, 16, 16)).astype(np.int32)
    weights = np.ones((2, 16, 16), np.float32)
    weights[:, :8] = 0  # top half "not annotated"
    other_labels = labels.copy()
    other_labels[:, :8] = 1 - other_labels[:, :8]
    loss = float(segmentation_loss(probabilities, labels, weights, 1))
    assert float(segmentation_loss(probabilities, other_labels, weights, 1)) == pytest.approx(loss, abs=1e-6)
    assert float(segmentation_loss(probabilities, other_labels, np.ones_like(weights), 1)) != pytest.approx(loss, abs=1e-3)


def test_loss_is_low_for_right_and_high_for_wrong_predictions():
    labels = np.zeros((1, 8, 8), np.int32)
    labels[:, 2:6, 2:6] = 1
    weights = np.ones((1, 8, 8), np.float32)
    right = np.where(labels[..., None] == 1, 0.99, 0.01).astype(np.float32)
    wrong = 1 - right
    assert float(segmentation_loss(right, labels, weights, 1)) < 0.05
    assert float(segmentation_loss(wrong, labels, weights, 1)) > 2
    three = np.stack([labels == 0, labels == 1, np.zeros_like(labels, bool)], -1).astype(np.float32) * 0.98 + 0.01
    assert float(segmentation_loss(three, labels, weights, 3)) < 0.1


@pytest.mark.parametrize(
    "mask, words",
    [
        (np.full((64, 64), 0.5, np.float32), ["non-integer", "pair 0"]),
        (np.full((64, 64), IGNORE_LABEL, np.uint8), ["no annotated pixels", "pair 0"]),
        (np.zeros((64, 60), np.uint8), ["64×60", "64×64", "pair 0"]),
    ],
    ids=["float-probabilities", "all-ignored", "shape-mismatch"],
)
def test_bad_masks_are_refused_with_a_message_naming_the_pair(tiny_model, mask, words):
    image, _ = _pair()
    with pytest.raises(NapariUNetError) as error:
        finetune(tiny_model, [image], [mask], **QUICK)
    for word in words:
        assert word in str(error.value)


def test_instance_labels_train_like_their_binary_mask(tiny_model):
    """The one mask rule (masks.py): any label other than 0 and 255 is foreground for a one-class model."""
    from napari_unet.training import prepare_pairs

    image, mask = _pair()
    instances = np.where(mask > 0, np.arange(mask.size).reshape(mask.shape) % 37 + 1, 0).astype(np.int32)
    instances[:4] = IGNORE_LABEL
    expected = np.where(instances == IGNORE_LABEL, IGNORE_LABEL, instances > 0)
    np.testing.assert_array_equal(prepare_pairs(tiny_model, [image], [instances])[0].mask, expected)


def test_zero_pairs_and_no_foreground_are_refused(tiny_model):
    with pytest.raises(NapariUNetError, match="no training pairs"):
        finetune(tiny_model, [], [], **QUICK)
    image, _ = _pair()
    with pytest.raises(NapariUNetError, match="no foreground pixels in any training mask"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finetune(tiny_model, [image, image], [np.zeros((64, 64), np.uint8)] * 2, **QUICK)
    zero_255 = np.where(_pair()[1] > 0, 255, 0).astype(np.uint8)  # a 0/255 PNG mask: 255 meant foreground
    with pytest.raises(NapariUNetError, match=r"mask = \(mask > 0\)"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finetune(tiny_model, [image], [zero_255], **QUICK)


def test_all_background_or_all_foreground_pairs_train_with_a_warning(tiny_model):
    image, mask = _pair()
    with pytest.warns(UserWarning, match="no foreground"):
        finetune(tiny_model, [image, image], [mask, np.zeros_like(mask)], validation_fraction=0, **QUICK)
    with pytest.warns(UserWarning, match="all foreground"):
        finetune(tiny_model, [image, image], [mask, np.ones_like(mask)], validation_fraction=0, **QUICK)


def test_mask_dtypes_bool_and_integer_valued_float_are_accepted():
    mask = np.zeros((8, 8), bool)
    mask[2:4] = True
    np.testing.assert_array_equal(check_mask(mask, "m"), mask.astype(np.uint8))
    floats = np.where(mask, 1.0, 255.0).astype(np.float32)
    assert check_mask(floats, "m").dtype == np.uint8
    assert set(np.unique(check_mask(floats, "m")).tolist()) == {1, 255}
    with pytest.raises(NapariUNetError, match="class ids 0..2"):
        check_mask(np.full((8, 8), 3, np.uint8), "m", n_classes=3)


def test_validation_holds_out_whole_pairs_or_a_strip(tiny_model):
    many = prepare_pairs(tiny_model, *zip(*[_pair(seed=s) for s in range(5)]))
    training, validation = split_validation(many, 0.2, np.random.default_rng(0))
    assert len(training) == 4 and len(validation) == 1
    assert validation[0].name not in {p.name for p in training}
    only_one_with_foreground = [p if i == 2 else type(p)(p.name, p.raw_image, p.image, np.zeros_like(p.mask))
                                for i, p in enumerate(many)]
    for seed in range(5):
        training, _ = split_validation(only_one_with_foreground, 0.4, np.random.default_rng(seed))
        assert any(p.mask.any() for p in training)  # the foreground is never held out entirely
    one = prepare_pairs(tiny_model, *zip(_pair(100, seed=1)))
    training, validation = split_validation(one, 0.2, np.random.default_rng(0))
    assert training[0].mask.shape == (80, 100) and validation[0].mask.shape == (20, 100)
    np.testing.assert_array_equal(np.concatenate([training[0].mask, validation[0].mask]), one[0].mask)
    assert split_validation(one, 0.0, np.random.default_rng(0)) == (one, [])


def test_given_validation_set_is_scored(tiny_model):
    image, mask = _pair()
    val_image, val_mask = _pair(seed=5)
    _, history = finetune(tiny_model, [image], [mask], validation=([val_image], [val_mask]), **QUICK)
    assert history.settings["n_validation_pairs"] == 1 and history.settings["n_training_pairs"] == 1
    assert all(0 <= e["val_iou"] <= 1 for e in history.epochs)


def test_the_returned_weights_are_the_best_epochs(tiny_model):
    from napari_unet.training import score_pairs

    image, mask = _pair()
    validation = prepare_pairs(tiny_model, *zip(_pair(seed=5)))
    tuned, history = finetune(tiny_model, [image], [mask], validation=([validation[0].raw_image], [validation[0].mask]),
                              learning_rate=3e-3, epochs=4, steps_per_epoch=2, batch_size=2)
    assert history.epochs[history.best_epoch - 1]["val_iou"] == max(e["val_iou"] for e in history.epochs)
    # history.val_iou is the returned model's, with the output offset re-fitted on validation.
    assert score_pairs(tuned, validation)["iou"] == pytest.approx(history.val_iou, abs=1e-9)
    if history.output_offset == (0.0, 0.0):
        assert history.val_iou == max(e["val_iou"] for e in history.epochs)


def test_early_stopping_when_validation_does_not_improve(tiny_model):
    image, mask = _pair()
    _, history = finetune(tiny_model, [image], [mask], learning_rate=1e-12, epochs=6, steps_per_epoch=1,
                          batch_size=2, early_stopping_patience=2)
    assert history.stopped_reason == "early stopping"
    assert len(history.epochs) == 3 and history.best_epoch == 1  # tiny steps never beat the first score


def test_sampler_sees_rare_foreground_and_never_samples_ignored_only_patches(tiny_model):
    image = np.random.default_rng(0).normal(100, 10, (256, 256)).astype(np.float32)
    mask = np.full((256, 256), IGNORE_LABEL, np.uint8)
    mask[:40, :40] = 0
    mask[200:204, 200:204] = 1  # 16 foreground pixels out of 65536
    pairs = prepare_pairs(tiny_model, [image], [mask])
    sampler = PatchSampler(pairs, 32, rng=np.random.default_rng(0), foreground_fraction=0.5)
    images, labels, weights = sampler.sample_batch(64)
    assert images.shape == (64, 32, 32, 1) and labels.shape == weights.shape == (64, 32, 32)
    with_foreground = np.mean([(lab[w > 0] == 1).any() for lab, w in zip(labels, weights)])
    assert 0.3 < with_foreground < 0.7
    assert np.all(weights.reshape(64, -1).sum(axis=1) > 0)  # every patch has annotated pixels


def test_border_weights_are_high_between_close_objects():
    mask = np.ones((60, 60), np.uint8)  # membrane (foreground) everywhere...
    mask[5:55, 5:28] = 0  # ...around two cells separated by a 2 px membrane at columns 28-29
    mask[5:55, 30:55] = 0
    weights = border_weight_map(mask, objects_are_background=True, w0=10, sigma=5)
    assert weights[30, 28] > 3 * weights[2, 2]  # thin gap vs far corner
    mask[0:10, 0:10] = IGNORE_LABEL
    assert np.all(border_weight_map(mask, objects_are_background=True)[0:10, 0:10] == 0)


def test_border_weight_training_and_cosine_schedule_run(tiny_model):
    image, mask = _pair()
    _, history = finetune(tiny_model, [image], [mask], border_weight=True, lr_schedule="cosine",
                          learning_rate=1e-3, epochs=3, steps_per_epoch=2, batch_size=2)
    rates = [e["learning_rate"] for e in history.epochs]
    assert rates[0] > rates[1] > rates[2]


def test_multiclass_and_multichannel_models_train():
    model = new_model(UNetConfig(n_channels=2, base_width=4, depth=2, n_classes=3), tile_size=32)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (48, 48, 2)).astype(np.float32)
    mask = rng.integers(0, 3, (48, 48)).astype(np.uint8)
    _, history = finetune(model, [image], [mask], **QUICK)
    assert history.steps == 4 and history.val_iou is not None
    with pytest.raises(NapariUNetError, match="2 channel"):
        finetune(model, [image[..., 0]], [mask], **QUICK)


def test_training_learns_a_simple_task():
    """Bright squares on noise: validation IoU must be high after a short training from scratch."""
    model = new_model(UNetConfig(base_width=8, depth=2), tile_size=64)
    pairs = [_pair(96, seed=s) for s in range(4)]
    tuned, history = finetune(model, *zip(*pairs), validation=tuple(zip(*[_pair(96, seed=9)])),
                              learning_rate=3e-3, epochs=3, steps_per_epoch=12, batch_size=4, augment=False)
    assert history.losses[-1] < history.losses[0]
    assert history.val_iou > 0.8


def test_settings_are_checked(tiny_model):
    image, mask = _pair()
    with pytest.raises(NapariUNetError, match="unknown training setting"):
        finetune(tiny_model, [image], [mask], epoch=3)
    with pytest.raises(NapariUNetError, match="lr_schedule"):
        finetune(tiny_model, [image], [mask], lr_schedule="linear")
    with pytest.raises(NapariUNetError, match="learning_rate"):
        TrainConfig(learning_rate=float("nan")).check()


def test_finetuning_keeps_the_models_symmetries_unless_told_otherwise(tiny_model):
    from dataclasses import replace

    from napari_unet.training.augment import AugmentConfig

    image, mask = _pair()
    mirror_model = tiny_model.copy()
    mirror_model.metadata = replace(mirror_model.metadata, symmetries="mirror")
    tuned, history = finetune(mirror_model, [image], [mask], **QUICK)
    assert tuned.metadata.symmetries == "mirror"
    assert history.settings["augmentation"]["rotations"] is False  # resolved, and recorded as such
    rotated, _ = finetune(mirror_model, [image], [mask], augmentation=AugmentConfig(rotations=True), **QUICK)
    assert rotated.metadata.symmetries == "dihedral"
    assert finetune(tiny_model, [image], [mask], **QUICK)[0].metadata.symmetries == "dihedral"


def test_finetuning_refits_the_output_offset_to_the_annotations_it_was_given():
    """A parent's offset (fitted to another data set's annotators) is replaced by the one the
    validation masks show; here the masks are the model's own output moved up by half a pixel."""
    from dataclasses import replace

    from tiny_models import contrasty_tiny_model

    from napari_unet.inference.prediction import predict
    from napari_unet.labels.calibration import shift_probabilities

    parent = contrasty_tiny_model(UNetConfig(base_width=4, depth=2), seed=3)
    parent.metadata = replace(parent.metadata, output_offset=(0.75, -1.0))
    images = [_pair(96, seed=s)[0] for s in (1, 2)]
    unmoved = replace(parent.metadata, output_offset=(0.0, 0.0))
    reference = parent.copy()
    reference.metadata = unmoved
    masks = [(shift_probabilities(predict(reference, image, output="probabilities"), (-0.5, 0.0)) >= 0.5).astype(np.uint8)
             for image in images]
    # One step at a negligible learning rate: the weights stay put, only the offset can change.
    tuned, history = finetune(parent, images[:1], masks[:1], validation=(images, masks), epochs=1, steps_per_epoch=1,
                              batch_size=1, learning_rate=1e-12, augment=False)
    assert history.output_offset == (-0.5, 0.0)
    assert tuned.metadata.output_offset == (-0.5, 0.0)
    assert tuned.metadata.info["training"]["output_offset"] == [-0.5, 0.0]
    assert parent.metadata.output_offset == (0.75, -1.0)  # the parent is left alone
    assert history.val_iou > 0.95


def test_a_version_describes_itself_and_reads_its_objects_off_the_masks():
    """Fine-tuning a membrane model on blob masks yields an object model, not "membrane" with the parent's card."""
    parent = new_model(UNetConfig(base_width=4, depth=2), tile_size=64, name="membranes", class_names=["membrane"])
    parent.metadata.info = {"description": "EM membranes", "metrics_held_out": {"iou": 0.7}}
    assert parent.metadata.instance_method == "enclosed"
    images, masks = zip(*[_pair(seed=seed) for seed in range(2)])
    tuned, _ = finetune(parent, list(images), list(masks), **QUICK)
    assert tuned.metadata.instance_method == "components" and tuned.metadata.class_names == ["object"]
    assert "metrics_held_out" not in tuned.metadata.info and "EM membranes" not in tuned.metadata.info["description"]
    membrane_masks = [np.zeros((64, 64), np.uint8) for _ in images]
    for mask in membrane_masks:
        mask[::16, :] = mask[:, ::16] = 1  # a grid of lines: the cells between them are the objects
    tuned, _ = finetune(parent, list(images), membrane_masks, **QUICK)
    assert tuned.metadata.instance_method == "enclosed"
    tuned, _ = finetune(parent, list(images), membrane_masks, objects="components", **QUICK)
    assert tuned.metadata.instance_method == "components"  # the user's choice wins


def test_averaging_the_last_epochs_keeps_the_mean_of_their_weights(tiny_model):
    """Weight averaging: with a constant learning rate, run k of a 3-epoch run passes through the weights of a
    k-epoch run (float32, same seed), so the average of the last 2 epochs equals the mean of those runs."""
    image, mask = _pair(seed=3)
    settings = dict(steps_per_epoch=2, batch_size=2, learning_rate=1e-3, validation_fraction=0.0,
                    early_stopping_patience=0, precision="float32", augment=False)
    two, _ = finetune(tiny_model, [image], [mask], epochs=2, average_last_epochs=1, **settings)
    three, _ = finetune(tiny_model, [image], [mask], epochs=3, average_last_epochs=1, **settings)
    averaged, history = finetune(tiny_model, [image], [mask], epochs=3, average_last_epochs=2, **settings)
    assert history.averaged_epochs == 2 and history.best_epoch is None
    for a, b, mean in zip(_weights(two), _weights(three), _weights(averaged)):
        np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(_weights(two), _weights(three)))


def test_averaging_more_epochs_than_run_is_refused(tiny_model):
    image, mask = _pair()
    with pytest.raises(NapariUNetError, match="average_last_epochs"):
        finetune(tiny_model, [image], [mask], epochs=2, steps_per_epoch=1, average_last_epochs=3)


def test_a_boundary_model_trains_on_the_touching_band_it_was_made_with():
    """Fine-tuning derives the parent's targets: a model trained with a wider touching band or core-only
    interiors keeps them."""
    from napari_unet.labels.instances import boundary_targets
    from napari_unet.training import prepare_pairs

    labels = np.zeros((32, 32), np.int32)
    labels[8:24, 4:16], labels[8:24, 16:28] = 1, 2  # two touching boxes
    image = np.where(labels > 0, 200, 20).astype(np.uint8)
    model = new_model(UNetConfig(base_width=4, depth=2, n_classes=3), instances="boundary_watershed",
                      class_names=["background", "nucleus", "boundary"], touching_width=3, core_fraction=0.5)
    targets = prepare_pairs(model, [image], [labels])[0].mask
    np.testing.assert_array_equal(targets, boundary_targets(labels, touching_width=3, core_fraction=0.5))
    assert not np.array_equal(targets, boundary_targets(labels, touching_width=3))

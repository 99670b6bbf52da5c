"""Channels and new kinds of image: a model reads the image's channels (widened from one channel without changing
a grey image's output), channel mismatches name their fixes, and a round or Live adapts to a new domain while the
parent's own domain trains as configured."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from tiny_models import contrasty_tiny_model

from napari_unet.cli import main
from napari_unet.errors import NapariUNetError
from napari_unet.inference.channels import widen_input
from napari_unet.inference.prediction import predict
from napari_unet.model import UNetConfig, save_model
from napari_unet.project import Project
from napari_unet.training import TrainConfig, finetune
from napari_unet.training.adaptation import NEW_DOMAIN_IOU, adapt, reestimate_batch_norm

QUICK = TrainConfig(epochs=2, steps_per_epoch=15, batch_size=2, patch_size=64, learning_rate=1e-2)
FLOAT32 = dict(output="probabilities", precision="float32")


def _discs(seed: int, size: int = 96, dark: bool = False, colour: int = 0):
    """Discs on a noisy background and their 0/1 mask; dark=True: dark discs on a bright background;
    colour=3 (or 2): the discs differ from the background in one channel only."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(6):
        cy, cx = rng.integers(10, size - 10, 2)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = 1
    signal = np.where(mask > 0, 150.0, 30.0)
    if dark:
        signal = 200.0 - signal
    grey = signal + rng.normal(0, 5, (size, size))
    if not colour:
        return grey.astype(np.float32), mask
    planes = [rng.normal(100, 5, (size, size)) for _ in range(colour)]
    planes[1] = grey
    return np.stack(planes, axis=-1).astype(np.float32), mask


@pytest.fixture(scope="module")
def bn_model():
    return contrasty_tiny_model(UNetConfig(base_width=4, depth=2, batch_norm=True), seed=1)


@pytest.fixture(scope="module")
def bright_disc_model():
    """A tiny model that has learnt bright discs on dark: its own domain."""
    import keras

    keras.utils.set_random_seed(0)
    start = contrasty_tiny_model(UNetConfig(base_width=4, depth=2, batch_norm=True), seed=0)
    pairs = [_discs(seed) for seed in range(3)]
    model, _ = finetune(start, [p[0] for p in pairs], [p[1] for p in pairs], config=QUICK, adapt="off",
                        freeze_batch_norm=False, epochs=4)
    return model


@pytest.mark.parametrize("n_channels", [2, 3])
def test_widened_first_convolution_leaves_a_grey_images_output_unchanged(bn_model, n_channels):
    grey, _ = _discs(0)
    widened = widen_input(bn_model, n_channels)
    assert widened.config.n_channels == n_channels and bn_model.config.n_channels == 1
    before = predict(bn_model, grey, **FLOAT32)
    after = predict(widened, np.stack([grey] * n_channels, axis=-1), **FLOAT32)
    assert before.std() > 0.01  # not a constant map, so equality means something
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert widened.metadata.info["widened"]["from_channels"] == 1
    assert len(widened.metadata.input_channel_names) == n_channels


def test_channel_weights_summing_to_one_leave_a_grey_images_output_unchanged(bn_model):
    grey, _ = _discs(0)
    mixed = widen_input(bn_model, 3, channel_weights=[1.5, -0.2, -0.3])
    np.testing.assert_allclose(predict(mixed, np.stack([grey] * 3, axis=-1), **FLOAT32),
                               predict(bn_model, grey, **FLOAT32), atol=1e-5)
    assert mixed.metadata.info["widened"]["channel_weights"] == [1.5, -0.2, -0.3]
    with pytest.raises(NapariUNetError, match="3 finite numbers"):
        widen_input(bn_model, 3, channel_weights=[1.0, np.nan, 0.0])


def _stained(seed: int, size: int = 96):
    """An H&E-like colour image (skimage.color.hed2rgb): haematoxylin-stained discs (the objects, mask) and as many
    eosin-stained discs elsewhere, which a mean of the channels also shows dark."""
    from skimage.color import hed2rgb

    _, nuclei = _discs(seed, size)
    _, eosin = _discs(seed + 100, size)
    eosin[nuclei > 0] = 0
    rng = np.random.default_rng(seed)
    rgb = hed2rgb(np.stack([nuclei, eosin, np.zeros_like(nuclei)], axis=-1).astype(float))
    return (np.clip(rgb + rng.normal(0, 0.01, rgb.shape), 0, 1) * 255).astype(np.float32), nuclei


def test_stained_colour_starts_from_the_channel_mix_that_separates_the_corrections(bright_disc_model):
    stained = [_stained(seed) for seed in (3, 4)]
    levers = (*TrainConfig().adapt_levers, "channel_mix")
    start, _, record = adapt(bright_disc_model, [p[0] for p in stained], [p[1] for p in stained],
                             TrainConfig(adapt_levers=levers))
    scores = record["candidates"]
    assert record["new_domain"] and "channels mixed" in record["start"]
    assert scores[record["start"]] > scores["inverted"] + 0.2  # the mean of the channels also shows the eosin
    assert start.config.n_channels == 3 and record["widened"]["mix"].startswith("fitted on the corrections")
    weights = record["widened"]["channel_weights"]
    assert len(weights) == 3 and np.ptp(weights) > 0.5 and max(abs(w) for w in weights) < 20  # not the mean; bounded


def test_a_channel_count_mismatch_names_the_fixes_and_grey_is_converted_only_on_request(bn_model):
    rgb, _ = _discs(0, colour=3)
    with pytest.raises(NapariUNetError) as error:
        predict(bn_model, rgb)
    message = str(error.value)
    assert "3 colour channel(s)" in message and "channels='grey'" in message and "widen_input" in message
    assert "\n" not in message
    grey = predict(bn_model, rgb, channels="grey", **FLOAT32)
    luminance = (rgb * np.array([0.2125, 0.7154, 0.0721], np.float32)).sum(axis=-1)
    np.testing.assert_allclose(grey, predict(bn_model, luminance, **FLOAT32), atol=1e-5)
    np.testing.assert_allclose(predict(bn_model, rgb, channels=[1], **FLOAT32),
                               predict(bn_model, rgb[..., 1], **FLOAT32), atol=1e-6)
    with pytest.raises(NapariUNetError, match="channels 0 to 2"):
        predict(bn_model, rgb, channels=[5])


def test_cli_refuses_a_colour_image_for_a_grey_model_in_one_line_and_converts_with_channels_grey(
        bn_model, tmp_path, capsys):
    model_path = save_model(bn_model, tmp_path / "grey.keras")
    image_path = tmp_path / "colour.tif"
    tifffile.imwrite(image_path, _discs(0, colour=3)[0].astype(np.uint8))
    code = main(["predict", "-m", str(model_path), str(image_path), "-o", str(tmp_path / "out")])
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code != 0 and len(error_lines) == 1 and "--channels grey" in error_lines[0]
    assert main(["predict", "-m", str(model_path), str(image_path), "-o", str(tmp_path / "out"),
                 "--channels", "grey"]) == 0
    assert tifffile.imread(tmp_path / "out" / "colour.tif").shape == (96, 96)


@pytest.mark.parametrize("n_channels", [2, 3])
def test_a_round_on_multichannel_pairs_makes_a_version_that_reads_every_channel(tmp_path, start_model, n_channels):
    project = Project.init(tmp_path / "project", start_model)
    for seed in (0, 1):
        project.add_pair(*_discs(seed, colour=n_channels), name=f"pair{seed}")
    project.add_pair(*_discs(7, colour=n_channels), evaluation=True, name="check")
    outcome = project.round(QUICK)
    assert outcome.model.config.n_channels == n_channels
    assert outcome.record.adaptation["widened"]["to_channels"] == n_channels
    version = project.load_model(outcome.record.version)  # as saved: channels, names and card survive
    assert version.config.n_channels == n_channels
    assert version.metadata.info["adaptation"]["widened"]["from_channels"] == 1
    image, _ = _discs(11, colour=n_channels)
    assert predict(version, image).shape == image.shape[:2]


def test_dark_objects_on_a_bright_background_start_from_the_inverted_parent(bright_disc_model):
    dark = [_discs(seed, dark=True) for seed in (3, 4)]
    start, config, record = adapt(bright_disc_model, [p[0] for p in dark], [p[1] for p in dark],
                                  TrainConfig(seconds=30.0))
    assert record["new_domain"] and record["parent_iou"] < NEW_DOMAIN_IOU
    assert record["start"].startswith("inverted") and start.metadata.normalization.invert
    assert record["candidates"][record["start"]] > 0.8  # the inverted parent already sees the dark discs
    assert not config.freeze_batch_norm and config.learning_rate >= 1e-3 and config.epochs > QUICK.epochs
    assert predict(start, dark[0][0]).astype(bool).sum() > 0


def test_on_the_parents_own_kind_of_image_nothing_changes(bright_disc_model):
    bright = [_discs(seed) for seed in (3, 4)]
    config = TrainConfig(seconds=30.0)
    start, adapted_config, record = adapt(bright_disc_model, [p[0] for p in bright], [p[1] for p in bright], config)
    assert not record["new_domain"] and record["parent_iou"] >= NEW_DOMAIN_IOU
    assert start is bright_disc_model and adapted_config == config
    off_start, off_config, off_record = adapt(bright_disc_model, [p[0] for p in bright], [p[1] for p in bright],
                                              TrainConfig(adapt="off"))
    assert off_record == {"new_domain": False} and off_start is bright_disc_model


def test_batch_norm_statistics_re_estimated_on_the_parents_own_images_change_its_output_little(bright_disc_model):
    images = [_discs(seed)[0] for seed in (5, 6)]
    adapted = reestimate_batch_norm(bright_disc_model, images)
    for image in images:
        before = predict(bright_disc_model, image, **FLOAT32)
        after = predict(adapted, image, **FLOAT32)
        assert np.mean((before > 0.5) == (after > 0.5)) > 0.97
    changed = [np.abs(a - b).max() for a, b in zip(adapted.keras_model.get_weights(),
                                                    bright_disc_model.keras_model.get_weights())]
    assert max(changed) > 0  # the statistics were re-estimated, not left as they were


def test_live_learns_from_colour_corrections(tmp_path, start_model):
    from napari_unet.training.live import ForestPreview, LiveTrainer

    project = Project.init(tmp_path / "project", start_model)
    image, mask = _discs(0, colour=3)
    project.add_pair(image, mask, name="plane")
    project.add_pair(*_discs(7, colour=3), evaluation=True, name="check")
    trainer = LiveTrainer(project, start_model, QUICK)
    trainer.reload()
    burst = trainer.train(seconds=0.5)
    assert burst.steps >= 1 and burst.iou is not None
    assert trainer.model.config.n_channels == 3
    assert trainer.predict(image).shape == mask.shape
    forest = ForestPreview()
    assert forest.fit(image, mask) and forest.predict(image).shape == mask.shape
    outcome = trainer.keep()
    assert project.load_model(outcome.record.version).config.n_channels == 3


def test_post_processing_is_re_chosen_on_the_users_objects_and_never_for_worse(nuclei_dir):
    from napari_unet.storage.io import read_image
    from napari_unet.storage.registry import load_model
    from napari_unet.training.adaptation import choose_post_processing

    model = load_model("nuclei")
    stems = sorted(path.stem for path in (nuclei_dir / "images").glob("*.tif"))[:2]
    images = [read_image(nuclei_dir / "images" / f"{stem}.tif") for stem in stems]
    masks = [read_image(nuclei_dir / "masks" / f"{stem}.tif") for stem in stems]
    parent = (model.metadata.seed_threshold, model.metadata.background_threshold)
    chosen = choose_post_processing(model, images, masks)
    assert chosen["n_objects"] > 0 and chosen["ap50"] >= chosen["before_ap50"]
    assert (model.metadata.seed_threshold, model.metadata.background_threshold) == (
        chosen["seed_threshold"], chosen["background_threshold"])
    if chosen["ap50"] == chosen["before_ap50"]:
        assert (chosen["seed_threshold"], chosen["background_threshold"]) == parent  # ties keep the parent's
    one_class = contrasty_tiny_model(seed=0)
    assert choose_post_processing(one_class, images, masks) is None  # components: nothing to choose

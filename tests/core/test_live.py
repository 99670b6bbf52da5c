"""Live mode's core (live.py): masks from touched pixels, short bursts from an open run, Keep through the guard."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_images import bright_discs

from napari_unet.errors import NapariUNetError
from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.project import Project
from napari_unet.training import TrainConfig
from napari_unet.training.live import LiveTrainer, live_mask, touched_by

LIVE = TrainConfig(batch_size=2, patch_size=64, learning_rate=1e-2, validation_fraction=0.0)


@pytest.fixture
def project(tmp_path, start_model):
    project = Project.init(tmp_path / "project", start_model)
    project.add_pair(*bright_discs(7), evaluation=True)
    return project


def test_only_touched_pixels_and_a_margin_count_as_annotated():
    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 10:20] = 3
    touched = np.zeros((40, 40), bool)
    touched[15, 15] = True
    mask = live_mask(labels, touched, margin=2)
    annotated = mask != IGNORE_LABEL
    assert annotated.sum() == 13  # a diamond of radius 2 (binary dilation, 4-connectivity)
    assert np.all(mask[annotated] == 3) and annotated[13, 15] and not annotated[12, 15]
    np.testing.assert_array_equal(live_mask(labels, touched, whole_plane=True), labels)
    with pytest.raises(NapariUNetError, match="one plane each"):
        live_mask(labels, touched[:20])


def test_touched_pixels_come_from_paint_atoms_of_this_plane_only():
    box = (slice(2, 5), slice(3, 6))
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    atoms = [(box, mask, np.zeros(1), 1), ((slice(0, 2), slice(0, 2)), None, np.zeros((2, 2)), 2),
             ((np.array([9]), np.array([9])), np.zeros(1), np.ones(1))]
    touched = touched_by(atoms, (10, 10))
    assert touched.sum() == 1 + 4 + 1 and touched[3, 4] and touched[9, 9] and not touched[2, 3]
    # a stack: the atoms carry the plane axis; only plane 1 counts
    stack_atoms = [((slice(1, 2), *box), mask[None], np.zeros(1), 1), ((slice(0, 1), slice(0, 2), slice(0, 2)), None, 0, 2),
                   ((np.array([0, 1]), np.array([0, 7]), np.array([0, 8])), np.zeros(2), np.ones(2))]
    touched = touched_by(stack_atoms, (10, 10), (1,))
    assert touched.sum() == 2 and touched[3, 4] and touched[7, 8]


def test_bursts_train_from_the_corrections_and_keep_goes_through_the_guard(project, start_model):
    image, labels = bright_discs(0)
    touched = np.zeros(labels.shape, bool)
    touched[::2] = True  # the user went over half the rows
    project.add_pair(image, live_mask(labels, touched, margin=0), name="live-plane", replace=True,
                     corrected_pixels=int(touched.sum()))
    trainer = LiveTrainer(project, start_model, LIVE)
    assert trainer.reload() == 1
    first = trainer.train(seconds=0.5)
    assert first.steps >= 1 and first.iou is not None and first.total_steps == first.steps
    compiled = trainer._run.train_step
    for _ in range(4):
        burst = trainer.train(seconds=0.5)
    assert trainer._run.train_step is compiled  # one open run: no re-trace between bursts
    assert burst.total_steps > first.steps and burst.best_iou >= first.iou
    # a correction replaces the plane's pair; training goes on from the current weights
    project.add_pair(image, labels, name="live-plane", replace=True, corrected_pixels=int(labels.size))
    assert [p.name for p in project.training.pairs()] == ["live-plane"]
    assert project.training.pairs()[0].corrected_pixels == labels.size
    trainer.reload()
    trainer.train(seconds=0.5)
    outcome = trainer.keep()
    record = outcome.record
    assert record.parent == start_model and record.training.steps == trainer.total_steps
    assert record.eval.source == "evaluation pairs"
    assert record.kept == (record.eval.verdict != "hurt")
    if record.kept:
        assert project.active == record.version == trainer.parent_key
    assert outcome.model.metadata.info["training"]["stopped_reason"] == "live"


def test_keep_before_any_step_is_refused(project, start_model):
    with pytest.raises(NapariUNetError, match="nothing to keep"):
        LiveTrainer(project, start_model, LIVE).keep()


def test_live_without_corrections_says_what_to_do(project, start_model):
    trainer = LiveTrainer(project, start_model, LIVE)
    with pytest.raises(NapariUNetError, match="no training pairs"):
        trainer.reload()


def test_the_forest_preview_learns_from_touched_pixels_and_scores_on_the_evaluation_set(project):
    from napari_unet.training.live import ForestPreview

    image, labels = bright_discs(0)
    touched = np.zeros(labels.shape, bool)
    touched[:64] = True
    preview = ForestPreview()
    assert not preview.fit(image, live_mask(np.zeros_like(labels), touched, margin=0))  # one class: nothing to learn
    assert preview.fit(image, live_mask(labels, touched, margin=0))
    predicted = preview.predict(image)
    assert predicted.shape == labels.shape and set(np.unique(predicted)) <= {0, 1}
    # bright discs on noise: the untouched half comes out nearly right
    lower = slice(64, None)
    iou = np.logical_and(predicted[lower], labels[lower] > 0).sum() / np.logical_or(predicted[lower], labels[lower] > 0).sum()
    assert iou > 0.8
    assert preview.score(project._evaluation_pairs()) > 0.8


def test_patches_are_centred_on_corrected_pixels_more_often():
    from napari_unet.training.inputs import PreparedPair
    from napari_unet.training.sampling import PatchSampler

    size = 256
    image = np.zeros((size, size, 1), np.float32)
    image[200:210, 200:210] = 1.0  # the corrected pixels are the only bright ones
    mask = np.zeros((size, size), np.uint8)
    mask[100:150, 100:150] = 1
    pair = PreparedPair("plane", image, image, mask)
    corrected = image[..., 0] > 0

    def share_with_corrections(focus_maps):
        sampler = PatchSampler([pair], 32, rng=np.random.default_rng(0), focus_maps=focus_maps)
        patches = [sampler.sample_patch()[0] for _ in range(200)]
        return np.mean([patch.max() > 0 for patch in patches])

    without, with_focus = share_with_corrections(None), share_with_corrections([corrected])
    assert without < 0.05 and 0.4 < with_focus < 0.7  # half the patches (focus_fraction 0.5), not all


def test_corrected_pixels_reach_the_sampler_by_the_callers_pair_names():
    """Live and a new-domain round key their focus maps by the project's pair names; a pair cut for a validation
    strip gets the same cut of its map."""
    from napari_unet.model import UNetConfig, new_model
    from napari_unet.training.loop import TrainingRun

    image, labels = bright_discs(3, size=96)
    focus = np.zeros(labels.shape, bool)
    focus[:, :12] = True  # the corrected pixels: a band on the left
    run = TrainingRun(new_model(UNetConfig(base_width=4, depth=2), tile_size=64), TrainConfig(patch_size=32),
               [image], [labels], None, ["plane"], None, focus={"plane": focus})
    (pair,) = run.training_pairs
    assert pair.mask.shape != labels.shape  # one pair: a validation strip was cut off
    expected = np.flatnonzero(focus[pair.window] & (pair.mask != IGNORE_LABEL))
    assert expected.size > 0
    np.testing.assert_array_equal(run.sampler.focus[0], expected)

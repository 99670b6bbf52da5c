"""A corrected volume in a project (volume_checks.py): kept with its pairs, rounds scored on it as it is predicted in
3-D (three views or stitched), a boundary-class version's thresholds chosen on it; and the map those use equals
what predict() makes objects from."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.inference.prediction import predict, predict_volume_map
from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.labels.stacks import uses_three_views, volume_objects
from napari_unet.model import SegmentationModel, UNetConfig, load_model_file, new_model, save_model
from napari_unet.project import Project
from napari_unet.training import TrainConfig
from napari_unet.training.volume_checks import CHECK_SIDE, VolumeStore, keep_volume

QUICK = TrainConfig(epochs=2, steps_per_epoch=30, batch_size=2, patch_size=32, learning_rate=3e-3)


def balls(shape=(16, 40, 40), seed: int = 0):
    """(image float32, instance labels int32) of bright balls of radius 6 on noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for number, centre in enumerate(((5, 12, 12), (9, 12, 27), (7, 28, 14), (10, 27, 29)), start=1):
        labels[sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= 36] = number
    image = rng.normal(20, 5, shape) + 120 * (labels > 0)
    return image.astype(np.float32), labels


@pytest.fixture
def nuclei_like(tmp_path):
    """A tiny boundary-class model (background / interior / boundary, seeded watershed), saved."""
    import keras

    keras.utils.set_random_seed(0)
    model = new_model(UNetConfig(base_width=4, depth=2, n_classes=3), tile_size=32, name="tiny-nuclei",
                      class_names=["background", "nucleus", "nucleus boundary"], instances="boundary_watershed")
    return str(save_model(model, tmp_path / "tiny-nuclei.keras"))


@pytest.mark.parametrize("anisotropy", [2.0, 3.0])
def test_the_volume_map_gives_the_objects_predict_gives(nuclei_like, anisotropy):
    from napari_unet.storage.registry import load_model

    model = load_model(nuclei_like)
    image, _ = balls()
    model.metadata = replace(model.metadata, seed_threshold=0.34, background_threshold=None)  # objects, untrained
    probabilities = predict_volume_map(model, image, anisotropy=anisotropy)
    assert probabilities.shape[1:] == (40, 40, 3)
    assert probabilities.shape[0] == (32 if uses_three_views(anisotropy) else 16)
    objects = volume_objects(probabilities, model.metadata, 3, image.shape[0], three_views=uses_three_views(anisotropy))
    expected = predict(model, image, output="instances", stack="z", anisotropy=anisotropy)
    assert expected.max() > 0
    np.testing.assert_array_equal(objects, expected)


def test_a_second_network_predicts_the_side_views_and_is_saved_inside_the_model_file(tmp_path, nuclei_like):
    """SegmentationModel.side_views: the XY planes by the model's network, the XZ and YZ planes by the other one."""
    import keras

    from napari_unet.labels.stacks import isotropic_depth, resample_depth
    from napari_unet.storage.store import ModelStore

    xy_model = load_model_file(nuclei_like)
    keras.utils.set_random_seed(1)
    other = new_model(xy_model.config, tile_size=32, name="other", class_names=list(xy_model.metadata.class_names),
                      instances="boundary_watershed")
    image, _ = balls()
    both = SegmentationModel(xy_model.keras_model, xy_model.metadata, side_views=other)
    mixed = predict_volume_map(both, image, anisotropy=1.0)
    depth = isotropic_depth(image.shape[0], 1.0)
    # other's three views with its XY third swapped for xy_model's: what the mixed map must be
    expected = predict_volume_map(other, image, anisotropy=1.0) + (
        resample_depth(predict_volume_map(xy_model, image), depth) - resample_depth(predict_volume_map(other, image),
                                                                                     depth)) / 3
    np.testing.assert_allclose(mixed, expected, atol=1e-5)
    assert not np.allclose(mixed, predict_volume_map(xy_model, image, anisotropy=1.0), atol=1e-3)
    store = ModelStore(tmp_path / "store")
    saved = store.record(store.save_version(both).name)  # inside the .keras: it follows renames and exports
    loaded = store.load(saved.name)
    np.testing.assert_allclose(predict_volume_map(loaded, image, anisotropy=1.0), mixed, atol=1e-5)
    assert loaded.side_views.side_views is None
    from napari_unet.inference.onnx_engine import load_onnx_twin, write_twin

    assert write_twin(saved.path) is None and load_onnx_twin(saved.path) is None  # a twin holds one network
    from napari_unet.storage.bioimageio import model_card_markdown

    assert "another network" in model_card_markdown(both) and "another network" not in model_card_markdown(xy_model)


def test_a_large_volume_is_kept_as_a_crop_holding_the_held_out_stripes(tmp_path):
    image, labels = balls((60, 300, 400))
    labels[30, :, :50] = IGNORE_LABEL  # not annotated there
    check = keep_volume("big", image, labels, [30], evaluation_planes=[34], anisotropy=1.0, prediction=labels,
                        pairs=["big_z30"])
    assert check.image.shape[1:] == check.labels.shape[1:] == (CHECK_SIDE, CHECK_SIDE)
    assert check.origin == (30 - 16, check.origin[1], 400 - CHECK_SIDE)  # the stripe is on the right
    assert check.planes == (16,) and check.evaluation_planes == (20,)
    (_, truth, valid), = check.scored(held_out=True)
    columns = np.flatnonzero(valid.any(axis=0))
    assert columns[0] == CHECK_SIDE - round(350 * 0.2) and columns[-1] == CHECK_SIDE - 1  # the right 20% annotated
    np.testing.assert_array_equal(truth, (check.labels[16] > 0) & valid)
    (z, _, valid), = check.scored(held_out=False)
    assert z == 20 and valid.all()
    store = VolumeStore(tmp_path / "volumes")
    store.save(check)
    loaded = store.load("big")
    np.testing.assert_array_equal(loaded.image, check.image)
    np.testing.assert_array_equal(loaded.held_out[16], check.held_out[16])
    assert (loaded.planes, loaded.evaluation_planes, loaded.anisotropy, loaded.predicted_elsewhere, loaded.pairs) == \
        ((16,), (20,), 1.0, True, ("big_z30",))
    store.remove("big")
    assert store.names() == []


def test_a_volume_round_is_scored_on_the_volume_in_3d_and_chooses_its_thresholds_there(tmp_path, nuclei_like):
    image, truth = balls()
    prediction = np.where(truth == 4, 0, truth)  # the model missed a nucleus ...
    labels = prediction.copy()
    labels[[6, 10]] = truth[[6, 10]]  # ... which the user painted in two planes
    project = Project.init(tmp_path / "p", nuclei_like)
    pairs = project.add_volume(image, labels, [6, 10], name="balls", anisotropy=1.0, prediction=prediction)
    assert {pair.suffix for pair in pairs if pair.view == "xy"} == {"z6", "z10"}
    assert any(pair.view != "xy" for pair in pairs)
    assert project.volumes.names() == ["balls"]
    _, evaluation = project.snapshot()
    assert evaluation.names == []  # every pair is the volume's: scored in it, the side views not at all
    (check, rows), = evaluation.volumes
    assert [z for z, _, _ in rows] == [6, 10] and all(valid.any() for _, _, valid in rows)
    outcome = project.round(QUICK)
    record = outcome.record
    assert record.eval.source == "held-out stripes" and record.eval.units == 6  # 16-px units of two 8-px stripes
    assert "predicted in 3-D" in record.reason
    chosen = record.adaptation["volume_post_processing"]
    assert chosen["n_objects"] == 4 and {"seed_threshold", "background_threshold"} <= set(chosen)
    assert (outcome.model.metadata.seed_threshold, outcome.model.metadata.background_threshold) == \
        (chosen["seed_threshold"], chosen["background_threshold"])
    # Three views: the version predicts the volume's side views with the start model's network, stored in its file.
    start_weights = load_model_file(nuclei_like).keras_model.get_weights()
    saved = project.store.load(record.version)
    assert saved.side_views is not None and saved.metadata.info["side_views"]["network"] == "tiny-nuclei"
    assert all(np.array_equal(a, b) for a, b in zip(saved.side_views.keras_model.get_weights(), start_weights))
    assert not all(np.array_equal(a, b) for a, b in zip(saved.keras_model.get_weights(), start_weights))
    # A plane for evaluation only: the volume's evaluation planes are scored instead of the stripes.
    labels[12] = truth[12]
    project.add_volume(image, labels, [12], name="balls", anisotropy=1.0, prediction=prediction, evaluation=True)
    assert project.evaluation.names() == ["balls_z12"]
    _, evaluation = project.snapshot()
    assert evaluation.source == "evaluation pairs" and evaluation.names == []
    assert [z for _, rows in evaluation.volumes for z, _, _ in rows] == [12]
    for name in project.training.names():  # the evaluation plane is in no training side view
        if "_xz_" in name or "_yz_" in name:
            assert (project.training.load(name)[1][12] == IGNORE_LABEL).all()


def test_a_round_that_makes_the_volume_worse_is_rolled_back(tmp_path, nuclei_like):
    image, truth = balls()
    project = Project.init(tmp_path / "p", nuclei_like)
    project.add_volume(image, truth, [8], name="balls", anisotropy=3.0, evaluation=True)
    project.add_volume(image, truth, [5, 11], name="balls", anisotropy=3.0)
    first = project.round(QUICK)
    assert first.kept, first.reason
    wrong = truth.copy()
    wrong[[5, 11]] = np.where(truth[[5, 11]] > 0, 0, 1)  # the "user" paints the planes the wrong way round
    project.add_volume(image, wrong, [5, 11], name="balls", anisotropy=3.0)
    failed = project.round(QUICK)
    assert not failed.kept and failed.reason.startswith("Rolled back:") and "predicted in 3-D" in failed.reason, \
        failed.reason
    assert project.active == first.version

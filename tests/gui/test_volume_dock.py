"""The Predict tab on stacks: a volume's objects get one id across planes, a time-lapse's keep their id over time,
the Z step comes from the layer's scale (and can be overridden), and a stack whose axes say neither is refused in one
line naming the choice."""

from __future__ import annotations

import numpy as np
import pytest
from dock_fixtures import errors, model_of, wait_for

from napari_unet.inference.prediction import predict


def balls_volume(depth: int = 12, side: int = 48) -> np.ndarray:
    """uint8 (Z, Y, X): two bright touching balls on a noisy background."""
    rng = np.random.default_rng(1)
    grid = np.indices((depth, side, side))
    volume = rng.normal(40, 8, (depth, side, side))
    for centre in ((5, 24, 15), (7, 24, 31)):
        volume[sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= 64] += 150
    return np.clip(volume, 0, 255).astype(np.uint8)


def test_a_volume_named_z_becomes_3d_objects_with_the_z_step_of_its_scale(qtbot, stack_dock, notifications):
    viewer, widget, tab = stack_dock
    volume = balls_volume()
    model = model_of(widget)
    three_views = predict(model, volume, output="instances", stack="z", anisotropy=1.5)
    stitched = predict(model, volume, output="instances", stack="z", anisotropy=4.0)
    assert not np.array_equal(three_views, stitched)  # so the Z step the dock passes shows in its result
    viewer.add_image(volume, name="nuclei", scale=(1.5, 1.0, 1.0), axis_labels=("z", "y", "x"))
    tab.image_combo.reset_choices()
    tab.image_combo.select("nuclei")
    assert tab.anisotropy_spin.value() == pytest.approx(1.5) and tab.anisotropy_spin.isEnabled()
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    labels = viewer.layers["nuclei prediction"]
    np.testing.assert_array_equal(labels.data, three_views)
    assert tuple(labels.scale) == (1.5, 1.0, 1.0)
    assert "3-D objects" in tab.status_label.text() and "three views" in tab.status_label.text()
    tab.anisotropy_spin.setValue(4.0)  # the user's Z step wins over the scale's
    viewer.layers.remove(labels)
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    np.testing.assert_array_equal(viewer.layers["nuclei prediction"].data, stitched)
    assert "stitched" in tab.status_label.text()


def test_a_time_lapse_named_t_keeps_ids_from_frame_to_frame(qtbot, stack_dock, blobs_image, notifications):
    viewer, widget, tab = stack_dock
    movie = np.stack([np.roll(blobs_image, 2 * t, axis=1) for t in range(4)])
    linked = predict(model_of(widget), movie, output="instances", stack="t")
    per_plane = predict(model_of(widget), movie, output="instances", stack="planes")
    assert not np.array_equal(linked, per_plane)
    viewer.add_image(movie, name="movie", axis_labels=("t", "y", "x"))
    tab.image_combo.reset_choices()
    tab.image_combo.select("movie")
    assert tab.stack_settings(viewer.layers["movie"], (4,)) == {"stack": "t", "anisotropy": None}  # no Z: no Z step
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    np.testing.assert_array_equal(viewer.layers["movie prediction"].data, linked)
    assert "frame to frame" in tab.status_label.text()


def test_a_probability_map_asked_with_3d_objects_is_said_to_be_skipped(qtbot, stack_dock, notifications):
    viewer, widget, tab = stack_dock
    viewer.add_image(balls_volume(), name="nuclei", axis_labels=("z", "y", "x"))
    tab.image_combo.reset_choices()
    tab.image_combo.select("nuclei")
    tab.probabilities_check.setChecked(True)
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    assert "No probability map with objects across planes" in tab.status_label.text()
    assert not any("probability" in layer.name for layer in viewer.layers)


def test_a_zarr_volume_with_separate_objects_is_predicted_plane_by_plane_into_a_zarr_of_3d_objects(
        qtbot, stack_dock, notifications, tmp_path):
    import zarr

    from napari_unet._widgets._lazy_prediction import LAZY_KEY
    from napari_unet.inference.lazy_labels import open_zarr_image

    viewer, widget, tab = stack_dock
    volume = balls_volume()
    store = zarr.open_array(str(tmp_path / "volume.zarr"), mode="w", shape=volume.shape, chunks=(1, 48, 48),
                            dtype=volume.dtype)
    store[:] = volume
    viewer.add_image(open_zarr_image(tmp_path / "volume.zarr"), name="nuclei", axis_labels=("z", "y", "x"))
    tab.image_combo.reset_choices()
    tab.image_combo.select("nuclei")
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    layer = viewer.layers["nuclei prediction"]
    objects = zarr.open_array(layer.metadata[LAZY_KEY], mode="r")
    assert objects.dtype == np.int32 and layer.editable
    expected = predict(model_of(widget), volume, output="instances", stack="z")  # stitched: plane by plane
    assert expected.max() > 0
    np.testing.assert_array_equal(objects[:], expected)
    assert "3-D objects" in tab.status_label.text() and "stitched" in tab.status_label.text()


def test_a_stack_whose_axes_say_neither_z_nor_t_is_refused_in_one_line(qtbot, stack_dock, notifications):
    viewer, widget, tab = stack_dock
    volume = balls_volume()
    viewer.add_image(volume, name="stack")  # napari's default axis names: -3, -2, -1
    tab.image_combo.reset_choices()
    tab.image_combo.select("stack")
    assert tab.predict() is None
    (message,) = errors(notifications)
    assert "do not say Z or T" in message and "'Stack is'" in message and "\n" not in message
    assert "stack prediction" not in viewer.layers
    tab.stack_combo.setCurrentIndex(tab.stack_combo.findData("z"))  # the fix the line names
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    np.testing.assert_array_equal(viewer.layers["stack prediction"].data,
                                  predict(model_of(widget), volume, output="instances", stack="z", anisotropy=1.0))
    tab.stack_combo.setCurrentIndex(tab.stack_combo.findData("z"))
    viewer.add_image(np.stack([volume, volume]), name="two volumes")
    tab.image_combo.reset_choices()
    tab.image_combo.select("two volumes")
    assert tab.predict() is None and "a time-lapse (T)" in errors(notifications)[-1]


def _predicted_volume(qtbot, viewer, widget, volume, scale):
    viewer.add_image(volume, name="nuclei", scale=scale)
    tab = widget.predict_tab
    tab.instances_check.setChecked(False)
    tab.scope_combo.setCurrentText("all slices")
    assert wait_for(qtbot, tab.predict()).error is None
    correct = widget.training_set_tab
    correct.follow_new_layers()
    correct.image_combo.select("nuclei")
    correct.labels_combo.select("nuclei prediction")
    return viewer.layers["nuclei prediction"], correct


def test_corrected_planes_of_a_volume_become_pairs_with_side_views_where_voxels_are_cubic(
        qtbot, dock, notifications):
    from napari_unet.labels.masks import IGNORE_LABEL

    viewer, widget = dock
    volume = balls_volume()
    labels, correct = _predicted_volume(qtbot, viewer, widget, volume, scale=(1.0, 1.0, 1.0))
    assert correct.add_corrected_planes() is None and "no plane" in errors(notifications)[-1]  # nothing corrected yet
    labels.brush_size = 6
    labels.paint((3, 24, 15), 2)  # a change (predicted labels are 0 and 1)
    before = labels.data[7].copy()
    rows, cols = np.nonzero(np.ones((4, 4), dtype=bool))
    labels.data_setitem((np.full(16, 7), rows + 8, cols + 8), 2)  # painted, then put back as it was: the user
    labels.data_setitem((np.full(16, 7), rows + 8, cols + 8), before[rows + 8, cols + 8])  # checked the plane
    np.testing.assert_array_equal(labels.data[7], before)
    job = wait_for(qtbot, correct.add_corrected_planes())
    assert job.error is None, errors(notifications)
    training = widget.session.project.training
    names = training.names()
    assert {"nuclei_z3", "nuclei_z7"} <= set(names)
    side = [name for name in names if "_xz_" in name or "_yz_" in name]
    assert side and all(name.startswith("nuclei_") for name in side)
    image, mask = training.load("nuclei_z3")
    np.testing.assert_array_equal(image, volume[3])
    np.testing.assert_array_equal(mask > 0, labels.data[3] > 0)
    _, side_mask = training.load(side[0])  # (Z, X) or (Z, Y): the corrected rows, and those left as predicted
    annotated_rows = np.flatnonzero((side_mask != IGNORE_LABEL).any(axis=1))
    assert annotated_rows.tolist() == list(range(volume.shape[0]))
    assert "planes 3, 7" in notifications[-1][1]
    assert widget.session.project.volumes.names() == ["nuclei"]  # kept: rounds are scored on it in 3-D
    # A plane for evaluation only: a whole plane, never trained on, even when the training planes are added again.
    labels.paint((5, 24, 31), 2)
    correct.evaluation_check.setChecked(True)
    assert wait_for(qtbot, correct.add_corrected_planes()).error is None, errors(notifications)
    assert widget.session.project.evaluation.names() == ["nuclei_z5"]  # z3, z7 are training pairs already
    correct.evaluation_check.setChecked(False)
    assert wait_for(qtbot, correct.add_corrected_planes()).error is None, errors(notifications)
    assert sorted(training.names()) == sorted(names)  # z3, z7 and the views updated in place, z5 left out
    for name in side:  # plane 5's labels are in no training side view either
        assert not (training.load(name)[1][5] != IGNORE_LABEL).any()
    assert "Planes 5 are already evaluation pairs" in notifications[-1][1]


def test_a_strongly_anisotropic_volume_gives_plane_pairs_only(qtbot, dock, notifications):
    viewer, widget = dock
    labels, correct = _predicted_volume(qtbot, viewer, widget, balls_volume(), scale=(3.0, 1.0, 1.0))
    labels.brush_size = 6
    labels.paint((2, 24, 15), 2)
    labels.paint((5, 24, 31), 2)
    assert wait_for(qtbot, correct.add_corrected_planes()).error is None, errors(notifications)
    assert sorted(widget.session.project.training.names()) == ["nuclei_z2", "nuclei_z5"]

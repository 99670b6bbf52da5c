"""The dock's Predict tab in a real napari viewer: predict into a labels layer, channels, cancel, bad input in
words, the threshold slider and views menu, instances and the shipped models' quick first predict.

Behaviour (accuracy, training) is tested on the core; here: does each control reach the core in the dock's worker
process, land its result in the right layer, and say what went wrong in words? The tests' own process loads models to
compare with (TensorFlow, imported before the first viewer: conftest.py). Fixtures (dock, notifications, blobs_image,
tiny_model_path) and helpers: dock_fixtures.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from dock_fixtures import (
    errors,
    model_of,
    wait_for,
)

from napari_unet.errors import Cancelled
from napari_unet.model import UNetConfig, new_model, save_model


def test_predict_adds_a_labels_layer_named_after_the_image(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    widget.predict_tab.probabilities_check.setChecked(True)
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    labels = viewer.layers["cells prediction"]
    probability = viewer.layers["cells probability"]
    assert labels.data.shape == blobs_image.shape and probability.data.shape == blobs_image.shape
    from napari_unet.inference.prediction import predict

    expected = predict(model_of(widget), blobs_image, output="labels", threshold=0.5)
    np.testing.assert_array_equal(labels.data, expected)
    assert widget.predict_tab.progress_bar.value() == widget.predict_tab.progress_bar.maximum()


def test_predict_writes_only_the_displayed_slice_of_a_stack(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    stack = np.stack([blobs_image, np.roll(blobs_image, 20, axis=1), blobs_image[::-1]])
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 2)
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    labels = viewer.layers["stack prediction"].data
    assert labels.shape == stack.shape
    assert not labels[:2].any()
    from napari_unet.inference.prediction import predict

    np.testing.assert_array_equal(labels[2], predict(model_of(widget), stack[2], output="labels"))


def test_instances_option_numbers_each_object(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    widget.predict_tab.instances_check.setChecked(True)
    widget.predict_tab.probabilities_check.setChecked(True)  # the path that thresholds in the widget's worker
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    from napari_unet.inference.prediction import predict

    expected = predict(model_of(widget), blobs_image, output="instances")
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)


def test_rgb_image_with_a_one_channel_model_is_converted_only_when_the_user_chooses(qtbot, dock, blobs_image,
                                                                                     notifications):
    viewer, widget = dock
    viewer.add_image(np.dstack([blobs_image] * 3), name="colour", rgb=True)
    tab = widget.predict_tab
    tab.image_combo.select("colour")
    texts = [tab.channels_combo.itemText(i) for i in range(tab.channels_combo.count())]
    assert "grey" in " ".join(texts) and "red only" in texts
    job = wait_for(qtbot, tab.predict())  # nothing chosen: refused, naming the fix
    assert job.error is not None and "convert to grey" in errors(notifications)[-1]
    tab.channels_combo.setCurrentIndex(tab.channels_combo.findData("grey"))
    job = wait_for(qtbot, tab.predict())
    assert job.error is None, errors(notifications)
    assert viewer.layers["colour prediction"].data.shape == blobs_image.shape
    viewer.add_image(np.stack([blobs_image] * 3), name="three planes")  # a (Z, Y, X) stack, not colour
    tab.image_combo.reset_choices()
    tab.image_combo.select("three planes")
    assert tab.channels_combo.itemText(0).startswith("as they are") and tab.channels_combo.count() == 1


def test_multichannel_layer_with_a_two_channel_model(qtbot, dock, blobs_image, notifications, tmp_path):
    viewer, widget = dock
    path = tmp_path / "two_channels.keras"
    save_model(new_model(UNetConfig(n_channels=2, base_width=4, depth=2), tile_size=64), path)
    widget.session.select_model(str(path))
    viewer.add_image(np.stack([blobs_image, 255 - blobs_image]), name="two channels")  # (C, Y, X) in one layer
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is None, errors(notifications)
    assert viewer.layers["two channels prediction"].data.shape == blobs_image.shape

    viewer.add_image(blobs_image, name="grey")  # one channel for a two-channel model: refused in words
    widget.predict_tab.image_combo.select("grey")
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is not None and "reads 2 channels" in errors(notifications)[-1]


def test_cancel_stops_prediction_without_a_layer(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(np.stack([blobs_image] * 40), name="long stack")
    widget.predict_tab.scope_combo.setCurrentText("all slices")
    job = widget.predict_tab.predict()
    job._relay.progress.connect(lambda value: widget.predict_tab.cancel())  # cancel at the first tile
    wait_for(qtbot, job)
    assert isinstance(job.error, Cancelled)
    assert "long stack prediction" not in [layer.name for layer in viewer.layers]
    assert any("cancelled" in message for _, message in notifications)
    assert widget.predict_tab.predict_button.isEnabled()


def test_removing_the_image_mid_prediction_discards_the_result(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    layer = viewer.add_image(blobs_image, name="gone")
    job = widget.predict_tab.predict()
    viewer.layers.remove(layer)  # before the worker's result can reach the GUI thread
    wait_for(qtbot, job)
    assert [layer.name for layer in viewer.layers] == []
    assert any("'gone' was removed" in message for _, message in notifications)
    assert not errors(notifications)


def test_bad_input_is_reported_in_words(qtbot, dock, blobs_image, notifications, tmp_path):
    viewer, widget = dock
    assert widget.predict_tab.predict() is None
    assert "there is no image layer" in errors(notifications)[-1]

    viewer.add_image(blobs_image, name="cells")
    viewer.add_labels(np.zeros((50, 50), dtype=np.uint8), name="cells prediction")
    assert widget.training_set_tab.add_current() is None
    assert "'cells prediction' is 50×50 but image 'cells' is 96×96" in errors(notifications)[-1]

    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    widget.session.select_model(str(broken))
    job = wait_for(qtbot, widget.predict_tab.predict())
    assert job.error is not None
    assert "not a valid .keras model file" in errors(notifications)[-1]
    assert "Prediction of 'cells'" in errors(notifications)[-1]


# --- live threshold: the slider re-thresholds the last prediction from its cached probabilities (the model:
# contrasty_dock in dock_fixtures.py) ---


def _mask_changing_steps(probabilities, current_step=50) -> list[int]:
    """Slider steps whose mask is neither empty nor full and differs from the current step's."""
    current = probabilities > current_step / 100
    steps = [step for step in range(45, 56)
             if 0 < (probabilities > step / 100).mean() < 1 and not np.array_equal(probabilities > step / 100, current)]
    assert len(steps) >= 2, "the model's probabilities do not straddle the slider steps near 0.5"
    return steps


def _counting_predict(monkeypatch, widget) -> list:
    """Record every prediction the dock asks its worker process for."""
    calls, worker = [], widget.session.worker
    original = worker.submit
    monkeypatch.setattr(worker, "submit", lambda task, args, listener: (
        calls.append(task) if task.startswith("predict") else None, original(task, args, listener))[1])
    return calls


def test_threshold_slider_rethresholds_the_last_prediction_without_the_model(qtbot, contrasty_dock, blobs_image,
                                                                             notifications, monkeypatch):
    from napari_unet._widgets import _live_threshold
    from napari_unet.inference.prediction import predict

    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    viewer.add_image(blobs_image, name="cells")
    job = wait_for(qtbot, tab.predict())
    assert job.error is None, errors(notifications)
    layer = viewer.layers["cells prediction"]
    probabilities = predict(model_of(widget), blobs_image, output="probabilities")
    first_step, second_step = _mask_changing_steps(probabilities)[:2]
    model_runs = _counting_predict(monkeypatch, widget)

    tab.threshold_slider.setValue(first_step)  # small map: re-thresholded on the GUI thread
    expected = (probabilities > first_step / 100).astype(np.uint8)  # the engine's comparison (semantic_labels)
    qtbot.waitUntil(lambda: np.array_equal(layer.data, expected), timeout=5_000)
    assert tab.threshold_job is None

    monkeypatch.setattr(_live_threshold, "INLINE_PIXELS", 0)  # as for a large map: in a worker
    tab.threshold_slider.setValue(second_step)
    qtbot.waitUntil(lambda: tab.threshold_job is not None and tab.threshold_job.done, timeout=5_000)
    assert tab.threshold_job.error is None, errors(notifications)
    np.testing.assert_array_equal(layer.data, probabilities > second_step / 100)
    assert model_runs == [] and tab.job is job
    assert [lyr.name for lyr in viewer.layers] == ["cells", "cells prediction"]

    layer.paint((20, 20), 1 - int(layer.data[20, 20]))  # the re-thresholded mask counts as the prediction:
    job = wait_for(qtbot, tab.predict())  # a correction is still detected, and the next Predict keeps it
    assert len(model_runs) == 1 and "cells prediction [2]" in viewer.layers
    np.testing.assert_array_equal(viewer.layers["cells prediction [2]"].data, probabilities > second_step / 100)


def test_threshold_slider_leaves_a_corrected_prediction_alone(qtbot, contrasty_dock, blobs_image, notifications):
    from napari_unet._widgets._session import PREDICTION_KEY
    from napari_unet._widgets.predict_widget import THRESHOLD_DEBOUNCE_MS
    from napari_unet.inference.prediction import predict

    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    viewer.add_image(blobs_image, name="cells")
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    layer = viewer.layers["cells prediction"]
    predicted = layer.metadata[PREDICTION_KEY].copy()
    layer.paint((20, 20), 1 - int(layer.data[20, 20]))  # a brush stroke
    corrected = layer.data.copy()
    assert not np.array_equal(corrected, predicted)

    probabilities = predict(model_of(widget), blobs_image, output="probabilities")
    tab.threshold_slider.setValue(_mask_changing_steps(probabilities)[0])
    qtbot.waitUntil(lambda: "corrections in 'cells prediction' are kept" in tab.status_label.text(),
                    timeout=THRESHOLD_DEBOUNCE_MS + 5_000)
    np.testing.assert_array_equal(layer.data, corrected)
    np.testing.assert_array_equal(layer.metadata[PREDICTION_KEY], predicted)
    assert [lyr.name for lyr in viewer.layers] == ["cells", "cells prediction"]


def test_threshold_slider_recomputes_instances_of_the_predicted_slice_only(qtbot, contrasty_dock, blobs_image,
                                                                          notifications):
    from napari_unet.inference.prediction import predict
    from napari_unet.labels.postprocess import instances_from_labels

    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    stack = np.stack([blobs_image, np.roll(blobs_image, 20, axis=1), blobs_image[::-1]])
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    tab.instances_check.setChecked(True)
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    layer = viewer.layers["stack prediction"]
    probabilities = predict(model_of(widget), stack[1], output="probabilities")
    step = next(step for step in _mask_changing_steps(probabilities)
                if instances_from_labels((probabilities > step / 100).astype(np.uint8)).max() > 0)
    expected = instances_from_labels((probabilities > step / 100).astype(np.uint8), objects="foreground")
    assert not np.array_equal(layer.data[1], expected)

    tab.threshold_slider.setValue(step)
    qtbot.waitUntil(lambda: np.array_equal(layer.data[1], expected), timeout=5_000)
    assert layer.data.dtype == np.int32 and not layer.data[[0, 2]].any()


def test_views_menu_averages_that_many_flipped_predictions(qtbot, contrasty_dock, blobs_image, notifications):
    from napari_unet.inference.prediction import predict

    viewer, widget = contrasty_dock
    tab = widget.predict_tab
    assert tab.views_combo.currentData() == 1  # fastest by default
    viewer.add_image(blobs_image, name="cells")
    tab.probabilities_check.setChecked(True)
    tab.views_combo.setCurrentIndex(tab.views_combo.findData(2))
    job = wait_for(qtbot, tab.predict())
    assert job.error is None, errors(notifications)
    model = model_of(widget)
    two_views = predict(model, blobs_image, output="probabilities", test_time_augmentation=2)
    np.testing.assert_allclose(viewer.layers["cells probability"].data, two_views, atol=1e-6)
    assert np.abs(two_views - predict(model, blobs_image, output="probabilities")).max() > 0.01


def test_the_nuclei_model_predicts_separate_objects_by_default(dock):
    viewer, widget = dock
    tab = widget.predict_tab
    widget.session.select_model("nuclei")
    assert tab.instances_check.isChecked()  # its metadata: seeded watershed
    nuclei_min_size = widget.session.model_metadata().min_size
    assert tab.min_size_spin.isEnabled() and tab.min_size_spin.value() == nuclei_min_size
    widget.session.select_model("membranes")
    assert not tab.instances_check.isChecked() and not tab.min_size_spin.isEnabled()


def test_smallest_object_size_decides_which_objects_predict_keeps(qtbot, dock, notifications):
    """The dock's 'Smallest object' overrides the model's own size (nuclei: chosen on validation)."""
    from napari_unet._sample_data import load_nuclei

    viewer, widget = dock
    viewer.add_image(load_nuclei("nuclei_sparse")[0], name="cells")
    widget.session.select_model("nuclei")
    tab = widget.predict_tab
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    default = viewer.layers["cells prediction"].data.copy()
    median = int(np.median(np.bincount(default.ravel())[1:]))
    tab.min_size_spin.setValue(median)
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    kept = viewer.layers["cells prediction"].data
    assert 0 < kept.max() < default.max() and np.bincount(kept.ravel())[1:].min() >= median


def test_first_predict_of_a_shipped_model_runs_on_its_onnx_twin_then_on_tensorflow(qtbot, dock, notifications):
    """While the worker process has not loaded the model, Predict runs its twin in napari's process (onnx_engine.py):
    the same objects."""
    pytest.importorskip("onnxruntime")
    from napari_unet._sample_data import load_nuclei
    from napari_unet._widgets.predict_widget import ONNX_RUNTIME, TENSORFLOW
    from napari_unet.inference.prediction import predict

    viewer, widget = dock
    image = load_nuclei("nuclei_sparse")[0]
    viewer.add_image(image, name="cells")
    widget.session.select_model("nuclei")
    tab = widget.predict_tab
    assert any(job.what == "Preparing the quick start" for job in widget.session.jobs)  # opened with membranes
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    assert tab.engine == ONNX_RUNTIME and "ONNX Runtime" in tab.status_label.text()
    first = viewer.layers["cells prediction"].data.copy()
    assert wait_for(qtbot, widget._warm_up()).error is None  # the dock's warm-up: from now on the worker serves
    same = first == predict(model_of(widget, "nuclei"), image, output="instances", precision="float32")
    assert same.mean() > 0.999 and first.max() > 5
    assert wait_for(qtbot, tab.predict()).error is None, errors(notifications)
    assert tab.engine == TENSORFLOW and "ONNX Runtime" not in tab.status_label.text()
    assert (viewer.layers["cells prediction"].data > 0).mean() == pytest.approx((first > 0).mean(), abs=0.01)

"""The dock's Training set tab in a real napari viewer: adding the corrected prediction as a pair, and the shortcuts.

Behaviour (accuracy, training) is tested on the core; here: does each control reach the core in the dock's worker
process, land its result in the right layer, and say what went wrong in words? The tests' own process loads models to
compare with (TensorFlow, imported before the first viewer: conftest.py). Fixtures (dock, notifications, blobs_image,
tiny_model_path) and helpers: dock_fixtures.py.
"""

from __future__ import annotations

import numpy as np
from dock_fixtures import (
    errors,
    wait_for,
)
from qtpy.QtCore import Qt


def test_only_where_corrected_needs_a_prediction(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    viewer.add_labels((blobs_image > 100).astype(np.uint8), name="cells prediction")  # painted, not predicted
    widget.training_set_tab.only_corrected_check.setChecked(True)
    job = wait_for(qtbot, widget.training_set_tab.add_current())
    assert job.error is not None and "needs the original prediction" in errors(notifications)[-1]
    assert widget.session.training_set.pairs() == []


def test_shortcuts_predict_and_add_to_training_set(qtbot, dock, blobs_image, notifications):
    viewer, widget = dock
    viewer.add_image(blobs_image, name="cells")
    canvas = viewer.window._qt_viewer.canvas.native  # noqa: SLF001 (the widget napari reads keys from)
    qtbot.keyClick(canvas, Qt.Key.Key_U, Qt.KeyboardModifier.ShiftModifier)
    wait_for(qtbot, widget.predict_tab.job)
    assert "cells prediction" in [layer.name for layer in viewer.layers], errors(notifications)
    labels = viewer.layers["cells prediction"]
    before = labels.data.copy()
    labels.paint((20, 20), 1)  # as a brush stroke would
    changes = widget.training_set_tab.show_changes().data
    np.testing.assert_array_equal(changes.astype(bool), labels.data != before)
    qtbot.keyClick(canvas, Qt.Key.Key_T, Qt.KeyboardModifier.ShiftModifier)
    wait_for(qtbot, widget.training_set_tab.job)
    assert widget.session.training_set.names() == ["cells"], errors(notifications)

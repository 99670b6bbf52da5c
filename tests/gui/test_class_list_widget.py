"""The Correct tab's class list in a real viewer: names, napari's label colours, the brush's label value."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt

from napari_unet._widgets.launch import PLUGIN
from napari_unet.labels.classes import SegmentationClass
from napari_unet.project import Project


def _dock_with_classes(make_napari_viewer, project):
    """A viewer with an image, its labels layer chosen in the Correct tab, and `project`'s class list."""
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    dock._warm_up_timer.stop()
    viewer.add_image(np.zeros((32, 32), np.float32), name="cells")
    labels = viewer.add_labels(np.zeros((32, 32), np.uint8), name="cells labels")
    tab = dock.training_set_tab
    tab.set_folder(str(project.root))
    tab.labels_combo.select("cells labels")
    return viewer, dock, labels, tab.class_list


def test_choosing_a_class_sets_the_brush_label_and_shows_napari_colours(make_napari_viewer, qtbot, tmp_path,
                                                                         start_model):
    project = Project.init(tmp_path / "project", start_model, classes=[
        SegmentationClass("nucleus"), SegmentationClass("cytoplasm", objects=False),
        SegmentationClass("membrane", "#ffff00")])
    viewer, dock, labels, class_list = _dock_with_classes(make_napari_viewer, project)
    rows = [class_list.list.item(row) for row in range(class_list.list.count())]
    assert [row.text() for row in rows] == ["1  nucleus", "2  cytoplasm  (region)", "3  membrane"]
    # The swatch is the colour the layer paints the label in: napari's own for 2, the declared one for 3.
    swatches = [row.icon().pixmap(14, 14).toImage().pixelColor(7, 7) for row in rows]
    napari_colour = labels.get_color(2)
    assert abs(swatches[1].redF() - napari_colour[0]) < 0.01 and abs(swatches[1].greenF() - napari_colour[1]) < 0.01
    assert swatches[2].name() == "#ffff00" and np.allclose(labels.get_color(3)[:3], (1, 1, 0))

    viewer.layers.selection.active = viewer.layers["cells"]
    rect = class_list.list.visualItemRect(rows[1])
    qtbot.mouseClick(class_list.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert labels.selected_label == 2 and labels.mode == "paint" and viewer.layers.selection.active is labels

    class_list.new_class_edit.setText("vacuole")
    class_list.add_button.click()
    assert [c.name for c in project.classes][-1] == "vacuole" and class_list.list.count() == 4
    qtbot.mouseClick(class_list.list.viewport(), Qt.MouseButton.LeftButton,
                     pos=class_list.list.visualItemRect(class_list.list.item(3)).center())
    assert labels.selected_label == 4
    qtbot.waitUntil(lambda: all(job.done for job in dock.session.jobs), timeout=60_000)


def test_classes_are_recoloured_renamed_and_made_regions_in_the_class_list(make_napari_viewer, qtbot, tmp_path,
                                                                           start_model, monkeypatch, notifications):
    from dock_fixtures import errors, wait_for
    from qtpy.QtGui import QColor
    from qtpy.QtWidgets import QColorDialog

    from napari_unet.labels.classes import ADD_CLASS_IN_THE_DOCK

    project = Project.init(tmp_path / "project", start_model, classes=[SegmentationClass("nucleus"),
                                                                        SegmentationClass("rim")])
    viewer, dock, labels, class_list = _dock_with_classes(make_napari_viewer, project)
    tab = dock.training_set_tab

    class_list.rename_button.click()  # nothing chosen yet: one line saying what to do
    assert "choose a class in the list first" in errors(notifications)[-1]
    class_list.list.setCurrentRow(1)
    monkeypatch.setattr(QColorDialog, "getColor", lambda *args: QColor("#00c0ff"))
    class_list.colour_button.click()
    assert project.classes[1].colour == "#00c0ff"
    assert np.allclose(labels.get_color(2)[:3], (0, 0xC0 / 255, 1), atol=0.01)  # the layer paints it so
    swatch = class_list.list.item(1).icon().pixmap(14, 14).toImage().pixelColor(7, 7)
    assert swatch.red() == 0 and abs(swatch.green() - 0xC0) <= 4 and swatch.blue() == 255

    class_list.new_class_edit.setText("ring")
    class_list.rename_button.click()
    class_list.kind_button.click()
    assert [(c.name, c.objects) for c in project.classes] == [("nucleus", True), ("ring", False)]
    assert class_list.list.item(1).text() == "2  ring  (region)" and class_list.chosen_value() == 2
    class_list.new_class_edit.setText("nucleus")
    class_list.rename_button.click()
    assert "already used" in errors(notifications)[-1] and "\n" not in errors(notifications)[-1]

    labels.data = np.where(np.eye(32, dtype=bool), 3, 1).astype(np.uint8)  # 3: beyond the two classes
    job = wait_for(qtbot, tab.add_current())
    message = errors(notifications)[-1]
    assert job.error is not None and "value(s) 3" in message and message.endswith(ADD_CLASS_IN_THE_DOCK)
    assert "\n" not in message and not project.training.pairs()
    qtbot.waitUntil(lambda: all(job.done for job in dock.session.jobs), timeout=60_000)

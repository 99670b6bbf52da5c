"""The project's classes in the Correct tab: name and colour of each label value; choosing one sets the brush."""

from __future__ import annotations

from typing import Callable

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from napari_unet.errors import NapariUNetError
from napari_unet.labels.classes import SegmentationClass, parse_classes


def class_colours(classes: list[SegmentationClass], layer: Labels | None) -> list[np.ndarray]:
    """RGBA (0..1) of each class: its declared colour, else the colour the Labels layer shows its label value in
    (napari's own label colours), else grey without a layer."""
    colours = []
    for value, segmentation_class in enumerate(classes, start=1):
        if segmentation_class.colour:
            colours.append(np.asarray(QColor(segmentation_class.colour).getRgbF(), dtype=float))
        elif layer is not None:
            colours.append(np.asarray(layer.get_color(value), dtype=float))
        else:
            colours.append(np.array([0.5, 0.5, 0.5, 1.0]))
    return colours


def show_declared_colours(layer: Labels, classes: list[SegmentationClass]) -> None:
    """Paint the classes with declared colours in them in `layer` (the rest keep napari's colours)."""
    from napari.utils.colormaps import DirectLabelColormap

    declared = {value: c.colour for value, c in enumerate(classes, start=1) if c.colour}
    if not declared:
        return
    colours = {None: "transparent", 0: "transparent"}
    for value in range(1, len(classes) + 1):
        colours[value] = declared.get(value) or tuple(layer.get_color(value))
    layer.colormap = DirectLabelColormap(color_dict={**colours, None: (0.5, 0.5, 0.5, 1.0)})


class ClassList(QWidget):
    """One row per class (label value, colour, name); clicking a row selects that label for the brush in the
    Labels layer `labels_layer()` returns. 'Add class' declares one more class after the existing ones."""

    def __init__(self, project: Callable, labels_layer: Callable, viewer, parent=None):
        super().__init__(parent)
        self.project, self.labels_layer, self.viewer = project, labels_layer, viewer
        self.list = QListWidget()
        self.list.setToolTip("choose a class to paint it: the brush gets its label value")
        self.list.setMaximumHeight(120)
        self.new_class_edit = QLineEdit()
        self.new_class_edit.setPlaceholderText("new class, e.g. cytoplasm or cytoplasm:#00ff00")
        self.add_button = QPushButton("Add class")
        self.add_button.setToolTip("declare one more class, painted with the next label value")
        add_row = QHBoxLayout()
        add_row.addWidget(self.new_class_edit, 1)
        add_row.addWidget(self.add_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Classes (0 background, 255 not sure)"))
        layout.addWidget(self.list)
        layout.addLayout(add_row)
        self.list.itemClicked.connect(self.choose)
        self.add_button.clicked.connect(self.add_class)
        self.new_class_edit.returnPressed.connect(self.add_class)
        self.refresh()

    def refresh(self) -> None:
        """Show the project's classes in the colours the chosen Labels layer paints them."""
        classes = self.project().classes
        layer = self.labels_layer()
        if layer is not None:
            show_declared_colours(layer, classes)
        self.list.clear()
        for value, (segmentation_class, colour) in enumerate(zip(classes, class_colours(classes, layer)), start=1):
            swatch = QPixmap(14, 14)
            swatch.fill(QColor.fromRgbF(*[float(c) for c in colour[:3]], 1.0))
            kind = "" if segmentation_class.objects or len(classes) == 1 else "  (region)"
            item = QListWidgetItem(QIcon(swatch), f"{value}  {segmentation_class.name}{kind}")
            item.setData(Qt.ItemDataRole.UserRole, value)
            self.list.addItem(item)

    def choose(self, item: QListWidgetItem) -> None:
        """The brush paints this class: the Labels layer becomes active, in paint mode, with the class's label."""
        layer = self.labels_layer()
        if layer is None:
            show_error("There is no Labels layer to paint in: predict an image first (Predict tab), or add one.")
            return
        self.viewer.layers.selection.active = layer
        layer.selected_label = int(item.data(Qt.ItemDataRole.UserRole))
        layer.mode = "paint"

    def add_class(self) -> None:
        text = self.new_class_edit.text().strip()
        if not text:
            return
        project = self.project()
        try:
            classes = project.set_classes([*project.classes, *parse_classes(text)])
        except NapariUNetError as exc:
            show_error(f"Add class: {exc}")
            return
        self.new_class_edit.clear()
        self.refresh()
        show_info(f"Classes of the project: {', '.join(f'{v} {c.name}' for v, c in enumerate(classes, start=1))}.")

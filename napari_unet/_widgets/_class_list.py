"""The project's classes in the Correct tab: name and colour of each label value; choosing one sets the brush."""

from __future__ import annotations

from typing import Callable

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QColorDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet.errors import NapariUNetError
from napari_unet.labels.classes import SegmentationClass, describe, parse_classes


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
    Labels layer `labels_layer()` returns. 'Add class' declares one more class after the existing ones; the chosen
    class can be renamed, recoloured (the Labels layer paints it in its new colour) or made an object class or a
    region (project.edit_classes: label values keep their meaning, so painted pairs stay valid)."""

    def __init__(self, project: Callable, labels_layer: Callable, viewer, parent=None):
        super().__init__(parent)
        self.project, self.labels_layer, self.viewer = project, labels_layer, viewer
        self.list = QListWidget()
        self.list.setToolTip("choose a class to paint it: the brush gets its label value")
        self.list.setMaximumHeight(120)
        self.new_class_edit = QLineEdit()
        self.new_class_edit.setPlaceholderText("new class (e.g. cytoplasm or cytoplasm:#00ff00), or a new name")
        self.add_button = QPushButton("Add class")
        self.add_button.setToolTip("declare one more class, painted with the next label value")
        self.rename_button = QPushButton("Rename")
        self.rename_button.setToolTip("give the chosen class the name typed on the left (its label value stays)")
        self.colour_button = QPushButton("Colour…")
        self.colour_button.setToolTip("choose the colour the chosen class is painted and shown in")
        self.kind_button = QPushButton("Object ⇄ region")
        self.kind_button.setToolTip("object class: its regions are separated into objects (Predict's 'separate "
                                    "objects'); region: it is labelled, not split (e.g. cytoplasm)")
        add_row = QHBoxLayout()
        add_row.addWidget(self.new_class_edit, 1)
        add_row.addWidget(self.add_button)
        add_row.addWidget(self.rename_button)
        edit_row = QHBoxLayout()
        edit_row.addWidget(self.colour_button)
        edit_row.addWidget(self.kind_button)
        edit_row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Classes (0 background, 255 not sure)"))
        layout.addWidget(self.list)
        layout.addLayout(add_row)
        layout.addLayout(edit_row)
        self.list.itemClicked.connect(self.choose)
        self.add_button.clicked.connect(self.add_class)
        self.new_class_edit.returnPressed.connect(self.add_class)
        self.rename_button.clicked.connect(self.rename_chosen)
        self.colour_button.clicked.connect(self.choose_colour)
        self.kind_button.clicked.connect(self.toggle_kind)
        self.refresh()

    def refresh(self) -> None:
        """Show the project's classes in the colours the chosen Labels layer paints them."""
        chosen = self.chosen_value()
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
        if chosen is not None and chosen <= self.list.count():
            self.list.setCurrentRow(chosen - 1)

    def chosen_value(self) -> int | None:
        """The label value of the class chosen in the list, or None."""
        item = self.list.currentItem()
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

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
        show_info(f"Classes of the project: {describe(classes)}.")

    def _chosen_class(self, what: str) -> SegmentationClass | None:
        value = self.chosen_value()
        if value is None:
            show_error(f"{what}: choose a class in the list first.")
            return None
        return self.project().classes[value - 1]

    def _edit(self, what: str, **changes) -> bool:
        """project.edit_classes with `changes`; errors and notes shown in one line each."""
        try:
            note = self.project().edit_classes(**changes)
        except NapariUNetError as exc:
            show_error(f"{what}: {exc}")
            return False
        self.refresh()
        show_info(note or f"Classes of the project: {describe(self.project().classes)}.")
        return True

    def rename_chosen(self) -> None:
        """The chosen class takes the name typed in the box."""
        chosen = self._chosen_class("Rename")
        name = self.new_class_edit.text().strip()
        if chosen is None:
            return
        if not name:
            show_error("Rename: type the class's new name in the box, then press Rename.")
            return
        if self._edit("Rename", rename={chosen.name: name}):
            self.new_class_edit.clear()

    def choose_colour(self) -> None:
        """Pick the chosen class's colour in a colour dialog."""
        chosen = self._chosen_class("Colour")
        if chosen is None:
            return
        layer = self.labels_layer()
        current = class_colours([chosen], None)[0] if chosen.colour else (
            layer.get_color(self.chosen_value()) if layer is not None else None)
        start = QColor.fromRgbF(*[float(c) for c in current[:3]], 1.0) if current is not None else QColor("white")
        colour = QColorDialog.getColor(start, self, f"Colour of '{chosen.name}'")
        if colour.isValid():
            self.recolour(chosen.name, colour.name())

    def recolour(self, name: str, colour: str) -> bool:
        """Class `name` is painted and shown in `colour` ('#rrggbb'), in the Labels layer too."""
        return self._edit("Colour", colours={name: colour})

    def toggle_kind(self) -> None:
        """The chosen object class becomes a region, the chosen region an object class."""
        chosen = self._chosen_class("Object ⇄ region")
        if chosen is not None:
            self._edit("Object ⇄ region", **({"regions": [chosen.name]} if chosen.objects else {"objects": [chosen.name]}))

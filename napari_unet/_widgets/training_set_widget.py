"""Correct tab: store the corrected labels of the displayed image as a training or evaluation pair of the
project; list and remove pairs."""

from __future__ import annotations

from functools import partial

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets._class_list import ClassList
from napari_unet._widgets._layers import (
    LayerChooser,
    check_same_plane_shape,
    current_index,
    describe_index,
    image_data,
    layer_array,
    stack_depth,
)
from napari_unet._widgets._lazy_prediction import is_lazy, visible_region
from napari_unet._widgets._session import PAINTED_PLANES_KEY, PREDICTION_KEY, Session, prediction_layer_name
from napari_unet._widgets._workers import Job
from napari_unet.errors import NapariUNetError
from napari_unet.labels.classes import ADD_CLASS_IN_THE_DOCK
from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.training.training_set import changed_pixels, restrict_to_corrections, thumbnail

ADD_SHORTCUT = "Shift+T"
HELP_TEXT = (
    "Correct the prediction with napari's brush (choose a class below: its label value) and eraser (label 0). "
    f"Paint label {IGNORE_LABEL} where you are not sure: those pixels are left out of training. "
    "'Train only where I corrected' keeps just the pixels near your changes. Pairs added 'for evaluation "
    "only' are never trained on: every round is scored on them."
)


def build_training_pair(image_plane: np.ndarray, labels_plane: np.ndarray, prediction_plane: np.ndarray | None,
                        only_corrected: bool, margin: int) -> tuple[np.ndarray, bool]:
    """(mask as painted, sparse?) from copies of the layers' planes — core calls only.

    The labels are stored as painted (instance ids stay): masks.py decides once what they mean for training.
    """
    mask = np.asarray(labels_plane)
    if only_corrected:
        if prediction_plane is None:
            raise NapariUNetError(
                "'train only where I corrected' needs the original prediction, but this Labels layer was not made "
                "by Predict (or was replaced): predict the image first, correct that layer, or switch the option off")
        mask = restrict_to_corrections(mask, prediction_plane, labels_plane, margin)
    return mask, bool(only_corrected or np.any(mask == IGNORE_LABEL))


def _pixmap(array: np.ndarray) -> QPixmap:
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    if array.ndim == 2:
        image = QImage(array.data, width, height, width, QImage.Format.Format_Grayscale8)
    else:
        image = QImage(array.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


class TrainingSetWidget(QWidget):
    """'Add to training set' + the list of stored pairs (thumbnail, name, size, foreground) with Remove."""

    def __init__(self, viewer, session: Session, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = session
        self.job: Job | None = None
        self.list_job: Job | None = None

        help_label = QLabel(HELP_TEXT)
        help_label.setWordWrap(True)
        self.image_combo = LayerChooser(Image, "the image that was corrected")
        self.labels_combo = LayerChooser(Labels, "its corrected labels (the prediction layer you painted)")
        self.folder_edit = QLineEdit(str(session.project.root))
        self.folder_edit.setToolTip("project folder: training pairs, evaluation/ pairs, models/ and rounds/ (autosaved)")
        self.folder_button = QPushButton("…")
        self.only_corrected_check = QCheckBox("train only where I corrected")
        self.only_corrected_check.setToolTip(
            "pixels farther than the margin from your changes are stored as 'not annotated'")
        self.margin_spin = QSpinBox()
        self.margin_spin.setRange(0, 500)
        self.margin_spin.setValue(16)
        self.margin_spin.setSuffix(" px")
        self.evaluation_check = QCheckBox("for evaluation only (never trained on)")
        self.evaluation_check.setToolTip(
            "a fixed pair every round is scored on: the Fine-tune tab plots IoU and Dice of each round on these")
        self.changes_button = QPushButton("Show my changes")
        self.changes_button.setToolTip("a layer marking where the labels differ from the prediction")
        self.ignore_button = QPushButton(f"Paint 'not sure' ({IGNORE_LABEL})")
        self.ignore_button.setToolTip("selects the brush with label 255 in the Labels layer")
        self.add_button = QPushButton(f"Add to training set  [{ADD_SHORTCUT}]")
        self.add_planes_button = QPushButton("Add corrected planes of the volume")
        self.add_planes_button.setToolTip(
            "a (Z, Y, X) volume: every plane you painted or whose labels differ from the prediction becomes a pair; "
            "where the Z step is at most twice the pixel size (the layer's scale), its XZ and YZ views too")
        self.pair_list = QListWidget()
        self.pair_list.setIconSize(QSize(48, 48))
        self.pair_list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.remove_button = QPushButton("Remove selected")
        self.class_list = ClassList(lambda: self.session.project, self.labels_combo.layer, viewer)
        self.count_label = QLabel("")

        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(self.folder_button)
        margin_row = QHBoxLayout()
        margin_row.addWidget(self.only_corrected_check, 1)
        margin_row.addWidget(self.margin_spin)
        form = QFormLayout()
        form.addRow("Image", self.image_combo.native)
        form.addRow("Labels", self.labels_combo.native)
        form.addRow("Folder", folder_row)
        layout = QVBoxLayout(self)
        layout.addWidget(help_label)
        layout.addLayout(form)
        layout.addWidget(self.class_list)
        layout.addLayout(margin_row)
        tools_row = QHBoxLayout()
        tools_row.addWidget(self.ignore_button)
        tools_row.addWidget(self.changes_button)
        layout.addLayout(tools_row)
        layout.addWidget(self.evaluation_check)
        layout.addWidget(self.add_button)
        layout.addWidget(self.add_planes_button)
        layout.addWidget(self.count_label)
        layout.addWidget(self.pair_list, 1)
        layout.addWidget(self.remove_button)

        self.image_combo.changed.connect(lambda layer: self._pick_matching_labels(self.image_combo.currentText()))
        self.labels_combo.changed.connect(lambda layer: self.class_list.refresh())
        self.folder_button.clicked.connect(self.choose_folder)
        self.folder_edit.editingFinished.connect(lambda: self.set_folder(self.folder_edit.text()))
        self.ignore_button.clicked.connect(self.paint_ignore)
        self.changes_button.clicked.connect(self.show_changes)
        self.add_button.clicked.connect(self.add_current)
        self.add_planes_button.clicked.connect(self.add_corrected_planes)
        self.remove_button.clicked.connect(self.remove_selected)
        self._pick_matching_labels(self.image_combo.currentText())
        viewer.layers.events.inserted.connect(self.follow_new_layers)
        for layer in viewer.layers:
            self.watch_painting(layer)
        self.refresh_list()

    def watch_painting(self, layer) -> None:
        """Remember which planes of a stack's Labels layer the user paints (PAINTED_PLANES_KEY)."""
        if isinstance(layer, Labels) and layer.ndim == 3 and PAINTED_PLANES_KEY not in layer.metadata:
            layer.metadata[PAINTED_PLANES_KEY] = set()
            layer.events.paint.connect(partial(_note_painted_planes, layer))

    def follow_new_layers(self, event=None) -> None:
        """A new layer (e.g. a prediction): offer it, and pick the labels that belong to the chosen image."""
        if event is not None:
            self.watch_painting(event.value)
        self.image_combo.reset_choices()
        self.labels_combo.reset_choices()
        self._pick_matching_labels(self.image_combo.currentText())

    def _pick_matching_labels(self, image_name: str) -> None:
        self.labels_combo.select(prediction_layer_name(image_name))

    # --- folder -------------------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder", str(self.session.project.root))
        if folder:
            self.set_folder(folder)

    def set_folder(self, folder: str) -> None:
        if folder:
            self.session.set_project(folder)
            self.folder_edit.setText(str(self.session.project.root))
            self.class_list.refresh()
            self.refresh_list()

    # --- actions ------------------------------------------------------------------------------
    def paint_ignore(self) -> None:
        labels_layer = self.labels_combo.layer()
        if labels_layer is None:
            show_error("There is no Labels layer to paint in: predict an image first (Predict tab).")
            return
        self.viewer.layers.selection.active = labels_layer
        labels_layer.selected_label = IGNORE_LABEL
        labels_layer.mode = "paint"

    def show_changes(self):
        """Add (or update) '<labels> changes': 1 where the user changed the prediction."""
        labels_layer = self.labels_combo.layer()
        stored = None if labels_layer is None else labels_layer.metadata.get(PREDICTION_KEY)
        if stored is None or stored.shape != labels_layer.data.shape:
            show_error("Show my changes: choose a Labels layer made by Predict; there is no prediction to compare with.")
            return None
        changes = changed_pixels(stored, np.asarray(labels_layer.data)).astype(np.uint8)
        name = f"{labels_layer.name} changes"
        if name in [layer.name for layer in self.viewer.layers]:
            layer = self.viewer.layers[name]
            layer.data = changes
        else:
            layer = self.viewer.add_labels(changes, name=name, scale=labels_layer.scale,
                                           translate=labels_layer.translate, opacity=0.8)
        show_info(f"{int(changes.sum()):,} pixels changed in '{labels_layer.name}'.")
        return layer

    def add_current(self) -> Job | None:
        """Snapshot the displayed plane of image + labels (copies taken now) and store it in a worker."""
        image_layer = self.image_combo.layer()
        labels_layer = self.labels_combo.layer()
        if image_layer is None:
            show_error("Add to training set: there is no image layer. Open an image and predict it first.")
            return None
        if labels_layer is None:
            show_error(f"Add to training set: there is no Labels layer for '{image_layer.name}'. Press Predict "
                       "(or add a Labels layer and paint it), correct it, then add it.")
            return None
        try:
            check_same_plane_shape(image_layer, labels_layer)
        except NapariUNetError as exc:
            show_error(f"Add to training set: {exc}")
            return None
        index = current_index(self.viewer, image_layer)
        region = ()
        if is_lazy(image_layer) or is_lazy(labels_layer):  # larger than memory: the region on screen only
            _, ((y0, y1), (x0, x1)) = visible_region(labels_layer, index)
            region = (slice(y0, y1), slice(x0, x1))
        image_plane = image_data(self.viewer, image_layer, index, region)  # with its channel layers
        labels_plane = np.array(labels_layer.data[index + region])
        stored = labels_layer.metadata.get(PREDICTION_KEY)
        prediction_plane = (np.array(stored[index + region]) if stored is not None and stored.shape == labels_layer.data.shape
                            else None)
        evaluation = self.evaluation_check.isChecked()
        only_corrected = self.only_corrected_check.isChecked() and not evaluation
        margin = self.margin_spin.value()
        project = self.session.project
        name = f"{image_layer.name}{('_' + '_'.join(map(str, index))) if index else ''}"
        if region:
            name += f"_y{region[0].start}_x{region[1].start}"
        image_name, labels_name = image_layer.name, labels_layer.name

        def work(report, is_cancelled):
            mask, sparse = build_training_pair(image_plane, labels_plane, prediction_plane, only_corrected, margin)
            return project.add_pair(image_plane, mask, evaluation=evaluation, name=name, source_image=image_name,
                                    source_labels=labels_name, sparse=sparse, add_class=ADD_CLASS_IN_THE_DOCK), evaluation

        self.add_button.setEnabled(False)
        what = "evaluation pairs" if evaluation else "training set"
        self.job = Job(work, what=f"Adding '{labels_name}'{describe_index(index)} to the {what}",
                       on_done=self._added, on_finished=lambda: self.add_button.setEnabled(True))
        self.session.track(self.job)
        return self.job.start()

    def add_corrected_planes(self) -> Job | None:
        """A (Z, Y, X) volume's corrected planes (painted, or differing from the prediction) as pairs, with XZ and YZ
        views where the voxels are near-isotropic (volume_pairs.py); copies taken now, stored in a worker."""
        from napari_unet.labels.stacks import anisotropy_from_scale
        from napari_unet.training.volume_pairs import corrected_planes

        image_layer, labels_layer = self.image_combo.layer(), self.labels_combo.layer()
        if image_layer is None or labels_layer is None:
            show_error("Add corrected planes: choose the volume in 'Image' and its corrected Labels layer in 'Labels' "
                       "(press Predict on the volume to make one).")
            return None
        try:
            check_same_plane_shape(image_layer, labels_layer)
        except NapariUNetError as exc:
            show_error(f"Add corrected planes: {exc}")
            return None
        if stack_depth(image_layer) != 1 or is_lazy(image_layer) or is_lazy(labels_layer):
            show_error(f"Add corrected planes: '{image_layer.name}' is not a (Z, Y, X) volume held in memory: add the "
                       "displayed plane with 'Add to training set' instead.")
            return None
        labels = np.array(labels_layer.data)
        stored = labels_layer.metadata.get(PREDICTION_KEY)
        prediction = np.asarray(stored) if stored is not None and stored.shape == labels.shape else None
        painted = [index[0] for index in labels_layer.metadata.get(PAINTED_PLANES_KEY, ())]
        planes = corrected_planes(labels, prediction, painted)
        if not planes:
            show_error(f"Add corrected planes: no plane of '{labels_layer.name}' was painted or differs from the "
                       "prediction: correct the planes that are wrong, then add them.")
            return None
        image = np.array(layer_array(image_layer))
        evaluation = self.evaluation_check.isChecked()
        anisotropy = anisotropy_from_scale(image_layer.scale)
        only_corrected = self.only_corrected_check.isChecked() and not evaluation
        margin, project = self.margin_spin.value(), self.session.project
        image_name, labels_name = image_layer.name, labels_layer.name

        def work(report, is_cancelled):
            return project.add_volume(image, labels, planes, name=image_name, anisotropy=anisotropy,
                                      prediction=prediction, evaluation=evaluation, only_corrected=only_corrected,
                                      margin=margin, source_labels=labels_name,
                                      add_class=ADD_CLASS_IN_THE_DOCK), evaluation

        self.add_planes_button.setEnabled(False)
        what = "evaluation pairs" if evaluation else "training set"
        self.job = Job(work, what=f"Adding the corrected planes of '{labels_name}' to the {what}",
                       on_done=partial(self._planes_added, image_name, planes),
                       on_finished=lambda: self.add_planes_button.setEnabled(True))
        self.session.track(self.job)
        return self.job.start()

    def _planes_added(self, image_name: str, planes: list[int], result) -> None:
        pairs, evaluation = result
        added = [pair.position for pair in pairs if pair.view == "xy"]
        n_side = len(pairs) - len(added)
        side = f" and {n_side} of its XZ/YZ views" if n_side else ""
        kind = "evaluation pairs (never trained on)" if evaluation else "the training set"
        kept_apart = sorted(set(planes) - set(added))
        apart = (f" Planes {', '.join(map(str, kept_apart))} are already "
                 f"{'training' if evaluation else 'evaluation'} pairs and stay so." if kept_apart else "")
        show_info(f"Added planes {', '.join(map(str, added)) or 'none'} of '{image_name}'{side} to {kind}. "
                  f"Saved in {self.session.project.root}.{apart}")
        self.session.training_set_changed.emit()
        self.refresh_list()

    def _added(self, result) -> None:
        pair, evaluation = result
        percent = 100 * pair.foreground_pixels / max(pair.annotated_pixels, 1)
        kind = "an evaluation pair (never trained on)" if evaluation else "the training set"
        show_info(f"Added '{pair.name}' as {kind} ({pair.annotated_pixels:,} annotated pixels, "
                  f"{percent:.0f}% foreground). Saved in {self.session.project.root}.")
        self.session.training_set_changed.emit()
        self.refresh_list()

    def remove_selected(self) -> None:
        chosen = [item.data(Qt.ItemDataRole.UserRole) for item in self.pair_list.selectedItems()]
        if not chosen:
            show_info("Select one or more pairs in the list to remove them.")
            return
        project = self.session.project
        for evaluation, name in chosen:
            (project.evaluation if evaluation else project.training).remove(name)
        self.session.training_set_changed.emit()
        self.refresh_list()

    # --- list ---------------------------------------------------------------------------------
    def refresh_list(self) -> Job:
        project = self.session.project

        def work(report, is_cancelled):
            rows = []
            for evaluation, pairs in ((False, project.training), (True, project.evaluation)):
                for pair in pairs.pairs():
                    try:
                        image, _ = pairs.load(pair.name)
                        rows.append((pair, evaluation, thumbnail(image, 48)))
                    except Exception:  # an unreadable file: still listed so it can be removed
                        rows.append((pair, evaluation, None))
            return rows

        self.list_job = Job(work, what="Reading the project", on_done=self._show_pairs)
        self.session.track(self.list_job)
        return self.list_job.start()

    def _show_pairs(self, rows) -> None:
        self.pair_list.clear()
        for pair, evaluation, preview in rows:
            size = "×".join(str(n) for n in pair.shape[:2])
            percent = 100 * pair.foreground_pixels / max(pair.annotated_pixels, 1)
            kind = " · evaluation only" if evaluation else (" · sparse" if pair.sparse else "")
            item = QListWidgetItem(f"{pair.name}\n{size} px · {percent:.0f}% foreground{kind}")
            item.setData(Qt.ItemDataRole.UserRole, (evaluation, pair.name))
            if preview is not None:
                item.setIcon(QIcon(_pixmap(preview)))
            self.pair_list.addItem(item)
        n_evaluation = sum(1 for _, evaluation, _ in rows if evaluation)
        self.count_label.setText(f"{len(rows) - n_evaluation} training pair(s), {n_evaluation} evaluation pair(s)")


def _note_painted_planes(layer, event) -> None:
    """A paint event of a stack's Labels layer: its planes join the layer's painted planes."""
    from napari_unet.training.live import painted_planes

    layer.metadata.setdefault(PAINTED_PLANES_KEY, set()).update(painted_planes(event.value, layer.ndim - 2))

"""Models tab: the shipped models and fine-tuned versions with their metrics; use, rename, revert, export, delete."""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QAbstractItemView, QFileDialog, QHBoxLayout, QInputDialog, QLabel, QMessageBox, QPushButton, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from napari_unet._widgets._session import Session, _field
from napari_unet._widgets._workers import Job

COLUMNS = ("model", "from", "created", "held-out IoU", "steps")


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def version_row(record) -> tuple[str, ...]:
    """What the table shows for one stored version (tolerant of missing fields)."""
    metrics = _field(record, "metrics") or {}
    iou_after = metrics.get("held_out_iou")
    iou_before = metrics.get("held_out_iou_before")
    iou = f"{_number(iou_before)} → {_number(iou_after)}" if iou_before is not None and iou_after is not None else \
        _number(iou_after if iou_after is not None else metrics.get("val_iou"))
    steps = metrics.get("steps", "")
    return (str(_field(record, "name")), str(_field(record, "parent") or ""),
            str(_field(record, "created") or "")[:16].replace("T", " "), iou, str(steps))


class ModelsWidget(QWidget):
    def __init__(self, viewer, session: Session, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = session
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.current_label = QLabel("")
        self.use_button = QPushButton("Use")
        self.use_button.setToolTip("predict and fine-tune with the selected model")
        self.revert_button = QPushButton("Revert to")
        self.revert_button.setToolTip("make the selected version the current one again")
        self.rename_button = QPushButton("Rename…")
        self.export_button = QPushButton("Export .keras…")
        self.delete_button = QPushButton("Delete")
        row1 = QHBoxLayout()
        for button in (self.use_button, self.revert_button, self.rename_button):
            row1.addWidget(button)
        row2 = QHBoxLayout()
        for button in (self.export_button, self.delete_button):
            row2.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.current_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(row1)
        layout.addLayout(row2)

        self.use_button.clicked.connect(self.use_selected)
        self.revert_button.clicked.connect(self.revert_selected)
        self.rename_button.clicked.connect(self.rename_selected)
        self.export_button.clicked.connect(self.export_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.table.itemDoubleClicked.connect(lambda item: self.use_selected())
        session.versions_changed.connect(self.refresh)
        session.model_changed.connect(self.refresh)
        self.refresh()

    def refresh(self, *args) -> None:
        from napari_unet.shipped import shipped_model_names

        rows = [(name, "shipped", "", "", "") for name in shipped_model_names()]
        try:
            rows += [version_row(record) for record in self.session.list_versions()]
        except Exception as exc:  # a damaged store must not break the dock
            show_error(f"Could not read the model store: {exc}")
        self.table.setRowCount(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if column == 0 and value == self.session.model_key:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(row, column, item)
        self.table.resizeColumnsToContents()
        self.current_label.setText(f"In use: <b>{self.session.model_label or '(none)'}</b>")

    def selected_name(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            show_info("Select a model in the list first.")
            return None
        return self.table.item(rows[0].row(), 0).text()

    def _is_shipped(self, name: str) -> bool:
        from napari_unet.shipped import shipped_model_names

        return name in shipped_model_names()

    def use_selected(self) -> None:
        name = self.selected_name()
        if name:
            self.session.select_model(name)

    def revert_selected(self) -> None:
        name = self.selected_name()
        if not name:
            return
        if self._is_shipped(name):
            self.session.select_model(name)
            return
        self._store_action(lambda store: store.revert(name), f"Reverting to '{name}'",
                           lambda record: self.session.select_model(str(_field(record, "name") or name)))

    def rename_selected(self, new_name: str | None = None) -> None:
        name = self.selected_name()
        if not name:
            return
        if self._is_shipped(name):
            show_error(f"'{name}' is a shipped model and cannot be renamed: fine-tune it to get your own version.")
            return
        if new_name is None:
            new_name, ok = QInputDialog.getText(self, "Rename model", f"New name for '{name}':", text=name)
            if not ok:
                return
        new_name = new_name.strip()
        if not new_name or new_name == name:
            return

        def renamed(result):
            self.session.forget_model(name)
            if self.session.model_key == name:
                self.session.model_key = new_name
            self.session.versions_changed.emit()

        self._store_action(lambda store: store.rename(name, new_name), f"Renaming '{name}'", renamed)

    def export_selected(self, path: str | None = None) -> None:
        name = self.selected_name()
        if not name:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export model", f"{name}.keras", "Keras model (*.keras)")
            if not path:
                return
        if not path.endswith(".keras"):
            path += ".keras"
        if self._is_shipped(name):
            import shutil

            from napari_unet.shipped import shipped_model_path

            work = lambda store: shutil.copyfile(shipped_model_path(name), path)  # noqa: E731
        else:
            work = lambda store: store.export(name, path)  # noqa: E731
        self._store_action(work, f"Exporting '{name}'", lambda result: show_info(f"Model '{name}' saved as {path}."))

    def delete_selected(self, confirm: bool = True) -> None:
        name = self.selected_name()
        if not name:
            return
        if self._is_shipped(name):
            show_error(f"'{name}' is a shipped model and cannot be deleted.")
            return
        if confirm and QMessageBox.question(self, "Delete model", f"Delete version '{name}' from disk?") != \
                QMessageBox.StandardButton.Yes:
            return

        def deleted(result):
            self.session.forget_model(name)
            if self.session.model_key == name:
                self.session.model_key = ""
            self.session.versions_changed.emit()

        self._store_action(lambda store: store.delete(name), f"Deleting '{name}'", deleted)

    def _store_action(self, action, what: str, on_done) -> Job:
        def work(report, is_cancelled):
            from napari_unet.store import ModelStore

            return action(ModelStore())

        job = Job(work, what=what, on_done=on_done)
        self.session.track(job)
        return job.start()

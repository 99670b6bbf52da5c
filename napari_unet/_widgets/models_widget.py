"""Models tab: the shipped models and fine-tuned versions with their metrics; use, rename, revert, export, delete."""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets._session import Session
from napari_unet._widgets._workers import Job
from napari_unet.storage.records import RoundRecord, VersionRecord, headline_iou

COLUMNS = ("model", "from", "created", "evaluation IoU", "steps")


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def version_row(record: VersionRecord) -> tuple[str, ...]:
    """What the table shows for one version of the project: evaluation IoU, and whether its round was kept."""
    state = " (rolled back)" if record.rolled_back else ""
    return (record.name, record.parent or "", record.created[:16].replace("T", " "),
            _number(headline_iou(record.metrics)) + state, str(record.metrics.get("steps", "")))


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
        self.bioimageio_button = QPushButton("Export for bioimage.io…")
        self.bioimageio_button.setToolTip("a bioimage.io package (Keras, ONNX and TensorFlow weights, test data, model "
                                          "card) for DeepImageJ, bioimage.io and other programs")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop the bioimage.io export")
        self.cancel_button.setEnabled(False)
        self.status_label = QLabel("")
        self.delete_button = QPushButton("Delete")
        row1 = QHBoxLayout()
        for button in (self.use_button, self.revert_button, self.rename_button):
            row1.addWidget(button)
        row2 = QHBoxLayout()
        for button in (self.export_button, self.delete_button):
            row2.addWidget(button)
        row3 = QHBoxLayout()
        for button in (self.bioimageio_button, self.cancel_button):
            row3.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.current_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addLayout(row3)
        layout.addWidget(self.status_label)
        self.bioimageio_job: Job | None = None

        self.use_button.clicked.connect(self.use_selected)
        self.revert_button.clicked.connect(self.revert_selected)
        self.rename_button.clicked.connect(self.rename_selected)
        self.export_button.clicked.connect(self.export_selected)
        self.bioimageio_button.clicked.connect(lambda: self.export_bioimageio_selected())
        self.cancel_button.clicked.connect(lambda: self.bioimageio_job and self.bioimageio_job.cancel())
        self.delete_button.clicked.connect(self.delete_selected)
        self.table.itemDoubleClicked.connect(lambda item: self.use_selected())
        session.versions_changed.connect(self.refresh)
        session.model_changed.connect(self.refresh)
        self.refresh()

    def refresh(self, *args) -> None:
        from napari_unet.storage.shipped import shipped_model_names

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
        from napari_unet.storage.shipped import shipped_model_names

        return name in shipped_model_names()

    def use_selected(self) -> None:
        name = self.selected_name()
        if name:
            self.session.select_model(name)

    def revert_selected(self) -> None:
        name = self.selected_name()
        if not name:
            return
        project = self.session.project
        if self._is_shipped(name) and name != project.start_model:
            self.session.select_model(name)
            return

        def reverted(record: RoundRecord) -> None:
            self.session.rounds_changed.emit()
            self.session.select_model(record.version)
            show_info(record.reason)

        job = Job(self.session.request("revert", str(project.root), name), what=f"Reverting to '{name}'", on_done=reverted)
        self.session.track(job)
        job.start()

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
            self.session.rename_model(name, new_name)
            self.session.versions_changed.emit()

        project = self.session.project
        job = Job(lambda report, is_cancelled: project.rename_version(name, new_name), what=f"Renaming '{name}'",
                  on_done=renamed)
        self.session.track(job)
        job.start()

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

            from napari_unet.storage.shipped import shipped_model_path

            work = lambda store: shutil.copyfile(shipped_model_path(name), path)  # noqa: E731
        else:
            work = lambda store: store.export(name, path)  # noqa: E731
        self._store_action(work, f"Exporting '{name}'", lambda result: show_info(f"Model '{name}' saved as {path}."))

    def export_bioimageio_selected(self, path: str | None = None, authors: str | None = None,
                                   license: str | None = None) -> Job | None:
        """Write the selected model as a bioimage.io package in the worker process; asks for the file, authors and licence
        (the core refuses a package without them). Returns the job, or None when nothing was started."""
        from napari_unet.errors import NapariUNetError
        from napari_unet.storage.bioimageio import PackageAuthorship

        name = self.selected_name()
        if not name:
            return None
        if self.bioimageio_job is not None and not self.bioimageio_job.done:
            show_info("A bioimage.io export is already running: wait for it or press Cancel.")
            return None
        overwrite = path is None  # the save dialog has already asked before replacing a file
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export for bioimage.io", f"{name}.zip",
                                                  "bioimage.io package (*.zip)")
            if not path:
                return None
        if not path.endswith(".zip"):
            path += ".zip"
        if authors is None:
            authors, ok = QInputDialog.getText(self, "Export for bioimage.io", "Authors of the model (comma-separated):")
            if not ok:
                return None
        if license is None:
            license, ok = QInputDialog.getText(self, "Export for bioimage.io",
                                               "Licence (SPDX identifier, e.g. CC-BY-4.0, MIT):", text="CC-BY-4.0")
            if not ok:
                return None
        authorship = PackageAuthorship(authors=[author.strip() for author in authors.split(",")], license=license)
        try:
            authorship.check()
        except NapariUNetError as exc:
            show_error(f"Export for bioimage.io: {exc}")
            return None
        session = self.session
        request = session.request("export_bioimageio", session.model_reference(name), path, authorship, overwrite)

        def finished() -> None:
            self.cancel_button.setEnabled(False)
            self.bioimageio_button.setEnabled(True)

        def done(written) -> None:
            self.status_label.setText("")
            show_info(f"Model '{name}' saved for bioimage.io as {written} ({written.stat().st_size / 1e6:.1f} MB).")

        job = Job(request, what=f"Exporting '{name}' for bioimage.io", on_done=done,
                  on_progress=lambda stage: self.status_label.setText(f"bioimage.io export: {stage}…"),
                  on_finished=finished, on_cancelled=lambda: self.status_label.setText(""))
        self.bioimageio_job = self.session.track(job)
        self.cancel_button.setEnabled(True)
        self.bioimageio_button.setEnabled(False)
        return job.start()

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
                self.session.select_model(self.session.project.active or "")
            self.session.versions_changed.emit()

        self._store_action(lambda store: store.delete(name), f"Deleting '{name}'", deleted)

    def _store_action(self, action, what: str, on_done) -> Job:
        store = self.session.store

        def work(report, is_cancelled):
            return action(store)

        job = Job(work, what=what, on_done=on_done)
        self.session.track(job)
        return job.start()

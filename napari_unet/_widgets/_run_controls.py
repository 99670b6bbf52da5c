"""Start / Stop buttons, a progress bar and a status line: the same controls for every long task of the dock."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget


class RunControls(QWidget):
    """`start_button` and `cancel_button` are connected by the tab; `running()` and `progress()` show the state."""

    def __init__(self, start_text: str, cancel_text: str = "Cancel", parent=None):
        super().__init__(parent)
        self.start_button = QPushButton(start_text)
        self.cancel_button = QPushButton(cancel_text)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)

    def running(self, running: bool, succeeded: bool = True) -> None:
        """Busy bar and Stop enabled while running; a full or empty bar when done."""
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1 if succeeded else 0)

    def busy(self) -> None:
        self.progress_bar.setRange(0, 0)

    def progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(int(total), 1))
        self.progress_bar.setValue(min(int(done), max(int(total), 1)))

    def say(self, text: str) -> None:
        self.status_label.setText(text)

    def text(self) -> str:
        return self.status_label.text()

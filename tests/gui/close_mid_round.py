"""Run as a script by test_finetune_tab.py: `napari-unet gui`, start a round, close napari mid-training.

argv: a project folder with a training pair and a start model (made by the test). Goes through the
CLI's own start-up (the order in which napari's OpenGL and TensorFlow are loaded matters on Linux),
napari's own close path and the interpreter's normal exit; the test checks the exit code and that
the project is intact.
"""

import sys

from qtpy.QtCore import QTimer

import napari_unet._widgets.launch as launch
from napari_unet import cli

open_gui = launch.open_gui


def open_and_start_a_round(*args, **kwargs):
    viewer, widget = open_gui(*args, **kwargs)
    widget.session.set_project(sys.argv[1])
    tab = widget.finetune_tab
    tab.epochs_spin.setValue(50)
    tab.steps_spin.setValue(50)
    job = tab.start()

    def close_once_training() -> None:
        if tab.plot.losses:  # training is running inside TensorFlow now
            print("closing mid-training", flush=True)
            viewer.close()
        elif job.done:
            print(f"the round ended before it could be interrupted: {job.error}", flush=True)
            viewer.close()
        else:
            QTimer.singleShot(100, close_once_training)

    QTimer.singleShot(100, close_once_training)
    return viewer, widget


if __name__ == "__main__":
    launch.open_gui = open_and_start_a_round
    sys.exit(cli.main(["gui", "--sample", "nuclei"]))

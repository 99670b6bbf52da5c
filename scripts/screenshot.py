"""Save docs/screenshot.png: napari with the U-Net dock after predict → correct → fine-tune on the EM sample.

Needs a display; on a headless machine run it under a virtual one:
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py
Uses the shipped 'membranes' model when present, else a quickly built (untrained) model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 500_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for each step")
    parser.add_argument("--predict-only", action="store_true",
                        help="show the Predict tab after one prediction (default: also correct, fine-tune briefly, "
                             "and show the Fine-tune tab with its curves)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A private model store and training set: the screenshot must not show (or touch) the user's own.
    os.environ["NAPARI_UNET_HOME"] = tempfile.mkdtemp(prefix="napari-unet-screenshot-")

    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication, QDockWidget

    from napari_unet._widgets.launch import open_gui
    from napari_unet.storage.shipped import shipped_model_names

    viewer, dock = open_gui(show=True)
    window = viewer.window._qt_window  # noqa: SLF001 (sizing the real window)
    window.resize(1400, 900)
    wrapper = dock.parent()
    while wrapper is not None and not isinstance(wrapper, QDockWidget):
        wrapper = wrapper.parent()
    if wrapper is not None:
        window.resizeDocks([wrapper], [440], Qt.Orientation.Horizontal)
    if "membranes" in shipped_model_names():
        dock.session.select_model("membranes")
    else:
        import subprocess

        path = Path(os.environ["NAPARI_UNET_HOME"]) / "quick.keras"
        subprocess.run([sys.executable, "-c", "import sys; from napari_unet.model import UNetConfig, new_model, save_model; "
                        "save_model(new_model(UNetConfig(base_width=8), name='quick'), sys.argv[1])", str(path)],
                       check=True)  # TensorFlow in a process of its own: napari's never imports it
        dock.session.select_model(str(path))
        print("no shipped 'membranes' model: using an untrained one", file=sys.stderr)
    dock.predict_tab.image_combo.select("em_membranes")
    def wait(job, what: str) -> bool:
        deadline = time.monotonic() + args.timeout
        while job is not None and not job.done and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)
        if job is None or not job.done or job.error is not None:
            print(f"{what} failed or timed out: {getattr(job, 'error', 'did not start')}", file=sys.stderr)
            return False
        return True

    if not wait(dock.predict_tab.predict(), "prediction"):
        return 1
    if not args.predict_only:
        # A user's work, simulated: the left half corrected (the sample's ground truth), the right half
        # painted "not annotated" (255) because it was not checked.
        from napari_unet.labels.masks import IGNORE_LABEL

        prediction = viewer.layers["em_membranes prediction"]
        truth = viewer.layers["em_membranes ground truth"].data
        corrected = prediction.data.copy()
        half = corrected.shape[1] // 2
        corrected[:, :half] = truth[:, :half] > 0
        corrected[:, half:] = IGNORE_LABEL
        prediction.data = corrected
        if not wait(dock.training_set_tab.add_current(), "adding to the training set"):
            return 1
        tab = dock.finetune_tab
        tab.epochs_spin.setValue(3)
        tab.steps_spin.setValue(8)
        dock.tabs.setCurrentWidget(tab)
        for round_number in (1, 2):  # two rounds, so the rounds plot shows a history
            if not wait(tab.start(), f"fine-tuning round {round_number}"):
                return 1
        viewer.layers["em_membranes prediction"].visible = False
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in window.findChildren(NapariQtNotification):  # the result is in the dock; toasts hide the canvas
        toast.close()
    for _ in range(20):  # let the canvas and dock repaint
        QApplication.processEvents()
        time.sleep(0.02)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    if out.stat().st_size > MAX_BYTES:  # a UI picture survives a 256-colour palette well
        from PIL import Image

        Image.open(out).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

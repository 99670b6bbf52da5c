"""TensorFlow imported before a command runs, with its start-up chatter kept off the terminal."""

from __future__ import annotations

import os
import sys

# What TensorFlow prints at import before its logging is set up (so TF_CPP_MIN_LOG_LEVEL cannot stop it).
TENSORFLOW_IMPORT_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up chatter kept off the terminal; anything else it prints is shown.

    Done before any command but `gui` (and `predict` on an ONNX twin): napari's process never imports it (the
    dock's worker process does).
    """
    import tempfile

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if line.strip() and not any(noise in line for noise in TENSORFLOW_IMPORT_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)

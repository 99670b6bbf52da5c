"""Which extra a command needs when an optional module is missing: one line naming it instead of a traceback."""

from __future__ import annotations

import sys

# The modules only an extra installs ([project.optional-dependencies] in pyproject.toml): import name → (what to
# name, the extras that install it). onnx, tf2onnx and onnxruntime come with both: a command's own extra is named.
OPTIONAL_MODULES = {
    "napari": ("napari", ("gui",)), "npe2": ("npe2", ("gui",)), "magicgui": ("magicgui", ("gui",)),
    "qtpy": ("qtpy", ("gui",)), "PyQt6": ("PyQt6", ("gui",)),
    "onnx": ("onnx", ("gui", "bioimageio")), "tf2onnx": ("tf2onnx", ("gui", "bioimageio")),
    "onnxruntime": ("onnxruntime", ("gui", "bioimageio")),
    "bioimageio": ("bioimageio.core", ("bioimageio",)), "pydantic": ("pydantic", ("bioimageio",)),
}
COMMAND_EXTRA = {"gui": "gui", "export": "bioimageio"}


def missing_extra(exc: ImportError, command: str) -> str | None:
    """`napari-unet CMD needs MODULE: pip install "napari-unet-loop[EXTRA]"` when `exc` is an optional module that
    is not installed (or qtpy finding no Qt binding); None for anything else, whose traceback should show."""
    import importlib.util

    top = (exc.name or "").partition(".")[0]
    if not top and type(exc).__module__.partition(".")[0] == "qtpy":  # napari installed without a Qt binding
        top = "PyQt6"
    elif top not in OPTIONAL_MODULES:
        return None
    elif top in sys.modules:
        if sys.modules[top] is not None:  # installed, failing inside: a broken install or a bug, not an extra
            return None
    else:
        try:
            if importlib.util.find_spec(top) is not None:
                return None
        except (ImportError, ValueError):
            pass
    shown, extras = OPTIONAL_MODULES[top]
    extra = COMMAND_EXTRA[command] if COMMAND_EXTRA.get(command) in extras else extras[0]
    return f'napari-unet {command} needs {shown}: pip install "napari-unet-loop[{extra}]"'

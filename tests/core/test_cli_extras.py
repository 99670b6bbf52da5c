"""A command whose extra is not installed says so in one line naming the extra (cli.missing_extra), no traceback.

`sys.modules[name] = None` makes `import name` raise ModuleNotFoundError, as on an install without the extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from napari_unet.cli import main, missing_extra


def _without(monkeypatch, package: str) -> None:
    """As if `package` (and its submodules) were not installed."""
    for name in [name for name in sys.modules if name == package or name.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def test_gui_without_napari_is_one_line_naming_the_gui_extra(monkeypatch, capsys):
    monkeypatch.setenv("DISPLAY", ":0")  # past the display check, which comes first
    _without(monkeypatch, "napari")
    assert main(["gui"]) == 2
    assert capsys.readouterr().err.strip() == 'napari-unet gui needs napari: pip install "napari-unet-loop[gui]"'


def test_export_without_bioimageio_is_one_line_naming_the_bioimageio_extra(monkeypatch, capsys, start_model, tmp_path):
    _without(monkeypatch, "bioimageio")
    out = tmp_path / "package.zip"
    args = ["export", "-m", start_model, "--bioimageio", str(out), "--author", "A. Person", "--license", "MIT"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == \
        'napari-unet export needs bioimageio.core: pip install "napari-unet-loop[bioimageio]"'
    assert not out.exists()


def test_the_real_entry_point_exits_non_zero_without_a_traceback():
    code = "import sys; sys.modules['napari'] = None; from napari_unet.cli import main; sys.exit(main(['gui']))"
    env = {**os.environ, "DISPLAY": ":0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ['napari-unet gui needs napari: pip install "napari-unet-loop[gui]"']


@pytest.mark.parametrize("module, command, line", [
    ("qtpy", "gui", 'napari-unet gui needs qtpy: pip install "napari-unet-loop[gui]"'),
    ("onnx", "export", 'napari-unet export needs onnx: pip install "napari-unet-loop[bioimageio]"'),
    ("onnxruntime", "predict", 'napari-unet predict needs onnxruntime: pip install "napari-unet-loop[gui]"'),
    ("bioimageio", "predict", 'napari-unet predict needs bioimageio.core: pip install "napari-unet-loop[bioimageio]"'),
])
def test_each_optional_module_names_its_extra(monkeypatch, module, command, line):
    _without(monkeypatch, module)
    with pytest.raises(ModuleNotFoundError) as raised:
        __import__(f"{module}.anything")
    assert missing_extra(raised.value, command) == line


def test_other_import_errors_keep_their_traceback(monkeypatch):
    assert missing_extra(ModuleNotFoundError("No module named 'nope'", name="nope"), "gui") is None
    assert missing_extra(ImportError("cannot import name 'x'"), "gui") is None
    # an extra that is installed but fails inside (a version mismatch): not "install the extra"
    monkeypatch.setitem(sys.modules, "napari", types.ModuleType("napari"))
    assert missing_extra(ModuleNotFoundError("No module named 'napari._gone'", name="napari._gone"), "gui") is None


def test_main_re_raises_an_import_error_it_cannot_name(monkeypatch):
    import napari_unet.cli as cli

    def broken(args):
        raise ModuleNotFoundError("No module named 'nope'", name="nope")

    monkeypatch.setattr(cli.models, "run_models_command", broken)
    with pytest.raises(ModuleNotFoundError, match="nope"):
        cli.main(["models"])


def test_napari_without_a_qt_binding_names_pyqt6():
    error = type("QtBindingsNotFoundError", (ImportError,), {"__module__": "qtpy"})("No Qt bindings could be found")
    assert missing_extra(error, "gui") == 'napari-unet gui needs PyQt6: pip install "napari-unet-loop[gui]"'

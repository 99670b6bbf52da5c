"""The plugin as napari and a shell see it: discovered, valid manifest, docks, console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import npe2
import pytest

import napari_unet
from napari_unet._widgets.launch import PLUGIN

SCRIPTS_DIR = Path(sys.executable).parent


def _manifest() -> npe2.PluginManifest:
    return npe2.PluginManifest.from_distribution(PLUGIN)


def test_plugin_is_discovered_by_npe2():
    manager = npe2.PluginManager()
    manager.discover()
    assert PLUGIN in {m.name for m in manager.iter_manifests()}
    assert manager.get_manifest(PLUGIN).display_name


def test_manifest_validates_with_imports():
    result = subprocess.run(
        [str(SCRIPTS_DIR / "npe2"), "validate", PLUGIN, "--imports"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_installed_manifest_is_the_root_manifest():
    """napari must read the repo-root napari.yaml (via the package) — not a stale copy."""
    root_manifest = Path(napari_unet.__file__).resolve().parents[1] / "napari.yaml"
    installed = _manifest()
    if root_manifest.exists():
        assert installed == npe2.PluginManifest.from_file(root_manifest)


def test_manifest_contributes_widgets_reader_writer_and_samples():
    contributions = _manifest().contributions
    assert contributions.widgets, "no dock widgets declared"
    assert contributions.readers, "no reader declared"
    assert contributions.writers, "no writer declared"
    assert contributions.sample_data, "no sample data declared"


def test_each_widget_opens_docked(make_napari_viewer):
    viewer = make_napari_viewer()
    widgets = _manifest().contributions.widgets
    for widget in widgets:
        dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, widget.display_name)
        assert dock.widget() is not None
        assert not dock.isFloating(), f"'{widget.display_name}' opened floating, not docked"
    assert len(viewer.window.dock_widgets) >= len(widgets)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_console_script_answers(flag):
    result = subprocess.run([str(SCRIPTS_DIR / "napari-unet"), flag], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if flag == "--help":
        assert "usage: napari-unet" in result.stdout
        for command in ("predict", "evaluate", "finetune", "demo"):
            assert command in result.stdout, f"'{command}' missing from --help"
    else:
        assert napari_unet.__version__ in result.stdout


def test_console_script_output_is_free_of_tensorflow_start_up_chatter(tmp_path):
    """Predicting imports TensorFlow; its absl/oneDNN start-up lines must not reach the user's terminal."""
    from napari_unet._sample_data import sample_data_dir

    result = subprocess.run(
        [str(SCRIPTS_DIR / "napari-unet"), "predict", "-m", "membranes",
         str(sample_data_dir() / "em_membranes.tif"), "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NAPARI_UNET_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "em_membranes.tif").exists()
    assert "oneDNN" not in result.stderr and "absl" not in result.stderr, result.stderr

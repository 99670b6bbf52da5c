"""Open napari with the plugin's dock and some data: what `napari-unet gui` and the screenshot script run."""

from __future__ import annotations

import os
import sys

from napari_unet.errors import NapariUNetError

PLUGIN = "napari-unet-loop"  # the npe2 plugin name = the distribution name (pyproject.toml)
DOCK_NAME = "U-Net"
DEFAULT_SAMPLE = "em_membranes"


def sample_names() -> list[str]:
    """Keys of the plugin's sample-data contributions (e.g. 'em_membranes', 'nuclei')."""
    import npe2

    manager = npe2.PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest(PLUGIN)
    return [sample.key for sample in (manifest.contributions.sample_data or [])]


def has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_gui(images: list[str] | None = None, sample: str | None = None, show: bool = True):
    """A napari viewer with the U-Net dock, showing `images` (files) or a sample (default: EM membranes).

    Returns (viewer, dock widget). Errors name the missing file or unknown sample.
    """
    for path in images or []:
        if not os.path.exists(path):
            raise NapariUNetError(f"cannot open '{path}': no such file or folder")
    names = sample_names()
    if sample and sample not in names:
        raise NapariUNetError(f"no sample named '{sample}': choose one of {', '.join(names) or '(none installed)'}")
    import napari

    viewer = napari.Viewer(show=show, title="napari-unet")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK_NAME)
    if images:
        for path in images:
            viewer.open(path, plugin=PLUGIN if os.path.isdir(path) else None)
    elif sample or DEFAULT_SAMPLE in names:
        viewer.open_sample(PLUGIN, sample or DEFAULT_SAMPLE)
    else:
        import skimage.data

        viewer.add_image(skimage.data.camera(), name="camera")
    return viewer, dock

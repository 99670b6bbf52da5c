"""Temporary files next to their target, for atomic write-then-rename saves."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def user_data_dir() -> Path:
    """Where napari-unet keeps the user's things: `$NAPARI_UNET_HOME`, else e.g. ~/.local/share/napari-unet."""
    home = os.environ.get("NAPARI_UNET_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-unet", appauthor=False))


def temporary_sibling(target: Path, suffix: str) -> str:
    """Create an empty hidden temp file beside `target` with the permissions a normal file gets.

    mkstemp makes files 0600; a renamed model or record should be readable like any other file the
    user saves (0666 minus the umask).
    """
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return name


def atomic_write(target: str | os.PathLike, write, suffix: str = ".tmp") -> Path:
    """Write `target` through `write(temp_path)`, fsync it, then rename it into place.

    A crash leaves either the old file or the complete new one, never half of one: the temp file is
    flushed to disk before the rename, and the folder entry after it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    name = temporary_sibling(target, suffix)
    try:
        write(name)
        with open(name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return target


def atomic_write_json(target: str | os.PathLike, values) -> Path:
    import json

    def write(name: str) -> None:
        with open(name, "w") as handle:
            json.dump(values, handle, indent=2)

    return atomic_write(target, write, ".json.tmp")


def atomic_write_tiff(target: str | os.PathLike, array) -> Path:
    import numpy as np
    import tifffile

    return atomic_write(target, lambda name: tifffile.imwrite(name, np.asarray(array), compression="zlib"), ".tif.tmp")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

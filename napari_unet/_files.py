"""Temporary files next to their target, for atomic write-then-rename saves."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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

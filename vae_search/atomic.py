"""Files that are never half-written: write to a temporary file beside the target, then
rename (atomic on POSIX), so a crash leaves either the old file or the new one.

Only a regular file is replaced so. A symlink is followed (the file it names is replaced,
the link stays), and a target that is no file at all (`--csv /dev/stdout`, a FIFO, a device)
is written in place: renaming over it would replace the device node itself (as root,
`--csv /dev/full` turned /dev/full into a CSV file)."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows links
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        with open(path, "wb") as f:  # a stream: nothing to be atomic about
            write(f)
        return path
    target = Path(os.path.realpath(path))  # a link: the file it names
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""Names read from a study (its name, above all) made into file names.

A study name is whatever any worker with access to the storage chose (plain Optuna accepts
"../escaped" or "/etc/x"), so it never becomes a path as it is: a name that is not a plain
file name is made into one (unsafe characters replaced, a short hash of the original added
so that two names never share a file), and every path is checked to stay inside its folder.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from vae_search.errors import UsageError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def file_name(name: str) -> str:
    """`name` if it is a plain file name (letters, digits, '.', '_', '-', not starting with
    '.'), else a safe one made from it: "../escaped" -> "escaped-" + 8 hex digits."""
    if name and not _UNSAFE.search(name) and not name.startswith(".") and len(name) <= 100:
        return name
    safe = _UNSAFE.sub("_", name).lstrip("._")[:80] or "study"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def inside(folder: Path, name: str) -> Path:
    """folder / name, refused unless it stays inside `folder` (a second line of defence)."""
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise UsageError(f"{name!r} is not a file name inside {folder}")
    return path

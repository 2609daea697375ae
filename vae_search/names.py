"""Names read from a study (its name, above all) made safe for where they go: file names,
a terminal, a command line to copy.

A study name is whatever any worker with access to the storage chose (plain Optuna accepts
"../escaped" or "/etc/x"), so it never becomes a path as it is: a name that is not a plain
file name is made into one (unsafe characters replaced, a short hash of the original added
so that two names never share a file), and every path is checked to stay inside its folder.
Printed, its control characters are shown, not obeyed (an escape sequence can retitle a
window, hide a line or write the clipboard); in a suggested command it is one shell word.
"""

from __future__ import annotations

import hashlib
import re
import shlex
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


# Optuna's RDB schema holds a study name in an indexed column of this many characters
# (PostgreSQL and MySQL refuse a longer one mid-run; SQLite would take it)
MAX_STUDY_NAME = 512


def check_new_study_name(name: str) -> None:
    """A study this run is about to create gets a name a user can type and read back: not
    empty, no control characters, short enough for every storage. (Existing studies are read
    and added to whatever their name; another tool may have made them.)"""
    if not name.strip():
        raise UsageError("--study-name: a study needs a name that is not empty")
    if not name.isprintable():
        raise UsageError(f"--study-name {name!r}: a study name cannot hold control characters")
    if len(name) > MAX_STUDY_NAME:
        raise UsageError(f"--study-name: {len(name)} characters; a study name has at most {MAX_STUDY_NAME}")


def printable(text: str) -> str:
    """`text` with every character a terminal would obey instead of show (escape, carriage
    return, newline, bidi overrides: whatever Python does not call printable) written as Python
    escapes it: "evil\\x1b]0;title" stays one visible line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shell_word(name: str) -> str:
    """`name` as one word of a command a user copies into a shell, and printable."""
    return printable(shlex.quote(name))

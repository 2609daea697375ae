"""Ctrl-C and SIGTERM as a KeyboardInterrupt, raised where it is safe to raise.

A KeyboardInterrupt raised in the middle of a database call can leave that call's
transaction open: on SQLite (where every vae-search transaction takes the write lock
first) the interrupted connection keeps the lock, and the trial's FAIL "interrupted" that
follows, and every other worker's next write, wait on it for SQLITE_TIMEOUT; the parent
then kills the stuck workers and their trials are failed by it instead. Seen in CI with
`--jobs 2` and a terminal's Ctrl-C (tests/test_jobs.py). So the handler raises at once,
except inside `deferred()` (each storage call, storages.py): there it is held until the
call has returned or failed, then raised.

Only the first signal counts: a terminal's Ctrl-C reaches a worker directly and again as
the parent's SIGTERM, and the second must not interrupt the first's clean-up."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_interrupted = False  # a signal came (later ones are ignored)
_pending = False  # it came inside deferred() and is still to be raised
_depth = 0  # how many deferred() blocks the main thread is in


def _on_signal(signum: int, frame: object) -> None:
    global _interrupted, _pending
    if _interrupted:
        return
    _interrupted = True
    if _depth:
        _pending = True
        return
    raise KeyboardInterrupt


def install() -> None:
    """Make SIGINT and SIGTERM interrupt this process (SIGTERM ends a trial as Ctrl-C does)."""
    global _interrupted, _pending, _depth
    _interrupted = _pending = False
    _depth = 0
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that an interrupt does not cut in two: one that arrives inside it is raised
    when it ends. Signal handlers run in the main thread, so other threads (the heartbeat)
    need no deferring."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            _pending = False
            raise KeyboardInterrupt

"""`python -m vae_search` and the `vae-search` console script: cli.main, then a quick exit.

Once a command has finished, Python's own shutdown still tears down every module it
loaded, one object at a time; with torch, pandas and Optuna loaded that is a large part of a
reading command's time on the project's CPUs (`benchmarks/startup.py` measures it), and a
`--jobs` parent waits for it in each worker before it can say the run is over. When
cli.main returns, everything the command wrote is committed or closed (atomic writes; each
storage call commits its transaction), so `entry` runs the atexit handlers (logging's
flush, multiprocessing's join of its children, temporary folders, the storages' database
connections), flushes the standard streams and leaves with os._exit. A non-daemon thread
still alive, which Python would wait for, makes it exit the usual way; so does an
exception other than SystemExit (its traceback is a bug report)."""

from __future__ import annotations

import atexit
import os
import sys
import threading

from vae_search.cli import main


def entry() -> None:
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if not isinstance(code, int):  # what sys.exit does with None and with a message
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left (`| head`), or a closed stream: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()

"""The console script's quick exit (vae_search/__main__.py): after the command it runs the
atexit handlers, flushes the streams and leaves without Python's module teardown; what a
command printed, its exit code and everything it registered to run at exit stay as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.samples import synthetic_grid

# The entry as the console script calls it, with an atexit handler and, with "thread", a
# non-daemon thread still running when the command ends (Python waits for it; so must we).
PROBE = """
import atexit, sys, threading, time
import vae_search.__main__ as entry_point
atexit.register(lambda: print("atexit handler ran", file=sys.stderr, flush=True))
command, thread = entry_point.main, sys.argv[1] == "thread"

def command_then_thread():
    try:
        command()
    finally:
        if thread:
            threading.Thread(target=lambda: (time.sleep(0.5), print("thread finished", file=sys.stderr, flush=True))).start()

entry_point.main = command_then_thread
sys.argv = ["vae-search", *sys.argv[2:]]
entry_point.entry()
"""


def _run(tmp_path, mode: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe's stdout is buffered, as for users
    return subprocess.run([sys.executable, "-c", PROBE, mode, *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, env=env)


@pytest.fixture
def grid_storage(tmp_path) -> str:
    storage = f"sqlite:///{tmp_path}/s.db"
    synthetic_grid(storage, {1: [1900.0, 1901.0], 2: [1880.0], 3: [1850.0, 1851.0], 4: [1870.0]})
    return storage


def test_output_and_exit_handlers_survive_the_quick_exit(tmp_path, grid_storage):
    proc = _run(tmp_path, "plain", "best", "--json", "--storage", grid_storage)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["params"]["latent_dim"] == 16  # the whole JSON reached the pipe
    assert "atexit handler ran" in proc.stderr


def test_exit_codes_and_error_lines_are_kept(tmp_path, grid_storage):
    proc = _run(tmp_path, "plain", "best", "--study-name", "nope", "--storage", grid_storage)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[0].startswith("vae-search: error: no study named 'nope'")
    assert "atexit handler ran" in proc.stderr


def test_a_running_thread_is_waited_for(tmp_path, grid_storage):
    proc = _run(tmp_path, "thread", "best", "--storage", grid_storage)
    assert proc.returncode == 0, proc.stderr
    assert "thread finished" in proc.stderr and "atexit handler ran" in proc.stderr


def test_database_connections_are_closed_at_exit(tmp_path):
    """The quick exit skips the garbage collection that closed the pooled connections; the
    storages' atexit handler closes them instead (a server sees a client that said goodbye)."""
    from vae_search import storages

    storage = storages.open_storage(f"sqlite:///{tmp_path}/s.db")
    import optuna

    optuna.create_study(storage=storage, study_name="s").ask()
    pool = storage.engine.pool
    assert pool.checkedin() >= 1  # a connection waits in the pool
    storages._close_connections()
    assert pool.checkedin() == 0

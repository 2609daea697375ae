"""Crash-proof studies: interrupts, killed workers, several workers, bad input, files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import threading
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import SMALL, SMALL_POINTS, TINY, invoke, one_line_error, wait_for, worker
from vae_search.atomic import atomic_write
from vae_search.errors import UsageError

B1_POINTS = {(4, 32), (8, 32), (16, 32), (8, 64)}


def _trials(storage: str, name: str = "b1") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _safe_trials(storage: str, name: str = "b1") -> list[optuna.trial.FrozenTrial]:
    try:
        return _trials(storage, name)
    except Exception:  # the study or its tables may not exist yet
        return []


def _point(t) -> tuple[int, int]:
    return t.params["latent_dim"], t.params["base_channels"]


def _assert_each_point_complete_once(trials, points=B1_POINTS) -> None:
    complete = Counter(_point(t) for t in trials if t.state == TrialState.COMPLETE)
    assert complete == Counter({p: 1 for p in points}), complete


@pytest.fixture
def warm_cache(batches_dir, tmp_path):
    """A decoded-data cache shared by the workers of one test (decoding is not under test)."""
    from vae_search.data import load_cifar10

    cache = tmp_path / "cache"
    load_cifar10(batches_dir, cache_dir=cache)
    return {"VAE_SEARCH_CACHE": str(cache)}


# ---------------------------------------------------------------- interrupts


@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_fails_the_running_trial_and_a_rerun_resumes(tmp_path, batches_dir, warm_cache, sig):
    storage = f"sqlite:///{tmp_path}/s.db"
    args = ("grid", *SMALL, "--epochs", 40, "--data-dir", batches_dir, *TINY, "--storage", storage,
            "--artifact-dir", tmp_path / "art")
    proc = worker(*args, env=warm_cache)

    def one_done_one_running():
        ts = _safe_trials(storage, "small")
        return any(t.state == TrialState.COMPLETE for t in ts) and any(
            t.state == TrialState.RUNNING and t.user_attrs.get("history") for t in ts)

    wait_for(one_done_one_running, what="a complete trial and a running one")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err

    trials = _trials(storage, "small")
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["fail_reason"] == "interrupted"
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done
    for t in done:  # completed trials and their artifacts are intact
        assert (tmp_path / "art" / t.user_attrs["weights_artifact_id"]).stat().st_size > 0
    if sig == signal.SIGTERM:
        return  # what follows does not depend on the signal: it runs once, after SIGINT

    rerun = worker(*args, env=warm_cache)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    trials = _trials(storage, "small")
    _assert_each_point_complete_once(trials, SMALL_POINTS)
    after = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
    assert all(after[t.number] == t.value for t in done)  # the finished trials were kept, not run again


# ---------------------------------------------------------------- several workers


def _two_workers(args, env):
    procs = [worker(*args, env=env) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert "database is locked" not in err


@pytest.mark.multiprocess
def test_two_grid_workers_on_sqlite(tmp_path, batches_dir, warm_cache):
    storage = f"sqlite:///{tmp_path}/s.db"
    _two_workers(("grid", *SMALL, "--epochs", 3, "--data-dir", batches_dir, *TINY, "--storage", storage,
                  "--artifact-dir", tmp_path / "art"), warm_cache)
    trials = _trials(storage, "small")
    _assert_each_point_complete_once(trials, SMALL_POINTS)
    assert all(t.state == TrialState.COMPLETE or "duplicate" in t.user_attrs.get("fail_reason", "") for t in trials)


@pytest.mark.multiprocess
def test_two_optimize_workers_on_sqlite(tmp_path, batches_dir, warm_cache):
    storage = f"sqlite:///{tmp_path}/s.db"
    _two_workers(("optimize", "--trials", 6, "--epochs", 2, "--data-dir", batches_dir, *TINY, "--storage", storage,
                  "--artifact-dir", tmp_path / "art"), warm_cache)
    trials = _trials(storage, "search")
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6


@pytest.mark.postgres
def test_two_grid_workers_on_postgresql(fresh_pg_db, tmp_path, batches_dir, warm_cache):
    _two_workers(("grid", *SMALL, "--epochs", 3, "--data-dir", batches_dir, *TINY, "--storage", fresh_pg_db,
                  "--artifact-dir", tmp_path / "art"), warm_cache)
    _assert_each_point_complete_once(_trials(fresh_pg_db, "small"), SMALL_POINTS)


@pytest.mark.postgres
def test_two_optimize_workers_on_postgresql(fresh_pg_db, tmp_path, batches_dir, warm_cache):
    _two_workers(("optimize", "--trials", 6, "--epochs", 2, "--data-dir", batches_dir, *TINY, "--storage", fresh_pg_db,
                  "--artifact-dir", tmp_path / "art"), warm_cache)
    trials = _trials(fresh_pg_db, "search")
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6


def test_journal_file_storage(tmp_path, batches_dir, cli):
    storage = f"journal:///{tmp_path}/studies.log"
    rc, _, err = cli("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage,
                     "--artifact-dir", tmp_path / "art")
    assert rc == 0, err
    from vae_search.storages import open_storage

    study = optuna.load_study(study_name="b1", storage=open_storage(storage))
    _assert_each_point_complete_once(study.get_trials())


def test_a_journal_url_reads_like_a_sqlite_one(tmp_path, monkeypatch):
    """journal:///FILE is relative to the current folder and journal:////PATH absolute, as
    sqlite:/// is; the third slash once began the path, so journal:///studies.log wrote
    /studies.log at the root of the filesystem."""
    from vae_search.storages import journal_path, open_storage

    monkeypatch.chdir(tmp_path)
    optuna.create_study(storage=open_storage("journal:///studies.log"), study_name="s")
    assert (tmp_path / "studies.log").is_file() and not Path("/studies.log").exists()
    assert journal_path(f"journal:///{tmp_path}/j.log") == tmp_path / "j.log"
    with pytest.raises(UsageError, match="journal:///FILE"):
        journal_path("journal://studies.log")
    # a journal where the old reading put it: refused, not replaced by a second, empty one
    old = tmp_path / "old.log"
    old.write_bytes((tmp_path / "studies.log").read_bytes())
    relative = str(old).lstrip("/")
    with pytest.raises(UsageError, match=f"give journal:////{relative}"):
        open_storage(f"journal:///{relative}")
    assert not (tmp_path / relative).exists()


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_val_loss_through_the_cli(tmp_path, batches_dir, cli):
    losses = []
    for run in ("a", "b"):
        storage = f"sqlite:///{tmp_path}/{run}.db"
        rc, _, err = cli("grid", *SMALL, "--epochs", 2, "--seed", 7, "--data-dir", batches_dir, *TINY, "--storage", storage,
                         "--artifact-dir", tmp_path / run)
        assert rc == 0, err
        losses.append({_point(t): t.user_attrs["val_loss"] for t in _trials(storage, "small")})
    assert losses[0] == losses[1]  # to the last digit
    t = _trials(f"sqlite:///{tmp_path}/a.db", "small")[0]
    assert {"torch", "optuna", "device", "data_fingerprint", "seed"} <= set(t.user_attrs)


# ---------------------------------------------------------------- bad input leaves studies as they were


@pytest.fixture(scope="module")
def _one_epoch_grid(tmp_path_factory, batches_dir) -> Path:
    """Trained once per module; each test gets its own copy (training is the slow part)."""
    tmp = tmp_path_factory.mktemp("one-epoch-grid")
    assert invoke("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", f"sqlite:///{tmp}/s.db",
                  "--artifact-dir", tmp / "art") == 0
    return tmp


@pytest.fixture
def existing(tmp_path, _one_epoch_grid):
    """A storage with a complete one-epoch b1 study, and a way to check it did not change."""
    shutil.copy(_one_epoch_grid / "s.db", tmp_path / "s.db")
    shutil.copytree(_one_epoch_grid / "art", tmp_path / "art")
    storage = f"sqlite:///{tmp_path}/s.db"

    def dump() -> list:
        with sqlite3.connect(tmp_path / "s.db") as conn:
            return [conn.execute(f"SELECT * FROM {t}").fetchall() for t in
                    ("studies", "trials", "trial_params", "trial_values", "trial_user_attributes", "study_user_attributes")]

    before = dump()
    yield storage, tmp_path
    assert dump() == before, "a failed command changed the study"


class TestBadInput:
    def test_unknown_storage_scheme(self, cli, tmp_path):
        rc, _, err = cli("grid", "--storage", "redis://localhost/0")
        line = one_line_error(err)
        assert rc == 2 and "unknown scheme 'redis'" in line and "sqlite:///" in line

    def test_a_scheme_in_capitals_is_the_same_storage(self, cli, tmp_path, batches_dir):
        """SQLAlchemy knows `sqlite` only in lower case: SQLITE:/// failed after the data had
        loaded, with "Can't load plugin: sqlalchemy.dialects:SQLITE"."""
        rc, _, err = cli("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage",
                         f"SQLite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "art")
        assert rc == 0, err
        rc, out, err = cli("show", "--storage", f"sqlite:///{tmp_path}/s.db", "--json")
        assert rc == 0 and len(json.loads(out)["rows"]) == 4, err

    def test_a_journal_that_is_none_or_damaged_is_one_line_and_left_as_it_was(self, cli, tmp_path, batches_dir):
        """Optuna takes a last line that is no record for one being written and appends after
        it: a text file given as a journal was written to and then could not be replayed."""
        text = tmp_path / "notes.txt"
        text.write_text("my notes\n")
        journal = tmp_path / "j.log"
        rc, _, err = cli("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", f"journal:///{journal}",
                         "--artifact-dir", tmp_path / "art")
        assert rc == 0, err
        lines = journal.read_bytes().splitlines(keepends=True)
        damaged = tmp_path / "damaged.log"
        damaged.write_bytes(b"".join([*lines[:2], b"garbage{\n", *lines[3:]]))
        for path, words in ((text, "is not an Optuna journal"), (damaged, "is damaged")):
            before = path.read_bytes()
            for args in (("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--artifact-dir", tmp_path / "art"),
                         ("best",)):
                rc, _, err = cli(*args, "--storage", f"journal:///{path}")
                assert rc == 2 and words in one_line_error(err), (path, args, err)
            assert path.read_bytes() == before
        rc, _, err = cli("best", "--storage", "journal:")
        assert rc == 2 and "names a folder" in one_line_error(err)

    def test_a_sqlite_url_with_a_query_names_its_file(self, cli, existing):
        storage, _ = existing
        rc, out, err = cli("show", "--study-name", "b1", "--storage", storage + "?timeout=5")
        assert rc == 0 and "config" in out, err

    def test_unreachable_server(self, cli):
        rc, _, err = cli("best", "--storage", "postgresql+psycopg://u:secret@127.0.0.1:1/db")
        line = one_line_error(err)
        assert rc == 2 and "cannot open storage" in line and "secret" not in line

    def test_cuda_where_there_is_none(self, cli, existing, batches_dir):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        storage, tmp = existing
        rc, _, err = cli("grid", "--device", "cuda", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage,
                         "--artifact-dir", tmp / "art")
        assert rc == 2 and "no CUDA device" in one_line_error(err)

    def test_unknown_device(self, cli, existing):
        storage, _ = existing
        rc, _, err = cli("grid", "--device", "tpu", "--storage", storage)
        assert rc == 2 and "--device" in one_line_error(err)

    def test_a_port_in_use_is_one_line_before_any_banner(self, cli, existing):
        """The servers said they were listening, then failed to bind: four lines, the first a lie."""
        storage, _ = existing
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            for command in ("dashboard", "storage-proxy"):
                rc, _, err = cli(command, "--storage", storage, "--port", port)
                assert rc == 2 and f"cannot listen on 127.0.0.1:{port}" in one_line_error(err), (command, err)

    def test_a_locked_database_is_said_to_be_locked(self, cli, existing, monkeypatch):
        """A study file that another program holds was "not an Optuna storage (database is locked)"."""
        storage, tmp = existing
        monkeypatch.setattr("vae_search.storages.LOOK_TIMEOUT", 0.5)
        holder = sqlite3.connect(tmp / "s.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            for command in ("best", "show"):
                rc, _, err = cli(command, "--study-name", "b1", "--storage", storage)
                line = one_line_error(err)
                assert rc == 2 and "stayed locked by another program" in line and "not an Optuna storage" not in line
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        rc, out, err = cli("show", "--study-name", "b1", "--storage", storage)  # show writes nothing
        assert rc == 0 and "config" in out, err

    def test_unknown_study(self, cli, existing):
        storage, _ = existing
        for command in ("best", "report", "interpolate", "show"):
            rc, _, err = cli(command, "--study-name", "nope", "--storage", storage)
            assert rc == 2 and "no study named 'nope'" in one_line_error(err), command

    def test_output_folder_that_cannot_be_written(self, cli, existing):
        storage, tmp = existing
        blocker = tmp / "a-file"
        blocker.write_text("not a folder")
        for args in (("report", "--out", blocker / "sub"), ("interpolate", "--out", blocker / "sub"),
                     ("show", "--csv", blocker / "sub" / "t.csv")):
            rc, _, err = cli(*args, "--study-name", "b1", "--storage", storage, *(("--artifact-dir", tmp / "art") if args[0] == "interpolate" else ()))
            assert rc == 2 and str(blocker) in one_line_error(err), args

    def test_artifact_dir_that_cannot_be_written(self, cli, existing, batches_dir):
        storage, tmp = existing
        (tmp / "a-file").write_text("x")
        rc, _, err = cli("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage,
                         "--artifact-dir", tmp / "a-file" / "art")
        assert rc == 2 and "artifact folder" in one_line_error(err)

    @pytest.mark.parametrize("env", [("VAE_SEARCH_OUTAGE_S", "1m"), ("VAE_SEARCH_OUTAGE_S", "-5"),
                                     ("VAE_SEARCH_THREADS", "two"), ("VAE_SEARCH_THREADS", "0"),
                                     ("VAE_SEARCH_WORKER", "abc"), ("VAE_SEARCH_WORKER", "3/2")])
    def test_a_bad_environment_variable_is_one_line(self, cli, tmp_path, batches_dir, monkeypatch, env):
        """VAE_SEARCH_OUTAGE_S was read with float() on import and VAE_SEARCH_THREADS with int():
        a typo was a traceback; VAE_SEARCH_WORKER, the parent's word to its workers, left in a
        shell made a command a silent worker or a traceback."""
        monkeypatch.setenv(*env)
        rc, _, err = cli("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage",
                         f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "art")
        assert rc == 2 and one_line_error(err).startswith(f"vae-search: error: {env[0]}={env[1]!r}")

    def test_a_data_cache_that_cannot_be_written_is_said(self, cli, tmp_path, batches_dir, monkeypatch):
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("VAE_SEARCH_CACHE", str(tmp_path / "a-file" / "cache"))
        rc, _, err = cli("optimize", "--trials", 1, "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage",
                         f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "art", "--jobs", 1)
        assert rc == 0, err
        assert "note: the decoded images could not be kept in the data cache" in err and "VAE_SEARCH_CACHE" in err

    def test_an_archive_that_is_none_is_one_line(self, cli, tmp_path):
        """tarfile's own message lists every compression it tried, one per line: still one line."""
        bogus = tmp_path / "data.tar.gz"
        bogus.write_bytes(bytes(range(256)) * 4)
        rc, _, err = cli("grid", "--epochs", 1, "--data-dir", bogus, "--storage", f"sqlite:///{tmp_path}/s.db",
                         "--artifact-dir", tmp_path / "art")
        line = one_line_error(err)
        assert rc == 2 and f"archive {bogus} cannot be unpacked" in line and "not a gzip file" in line
        assert not (tmp_path / "s.db").exists()  # refused before the storage is opened: nothing written

    def test_unknown_preset_and_bad_numbers_leave_the_study(self, cli, existing):
        storage, _ = existing
        assert cli("grid", "--preset", "nope", "--storage", storage)[0] == 2
        assert cli("grid", "--epochs", "0", "--storage", storage)[0] == 2
        assert cli("optimize", "--trials", "-1", "--storage", storage)[0] == 2
        # --timeout 0 opened a new study "search", trained nothing and said "0 trials"; nan never stopped
        for timeout in ("0", "nan"):
            rc, _, err = cli("optimize", "--timeout", timeout, "--storage", storage)
            assert rc == 2 and "--timeout" in one_line_error(err)
        assert "search" not in optuna.get_all_study_names(storage)
        # numpy's seed streams refuse a negative seed and torch's generator one of 2**63: a traceback, or every trial
        for command in ("grid", "optimize", "confirm"):
            for seed in ("-5", str(2**63)):
                rc, _, err = cli(command, "--seed", seed, "--storage", storage)
                assert rc == 2 and "--seed" in one_line_error(err)
        # every (point, seed) is queued at once: a slip of the finger would flood a shared study
        rc, _, err = cli("grid", "--seeds", "30000", "--storage", storage)
        assert rc == 2 and "--seeds" in one_line_error(err)
        rc, _, err = cli("confirm", "--seeds", "30000", "--storage", storage)
        assert rc == 2 and "--seeds" in one_line_error(err)

    @pytest.mark.parametrize("option,value", [("--steps", 1), ("--steps", 65), ("--steps", 100000), ("--rows", 0),
                                              ("--rows", 65)])
    def test_interpolation_sizes_are_bounded(self, cli, existing, option, value):
        """rows x steps images in one figure: --steps 100000 ran the machine out of memory."""
        storage, tmp = existing
        rc, _, err = cli("interpolate", option, value, "--study-name", "b1", "--storage", storage,
                         "--artifact-dir", tmp / "art", "--out", tmp / "out")
        assert rc == 2 and option in one_line_error(err) and not (tmp / "out").exists()

    def test_missing_checkpoint(self, cli, existing):
        storage, tmp = existing
        t = _trials(storage)[0]
        (tmp / "art" / t.user_attrs["weights_artifact_id"]).unlink()
        rc, _, err = cli("interpolate", "--trial", 0, "--study-name", "b1", "--storage", storage,
                         "--artifact-dir", tmp / "art", "--out", tmp / "out")
        assert rc == 2 and "missing" in one_line_error(err)

    def test_corrupt_checkpoint(self, cli, existing):
        storage, tmp = existing
        t = _trials(storage)[1]
        path = tmp / "art" / t.user_attrs["weights_artifact_id"]
        path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a crash mid-copy
        rc, _, err = cli("interpolate", "--trial", 1, "--study-name", "b1", "--storage", storage,
                         "--artifact-dir", tmp / "art", "--out", tmp / "out")
        assert rc == 2 and "corrupt" in one_line_error(err)


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")

    def crash(f):
        f.write(b"half a ")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary left behind
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_text() == "new"
    assert Path(target).stat().st_mode & 0o777 != 0o600


def test_atomic_write_follows_a_link_and_writes_a_stream_in_place(tmp_path):
    """Renaming over the target replaced whatever was there: as root, `show --csv /dev/full`
    turned the device into a CSV file; a link to a kept table became a file of its own."""
    kept = tmp_path / "kept" / "table.csv"
    kept.parent.mkdir()
    kept.write_text("old")
    link = tmp_path / "table.csv"
    link.symlink_to(kept)
    atomic_write(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and kept.read_text() == "new"
    assert sorted(p.name for p in kept.parent.iterdir()) == ["table.csv"]

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write(fifo, lambda f: f.write(b"streamed"))
    reader.join(timeout=10)
    assert got == [b"streamed"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_disk_that_fills_up_while_writing_is_one_line(cli, existing, monkeypatch):
    """A write the system refuses halfway was a traceback from report, interpolate and
    show --csv; the files that were there stay as they were, with no temporary left."""
    storage, tmp = existing
    table = tmp / "t.csv"
    table.write_text("the old table")
    (tmp / "rep").mkdir()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("vae_search.atomic.os.fsync", full)
    for args, what in ((("show", "--csv", table), str(table)), (("report", "--out", tmp / "rep"), "the report"),
                       (("interpolate", "--artifact-dir", tmp / "art", "--out", tmp / "int"), "the interpolation")):
        rc, _, err = cli(*args, "--study-name", "b1", "--storage", storage)
        line = one_line_error(err)
        assert rc == 1 and f"cannot write {what}" in line and "No space left on device" in line, (args, err)
    assert table.read_text() == "the old table"
    assert not [p for p in tmp.rglob("*.tmp")]


def test_a_csv_that_is_a_folder_or_a_stream(cli, existing):
    storage, tmp = existing
    rc, _, err = cli("show", "--study-name", "b1", "--storage", storage, "--csv", tmp)
    assert rc == 2 and f"--csv {tmp} is a folder" in one_line_error(err)
    fifo = tmp / "rows"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    rc, _, err = cli("show", "--study-name", "b1", "--storage", storage, "--csv", fifo)
    reader.join(timeout=10)
    assert rc == 0, err
    assert got[0].decode().splitlines()[0].startswith("config,latent_dim,base_channels") and len(got[0].splitlines()) == 5
    assert stat.S_ISFIFO(fifo.stat().st_mode)

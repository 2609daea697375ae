"""Faults at scale: a vanishing or full artifact disk, a database that goes away, four SQLite
workers, Optuna's gRPC storage proxy, and a short chaos run against a real PostgreSQL."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import SMALL, SMALL_POINTS, TINY, free_port, one_line_error, wait_for, worker, workers_that_reported

ROOT = Path(__file__).resolve().parent.parent


def _trials(storage, name="b1"):
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except Exception:
        return []


def _complete_points(trials) -> Counter:
    return Counter((t.params["latent_dim"], t.params["base_channels"], t.user_attrs.get("seed"))
                   for t in trials if t.state == TrialState.COMPLETE)


@pytest.fixture
def warm_cache(batches_dir, tmp_path):
    from vae_search.data import load_cifar10

    load_cifar10(batches_dir, cache_dir=tmp_path / "cache")
    return {"VAE_SEARCH_CACHE": str(tmp_path / "cache")}


# ---------------------------------------------------------------- the artifact disk


@pytest.mark.multiprocess
def test_artifact_folder_removed_mid_trial(tmp_path, batches_dir, warm_cache, cli):
    storage, art = f"sqlite:///{tmp_path}/s.db", tmp_path / "art"
    proc = worker("grid", *SMALL, "--epochs", 25, "--data-dir", batches_dir, *TINY, "--storage", storage,
                  "--artifact-dir", art, env=warm_cache)
    wait_for(lambda: any(t.state == TrialState.RUNNING and t.user_attrs.get("history") for t in _trials(storage, "small")),
             what="a running trial")
    shutil.rmtree(art)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vae-search: error: cannot save the files of trial") and "No such file or directory" in last
    assert "Traceback" not in err
    trials = _trials(storage, "small")  # the study stays readable
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "cannot save the files" in failed[0].user_attrs["fail_reason"]
    assert "weights_artifact_id" not in failed[0].user_attrs  # nothing interpolate would trust
    rc, _, err = cli("interpolate", "--trial", failed[0].number, "--study-name", "small", "--storage", storage,
                     "--artifact-dir", tmp_path / "art2", "--out", tmp_path / "out")
    assert rc == 2 and "has no weights (it is FAIL)" in one_line_error(err)


@pytest.mark.multiprocess
def test_artifact_disk_full(tmp_path, batches_dir, warm_cache):
    """A 2 MB file-size limit: the database and the cache fit, a base-64 checkpoint (4.5 MB) does not."""
    storage, art = f"sqlite:///{tmp_path}/s.db", tmp_path / "art"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024**2, 2 * 1024**2))

    proc = worker("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir", art,
                  env=warm_cache, preexec_fn=limit)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("vae-search: error: cannot save the files of trial")
    assert "File too large" in err and "Traceback" not in err
    trials = _trials(storage)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params["base_channels"] == 64  # the largest point runs first
    assert "File too large" in failed[0].user_attrs["fail_reason"]
    # no half-written file in the store: what is there is whole (the complete trials' files)
    for f in art.iterdir():
        assert not f.name.startswith(".") or f.name.startswith(".write-test"), f
    assert not list(art.glob(".*.tmp"))


# ---------------------------------------------------------------- the database goes away


@pytest.fixture
def own_pg():
    """A PostgreSQL server of this test's own, which it may stop."""
    from tests.pgserver import PgServer, Unavailable

    try:
        server = PgServer()
    except Unavailable as e:
        pytest.skip(str(e))
    server.start()
    yield server
    server.cleanup()


@pytest.mark.postgres
def test_storage_unreachable_mid_run_then_resumed(own_pg, tmp_path, batches_dir, warm_cache):
    storage = own_pg.create_database("vae")
    args = ("grid", *SMALL, "--epochs", 25, "--heartbeat", 1, "--data-dir", batches_dir, *TINY, "--storage", storage,
            "--artifact-dir", tmp_path / "art")
    proc = worker(*args, env={**warm_cache, "VAE_SEARCH_OUTAGE_S": "5"})
    wait_for(lambda: any(t.state == TrialState.RUNNING and t.user_attrs.get("history") for t in _trials(storage, "small")),
             what="a running trial")
    own_pg.stop()
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - stopped < 60  # bounded: the 5 s outage allowance and a little
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert "unreachable for 5 s" in last and "127.0.0.1" in last and "Traceback" not in err
    own_pg.start()
    time.sleep(3.5)  # the dead run's trial goes stale: three missed beats
    rerun = worker(*args, env=warm_cache)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    trials = _trials(storage, "small")
    assert _complete_points(trials) == Counter({(*p, 0): 1 for p in SMALL_POINTS})
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stale = [t for t in trials if t.state == TrialState.FAIL]
    assert stale and all("stopped sending heartbeats" in t.user_attrs["fail_reason"] for t in stale)


@pytest.mark.postgres
def test_a_restart_under_a_running_worker_is_ridden_out(own_pg, tmp_path, batches_dir, warm_cache):
    storage = own_pg.create_database("vae")
    proc = worker("grid", *SMALL, "--epochs", 12, "--data-dir", batches_dir, *TINY, "--storage", storage,
                  "--artifact-dir", tmp_path / "art", env=warm_cache)
    wait_for(lambda: any(t.state == TrialState.RUNNING and t.user_attrs.get("history") for t in _trials(storage, "small")),
             what="a running trial")
    own_pg.restart(down_s=2)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    trials = _trials(storage, "small")
    assert _complete_points(trials) == Counter({(*p, 0): 1 for p in SMALL_POINTS}) and len(trials) == 4


# ---------------------------------------------------------------- many local workers on SQLite


@pytest.mark.multiprocess
def test_four_local_workers_on_sqlite(tmp_path, batches_dir, warm_cache):
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = worker("grid", *SMALL, "--jobs", 4, "--seeds", 2, "--epochs", 1, "--data-dir", batches_dir, *TINY,
                  "--storage", storage, "--artifact-dir", tmp_path / "art", env=warm_cache)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "database is locked" not in err, err
    # Four started; how many got a point depends on who was up first (8 points of 1 epoch).
    assert "4 workers, 1 torch thread(s) each" in err, err
    trials = _trials(storage, "small")
    assert _complete_points(trials) == Counter({(*p, s): 1 for p in SMALL_POINTS for s in (0, 1)})
    said = workers_that_reported(err)
    assert len(said) == len({t.user_attrs["worker"] for t in trials}) >= 1, err  # each trainer spoke through the parent


@pytest.mark.multiprocess
def test_a_killed_worker_is_found_by_heartbeat_and_its_point_retried_once(tmp_path, batches_dir, warm_cache):
    storage = f"sqlite:///{tmp_path}/s.db"
    args = ("grid", *SMALL, "--epochs", 30, "--heartbeat", 1, "--data-dir", batches_dir, *TINY, "--storage", storage,
            "--artifact-dir", tmp_path / "art")
    victim = worker(*args, env=warm_cache)
    running = wait_for(lambda: [t for t in _trials(storage, "small")
                                if t.state == TrialState.RUNNING and t.user_attrs.get("history")],
                       what="a running trial")[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert _trials(storage, "small")[running.number].state == TrialState.RUNNING  # nobody told the storage
    time.sleep(3.5)  # the grace period: three missed beats
    rescuer = worker(*args, env=warm_cache)
    _, err = rescuer.communicate(timeout=600)
    assert rescuer.returncode == 0, err
    trials = _trials(storage, "small")
    reason = trials[running.number].user_attrs["fail_reason"]
    assert trials[running.number].state == TrialState.FAIL
    assert reason.startswith("worker stopped sending heartbeats (silent for more than 3 s); retried as trial ")
    retry = trials[int(reason.rsplit(" ", 1)[1])]
    assert retry.state == TrialState.COMPLETE and retry.params == running.params
    assert retry.system_attrs["failed_trial"] == running.number
    assert "fail_reason" not in retry.user_attrs  # the retry does not inherit the failed run's attributes
    assert _complete_points(trials) == Counter({(*p, 0): 1 for p in SMALL_POINTS})  # each point once


# ---------------------------------------------------------------- Optuna's gRPC storage proxy


def _wait_until_listening(proxy: subprocess.Popen, port: int) -> None:
    import socket

    def listening() -> bool:
        assert proxy.poll() is None, proxy.communicate()[1]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout=60, what="the proxy")


@pytest.mark.postgres
def test_two_workers_through_the_grpc_proxy(fresh_pg_db, tmp_path, batches_dir, warm_cache, cli):
    port = free_port()
    proxy = worker("storage-proxy", "--storage", fresh_pg_db, "--port", port)
    try:
        _wait_until_listening(proxy, port)
        grpc = f"grpc://127.0.0.1:{port}"
        args = ("optimize", "--trials", 5, "--epochs", 2, "--data-dir", batches_dir, *TINY, "--storage", grpc,
                "--artifact-dir", tmp_path / "art")
        procs = [worker(*args, env=warm_cache) for _ in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
        trials = _trials(fresh_pg_db, "search")  # read straight from the database behind the proxy
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 5
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len({t.user_attrs["data_fingerprint"] for t in finished}) == 1  # (a racing surplus trial never ran)
        rc, out, err = cli("best", "--study-name", "search", "--storage", grpc)
        assert rc == 0, err
        assert "best of study 'search'" in out
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def test_grpc_url_without_a_proxy_is_one_line(cli, monkeypatch):
    from vae_search import storages

    monkeypatch.setattr(storages, "PROXY_WAIT_S", 1.5)  # a user waits 10 s; the answer is the same
    rc, _, err = cli("best", "--storage", f"grpc://127.0.0.1:{free_port()}")
    assert rc == 2 and "no storage proxy answers there within 1.5 s" in one_line_error(err)


@pytest.mark.parametrize("backend", ["grpc://127.0.0.1:13000", "journal:///{tmp}/s.log"])
def test_the_proxy_refuses_what_it_cannot_serve(backend, tmp_path, cli):
    rc, _, err = cli("storage-proxy", "--storage", backend.format(tmp=tmp_path), "--port", free_port())
    assert rc == 2 and ("not another proxy" in one_line_error(err) or "not a journal file" in one_line_error(err))


def test_a_stopped_proxy_says_stopped_not_resume(tmp_path):
    """A server has no trials: stopped, it says so, not "run the same command again to resume"."""
    port = free_port()
    proxy = worker("storage-proxy", "--storage", f"sqlite:///{tmp_path}/s.db", "--port", port)
    _wait_until_listening(proxy, port)
    proxy.terminate()
    _, err = proxy.communicate(timeout=30)
    assert proxy.returncode == 130 and err.strip().splitlines()[-1] == "vae-search: stopped", err


# ---------------------------------------------------------------- chaos, short


@pytest.mark.chaos
@pytest.mark.postgres
def test_short_chaos_run_loses_and_duplicates_nothing(pg_server):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--minutes", "1", "--workers", "3",
                           "--kill-every", "6", "--epochs", "3", "--images", "384", "--preset", SMALL[1]],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["lost"] == 0 and result["duplicates"] == 0, proc.stdout
    assert result["running_left"] == 0 and result["bad_weights"] == 0 and result["hung"] == 0, proc.stdout
    assert result["killed"] >= 3 and result["restarts"] == 1, proc.stdout
    assert result["complete"] >= 8  # every grid point with both seeds, and the complete search trials


def _pop_all(storage_url: str, out) -> None:
    """A worker that pops WAITING trials as fast as it can, reporting their numbers."""
    import optuna

    from vae_search.storages import open_storage
    from vae_search.trial_loop import _pop_waiting

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="pop", storage=open_storage(storage_url, heartbeat=None))
    while (trial := _pop_waiting(study)) is not None:
        out.put(trial.number)
    out.put(None)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_waiting_trial_is_popped_by_one_worker_only(tmp_path, backend, request):
    """WAITING -> RUNNING is atomic: four processes popping 40 queued trials at once take
    each exactly once (on SQLite this needs BEGIN IMMEDIATE: pysqlite reads outside transactions)."""
    import multiprocessing as mp

    from vae_search.storages import open_storage

    url = f"sqlite:///{tmp_path}/s.db" if backend == "sqlite" else request.getfixturevalue("fresh_pg_db")
    study = optuna.create_study(study_name="pop", storage=open_storage(url, heartbeat=None))
    for i in range(40):
        study.enqueue_trial({"x": float(i)})
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_pop_all, args=(url, out)) for _ in range(4)]
    for p in procs:
        p.start()
    popped, done = [], 0
    while done < len(procs):
        n = out.get(timeout=120)
        done += n is None
        if n is not None:
            popped.append(n)
    for p in procs:
        p.join(timeout=30)
    assert sorted(popped) == list(range(40)), Counter(popped).most_common(3)


def test_a_point_half_way_through_its_suggestions_is_not_queued_again(tmp_path):
    """A trial that has suggested some of its parameters still owns its grid point."""
    from vae_search.definitions import load_preset
    from vae_search.storages import open_storage
    from vae_search.trial_loop import _pop_waiting, enqueue_missing_points, grid_points

    preset = load_preset("b1")
    study = optuna.create_study(study_name="b1", storage=open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=None))
    points = grid_points(preset, [0])
    assert enqueue_missing_points(study, points) == 4
    trial = _pop_waiting(study)
    trial.suggest_categorical("latent_dim", [4, 8, 16])  # one of four suggestions done
    assert enqueue_missing_points(study, points) == 0
    assert len(study.get_trials()) == 4

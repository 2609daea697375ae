"""`--jobs N`: local worker processes on one study, stopped together, surviving one that dies."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import SMALL, SMALL_POINTS, TINY, wait_for, worker, workers_that_reported
from vae_search.workers import worker_argv


def _trials(storage: str, name: str = "b1"):
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except Exception:  # not created yet
        return []


def _point(t):
    """(latent, base, seed); a WAITING trial has only its queued fixed_params."""
    params = {**t.system_attrs.get("fixed_params", {}), **t.params}
    return params.get("latent_dim"), params.get("base_channels"), t.user_attrs.get("seed")


def _pid(t) -> str:
    """The process that trained the trial, from its `worker` attribute (host:pid)."""
    return t.user_attrs.get("worker", ":").rsplit(":", 1)[1]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.fixture
def warm_cache(batches_dir, tmp_path):
    from vae_search.data import load_cifar10

    load_cifar10(batches_dir, cache_dir=tmp_path / "cache")
    return {"VAE_SEARCH_CACHE": str(tmp_path / "cache")}


def test_worker_argv_replaces_jobs_and_moves_the_storage_to_the_environment():
    assert worker_argv(["grid", "--jobs", "3", "--seeds", "2"]) == (["grid", "--seeds", "2", "--jobs", "1"], {})
    assert worker_argv(["grid", "--jobs=3"]) == (["grid", "--jobs", "1"], {})
    url = "postgresql+psycopg://vae:secret@db/vae"
    for argv in (["optimize", "--storage", url, "--trials", "5"], ["optimize", f"--storage={url}", "--trials", "5"]):
        args, env = worker_argv(argv)
        assert args == ["optimize", "--trials", "5", "--jobs", "1"] and env == {"VAE_SEARCH_STORAGE": url}
        assert not any("secret" in a for a in args)


def test_confirm_workers_get_the_plan_made_by_their_parent():
    """confirm's workers run the trials and the study the parent chose, not a choice of their own
    made seconds later (another study may be the most recent by then, or another trial the best)."""
    from vae_search.run import _pinned_for_workers

    argv = ["confirm", "--top=2", "--seeds", "3", "--study-name", "old", "--jobs", "2"]
    assert _pinned_for_workers(argv, "search", [7, 3]) == [
        "confirm", "--seeds", "3", "--jobs", "2", "--study-name", "search", "--trial", "7", "--trial", "3"]
    assert worker_argv(_pinned_for_workers(["confirm", "--trial", "9"], "s", [9]))[0] == [
        "confirm", "--study-name", "s", "--trial", "9", "--jobs", "1"]


@pytest.mark.parametrize("device, gpus, cores, free_gb, expected", [
    ("cpu", 0, 2, 24, 2),    # one per core
    ("cpu", 0, 16, 5, 2),    # as many as the memory holds (2 GB each)
    ("cuda", 1, 16, 64, 12),  # GPU_WORKERS share one GPU, on three quarters of the cores
    ("cuda", 2, 16, 64, 12),  # the cores, not the GPUs, bound it (each worker launches from one)
    ("cuda", 2, 32, 128, 24),
    ("cuda", 1, 64, 256, 12),  # at most GPU_WORKERS per GPU
    ("cuda", 1, 16, 8, 4),    # as many as the memory holds
    ("cuda", 1, 2, 64, 2),
    ("cuda", 8, 4, 64, 8),   # never fewer than one per GPU
    ("mps", 0, 8, 64, 1),
])
def test_default_jobs(monkeypatch, device, gpus, cores, free_gb, expected):
    import torch

    from vae_search import workers

    monkeypatch.setattr(workers, "cores", lambda: cores)
    monkeypatch.setattr(workers, "_available_memory", lambda: free_gb * 1024**3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert workers.default_jobs(torch.device(device)) == expected


@pytest.mark.parametrize("device, free_gb, gpu_free_gb, model_gb, expected", [
    ("cpu", 24, 0, None, 12),  # the default space's models: 2 GiB a worker
    ("cpu", 24, 0, 0.1, 12),   # small models change nothing
    ("cpu", 24, 0, 5, 4),      # a worker holds its data (1 GiB) and the largest model: 6 GiB each
    ("cpu", 24, 0, 30, 1),     # never fewer than one (a model that cannot fit is refused earlier)
    ("cuda", 64, 40, 0.1, 12),
    ("cuda", 64, 40, 8, 5),    # the workers on one GPU share its memory
    ("cuda", 64, 4, 8, 1),
])
def test_default_jobs_leave_room_for_the_largest_model(monkeypatch, device, free_gb, gpu_free_gb, model_gb, expected):
    import torch

    from vae_search import workers

    monkeypatch.setattr(workers, "cores", lambda: 16)
    monkeypatch.setattr(workers, "_available_memory", lambda: free_gb * 1024**3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (gpu_free_gb * 1024**3, 80 * 1024**3))
    model_bytes = None if model_gb is None else int(model_gb * 1024**3)
    assert workers.default_jobs(torch.device(device), model_bytes) == expected


def test_a_dead_workers_trial_is_failed_and_requeued_by_the_run_layer(tmp_path, monkeypatch):
    """run_trials' side of a worker death, without starting a process: run_workers reports
    the death (as it does on SIGKILL), the trial is failed with the reason and queued again,
    and the command ends with one RunError line."""
    from types import SimpleNamespace

    from vae_search import run, workers
    from vae_search.errors import RunError
    from vae_search.storages import open_storage, trial_id_of

    study = optuna.create_study(study_name="b1", storage=open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=None))
    study.enqueue_trial({"latent_dim": 4, "base_channels": 32}, user_attrs={"seed": 0, "config": 1})
    running = study.ask()
    fates = []

    def one_worker_dies(argv, n, *, on_death, **kw):
        fates.append(on_death(trial_id_of(running), "worker 2 died (SIGKILL)", True))
        return 1

    monkeypatch.setattr(workers, "worker_identity", lambda: None)
    monkeypatch.setattr(workers, "run_workers", one_worker_dies)
    opts = run.Training(argv=["grid"], storage="unused", artifact_dir=tmp_path / "a", jobs=2)
    prepared = run.Prepared(None, study, SimpleNamespace(device="cpu"))
    with pytest.raises(RunError, match="a worker failed"):
        run.run_trials(prepared, opts, lambda **kw: 0, total=4, done=0, counts=lambda s: True, title="b1")
    trials = study.get_trials()
    assert fates == ["retried as trial 1"]
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"].startswith("worker 2 died (SIGKILL)")
    assert trials[1].state == TrialState.WAITING and trials[1].params == trials[0].params
    assert trials[1].user_attrs == {"seed": 0, "config": 1}


def test_the_trials_a_run_trained_are_the_ones_its_workers_reported(tmp_path, monkeypatch):
    """Not every trial that ended meanwhile: a surplus start, a repeat, or another machine's
    trial is not this run's training."""
    from types import SimpleNamespace

    from vae_search import run, workers
    from vae_search.storages import open_storage

    study = optuna.create_study(study_name="search", storage=open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=None))

    def two_trained_one_surplus(argv, n, *, on_end, **kw):
        for number in (0, 1):
            study.tell(study.ask(), 1.0)
            on_end(number)
        surplus = study.ask()
        surplus.set_user_attr("fail_reason", "surplus: the study already had 2 trials")
        study.tell(surplus, state=TrialState.FAIL)
        return 0

    monkeypatch.setattr(workers, "worker_identity", lambda: None)
    monkeypatch.setattr(workers, "run_workers", two_trained_one_surplus)
    opts = run.Training(argv=["optimize"], storage="unused", artifact_dir=tmp_path / "a", jobs=2)
    prepared = run.Prepared(None, study, SimpleNamespace(device="cpu"))
    assert run.run_trials(prepared, opts, lambda **kw: 0, total=2, done=0, counts=lambda s: True, title="search") == 2
    assert len(study.trials) == 3


@pytest.mark.parametrize("jobs, free_gb, said", [(8, 6, True), (8, 64, False), (3, 6, False)])
def test_jobs_beyond_the_memory_are_said_before_the_workers_start(tmp_path, monkeypatch, capfd, jobs, free_gb, said):
    """An explicit --jobs is the user's call, but past the free memory the kernel kills
    workers mid-trial: the run says so at its start."""
    from types import SimpleNamespace

    from vae_search import run, workers
    from vae_search.storages import open_storage

    study = optuna.create_study(study_name="search", storage=open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=None))
    started = []
    monkeypatch.setattr(workers, "worker_identity", lambda: None)
    monkeypatch.setattr(workers, "_available_memory", lambda: free_gb * 1024**3)
    monkeypatch.setattr(workers, "run_workers", lambda argv, n, **kw: started.append(n) or 0)
    opts = run.Training(argv=["optimize"], storage="unused", artifact_dir=tmp_path / "a", jobs=jobs)
    run.run_trials(run.Prepared(None, study, SimpleNamespace(device="cpu")), opts, lambda **kw: 0, total=50, done=0,
                   counts=lambda s: True, title="search")
    err = capfd.readouterr().err
    assert started == [jobs]  # said, not refused
    assert (f"--jobs {jobs} is more workers than the free memory holds" in err) == said, err


@pytest.mark.multiprocess
def test_two_workers_complete_each_point_once(tmp_path, batches_dir, warm_cache):
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = worker("grid", *SMALL, "--jobs", 2, "--seeds", 2, "--epochs", 1, "--data-dir", batches_dir, *TINY,
                  "--storage", storage, "--artifact-dir", tmp_path / "art", env=warm_cache)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    trials = _trials(storage, "small")
    complete = Counter(_point(t) for t in trials if t.state == TrialState.COMPLETE)
    assert complete == Counter({(*p, s): 1 for p in SMALL_POINTS for s in (0, 1)}), complete
    assert {t.user_attrs["jobs"] for t in trials} == {2} and {t.user_attrs["threads"] for t in trials} == {max(1, os.cpu_count() // 2)}
    # Every worker that trained said so through the parent (both, unless one started late).
    said = workers_that_reported(err)
    assert len(said) == len({t.user_attrs["worker"] for t in trials}) >= 1, err
    epochs = [line for line in err.splitlines() if " epoch " in line and line.startswith("[worker ")]
    assert len(epochs) == 8, err  # 8 trials of 1 epoch; not a terminal: one line per epoch instead of a live bar
    assert "b1's shape at base 8 and 16" in out and "23,347" in out  # the parent printed the table (title, params)


@pytest.mark.multiprocess
@pytest.mark.parametrize("whom", ["parent", "group"])
def test_ctrl_c_stops_every_worker_and_leaves_no_running_trial(tmp_path, batches_dir, warm_cache, whom):
    """SIGINT to the parent alone (kill -INT) or to the whole process group (a terminal's Ctrl-C)."""
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = worker("grid", "--jobs", 2, "--epochs", 60, "--data-dir", batches_dir, *TINY, "--storage", storage,
                  "--artifact-dir", tmp_path / "art", env=warm_cache, start_new_session=True)
    try:
        wait_for(lambda: sum(t.state == TrialState.RUNNING and bool(t.user_attrs.get("history")) for t in _trials(storage)) == 2,
                 what="two running trials")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(([(t.number, t.state.name, t.params.get("latent_dim"), t.params.get("base_channels"),
                                len(t.user_attrs.get("history", [])), t.user_attrs.get("fail_reason")) for t in _trials(storage)],
                              proc.communicate()[1][-3000:])) from None
    if whom == "parent":
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    trials = _trials(storage)
    table = [(t.number, t.state.name, t.params, t.system_attrs, t.user_attrs.get("fail_reason")) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING], table
    assert [t.user_attrs["fail_reason"] for t in trials if t.state == TrialState.FAIL] == ["interrupted"] * 2, (table, err)
    # what became of the trials is said once, by the parent, not again by each worker
    assert err.count("finished trials are saved") == 1 and err.rstrip().endswith("Run the same command again to resume."), err


@pytest.mark.multiprocess
def test_a_worker_that_dies_does_not_stop_the_others(tmp_path, batches_dir, warm_cache):
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = worker("grid", *SMALL, "--jobs", 2, "--epochs", 20, "--data-dir", batches_dir, *TINY, "--storage", storage,
                  "--artifact-dir", tmp_path / "art", env=warm_cache)
    # The victim: a worker running a trial well short of its end (the trial's `worker`
    # attribute names its process), once both workers have trained (so both have queued the
    # grid's points). Killed between trials it would leave nothing to fail; killed before the
    # other worker's start, its point could be queued again as the parent fails it (the
    # duplicate guard then fails one of the two "duplicate; not run": right, but another test).
    def running_early():
        workers = {str(pid) for pid in _children(proc.pid)}
        trials = _trials(storage, "small")
        if len(workers) != 2 or not workers <= {_pid(t) for t in trials}:
            return None
        return next((t for t in trials if t.state == TrialState.RUNNING and 0 < len(t.user_attrs.get("history", [])) < 10
                     and _pid(t) in workers), None)

    victim = int(_pid(wait_for(running_early, what="a running trial")))
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err  # the exit code says a worker failed ...
    assert "died (SIGKILL)" in err and "Traceback" not in err
    trials = _trials(storage, "small")
    complete = Counter(_point(t) for t in trials if t.state == TrialState.COMPLETE)
    table = [(t.number, t.state.name, _point(t), t.user_attrs.get("fail_reason")) for t in trials]
    assert complete == Counter({(*p, 0): 1 for p in SMALL_POINTS}), (table, err[-3000:])  # ... the other worker completed the grid
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "died (SIGKILL)" in failed[0].user_attrs["fail_reason"]
    retry = int(failed[0].user_attrs["fail_reason"].rsplit("retried as trial ", 1)[1])
    assert trials[retry].state == TrialState.COMPLETE and _point(trials[retry]) == _point(failed[0])

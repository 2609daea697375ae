"""No trial that can block or poison a study: the heartbeat interval belongs to the study,
trials nothing can check are named and can be failed on demand, a diverging trial fails
instead of becoming "best", a re-queue survives a worker that pops the retry first, and the
chaos check reads a trial in its own precision."""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.conftest import TINY, one_line_error
from vae_search import study as st
from vae_search import trial_loop
from vae_search.storages import open_storage, trial_id_of
from vae_search.trial_loop import fail_and_retry

ROOT = Path(__file__).resolve().parent.parent


def _search(storage: str, name: str = "search") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat=None))


# ---------------------------------------------------------------- the heartbeat belongs to the study


def test_a_later_run_takes_the_studys_heartbeat_and_refuses_another(tmp_path, batches_dir, cli):
    storage = f"sqlite:///{tmp_path}/s.db"
    common = ("--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir", tmp_path / "art")
    assert cli("optimize", "--trials", 1, "--heartbeat", 5, *common)[0] == 0
    assert _search(storage).user_attrs["heartbeat_s"] == 5
    rc, _, err = cli("optimize", "--trials", 2, "--heartbeat", 1, *common)
    assert rc == 2
    line = one_line_error(err)
    assert "records heartbeats every 5 s" in line and "--heartbeat 1" in line
    assert len(_search(storage).trials) == 1  # refused before anything ran
    # without --heartbeat, a later worker beats (and judges others) by the study's interval
    storage_obj = open_storage(storage)
    assert st.settle_heartbeat(storage_obj, _search(storage), None) == 5
    assert storage_obj.get_heartbeat_interval() == 5


def test_the_first_run_records_the_default(tmp_path, batches_dir, cli):
    storage = f"sqlite:///{tmp_path}/s.db"
    assert cli("grid", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage,
               "--artifact-dir", tmp_path / "art")[0] == 0
    assert _search(storage, "b1").user_attrs["heartbeat_s"] == st.DEFAULT_HEARTBEAT


# ---------------------------------------------------------------- so do its sampler and pruner


def test_a_resumed_search_keeps_its_sampler_and_pruner_and_a_switch_is_said(tmp_path, batches_dir, cli):
    storage = f"sqlite:///{tmp_path}/s.db"
    common = ("--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir", tmp_path / "art")
    assert cli("optimize", "--trials", 1, "--sampler", "random", "--pruner", "cohort:p=25", *common)[0] == 0
    assert _search(storage).user_attrs["strategy"] == {"sampler": "random", "pruner": "cohort:p=25"}
    # leaving the options out continues with the study's, not the defaults
    rc, _, err = cli("optimize", "--trials", 2, *common)
    assert rc == 0, err
    assert "sampler random, pruner cohort:p=25" in err and "switches" not in err
    # naming another switches, says so, and later runs keep the new one
    rc, _, err = cli("optimize", "--trials", 3, "--pruner", "none", *common)
    assert rc == 0, err
    assert "switches its pruner from cohort:p=25 to none" in err and "sampler random, pruner none" in err
    assert _search(storage).user_attrs["strategy"] == {"sampler": "random", "pruner": "none"}
    assert len(_search(storage).trials) == 3


def test_a_misspelt_pruner_is_refused_before_a_storage_is_created(tmp_path, batches_dir, cli):
    rc, _, err = cli("optimize", "--trials", 1, "--pruner", "shaa", "--data-dir", batches_dir, *TINY,
                     "--storage", f"sqlite:///{tmp_path}/new/s.db", "--artifact-dir", tmp_path / "art")
    assert rc == 2 and "unknown pruner 'shaa'" in one_line_error(err)
    assert not (tmp_path / "new").exists()


def test_a_strategy_read_from_a_shared_study_is_only_names_for_the_factories(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="search")
    assert st.settle_strategy(None, None, None, "percentile") == ("tpe", "percentile", [])
    study.set_user_attr("strategy", {"sampler": 5, "pruner": ["x"]})  # not names: the defaults
    assert st.settle_strategy(study, None, None, "percentile") == ("tpe", "percentile", [])
    study.set_user_attr("strategy", "tpe")
    assert st.settle_strategy(study, "gp", None, "percentile") == ("gp", "percentile", [])
    study.set_user_attr("strategy", {"sampler": "gp", "pruner": "median"})
    sampler, pruner, said = st.settle_strategy(study, None, "sha", "percentile")
    assert (sampler, pruner) == ("gp", "sha") and len(said) == 1 and "from median to sha" in said[0]


# ---------------------------------------------------------------- a worker waiting for others


def test_a_waiting_worker_leaves_when_the_last_running_trial_ends_not_a_heartbeat_later(tmp_path):
    """A worker with nothing left to start waits for the others' running trials (one may
    come back as a retry); it must stop waiting when they end, not sleep out its interval."""
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=60)
    study = optuna.create_study(storage=storage)
    other = study.ask()  # another worker's trial, RUNNING
    threading.Timer(0.3, lambda: study.tell(other, 1.0)).start()
    start = time.monotonic()
    assert trial_loop._wait_for_others(study, None) is True  # it waited: a trial was running
    waited = time.monotonic() - start
    assert 0.3 <= waited < 3  # it saw the trial end; the interval (60 s, polled at most every 10 s) was not slept out
    assert trial_loop._wait_for_others(study, None) is False  # nothing runs now: nothing to wait for


def test_a_waiting_worker_leaves_when_a_retry_is_queued(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=60)
    study = optuna.create_study(storage=storage)
    study.ask()
    threading.Timer(0.3, lambda: study.enqueue_trial({})).start()
    start = time.monotonic()
    assert trial_loop._wait_for_others(study, None) is True
    assert time.monotonic() - start < 3  # back to pop the queued trial


# ---------------------------------------------------------------- trials nothing can check


def _orphan(storage: str, name: str = "search") -> int:
    """A RUNNING trial whose worker is gone (as after kill -9 on a journal storage)."""
    study = optuna.create_study(study_name=name, storage=open_storage(storage), load_if_exists=True)
    study.set_user_attr("kind", "search")  # a vae-search search records its kind before its first trial
    trial = study.ask({"latent_dim": optuna.distributions.IntDistribution(2, 128, log=True)})
    return trial.number


def test_orphans_on_a_journal_are_named_and_fail_stale_frees_their_slot(tmp_path, batches_dir, cli):
    storage = f"journal:///{tmp_path}/studies.log"
    common = ("--epochs", 1, "--pruner", "none", "--data-dir", batches_dir, *TINY, "--storage", storage,
              "--artifact-dir", tmp_path / "art")
    orphan = _orphan(storage)
    rc, _, err = cli("optimize", "--trials", 2, *common)
    assert rc == 0, err
    assert f"trial(s) {orphan} of study 'search' are RUNNING and nothing checks them" in err
    assert "has 1 of 2 finished trials" in err
    # the command as printed runs on this study: its name and the --storage given
    assert f"`vae-search fail-stale --study-name search --older-than 2h --storage {storage}`" in " ".join(err.split())
    # a trial younger than --older-than is left alone; --dry-run changes nothing
    rc, out, _ = cli("fail-stale", "--older-than", "1h", "--storage", storage, "--study-name", "search")
    assert rc == 0 and "no trial has been RUNNING for more than 1h" in out
    import time

    time.sleep(1.1)  # the orphan is now older than 1 s, however fast the run above was
    rc, out, _ = cli("fail-stale", "--older-than", "1s", "--dry-run", "--storage", storage, "--study-name", "search")
    assert rc == 0 and f"trial {orphan} would be failed" in out
    assert _search(storage).trials[orphan].state == TrialState.RUNNING
    rc, out, _ = cli("fail-stale", "--older-than", "1s", "--storage", storage, "--study-name", "search")
    assert rc == 0 and f"trial {orphan} failed; retried as trial" in out
    failed = _search(storage).trials[orphan]
    assert failed.state == TrialState.FAIL and "fail-stale" in failed.user_attrs["fail_reason"]
    assert cli("optimize", "--trials", 2, *common)[0] == 0
    assert len(_search(storage).get_trials(states=st.FINISHED)) == 2


def test_fail_stale_rejects_a_bad_duration(tmp_path, cli):
    rc, _, err = cli("fail-stale", "--older-than", "soon", "--storage", f"sqlite:///{tmp_path}/none.db")
    assert rc == 2 and "give a number and a unit" in one_line_error(err)


# ---------------------------------------------------------------- a diverging trial


def test_a_diverging_training_raises():
    from vae_search.data import Cifar10
    from vae_search.model import ModelConfig
    from vae_search.train import DIVERGED_NATS, UNTRAINED_NATS, Diverged, TrainConfig, evaluate, train

    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    data = Cifar10(x[:64], x[64:], "random")
    # the reference is what an untrained model scores
    from vae_search.model import VAE

    untrained = evaluate(VAE(ModelConfig(4, 16)), data.test, 1.0, 0, torch.device("cpu"))["neg_elbo"]
    assert untrained == pytest.approx(UNTRAINED_NATS, rel=0.05) and DIVERGED_NATS == 10 * UNTRAINED_NATS
    with pytest.raises(Diverged, match="diverged|non-finite|nan|inf"):
        train(ModelConfig(4, 16), TrainConfig(epochs=2, batch_size=32, lr=500.0), data, compile=False)


def test_a_search_of_diverging_trials_fails_them_and_stops(tmp_path, batches_dir, cli):
    """A space of learning rates 100..1000: before the fix, 4 of 5 trials COMPLETE with
    losses like 1.6e38 and one of them became the study's best."""
    space = tmp_path / "wild.toml"
    space.write_text((ROOT / "vae_search" / "studies" / "search.toml").read_text().replace("low = 1e-4\nhigh = 1e-2", "low = 100.0\nhigh = 1000.0"))
    assert "low = 100.0" in space.read_text()
    storage = f"sqlite:///{tmp_path}/s.db"
    rc, _, err = cli("optimize", "--trials", 10, "--space", space, "--epochs", 2, "--pruner", "none",
                     "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir", tmp_path / "art")
    assert rc == 1
    assert "5 trials in a row failed" in err.strip().splitlines()[-1]
    trials = _search(storage).trials
    assert len(trials) == 5 and all(t.state == TrialState.FAIL for t in trials)
    assert all(("diverged" in t.user_attrs["fail_reason"] or "non-finite" in t.user_attrs["fail_reason"]) for t in trials)


# ---------------------------------------------------------------- models larger than the machine


def _space_with_base(tmp_path, choices: str):
    space = tmp_path / "big.toml"
    space.write_text((ROOT / "vae_search" / "studies" / "search.toml").read_text().replace(
        "choices = [16, 32, 48, 64]", f"choices = {choices}"))
    assert choices in space.read_text()
    return space


def test_a_space_whose_largest_model_cannot_fit_is_refused_before_anything_is_written(tmp_path, batches_dir, cli):
    """base_channels 100000 is 2.5 million million parameters: before, every trial failed on
    the allocator (or the kernel killed the worker) only once the search proposed it."""
    rc, _, err = cli("optimize", "--trials", 3, "--space", _space_with_base(tmp_path, "[16, 100000]"),
                     "--data-dir", batches_dir, *TINY, "--storage", f"sqlite:///{tmp_path}/s.db",
                     "--artifact-dir", tmp_path / "art")
    line = one_line_error(err)
    assert rc == 2 and "largest model this study can propose" in line and "base_channels 100000" in line, line
    assert "GiB free" in line and "lower the largest base_channels or latent_dim" in line
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "art").exists()


def test_the_memory_check_takes_the_largest_batch_the_data_allows(monkeypatch):
    """A batch is at most the data: --batch-size 10000000 on 200 images trains batches of 200."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from vae_search import run, workers
    from vae_search.errors import UsageError
    from vae_search.model import ModelConfig, training_bytes

    monkeypatch.setattr(workers, "_available_memory", lambda: 4 * 1024**3)
    space = {"latent_dim": IntDistribution(2, 128, log=True), "base_channels": CategoricalDistribution([16, 64])}
    cpu = torch.device("cpu")
    assert run._fits(space, 10_000_000, cpu, limit_train=200) == training_bytes(ModelConfig(128, 64), 200)
    with pytest.raises(UsageError, match="batch 10000000"):
        run._fits(space, 10_000_000, cpu, limit_train=None)
    searched = {**space, "batch_size": CategoricalDistribution([64, 512])}  # the space's largest batch, not --batch-size
    assert run._fits(searched, 128, cpu, limit_train=None) == training_bytes(ModelConfig(128, 64), 512)


def test_confirm_refuses_a_trial_whose_model_the_device_cannot_hold(tmp_path, cli, monkeypatch):
    """A study's parameters are its word: a search trial of latent_dim 10**9 (crafted, or a
    space made on a bigger machine) is refused before the data loads, naming the trial, and
    the storage is left as it was; confirm's other trials still run (--trial)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from tests.conftest import one_line_error, sha256_of
    from vae_search import workers

    monkeypatch.setattr(workers, "_available_memory", lambda: 4 * 1024**3)
    db = tmp_path / "s.db"
    search = optuna.create_study(study_name="search", storage=f"sqlite:///{db}")
    search.set_user_attr("kind", "search")
    dists = {"latent_dim": IntDistribution(1, 10**9), "base_channels": CategoricalDistribution([16, 32])}
    for number, latent in enumerate((10**9, 8)):
        search.add_trial(optuna.trial.create_trial(
            params={"latent_dim": latent, "base_channels": 16}, distributions=dists, value=1800.0 + number,
            user_attrs={"neg_elbo": 1800.0 + number, "val_loss": 1800.0 + number, "recon_loss": 1790.0, "kl": 10.0,
                        "train_loss": 1800.0, "time_s": 5.0, "params": 1000, "epochs": 1, "batch_size": 128,
                        "seed": 0}))
    before = sha256_of(db)
    rc, _, err = cli("confirm", "--study-name", "search", "--seeds", 2, "--storage", f"sqlite:///{db}",
                     "--data-dir", tmp_path / "never-read")
    line = one_line_error(err)
    assert rc == 2 and line.startswith("vae-search: error: trial 0 of the search (latent_dim 1000000000"), line
    assert "GiB free: confirm other trials (--trial N)" in line
    assert sha256_of(db) == before


def test_a_cpu_allocation_failure_fails_the_trial_as_out_of_memory(tmp_path, batches_dir, cli, monkeypatch):
    """The CPU allocator refuses with a RuntimeError (CUDA's is an OutOfMemoryError): the
    trial says "out of memory" all the same, and the study goes on to the next."""
    from vae_search import objective

    real = objective.train

    def refuse_the_wide(model_config, *args, **kwargs):
        if model_config.base_channels == 64:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 720000000000 bytes. Error code 12 (Cannot allocate memory)")
        return real(model_config, *args, **kwargs)

    monkeypatch.setattr(objective, "train", refuse_the_wide)
    storage = f"sqlite:///{tmp_path}/s.db"
    rc, _, err = cli("optimize", "--trials", 4, "--space", _space_with_base(tmp_path, "[16, 64]"), "--sampler",
                     "random", "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage,
                     "--artifact-dir", tmp_path / "art")
    trials = _search(storage).trials
    wide = [t for t in trials if t.params.get("base_channels") == 64]
    assert rc == 0 and wide and len([t for t in trials if t.state == TrialState.COMPLETE]) == 4, err
    assert all(t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "out of memory on cpu: can't allocate "
               "memory: you tried to allocate 720000000000 bytes. Error code 12 (Cannot allocate memory)" for t in wide)


# ---------------------------------------------------------------- re-queueing races a worker


def test_requeue_survives_a_worker_that_pops_the_retry_first(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=None)
    study = optuna.create_study(study_name="b1", storage=storage)
    trial = study.ask({"latent_dim": optuna.distributions.IntDistribution(2, 128)})
    create = storage._create_new_trial  # what Optuna's cache calls

    def create_then_popped(study_id, template_trial=None):  # another worker takes it at once
        frozen = create(study_id, template_trial=template_trial)
        storage.set_trial_state_values(trial_id_of(frozen), state=TrialState.RUNNING)
        return frozen

    storage._create_new_trial = create_then_popped
    fate = fail_and_retry(study, trial_id_of(trial), "worker 1 died (SIGKILL)")
    assert fate == "retried as trial 1"
    retry = optuna.load_study(study_name="b1", storage=f"sqlite:///{tmp_path}/s.db").trials[1]
    assert retry.params == study.trials[0].params and retry.state == TrialState.RUNNING


# ---------------------------------------------------------------- the chaos check


def test_chaos_check_reads_a_trial_in_its_own_precision(tmp_path, batches_dir, cli):
    """A bf16 trial (optimize's `auto` on AVX512_BF16 cores) re-evaluates in bf16 to its
    stored figure; the check used to re-evaluate in fp32 and call the weights bad."""
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "benchmarks" / "chaos.py")
    chaos = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = chaos
    spec.loader.exec_module(chaos)
    from vae_search.artifacts import artifact_store
    from vae_search.data import load_cifar10

    storage = f"sqlite:///{tmp_path}/s.db"
    assert cli("optimize", "--trials", 1, "--epochs", 1, "--precision", "bf16", "--pruner", "none",
               "--data-dir", batches_dir, "--limit-train", "64", "--batch-size", "64", "--compile", "off", "--storage", storage,
               "--artifact-dir", tmp_path / "art")[0] == 0
    trial = _search(storage).trials[0]
    assert trial.user_attrs["precision"] == "bf16"
    precision, stored, again = chaos.reevaluate(artifact_store(tmp_path / "art"), trial, load_cifar10(batches_dir))
    assert precision == "bf16"
    assert math.isclose(again, stored, rel_tol=1e-5)

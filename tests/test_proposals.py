"""Distinct proposals: every trial draws from its own stream (seed, trial number), so that
workers, restarts and machines never propose the same point; a proposal that repeats a
trained configuration is failed before training; a finite space is not over-asked."""

from __future__ import annotations

import datetime
from collections import Counter

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tests.conftest import TINY, one_line_error, worker
from vae_search import study as st
from vae_search import trial_loop as loop
from vae_search.errors import RunError
from vae_search.objective import suggest
from vae_search.samplers import SAMPLERS, make_sampler, space_size, stream_seed
from vae_search.storages import storage_of

SPACE = {
    "latent_dim": IntDistribution(2, 128, log=True),
    "base_channels": CategoricalDistribution([16, 32, 48, 64]),
    "beta": FloatDistribution(0.25, 4.0, log=True),
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
}
NINE = {"latent_dim": CategoricalDistribution([2, 3, 4]), "base_channels": CategoricalDistribution([16, 32, 48]),
        "beta": CategoricalDistribution([1.0]), "lr": CategoricalDistribution([3e-3])}
GRID36 = {"latent_dim": CategoricalDistribution([16, 32, 64]), "base_channels": CategoricalDistribution([32, 64]),
          "beta": CategoricalDistribution([0.5, 1.0, 2.0]), "lr": CategoricalDistribution([1e-3, 3e-3])}


def _key(t) -> tuple:
    return tuple(sorted(t.params.items()))


def _toy(params: dict) -> float:
    return (params["latent_dim"] - 40) ** 2 + params["base_channels"] + params["beta"] + 1e3 * params["lr"]


def test_streams_differ_by_trial_and_repeat_by_seed():
    assert stream_seed(0, 1) == stream_seed(0, 1)
    assert len({stream_seed(0, n) for n in range(1000)}) == 1000
    assert stream_seed(0, 5) != stream_seed(1, 5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_two_workers_with_one_seed_propose_distinct_points(sampler):
    """Two samplers built from the same --seed (two workers of one command, or two machines)
    asking in turn on one storage: before the fix, their random start-up drew twins."""
    study = optuna.create_study()
    workers = [optuna.load_study(study_name=study.study_name, storage=storage_of(study),
                                 sampler=make_sampler(sampler, 0)) for _ in range(2)]
    for i in range(12):
        w = workers[i % 2]
        trial = w.ask(fixed_distributions=SPACE)
        w.tell(trial, _toy(trial.params))
    keys = Counter(_key(t) for t in study.get_trials())
    assert max(keys.values()) == 1, keys


@pytest.mark.parametrize("finite", [False, True], ids=["continuous", "finite"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_worker_from_an_empty_study_repeats_exactly(sampler, finite):
    space = GRID36 if finite else SPACE
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler(sampler, 7, space=space if finite else None))
        study.optimize(lambda t: _toy({k: suggest(t, k, d) for k, d in space.items()}), n_trials=12)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]


def test_a_restart_draws_new_points():
    """The same command run again (a new sampler object, the same seed) continues with new
    points instead of drawing the start-up points again."""
    study = optuna.create_study(sampler=make_sampler("tpe", 0))
    study.optimize(lambda t: _toy({k: suggest(t, k, d) for k, d in SPACE.items()}), n_trials=4)
    again = optuna.load_study(study_name=study.study_name, storage=storage_of(study), sampler=make_sampler("tpe", 0))
    again.optimize(lambda t: _toy({k: suggest(t, k, d) for k, d in SPACE.items()}), n_trials=4)
    keys = Counter(_key(t) for t in again.get_trials())
    assert len(keys) == 8 and max(keys.values()) == 1


def test_space_size():
    assert space_size(SPACE) is None
    assert space_size({"a": CategoricalDistribution([1, 2]), "b": IntDistribution(1, 10, step=3)}) == 8
    assert space_size({"a": FloatDistribution(0, 1, step=0.25)}) == 5


SMALL = {"latent_dim": CategoricalDistribution([2, 3]), "base_channels": CategoricalDistribution([16]),
         "beta": CategoricalDistribution([1.0]), "lr": CategoricalDistribution([3e-3])}


def _counting_objective(calls: list):
    def objective(trial):
        params = {k: suggest(trial, k, d) for k, d in SMALL.items()}
        calls.append(params)
        return float(params["latent_dim"])

    return objective


def test_a_repeated_proposal_is_failed_before_training():
    """Two configurations, random proposals: the objective (training) runs exactly once per
    configuration; every repeat is a FAIL that says which trial it repeats. Over a few seeds,
    so that some draw a repeat (with seed 0 alone none did)."""
    seen_repeats = 0
    for seed in range(6):
        study = optuna.create_study(sampler=make_sampler("random", seed))
        calls: list = []
        since = datetime.datetime.now()
        loop.run_optimize(study, _counting_objective(calls), n_trials=2, space=SMALL)
        assert sorted(c["latent_dim"] for c in calls) == [2, 3]
        finished = study.get_trials(states=st.FINISHED)
        assert len({_key(t) for t in finished}) == len(finished) == 2
        repeats = study.get_trials(states=(TrialState.FAIL,))
        for t in repeats:
            owner = int(t.user_attrs["fail_reason"].split("trial ")[1].split(";")[0])
            assert t.user_attrs["fail_reason"].startswith("repeats the parameters of trial")
            assert study.trials[owner].params == t.params and study.trials[owner].state == TrialState.COMPLETE
        assert loop.not_trained_since(study, since) == len(repeats)  # what optimize's closing line counts
        seen_repeats += len(repeats)
    assert seen_repeats > 0


def test_an_exhausted_space_stops_with_one_line(monkeypatch):
    monkeypatch.setattr(loop, "MAX_REPEATS", 5)
    study = optuna.create_study(sampler=make_sampler("random", 0))
    calls: list = []
    with pytest.raises(RunError, match="5 configurations in a row that were trained already"):
        loop.run_optimize(study, _counting_objective(calls), n_trials=3, space=SMALL)
    assert len(calls) == 2


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_no_sampler_proposes_a_trained_configuration_in_a_finite_space(sampler):
    """36 categorical configurations asked for 30 trials: TPE proposed trained ones again and
    again once it knew where the good ones are, each a FAIL, until 50 in a row stopped the
    worker at 11 trained ("the space looks exhausted"); GP at 15. Every proposal trains now."""
    study = optuna.create_study(sampler=make_sampler(sampler, 0, space=GRID36))
    calls: list = []

    def objective(trial):
        calls.append(trial.number)
        return _toy({k: suggest(trial, k, d) for k, d in GRID36.items()})

    loop.run_optimize(study, objective, n_trials=30, space=GRID36)
    assert len(calls) == 30 and len(study.trials) == 30
    assert len({_key(t) for t in study.trials}) == 30


def test_random_search_of_a_finite_space_draws_without_replacement():
    """Nine configurations, nine trials: plain random draws repeated (the schedules study: 9
    FAILs for 9 trials); drawn among the untried ones, every proposal trains, in an order of
    each seed's own."""
    orders = []
    for seed in range(4):
        study = optuna.create_study(sampler=make_sampler("random", seed, space=NINE))
        loop.run_optimize(study, lambda t: _toy({k: suggest(t, k, d) for k, d in NINE.items()}), n_trials=9,
                          space=NINE)
        assert len(study.trials) == 9 and len({_key(t) for t in study.trials}) == 9
        orders.append(str([t.params for t in study.trials]))
    assert len(set(orders)) == 4


def test_untried_means_not_finished_running_or_queued():
    """Workers racing on one storage: a RUNNING trial's and a queued trial's configurations are
    taken too; stepped ints and floats are matched by position, whatever rounding made them."""
    space = {"a": IntDistribution(1, 7, step=3), "b": FloatDistribution(0.0, 0.5, step=0.1)}
    study = optuna.create_study()
    workers = [optuna.load_study(study_name=study.study_name, storage=storage_of(study),
                                 sampler=make_sampler("random", 0, space=space)) for _ in range(2)]
    study.enqueue_trial({"a": 4, "b": 0.1 + 0.2})  # 0.30000000000000004: the same point as 0.3
    asked = [workers[i % 2].ask(fixed_distributions=space) for i in range(18)]  # none told: all RUNNING
    positions = [(t.params["a"], round(t.params["b"] * 10)) for t in asked]
    assert len(set(positions)) == 18, positions  # all 3 x 6 configurations, the queued one first
    assert all(space[k]._contains(space[k].to_internal_repr(v)) for t in asked for k, v in t.params.items())
    extra = workers[0].ask(fixed_distributions=space)  # every one taken: a plain draw, a repeat
    assert (extra.params["a"], round(extra.params["b"] * 10)) in positions
    # a continuous space, or one too large to list: the sampler as it is, and the trial loop's check
    assert make_sampler("random", 0, space=SPACE)._factory(1).__class__ is optuna.samplers.RandomSampler
    huge = {f"p{i}": IntDistribution(0, 99) for i in range(3)}  # 10**6 configurations
    assert make_sampler("tpe", 0, space=huge)._factory(1).__class__ is optuna.samplers.TPESampler


def test_enqueued_points_are_not_twins():
    """An --include-preset point or a retry is in the queue on purpose: it trains even where
    a proposal had the same parameters."""
    study = optuna.create_study(sampler=make_sampler("random", 0))
    calls: list = []
    study.enqueue_trial({"latent_dim": 2, "base_channels": 16, "beta": 1.0, "lr": 3e-3})
    study.enqueue_trial({"latent_dim": 2, "base_channels": 16, "beta": 1.0, "lr": 3e-3})
    loop.run_optimize(study, _counting_objective(calls), n_trials=2, space=SMALL)
    assert [c["latent_dim"] for c in calls] == [2, 2]


def test_optimize_refuses_more_trials_than_the_space_holds(tmp_path, batches_dir, cli):
    space = tmp_path / "small.toml"
    space.write_text('[latent_dim]\ntype = "categorical"\nchoices = [2, 3]\n[base_channels]\ntype = "categorical"\n'
                     'choices = [16]\n[beta]\ntype = "categorical"\nchoices = [1.0]\n[lr]\ntype = "categorical"\n'
                     'choices = [0.003]\n')
    rc, _, err = cli("optimize", "--trials", 3, "--space", space, "--epochs", 1, "--data-dir", batches_dir, *TINY,
                     "--storage", f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "art")
    assert rc == 2
    assert "holds 2 configurations, fewer than --trials 3" in one_line_error(err)
    rc, _, err = cli("optimize", "--trials", 2, "--space", space, "--sampler", "random", "--epochs", 1, "--data-dir",
                     batches_dir, *TINY, "--storage", f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "art")
    assert rc == 0, err
    trials = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path}/s.db").get_trials()
    assert sorted(t.params["latent_dim"] for t in trials) == [2, 3] and "not trained" not in err  # no repeat drawn
    assert f"search space: {space} (2 configurations, none proposed twice)" in err
    assert "this run trained 2 trial(s); 2 finished in all; 0 pruned, 2 of 2 epochs trained (100%)" in err


@pytest.mark.multiprocess
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_two_workers_then_a_restart_train_no_point_twice(tmp_path, batches_dir, sampler):
    """The issue's reproduction: `optimize --trials 8 --jobs 2`, then the same with
    --trials 12. Before the fix, 7 (random) and 6 (tpe) of the 12 repeated a parameter set."""
    storage = f"sqlite:///{tmp_path}/s.db"
    for trials in (8, 12):
        proc = worker("optimize", "--trials", trials, "--jobs", 2, "--sampler", sampler, "--epochs", 1,
                      "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir", tmp_path / "art",
                      env={"VAE_SEARCH_CACHE": str(tmp_path / "cache"), "VAE_SEARCH_JOBS": ""})
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    finished = optuna.load_study(study_name="search", storage=storage).get_trials(states=st.FINISHED)
    assert len(finished) == 12
    assert len({_key(t) for t in finished}) == 12

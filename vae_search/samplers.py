"""Samplers and pruners of a search, built from their names (the `--sampler` and `--pruner`
choices of `vae-search optimize`).

Every proposal draws from its own random stream. A sampler seeded once per process would
hand the same start-up points to every worker started with the same `--seed` (on this
machine through `--jobs`, or on other machines of a PostgreSQL search), and again to every
restart of the same command: twins that waste training and give TPE the same evidence twice.
So the sampler of trial n is seeded with (--seed, n). Trial numbers are handed out by the
storage, once each, to whichever worker on whichever machine creates the trial, so streams
never repeat across workers, restarts or machines, and one worker from an empty study still
repeats exactly (its trials are 0, 1, 2, ... and the history it sees is its own).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from vae_search.errors import UsageError
from vae_search.study import TAKEN
from vae_search.trial_attrs import planned_params

SAMPLERS = ("tpe", "random", "gp", "cmaes")


def stream_seed(seed: int, trial_number: int) -> int:
    """The seed of trial `trial_number`'s proposal: distinct streams for distinct numbers,
    the same stream for the same (seed, number)."""
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates each trial to a sampler of its own, made by `factory(stream_seed(seed, n))`
    for trial number n. Optuna's samplers keep what they learn in the study, not in the
    object, so a fresh one per trial proposes as the long-lived one would, from its own stream."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory, self._seed = factory, seed
        self._current: tuple[int, BaseSampler] | None = None

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            self._current = (trial.number, self._factory(stream_seed(self._seed, trial.number)))
        return self._current[1]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # the streams are fixed by (seed, trial number) by design
        pass


UNTRIED_MAX = 100_000  # configurations a finite space may hold for proposals checked against the study
# TPE proposals drawn again from the same model before a uniform draw among the untried: as many
# as the trial loop once let a worker fail as repeats (benchmarks/finite_space.py measures both)
TPE_REDRAWS = 50


class FiniteSpace(BaseSampler):
    """`base` in a finite space, never proposing a configuration a finished, running or queued
    trial has. TPE on 36 categorical configurations asked for 30 trials proposed trained ones
    again and again once it had learnt where the good ones are: every repeat a FAIL "repeats
    the parameters of trial N", until 50 in a row stopped the worker with 11 trained ("the
    space looks exhausted"); random search of 9 configurations repeated one draw in two
    (benchmarks/results/schedules). Here the whole configuration is one relative sample
    (Optuna's protocol for parameters drawn together): the base sampler's own proposal where
    it is new (TPE draws up to `redraws` more from its model, as the trial loop's redraws after
    a FAIL did), else a configuration drawn uniformly among the untried ones that agree with
    whatever part of it the base sampler proposed (none in TPE's and GP's random start-up or
    for random search, whose draws are then without replacement; CMA-ES proposes the numeric
    part). When every configuration is taken (only where workers race for the last ones) the
    base sampler draws as usual, and the trial loop stands the repeat down."""

    def __init__(self, base: BaseSampler, space: dict[str, BaseDistribution], seed: int, redraws: int = 0) -> None:
        self._base, self._space, self._rng, self._redraws = base, space, np.random.default_rng(seed), redraws

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        names = sorted(search_space)
        taken = {tuple(_index(search_space[n], params.get(n)) for n in names)
                 for t in study.get_trials(deepcopy=False, states=TAKEN) if t.number != trial.number
                 for params in [planned_params(t)]}
        untried = set(itertools.product(*(range(_count(search_space[n]) or 0) for n in names))) - taken
        if not untried:
            return {}
        inner = self._base.infer_relative_search_space(study, trial)
        for _ in range(1 + self._redraws):  # TPE's next draw from the same model is another proposal
            proposal = self._base.sample_relative(study, trial, inner) if inner else {}
            wanted = {names.index(n): _index(search_space[n], v) for n, v in proposal.items() if n in search_space}
            if len(wanted) < len(names):
                break  # a partial or no proposal (start-up, random search): drawing again would not change that
            if tuple(wanted[i] for i in range(len(names))) in untried:
                return {n: proposal[n] for n in names}  # the base sampler's own, and new
        pool = sorted(c for c in untried if all(c[i] == v for i, v in wanted.items())) or sorted(untried)
        chosen = pool[int(self._rng.integers(len(pool)))]
        return {n: _value(search_space[n], i) for n, i in zip(names, chosen, strict=True)}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._base.after_trial(study, trial, state, values)


def _count(dist: BaseDistribution) -> int | None:
    """How many values a distribution holds, or None for a continuous one."""
    if isinstance(dist, CategoricalDistribution):
        return len(dist.choices)
    if isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None:
        return int(round((dist.high - dist.low) / dist.step)) + 1
    return None


def _value(dist: BaseDistribution, i: int) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[i]
    assert isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None
    return min(dist.high, dist.low + i * dist.step)  # 0.0 + 3 * 0.1 is 0.30000000000000004, outside [0, 0.3]


def _index(dist: BaseDistribution, value: Any) -> int | None:
    """The position of a trial's value among the distribution's, or None where it has none
    (a trial of another space): by index, so a float stepped by 0.1 matches whatever rounding made it."""
    try:
        if isinstance(dist, CategoricalDistribution):
            return int(dist.to_internal_repr(value))
        assert isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None
        return int(round((float(value) - dist.low) / dist.step))
    except (TypeError, ValueError, OverflowError):  # a hand-made study's value: a list, nan, inf
        return None


def _base_sampler(name: str, seed: int, n_objectives: int) -> BaseSampler:
    # TPE in Optuna 5 is multivariate with the constant liar by default: parallel workers
    # do not all sample next to the same running trial.
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)  # make_sampler checked the name


def make_sampler(name: str, seed: int, n_objectives: int = 1,
                 space: dict[str, BaseDistribution] | None = None) -> BaseSampler:
    """The sampler `name`, with a random stream per trial (see the module docstring); in a
    finite `space` of at most UNTRIED_MAX configurations it proposes only untried ones (FiniteSpace)."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
    if name == "cmaes" and n_objectives > 1:
        raise UsageError("--sampler cmaes is single-objective; use tpe, gp or random with two objectives")
    if space is not None and proposes_untried(space):
        redraws = TPE_REDRAWS if name == "tpe" else 0  # GP's proposal is an optimum, CMA-ES's a step of its state
        return TrialSeededSampler(lambda s: FiniteSpace(_base_sampler(name, s, n_objectives), space, s, redraws), seed)
    return TrialSeededSampler(lambda s: _base_sampler(name, s, n_objectives), seed)


def proposes_untried(space: dict[str, BaseDistribution]) -> bool:
    """Whether make_sampler's samplers propose only untried configurations of `space` (FiniteSpace)."""
    size = space_size(space)
    return size is not None and size <= UNTRIED_MAX


def space_size(space: dict[str, BaseDistribution]) -> int | None:
    """How many distinct configurations the space holds, or None when a parameter is continuous."""
    size = 1
    for dist in space.values():
        if (count := _count(dist)) is None:
            return None
        size *= count
    return size


# ---------------------------------------------------------------- pruners

# Pruners, each with the settings benchmarks/pruning.py measured (docs/performance.md). A
# spec is NAME or NAME:KEY=VALUE:..., on the command line and in the benchmark. Every pruner
# acts from epoch `min` (or after `warmup`) and never after epoch `until`: on a 10-epoch
# budget a trial stopped at epoch 9 has spent 90% of its cost, and the replay of recorded
# curves shows late rungs saving little and losing good trials.
PRUNERS = ("sha", "median", "percentile", "cohort", "hyperband", "patient", "none")
DEFAULT_PRUNER = "percentile"
PRUNER_DEFAULTS: dict[str, dict[str, float]] = {
    # asynchronous successive halving: rungs at epochs min, min*rf, min*rf^2, ... up to
    # `until`; a trial passes a rung when it is in the best 1/rf of the trials that reached it
    "sha": {"min": 1, "rf": 3, "until": 3},
    "hyperband": {"min": 1, "rf": 3, "until": 3},
    # a trial goes on while it is in the better half (median) / best fifth (percentile 20)
    # of the earlier trials at every epoch up to `until`, once `startup` trials have finished.
    # percentile:p=20:startup=2:until=3 is the default: on 40 recorded curves in 50 orders of
    # arrival it trained at most 27% of the unpruned epochs, its best within 0.34% of the
    # unpruned best (successive halving: 37%, same best) (docs/performance.md)
    "median": {"p": 50.0, "startup": 3, "warmup": 0, "until": 3},
    "percentile": {"p": 20.0, "startup": 2, "warmup": 0, "until": 3},
    # the percentile among *every* trial that reached the epoch (pruned ones too), not the
    # finished few: live on the recorded subset, with three seeds, it kept TPE learning (6,
    # 10 and 10 of 40 finished, bests 0.17%, 0.58% and 0.18% below the unpruned search's, 28%,
    # 37% and 35% of the epochs), but its worst replayed order costs 41.5% of the epochs,
    # above the default's target (docs/performance.md)
    "cohort": {"p": 33.0, "startup": 3, "until": 3},
    # the median pruner, consulted only once a trial has not improved for `patience` epochs
    "patient": {"patience": 1, "startup": 3, "until": 8},
    "none": {},
}


def parse_pruner(spec: str) -> tuple[str, dict[str, float]]:
    """"sha:rf=4" -> ("sha", {"min": 1, "rf": 4.0, "until": 3})."""
    name, *pairs = spec.split(":")
    if name not in PRUNER_DEFAULTS:
        raise UsageError(f"unknown pruner {name!r}; use one of {', '.join(PRUNERS)} (NAME or NAME:KEY=VALUE:...)")
    settings = dict(PRUNER_DEFAULTS[name])
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in settings:
            raise UsageError(f"pruner {name!r} has no setting {key!r}; it has {', '.join(settings) or 'none'}")
        try:
            settings[key] = float(value)
        except ValueError:
            raise UsageError(f"pruner setting {pair!r}: {value!r} is not a number") from None
        if not np.isfinite(settings[key]) or settings[key] < 0:
            raise UsageError(f"pruner setting {pair!r}: must be a finite number >= 0")
    if name in ("sha", "hyperband") and (settings["rf"] < 2 or settings["min"] < 1):
        raise UsageError(f"pruner {spec!r}: rf must be at least 2 and min at least 1")
    if name in ("median", "percentile", "cohort") and not 0 < settings["p"] < 100:
        raise UsageError(f"pruner {spec!r}: p is a percentile between 0 and 100")
    return name, settings


class PruneUntil(BasePruner):
    """`inner`, asked only up to epoch `until`; a trial that has passed it trains to the end."""

    def __init__(self, inner: BasePruner, until: int) -> None:
        self.inner, self.until = inner, until

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        return step is not None and step <= self.until and self.inner.prune(study, trial)


class CohortPercentile(BasePruner):
    """Prune a trial whose value at this epoch is worse than the p-th percentile of every
    other trial's value at the same epoch, finished, pruned or running, once `startup` of
    them have one.

    Optuna's PercentilePruner compares with the *finished* trials only. When it prunes hard,
    the trials that finish are the few that started fastest, so its threshold tightens
    with every trial it lets through, until nothing passes epoch 1 (the real 50-trial search:
    after trial 9 every trial stopped there). Against the whole cohort at an epoch the
    threshold follows the sampler's proposals: it keeps the best p percent of them, as
    successive halving's rungs do, at every epoch up to `until`."""

    def __init__(self, percentile: float, startup: int) -> None:
        self.percentile, self.startup = percentile, startup

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if not np.isfinite(value):
            return True
        others = [v for t in study.get_trials(deepcopy=False) if t.number != trial.number
                  and np.isfinite(v := t.intermediate_values.get(step, np.nan))]
        if len(others) < self.startup:
            return False
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return value < float(np.percentile(others, 100 - self.percentile))
        return value > float(np.percentile(others, self.percentile))


# A val neg_elbo this far above the trial's own best so far: the trial has regressed, its
# posterior collapsed or its training blew up. In benchmarks/results/onecycle-lr four trials
# with peak learning rates of 1.6e-2 to 3e-2 collapsed (KL near 0, the loss an untrained
# model's) at epoch 2 or 3, 14% above their best, and trained on to epoch 10 unpruned: the
# percentile pruner had too few finished trials to compare with. No healthy curve recorded
# here rose more than 1.7% above its own best.
REGRESSED_RISE = 0.05


def regressed(values: Sequence[float], rise: float = REGRESSED_RISE) -> str | None:
    """Why a trial's curve of val neg_elbo (one value per epoch) counts as regressed, or None."""
    if len(values) < 2:
        return None
    best, last = min(values[:-1]), values[-1]
    if last - best > rise * abs(best):
        return f"regressed: val neg_elbo {last:.1f}, {(last - best) / abs(best):.0%} above its best so far ({best:.1f})"
    return None


class PruneRegressed(BasePruner):
    """`inner`, and at any epoch a trial that has regressed (`regressed`): a late rung is not
    worth its cost for a trial that is merely worse, but one that has collapsed or blown up
    only spends the rest of its budget on a number that did not come back in any trial here."""

    def __init__(self, inner: BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        by_inner = self.inner.prune(study, trial)  # first: successive halving records its rungs as it is asked
        if study.direction != optuna.study.StudyDirection.MINIMIZE:  # a loss is minimised: nothing to say
            return by_inner
        values = [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
        return by_inner or regressed(values) is not None


def make_pruner(spec: str, epochs: int, n_objectives: int = 1) -> BasePruner:
    """The pruner for a spec (see PRUNER_DEFAULTS); steps are epoch numbers 1, 2, ..."""
    name, s = parse_pruner(spec)
    if name == "none" or n_objectives > 1:  # Optuna's pruners are single-objective
        return optuna.pruners.NopPruner()
    if name in ("median", "percentile"):
        # PercentilePruner prunes from step n_warmup_steps on: warmup + 1 keeps the first
        # `warmup` epochs safe.
        inner: BasePruner = optuna.pruners.PercentilePruner(
            s["p"], n_startup_trials=int(s["startup"]), n_warmup_steps=int(s["warmup"]) + 1)
    elif name == "cohort":
        inner = CohortPercentile(s["p"], int(s["startup"]))
    elif name == "patient":
        with warnings.catch_warnings():  # "experimental since v2.8": stable enough for us, and measured
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            inner = optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(n_startup_trials=int(s["startup"])),
                                                 patience=int(s["patience"]))
    elif name == "sha":
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=int(s["min"]), reduction_factor=int(s["rf"]))
    else:
        inner = optuna.pruners.HyperbandPruner(min_resource=int(s["min"]), max_resource=epochs,
                                               reduction_factor=int(s["rf"]))
    return PruneRegressed(PruneUntil(inner, int(s["until"])))

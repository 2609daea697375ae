"""Optuna glue: studies, and the loops that run trials on them.

Why a loop of our own instead of `study.optimize`:
  - a grid point, now (parameters, seed), must run exactly once even with several workers,
    and Optuna's GridSampler can repeat points under concurrency (optuna issues #2039,
    #4627). So each point is enqueued as a WAITING trial, and a worker only ever *pops*
    waiting trials (the storage makes WAITING -> RUNNING atomic); it never creates one;
  - `--trials N` means "the study reaches N finished trials", counted across all workers,
    before a trial starts and again after it is created (so two workers racing for the last
    slot do not both run it);
  - a worker with nothing left to start waits while other workers' trials run (where
    heartbeats tell a live worker from a dead one), so that a point or a slot of a worker
    that dies is retried and the command ends with the study complete.
Heartbeats and the retry of stale trials are Optuna's own (RDB storages; see storages.py).
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from vae_search.definitions import Preset
from vae_search.errors import RunError, UsageError
from vae_search.storages import (
    DEFAULT_HEARTBEAT,
    StorageUnavailable,
    fail_and_retry,
    fail_stale_trials,
    heartbeat_interval,
    rdb_of,
    set_heartbeat,
)

DEFAULT_STORAGE = "sqlite:///studies/vae-search.db"
DEFAULT_ARTIFACT_DIR = Path("studies/artifacts")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --trials
OBJECTIVE_NAMES = {1: ["neg_elbo"], 2: ["neg_elbo", "params"]}  # shown by the dashboard and plots
MAX_WAIT_POLL = 10.0  # seconds between looks at other workers' trials while waiting for them
NO_PRUNING = optuna.pruners.NopPruner()  # grids and confirmations: every run trains its whole budget

Objective = Callable[[optuna.Trial], float | Sequence[float]]


# ---------------------------------------------------------------- studies


def study_names(storage: BaseStorage) -> list[str]:
    return optuna.get_all_study_names(storage=storage)


def load_study(storage: BaseStorage, name: str | None) -> optuna.Study:
    """An existing study; without a name, the one most recently written, said on stderr by the
    caller (the study's name is on the returned object)."""
    names = study_names(storage)
    if not names:
        raise UsageError("the storage holds no study yet; run `vae-search grid` or `vae-search optimize` first")
    if name is None:
        name = most_recent_study(storage, [n for n in names if not n.endswith(CONFIRM_SUFFIX)] or names)
    elif name not in names:
        raise UsageError(f"no study named {name!r}; studies in this storage: {', '.join(sorted(names))}")
    return optuna.load_study(study_name=name, storage=storage)


KINDS = {"grid": "a grid (vae-search grid)", "search": "a search (vae-search optimize)",
         "confirm": "confirmation runs (vae-search confirm)"}


def require_kind(study: optuna.Study, *kinds: str) -> str:
    """The study's kind, if it is one of `kinds`: a study made by another tool (or another
    kind of ours) is one clear line, not a KeyError deep in a command."""
    kind = study.user_attrs.get("kind")
    if kind in kinds:
        return kind
    wanted = " or ".join(KINDS[k] for k in kinds)
    what = f"is {KINDS[kind]}" if kind in KINDS else "was not made by vae-search (it has no 'kind' attribute)"
    raise UsageError(f"study {study.study_name!r} {what}; this command reads {wanted}")


def most_recent_study(storage: BaseStorage, names: list[str]) -> str:
    def last_write(name: str) -> datetime.datetime:
        study_id = storage.get_study_id_from_name(name)
        stamps = [
            t.datetime_complete or t.datetime_start
            for t in storage.get_all_trials(study_id, deepcopy=False)
            if (t.datetime_complete or t.datetime_start) is not None
        ]
        return max(stamps, default=datetime.datetime.min)

    return max(names, key=last_write)


def existing_study(storage: BaseStorage, name: str) -> optuna.Study | None:
    return optuna.load_study(study_name=name, storage=storage) if name in study_names(storage) else None


def create_or_load(
    storage: BaseStorage,
    name: str,
    *,
    directions: Sequence[str] = ("minimize",),
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=list(directions),
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
        have = ",".join(d.name.lower() for d in study.directions)
        raise UsageError(
            f"study {name!r} already exists with directions {have}; use another --study-name for {len(directions)} objective(s)"
        )
    if study.metric_names is None:  # the dashboard and every plot say neg_elbo, not "Objective 0"
        study.set_metric_names(OBJECTIVE_NAMES[len(directions)])
    return study


def check_budget(study: optuna.Study | None, budget: dict[str, Any], record: bool = True) -> None:
    """Every trial of a study has the same budget (epochs, batch size, data, precision), or
    their losses would not compare. The first run records it; later runs must match on the
    keys given (so a cheap check on epochs and batch size can run before the data is loaded).
    A key the recorded budget lacks (a study from before it existed) is added, not refused."""
    if study is None:
        return
    recorded = study.user_attrs.get("budget")
    if recorded is None:
        if record:
            study.set_user_attr("budget", budget)
        return
    diff = {k: (recorded.get(k), v) for k, v in budget.items() if k in recorded and recorded.get(k) != v}
    if diff:
        said = "; ".join(f"{k} is {old} there, {new} here" for k, (old, new) in diff.items())
        raise UsageError(
            f"study {study.study_name!r} was run with another budget ({said}); "
            "use the same options or another --study-name"
        )
    if record and any(k not in recorded for k in budget):
        study.set_user_attr("budget", {**recorded, **budget})


HEARTBEAT_ATTR = "heartbeat_s"  # the study's heartbeat interval, recorded by its first run


def settle_heartbeat(storage: BaseStorage, study: optuna.Study | None, given: int | None) -> int:
    """The heartbeat interval this run uses, set on `storage`. The interval belongs to the
    study: a worker judges others' trials stale after three of *its own* intervals, so a
    worker with `--heartbeat 1` would fail a live `--heartbeat 30` worker's trial after 3 s.
    The first run records its interval (`record_heartbeat`); later runs take it, and one
    that asks for another is refused."""
    recorded = study.user_attrs.get(HEARTBEAT_ATTR) if study is not None else None
    if recorded is not None and given is not None and given != recorded:
        raise UsageError(
            f"study {study.study_name!r} records heartbeats every {recorded} s (its workers fail a trial silent for "
            f"{3 * recorded} s); --heartbeat {given} would judge its other workers by another clock: leave --heartbeat "
            f"out or pass {recorded}")
    interval = recorded if recorded is not None else (DEFAULT_HEARTBEAT if given is None else given)
    set_heartbeat(storage, interval)
    return interval


def record_heartbeat(study: optuna.Study, interval: int) -> None:
    """Record the first run's interval on the study (RDB storages: the others keep no heartbeats)."""
    if rdb_of(study._storage) is not None and HEARTBEAT_ATTR not in study.user_attrs:
        study.set_user_attr(HEARTBEAT_ATTR, interval)


def unchecked_running(study: optuna.Study) -> list[int]:
    """RUNNING trials that no heartbeat check can fail if their worker is gone (journal and
    gRPC storages, or heartbeats turned off): each holds its slot until `fail-stale`."""
    if heartbeat_interval(study._storage):
        return []
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]


def fail_running_older_than(study: optuna.Study, seconds: float, *, dry_run: bool = False) -> list[tuple[int, str]]:
    """Fail (and re-queue, as the heartbeat check does) every RUNNING trial that started more
    than `seconds` ago: the way out for trials nothing else can check. Returns (number, what
    became of it) for each."""
    now = datetime.datetime.now()  # Optuna records local time
    old = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > seconds]
    done = []
    for t in old:
        if dry_run:
            done.append((t.number, "would be failed and re-queued"))
            continue
        age = (now - t.datetime_start).total_seconds() / 3600
        fate = fail_and_retry(study, t._trial_id, f"failed by `vae-search fail-stale`: RUNNING for {age:.1f} h")
        if fate is not None:
            done.append((t.number, fate))
    return done


# ---------------------------------------------------------------- running one trial


@contextlib.contextmanager
def _heartbeat(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat in a thread while it runs (what study.optimize does)."""
    interval = heartbeat_interval(storage)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is not worth a crash
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def execute(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> FrozenTrial:
    """Run the objective on a RUNNING trial and record how it ended. A pruned trial is
    PRUNED; an exception makes it FAIL with the reason in user attribute `fail_reason` (and
    the loop goes on); Ctrl-C or SIGTERM makes it FAIL with reason "interrupted" and is
    re-raised, so the command stops with every finished trial intact; so is a RunError (a
    full artifact disk): the trial FAILs with its message and the worker stops. A database
    that stays down (StorageUnavailable) stops the worker without a word to the database:
    the trial stays RUNNING until the heartbeat check fails and re-queues it."""
    storage = trial.storage
    values: float | Sequence[float] | None = None
    with _heartbeat(storage, trial._trial_id):
        try:
            values = objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except StorageUnavailable:
            raise
        except KeyboardInterrupt:
            _finish(study, trial, TrialState.FAIL, reason="interrupted")
            raise
        except RunError as e:
            _finish(study, trial, TrialState.FAIL, reason=str(e))
            raise
        except Exception as e:
            state = TrialState.FAIL
            with contextlib.suppress(UpdateFinishedTrialError):  # failed as stale meanwhile: _finish sees it
                if "fail_reason" not in storage.get_trial(trial._trial_id).user_attrs:
                    trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
    return _finish(study, trial, state, values=values)


def _finish(
    study: optuna.Study,
    trial: optuna.Trial,
    state: TrialState,
    values: float | Sequence[float] | None = None,
    reason: str | None = None,
) -> FrozenTrial:
    if reason is not None:
        with contextlib.suppress(Exception):
            trial.set_user_attr("fail_reason", reason)
    try:
        return study.tell(trial, values, state=state if values is None else None, skip_if_finished=True)
    except UpdateFinishedTrialError:  # another worker failed it as stale meanwhile
        return trial.storage.get_trial(trial._trial_id)


# ---------------------------------------------------------------- points: (parameters, seed), each run once


@dataclass(frozen=True)
class Point:
    """One training run that a grid or a confirmation owes: these parameters with this seed."""

    params: dict[str, Any]
    seed: int
    user_attrs: dict[str, Any] = field(default_factory=dict)  # e.g. the report's config number


def grid_points(preset: Preset, seeds: Iterable[int]) -> list[Point]:
    """Every preset point with every seed, point by point."""
    return [Point(p.params, s, {"config": p.config}) for p in preset.points for s in seeds]


def seeds_from(first: int, count: int) -> list[int]:
    """`--seed first --seeds count`: first, first+1, ..., first+count-1."""
    return list(range(first, first + count))


def _params_of(t: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters: its enqueued fixed_params (all a WAITING trial has), with what it
    has suggested so far. A trial that has just started has suggested only some of them:
    alone they would not match its point, and another worker would queue the point again."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def trial_seed(t: FrozenTrial, default: int | None = None) -> int | None:
    return t.user_attrs.get("seed", default)


def _is_point(t: FrozenTrial, point: Point, default_seed: int) -> bool:
    params = _params_of(t)
    return all(params.get(k) == v for k, v in point.params.items()) and trial_seed(t, default_seed) == point.seed


def points_complete(study: optuna.Study, points: Sequence[Point], default_seed: int = 0) -> int:
    """How many of `points` have a COMPLETE trial."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sum(1 for pt in points if any(_is_point(t, pt, default_seed) for t in complete))


def enqueue_missing_points(study: optuna.Study, points: Sequence[Point], default_seed: int = 0) -> int:
    """Queue every point that has no COMPLETE, RUNNING or WAITING trial yet. A trial without
    a recorded seed (from before seeds existed) counts as `default_seed`."""
    live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
    added = 0
    for point in points:
        if not any(_is_point(t, point, default_seed) for t in live):
            study.enqueue_trial(point.params, user_attrs={**point.user_attrs, "seed": point.seed})
            added += 1
    return added


def _cost(t: FrozenTrial) -> tuple[float, float, int]:
    """Sort key putting the slowest point first: convolutions cost ~ base_channels^2, then
    latent size; ties in trial order. Longest-first keeps every worker busy to the end."""
    p = _params_of(t)
    return (-float(p.get("base_channels", 0)), -float(p.get("latent_dim", 0)), t.number)


def _pop_waiting(study: optuna.Study) -> optuna.Trial | None:
    storage = study._storage
    waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
    for t in sorted(waiting, key=_cost):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, t._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def _duplicate_of(study: optuna.Study, trial: optuna.Trial, default_seed: int) -> int | None:
    """The number of another trial that owns this trial's point: a COMPLETE one, or a live
    one with a lower number. Two workers that enqueued the same missing point at the same
    moment both pop a trial for it; the higher-numbered one stands down."""
    frozen = trial.storage.get_trial(trial._trial_id)
    mine = Point(_params_of(frozen), trial_seed(frozen, default_seed))
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or not _is_point(t, mine, default_seed):
            continue
        if t.state == TrialState.COMPLETE or (
            t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number
        ):
            return t.number
    return None


def _wait_for_others(study: optuna.Study, on_wait: Callable[[list[int]], None] | None) -> bool:
    """Where heartbeats tell live workers from dead ones, wait a little while other trials
    run (one of them may fail and come back as a retry); False when there is nothing to wait
    for (no other trial running, or no heartbeats: then a dead worker's trial would never end)."""
    interval = heartbeat_interval(study._storage)
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if not interval or not running:
        return False
    if on_wait:
        on_wait(running)
    time.sleep(min(float(interval), MAX_WAIT_POLL))
    return True


def run_points(
    study: optuna.Study,
    points: Sequence[Point],
    objective: Objective,
    *,
    default_seed: int = 0,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    on_wait: Callable[[list[int]], None] | None = None,
) -> int:
    """Complete the points that have no COMPLETE trial; return how many trials this worker
    ran. With several workers, each point still completes exactly once."""
    fail_stale_trials(study)
    enqueue_missing_points(study, points, default_seed)
    ran = 0
    while True:
        fail_stale_trials(study)
        trial = _pop_waiting(study)
        if trial is None:
            if _wait_for_others(study, on_wait):
                continue
            return ran
        owner = _duplicate_of(study, trial, default_seed)
        if owner is not None:
            _finish(study, trial, TrialState.FAIL, reason=f"duplicate of trial {owner}; not run")
            continue
        frozen = execute(study, trial, objective)
        ran += 1
        if on_trial_end:
            on_trial_end(frozen)


# ---------------------------------------------------------------- optimize


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


MAX_REPEATS = 50  # proposals in a row that repeat a trained configuration before a worker gives up


def twin_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of a trial that already has (or will have) this proposal's parameters: a
    finished one (COMPLETE or PRUNED), a queued one, or a running one with a lower number.
    Two workers that draw the same point at the same moment both see each other; the
    higher-numbered one stands down. A point put in the queue on purpose (a retry, an
    --include-preset point) is the queue's, never a twin."""
    frozen = trial.storage.get_trial(trial._trial_id)
    if "fixed_params" in frozen.system_attrs or "failed_trial" in frozen.system_attrs:
        return None
    mine = frozen.params
    for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING)):
        if t.number == trial.number or _params_of(t) != mine:
            continue
        if t.state != TrialState.RUNNING or t.number < trial.number:
            return t.number
    return None


def run_optimize(
    study: optuna.Study,
    objective: Objective,
    *,
    n_trials: int,
    space: dict[str, BaseDistribution] | None = None,
    timeout: float | None = None,
    max_consecutive_failures: int = 5,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    on_wait: Callable[[list[int]], None] | None = None,
) -> int:
    """Run trials until the study has `n_trials` finished (COMPLETE or PRUNED) trials,
    counting every worker's, or `timeout` seconds pass. Failed trials do not count.

    With `space`, every parameter is drawn when the trial is created, so that a proposal
    repeating a trained configuration (`twin_of`) is failed as "repeats trial N; not
    trained" before any training, and the sampler draws again. A worker stops with one line
    after `max_consecutive_failures` failed trials in a row, or MAX_REPEATS repeats in a row."""
    start = time.monotonic()
    ran = failures = repeats = 0
    last_reason = ""
    while True:
        fail_stale_trials(study)
        if timeout is not None and time.monotonic() - start >= timeout:
            return ran
        finished = finished_count(study)
        if finished >= n_trials:
            return ran
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if finished + len(running) >= n_trials:  # the last slots are taken: wait, one may come free
            if _wait_for_others(study, on_wait):
                continue
            return ran
        if failures >= max_consecutive_failures:
            raise RunError(f"{failures} trials in a row failed (the last: {last_reason}); stopping this worker "
                           "instead of failing more: see every trial's fail_reason with the dashboard")
        if repeats >= MAX_REPEATS:
            raise RunError(f"the sampler proposed {repeats} configurations in a row that were trained already: the "
                           "space looks exhausted; widen it (--space) or ask for fewer --trials")
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": this loop beats itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask(fixed_distributions=space)
        ahead = [
            t for t in study.get_trials(deepcopy=False)
            if t.state in FINISHED or (t.state == TrialState.RUNNING and t.number < trial.number)
        ]
        if len(ahead) >= n_trials:  # another worker took the last slot meanwhile
            _finish(study, trial, TrialState.FAIL, reason=f"surplus: the study already had {n_trials} trials")
            continue
        twin = twin_of(study, trial) if space is not None else None
        if twin is not None:
            _finish(study, trial, TrialState.FAIL, reason=f"repeats the parameters of trial {twin}; not trained")
            repeats += 1
            continue
        repeats = 0
        frozen = execute(study, trial, objective)
        ran += 1
        if frozen.state == TrialState.FAIL:
            failures, last_reason = failures + 1, frozen.user_attrs.get("fail_reason", "no reason recorded")
        else:
            failures = 0
        if on_trial_end:
            on_trial_end(frozen)


# ---------------------------------------------------------------- confirmation runs

CONFIRM_SUFFIX = "-confirm"


def confirm_study_name(name: str) -> str:
    """Confirmation runs of study NAME live in the companion study NAME-confirm: the search's
    sampler never sees them and they never count towards its --trials."""
    return name + CONFIRM_SUFFIX


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return sorted(done, key=lambda t: (t.values[0], t.number))[:k]


def confirm_points(trials: Sequence[FrozenTrial], seeds: int) -> list[Point]:
    """For each trial, the seeds after its own (seed+1 ... seed+seeds-1), so that with the
    original each has `seeds` runs."""
    return [
        Point(dict(t.params), s, {"source_trial": t.number})
        for t in trials
        for s in seeds_from(int(trial_seed(t, 0)) + 1, seeds - 1)
    ]

"""The trial loop: running trials on a study, each exactly where it should, with several
workers and through their deaths.

Why a loop of our own instead of `study.optimize`:
  - a grid point, now (parameters, seed), must run exactly once even with several workers,
    and Optuna's GridSampler can repeat points under concurrency (optuna issues #2039,
    #4627). So each point is enqueued as a WAITING trial, and a worker only ever *pops*
    waiting trials (the storage makes WAITING -> RUNNING atomic); it never creates one;
  - `--trials N` means "the study reaches N finished trials", counted across all workers,
    before a trial starts and again after it is created (so two workers racing for the last
    slot do not both run it); a proposal that repeats a trained configuration is not trained;
  - a worker with nothing left to start waits while other workers' trials run (where
    heartbeats tell a live worker from a dead one), so that a point or a slot of a worker
    that dies is retried and the command ends with the study complete.

Heartbeats are Optuna's own (RDB storages, see storages.py). What Optuna does not do, and
this module adds for dead workers' trials: it fails a RUNNING trial whose heartbeat is
stale, but never one whose worker died before its first beat; `fail_stale_trials` fails
those too, says why (`fail_reason`), and re-queues each with only what defines its point.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from vae_search import interrupts
from vae_search.definitions import Preset
from vae_search.errors import RunError
from vae_search.storages import (
    StorageUnavailable,
    annotate_finished,
    heartbeat_interval,
    rdb_of,
    stale_trial_ids,
    storage_of,
    study_id_of,
    trial_handle,
    trial_id_of,
)
from vae_search.study import FINISHED, TAKEN, finished_count
from vae_search.trial_attrs import planned_params

MAX_WAIT_POLL = 10.0  # seconds between looks for stale trials while waiting for other workers' trials
WAIT_STEP = 0.5  # seconds between cheap looks for a change (a trial ended or queued) while waiting
MAX_RETRY = 3  # times a stale trial is re-queued

Objective = Callable[[optuna.Trial], float | Sequence[float]]


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


@dataclass(frozen=True)
class Taken:
    """What became of one turn of a worker's loop (`take_and_train`)."""

    trial: optuna.Trial | None  # None: there was nothing to take
    stood_down: str | None = None  # why it was failed without training
    frozen: FrozenTrial | None = None  # how it ended, when it trained


def take_and_train(
    study: optuna.Study,
    take: Callable[[], optuna.Trial | None],
    stand_down: Callable[[optuna.Trial], str | None],
    objective: Objective,
) -> Taken:
    """Take a trial into this worker (`take`: ask, or pop a queued one), decide whether it
    trains (`stand_down`: the reason it may not; it is then failed with that reason), train
    it and record how it ended. A pruned trial is PRUNED; an exception makes it FAIL with the
    reason in user attribute `fail_reason` (and the loop goes on); so does a RunError (a full
    artifact disk), which then stops the worker. A database that stays down
    (StorageUnavailable) stops the worker without a word to the database: the trial stays
    RUNNING until the heartbeat check fails and re-queues it.

    Once taken, a trial is ended by this worker whenever Ctrl-C or SIGTERM comes, and the
    interrupt is then re-raised, so the command stops with every finished trial intact: one
    that comes while the trial is being taken waits until it is in hand (the storage call
    that created it would raise it before `take` returned); one before its training has
    ended fails it as "interrupted"; one after keeps what the training reached, and the
    telling of that outcome is never cut in two. A gap anywhere here once left a trial
    RUNNING with nobody to end it (until a heartbeat check, or `fail-stale` where there is
    none)."""
    trial: optuna.Trial | None = None
    ended: tuple[TrialState, float | Sequence[float] | None] | None = None
    try:
        with interrupts.deferred():
            trial = take()
        if trial is None:
            return Taken(None)
        reason = stand_down(trial)
        if reason is not None:
            with interrupts.deferred():
                _finish(study, trial, TrialState.FAIL, reason=reason)
            return Taken(trial, stood_down=reason)
        with _heartbeat(trial.storage, trial_id_of(trial)):
            ended = _train(study, trial, objective)
        with interrupts.deferred():
            return Taken(trial, frozen=_finish(study, trial, *ended))
    except KeyboardInterrupt:
        # Only the first signal interrupts (interrupts.py), so this clean-up runs whole. A
        # trial already told is left as it is (tell skips a finished trial).
        if trial is not None:
            if ended is not None:
                _finish(study, trial, *ended)
            else:
                _finish(study, trial, TrialState.FAIL, reason="interrupted")
        raise


def _train(study: optuna.Study, trial: optuna.Trial,
           objective: Objective) -> tuple[TrialState, float | Sequence[float] | None]:
    """Run the objective: how the trial ended and its values (None unless COMPLETE)."""
    try:
        return TrialState.COMPLETE, objective(trial)
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except StorageUnavailable:
        raise
    except RunError as e:
        _finish(study, trial, TrialState.FAIL, reason=str(e))
        raise
    except Exception as e:
        with contextlib.suppress(UpdateFinishedTrialError):  # failed as stale meanwhile: _finish sees it
            if "fail_reason" not in trial.storage.get_trial(trial_id_of(trial)).user_attrs:
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
        return TrialState.FAIL, None


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
        return trial.storage.get_trial(trial_id_of(trial))


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


def confirm_points(trials: Sequence[FrozenTrial], seeds: int) -> list[Point]:
    """For each trial, the seeds after its own (seed+1 ... seed+seeds-1), so that with the
    original each has `seeds` runs."""
    return [
        Point(dict(t.params), s, {"source_trial": t.number})
        for t in trials
        for s in seeds_from(int(trial_seed(t, 0)) + 1, seeds - 1)
    ]


def _params_of(t: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters, fixed_params included: a trial that has just started has suggested
    only some of them; alone they would not match its point, and another worker would queue
    the point again."""
    return planned_params(t)


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
    storage = storage_of(study)
    waiting = storage.get_all_trials(study_id_of(study), deepcopy=False, states=(TrialState.WAITING,))
    for t in sorted(waiting, key=_cost):
        try:
            if storage.set_trial_state_values(trial_id_of(t), state=TrialState.RUNNING):
                return trial_handle(study, t)
        except UpdateFinishedTrialError:
            continue
    return None


def _duplicate_of(study: optuna.Study, trial: optuna.Trial, default_seed: int) -> str | None:
    """Why this trial stands down, where another trial owns its point: a COMPLETE one, or a
    live one with a lower number. Two workers that enqueued the same missing point at the
    same moment both pop a trial for it; the higher-numbered one stands down."""
    frozen = trial.storage.get_trial(trial_id_of(trial))
    mine = Point(_params_of(frozen), trial_seed(frozen, default_seed))
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or not _is_point(t, mine, default_seed):
            continue
        if t.state == TrialState.COMPLETE or (
            t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number
        ):
            return f"duplicate of trial {t.number}; not run"
    return None


def _wait_for_others(study: optuna.Study, on_wait: Callable[[list[int]], None] | None) -> bool:
    """Where heartbeats tell live workers from dead ones, wait while other trials run (one of
    them may fail and come back as a retry); False when there is nothing to wait for (no other
    trial running, or no heartbeats: then a dead worker's trial would never end).

    The wait ends as soon as something changes (a running trial ends, a trial is queued), so
    the last worker of a run leaves when the last trial does, not up to a heartbeat later; at
    the latest after one heartbeat interval, when the caller looks for stale trials again."""
    interval = heartbeat_interval(storage_of(study))
    running = _running_and_waiting(study)[0] if interval else []
    if not running:
        return False
    if on_wait:
        on_wait(running)
    deadline = time.monotonic() + min(float(interval), MAX_WAIT_POLL)
    while time.monotonic() < deadline:
        time.sleep(WAIT_STEP)
        now_running, waiting = _running_and_waiting(study)
        if waiting or now_running != running:
            break
    return True


def _running_and_waiting(study: optuna.Study) -> tuple[list[int], bool]:
    trials = storage_of(study).get_all_trials(study_id_of(study), deepcopy=False,
                                             states=(TrialState.RUNNING, TrialState.WAITING))
    return sorted(t.number for t in trials if t.state == TrialState.RUNNING), any(
        t.state == TrialState.WAITING for t in trials)


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
        taken = take_and_train(study, lambda: _pop_waiting(study), lambda t: _duplicate_of(study, t, default_seed),
                               objective)
        if taken.trial is None:
            if _wait_for_others(study, on_wait):
                continue
            return ran
        if taken.frozen is None:  # stood down: a duplicate of a point already complete
            continue
        ran += 1
        if on_trial_end:
            on_trial_end(taken.frozen)


# ---------------------------------------------------------------- optimize


MAX_REPEATS = 50  # proposals in a row that repeat a trained configuration before a worker gives up
REPEATS, SURPLUS = "repeats the parameters of trial", "surplus:"  # fail_reason of proposals never trained


def not_trained_since(study: optuna.Study, since: datetime.datetime) -> int:
    """Proposals that ended since `since` without training: repeats and surplus starts. They
    stay in the study as FAIL with the reason, so the dashboard shows every number asked."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
               if t.datetime_complete is not None and t.datetime_complete >= since
               and t.user_attrs.get("fail_reason", "").startswith((REPEATS, SURPLUS)))


def twin_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of a trial that already has (or will have) this proposal's parameters: a
    finished one (COMPLETE or PRUNED), a queued one, or a running one with a lower number.
    Two workers that draw the same point at the same moment both see each other; the
    higher-numbered one stands down. A point put in the queue on purpose (a retry, an
    --include-preset point) is the queue's, never a twin."""
    frozen = trial.storage.get_trial(trial_id_of(trial))
    if "fixed_params" in frozen.system_attrs or "failed_trial" in frozen.system_attrs:
        return None
    mine = frozen.params
    for t in study.get_trials(deepcopy=False, states=TAKEN):
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
        taken = take_and_train(study, lambda: _ask(study, space), lambda t: _untrained(study, t, n_trials, space),
                               objective)
        if taken.stood_down is not None:
            repeats += taken.stood_down.startswith(REPEATS)
            continue
        assert taken.frozen is not None  # ask always makes a trial, and it trained
        frozen, repeats = taken.frozen, 0
        ran += 1
        if frozen.state == TrialState.FAIL:
            failures, last_reason = failures + 1, frozen.user_attrs.get("fail_reason", "no reason recorded")
        else:
            failures = 0
        if on_trial_end:
            on_trial_end(frozen)


def _ask(study: optuna.Study, space: dict[str, BaseDistribution] | None) -> optuna.Trial:
    with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": this loop beats itself
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask(fixed_distributions=space)


def _untrained(study: optuna.Study, trial: optuna.Trial, n_trials: int,
               space: dict[str, BaseDistribution] | None) -> str | None:
    """Why a proposal is not trained: the last slot was taken meanwhile, or it repeats a
    trained configuration (`twin_of`)."""
    ahead = [
        t for t in study.get_trials(deepcopy=False)
        if t.state in FINISHED or (t.state == TrialState.RUNNING and t.number < trial.number)
    ]
    if len(ahead) >= n_trials:  # another worker took the last slot meanwhile
        return f"{SURPLUS} the study already had {n_trials} trials"
    twin = twin_of(study, trial) if space is not None else None
    return f"{REPEATS} {twin}; not trained" if twin is not None else None


# ---------------------------------------------------------------- dead workers' trials


def unchecked_running(study: optuna.Study) -> list[int]:
    """RUNNING trials that no heartbeat check can fail if their worker is gone (journal and
    gRPC storages, or heartbeats turned off): each holds its slot until `fail-stale`."""
    if heartbeat_interval(storage_of(study)):
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
        fate = fail_and_retry(study, trial_id_of(t), f"failed by `vae-search fail-stale`: RUNNING for {age:.1f} h")
        if fate is not None:
            done.append((t.number, fate))
    return done


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers (no heartbeat for the grace period, or none
    ever) with a `fail_reason`, and re-queue each as a WAITING trial (up to MAX_RETRY
    times). Returns the ids of the trials failed here; two workers checking at once fail each trial once (the state change is atomic)."""
    storage = storage_of(study)
    interval, rdb = heartbeat_interval(storage), rdb_of(storage)
    if not interval or rdb is None:
        return []
    grace = rdb.grace_period or 2 * interval
    stale = stale_trial_ids(rdb, study_id_of(study), grace)
    reason = f"worker stopped sending heartbeats (silent for more than {grace:.0f} s)"
    return [tid for tid in sorted(stale) if fail_and_retry(study, tid, reason) is not None]


def fail_and_retry(study: optuna.Study, trial_id: int, reason: str, retry: bool = True) -> str | None:
    """Fail a RUNNING trial of a worker that is gone, with `reason`, and (if `retry`) queue
    its parameters again; the failed trial's reason says which trial retries it. Returns
    what became of it ("retried as trial N"), or None if the trial was no longer RUNNING (it
    finished, or another worker failed it first: the state change is atomic)."""
    storage = storage_of(study)
    if rdb_of(storage) is None:  # no direct write later: say why now, while it is RUNNING
        with contextlib.suppress(UpdateFinishedTrialError):
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return None
    except UpdateFinishedTrialError:
        return None
    note = "not retried"
    if retry:
        number = _requeue(study, storage.get_trial(trial_id))
        note = f"retried as trial {number}" if number is not None else f"not retried (retried {MAX_RETRY} times already)"
    annotate_finished(storage, trial_id, "fail_reason", f"{reason}; {note}")
    return note


RETRY_KEEPS = ("config", "seed", "source_trial")  # the user attributes that define a point


def _requeue(study: optuna.Study, failed: FrozenTrial) -> int | None:
    """Queue the failed trial's parameters again as a WAITING trial. Optuna's
    RetryHeartbeatStaleTrialCallback does this too, but copies every user attribute (the
    failed run's history and reason would sit on the retry); this keeps only what defines
    the point, and Optuna's `failed_trial` / `retry_history` system attributes."""
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > MAX_RETRY:
        return None
    template = optuna.trial.create_trial(
        state=TrialState.WAITING, params=failed.params, distributions=failed.distributions,
        user_attrs={k: failed.user_attrs[k] for k in RETRY_KEEPS if k in failed.user_attrs},
        system_attrs={"failed_trial": failed.system_attrs.get("failed_trial", failed.number), "retry_history": history},
    )
    # The new trial's number from its id, not from a look at the WAITING trials: another
    # worker may pop it (WAITING -> RUNNING) before we look.
    storage = storage_of(study)
    trial_id = storage.create_new_trial(study_id_of(study), template_trial=template)
    return storage.get_trial_number_from_id(trial_id)



"""Optuna glue: storages, studies, and the loops that run trials on them.

Why a loop of our own instead of `study.optimize`:
  - a grid point must run exactly once even with several workers, and Optuna's GridSampler
    can repeat points under concurrency (optuna issues #2039, #4627). So each grid point is
    enqueued as a WAITING trial, and a worker only ever *pops* waiting trials (the storage
    makes WAITING -> RUNNING atomic); it never creates one of its own;
  - `--trials N` means "the study reaches N finished trials", counted across all workers,
    before a trial starts and again after it is created (so two workers racing for the last
    slot do not both run it).
Heartbeats, stale-trial failing and the retry callback are Optuna's own (RDB storages).
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from vae_search.definitions import Preset
from vae_search.errors import UsageError

DEFAULT_STORAGE = "sqlite:///studies/vae-search.db"
DEFAULT_ARTIFACT_DIR = Path("studies/artifacts")
DEFAULT_HEARTBEAT = 30  # seconds between heartbeats of a running trial (RDB storages)
SQLITE_TIMEOUT = 120  # seconds a writer waits for SQLite's lock instead of failing "locked"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --trials
STORAGE_HELP = "sqlite:///FILE, postgresql+psycopg://USER:PASS@HOST:PORT/DB, mysql+pymysql://..., or journal:///FILE.log"

Objective = Callable[[optuna.Trial], float | Sequence[float]]

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the CLI prints its own progress
warnings.filterwarnings("ignore", category=ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


# ---------------------------------------------------------------- storages and studies


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def open_storage(url: str, *, heartbeat: int | None = DEFAULT_HEARTBEAT, must_exist: bool = False) -> BaseStorage:
    """An Optuna storage for `url`. RDB storages get heartbeats (a killed worker's trial is
    failed by the next worker after 3 missed beats, and re-queued once by the retry callback).
    `must_exist`: for read-only commands, a SQLite or journal file that is not there is an
    error rather than a new, empty database."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "journal":
        path = Path(url.split(":", 1)[1].removeprefix("//"))
        if must_exist and not path.is_file():
            raise UsageError(f"no study journal at {path}; run grid or optimize first")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(f"storage URL {_redact(url)!r} has an unknown scheme {scheme!r}; use {STORAGE_HELP}")
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            if must_exist and not Path(path).is_file():
                raise UsageError(f"no study database at {path}; run grid or optimize first, or pass --storage")
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create the folder of {path}: {e.strerror}") from None
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
    else:
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    hb = {}
    if heartbeat:
        hb = dict(
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    for attempt in range(5):
        try:
            return RDBStorage(url=url, engine_kwargs=engine_kwargs, **hb)
        except ModuleNotFoundError as e:
            raise UsageError(f"storage URL {_redact(url)!r} needs the Python package {e.name!r}; pip install it") from None
        except Exception as e:  # sqlalchemy's OperationalError and friends: unreachable, refused, bad file
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            # Workers that open a new database at the same moment race to create its tables
            # (the loser sees the winner's rows); once the tables exist, opening succeeds.
            if attempt < 4 and any(m in reason for m in _CREATION_RACE):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise UsageError(f"cannot open storage {_redact(url)}: {reason}") from None
    raise AssertionError("unreachable")


_CREATION_RACE = ("UNIQUE constraint", "already exists", "duplicate key", "database is locked")


def study_names(storage: BaseStorage) -> list[str]:
    return optuna.get_all_study_names(storage=storage)


def load_study(storage: BaseStorage, name: str | None) -> optuna.Study:
    """An existing study; without a name, the one most recently written, said on stderr by the
    caller (the study's name is on the returned object)."""
    names = study_names(storage)
    if not names:
        raise UsageError("the storage holds no study yet; run `vae-search grid` or `vae-search optimize` first")
    if name is None:
        name = most_recent_study(storage, names)
    elif name not in names:
        raise UsageError(f"no study named {name!r}; studies in this storage: {', '.join(sorted(names))}")
    return optuna.load_study(study_name=name, storage=storage)


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
    return study


# ---------------------------------------------------------------- running one trial


@contextlib.contextmanager
def _heartbeat(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat in a thread while it runs (what study.optimize does)."""
    # Duck-typed: studies wrap an RDBStorage in Optuna's cache, which forwards heartbeats.
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
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


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials of dead workers (no heartbeat for the grace period); the
    storage's retry callback re-queues their parameters as WAITING trials."""
    optuna.storages.fail_stale_trials(study)


def execute(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> FrozenTrial:
    """Run the objective on a RUNNING trial and record how it ended. A pruned trial is
    PRUNED; an exception makes it FAIL with the reason in user attribute `fail_reason` (and
    the loop goes on); Ctrl-C or SIGTERM makes it FAIL with reason "interrupted" and is
    re-raised, so the command stops with every finished trial intact."""
    storage = trial.storage
    values: float | Sequence[float] | None = None
    with _heartbeat(storage, trial._trial_id):
        try:
            values = objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            _finish(study, trial, TrialState.FAIL, reason="interrupted")
            raise
        except Exception as e:
            state = TrialState.FAIL
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


# ---------------------------------------------------------------- the grid


def _params_of(t: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters; a WAITING trial has them only as its enqueued fixed_params."""
    return t.params or t.system_attrs.get("fixed_params", {})


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == v for k, v in b.items())


def enqueue_missing_points(study: optuna.Study, preset: Preset) -> int:
    """Queue every grid point that has no COMPLETE, RUNNING or WAITING trial yet."""
    live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
    added = 0
    for point in preset.points:
        if not any(_same_params(_params_of(t), point.params) for t in live):
            study.enqueue_trial(point.params, user_attrs={"config": point.config})
            added += 1
    return added


def _pop_waiting(study: optuna.Study) -> optuna.Trial | None:
    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, t._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def _duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of another trial that owns this trial's grid point: a COMPLETE one, or a
    live one with a lower number. Two workers that enqueued the same missing point at the
    same moment both pop a trial for it; the higher-numbered one stands down."""
    mine = _params_of(trial.storage.get_trial(trial._trial_id))
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or not _same_params(_params_of(t), mine):
            continue
        if t.state == TrialState.COMPLETE or (
            t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number
        ):
            return t.number
    return None


def run_grid(
    study: optuna.Study,
    preset: Preset,
    objective: Objective,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
) -> int:
    """Complete the preset's missing points; return how many trials this worker ran."""
    fail_stale_trials(study)
    enqueue_missing_points(study, preset)
    ran = 0
    while True:
        fail_stale_trials(study)
        trial = _pop_waiting(study)
        if trial is None:
            return ran
        owner = _duplicate_of(study, trial)
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


def run_optimize(
    study: optuna.Study,
    objective: Objective,
    *,
    n_trials: int,
    timeout: float | None = None,
    max_consecutive_failures: int = 5,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
) -> int:
    """Run trials until the study has `n_trials` finished (COMPLETE or PRUNED) trials,
    counting every worker's, or `timeout` seconds pass. Failed trials do not count."""
    start = time.monotonic()
    ran = failures = 0
    while True:
        fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if finished_count(study) + len(running) >= n_trials:
            return ran
        if timeout is not None and time.monotonic() - start >= timeout:
            return ran
        if failures >= max_consecutive_failures:
            raise RuntimeError(f"{failures} trials in a row failed; see their fail_reason attributes")
        trial = study.ask()
        ahead = [
            t for t in study.get_trials(deepcopy=False)
            if t.state in FINISHED or (t.state == TrialState.RUNNING and t.number < trial.number)
        ]
        if len(ahead) >= n_trials:  # another worker took the last slot meanwhile
            _finish(study, trial, TrialState.FAIL, reason=f"surplus: the study already had {n_trials} trials")
            return ran
        frozen = execute(study, trial, objective)
        ran += 1
        failures = failures + 1 if frozen.state == TrialState.FAIL else 0
        if on_trial_end:
            on_trial_end(frozen)


# ---------------------------------------------------------------- samplers, pruners, budget

SAMPLERS = ("tpe", "random", "gp", "cmaes")
# Measured with benchmarks/pruning.py (README, Performance): on this problem the ranking
# after one epoch already predicts the ranking after ten, so pruning may start at epoch 1;
# a 2-epoch warm-up after 5 trials spent 81% of the epochs of a real search, none and 3
# trials 59%, with the same best trial.
WARMUP_EPOCHS = 0  # epochs in which no trial is pruned
STARTUP_TRIALS = 3  # trials that finish unpruned first, as the reference
PRUNE_PERCENTILE = 50.0  # a trial goes on while it is in the better half at every epoch
PRUNERS = ("median", "hyperband", "none")


def make_sampler(name: str, seed: int, n_objectives: int = 1) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        if n_objectives > 1:
            raise UsageError("--sampler cmaes is single-objective; use tpe, gp or random with two objectives")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise UsageError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")


def make_pruner(
    name: str,
    epochs: int,
    n_objectives: int = 1,
    *,
    warmup_epochs: int = WARMUP_EPOCHS,
    startup_trials: int = STARTUP_TRIALS,
    percentile: float = PRUNE_PERCENTILE,
) -> optuna.pruners.BasePruner:
    """median (default): a trial stops when its neg_elbo after an epoch is worse than the
    median (the `percentile`-th percentile; 50 is Optuna's MedianPruner) of earlier trials
    at that epoch; it never prunes during the first
    `warmup_epochs` epochs nor before `startup_trials` trials have finished, so early
    trials give it a fair reference. benchmarks/pruning.py measures what it saves."""
    if name == "none" or n_objectives > 1:  # Optuna's pruners are single-objective
        return optuna.pruners.NopPruner()
    if name == "median":
        # Steps are epoch numbers (1, 2, ...) and MedianPruner prunes from step
        # n_warmup_steps on, so warmup_epochs + 1 keeps the first warmup_epochs epochs safe.
        return optuna.pruners.PercentilePruner(
            percentile, n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    raise UsageError(f"unknown pruner {name!r}; use one of {', '.join(PRUNERS)}")


def existing_study(storage: BaseStorage, name: str) -> optuna.Study | None:
    return optuna.load_study(study_name=name, storage=storage) if name in study_names(storage) else None


def check_budget(study: optuna.Study | None, budget: dict[str, Any], record: bool = True) -> None:
    """Every trial of a study has the same budget (epochs, batch size, data), or their losses
    would not compare. The first run records it; later runs must match on the keys given
    (so a cheap check on epochs and batch size can run before the data is loaded)."""
    if study is None:
        return
    recorded = study.user_attrs.get("budget")
    if recorded is None:
        if record:
            study.set_user_attr("budget", budget)
        return
    diff = {k: (recorded.get(k), v) for k, v in budget.items() if recorded.get(k) != v}
    if diff:
        said = "; ".join(f"{k} is {old} there, {new} here" for k, (old, new) in diff.items())
        raise UsageError(
            f"study {study.study_name!r} was run with another budget ({said}); "
            "use the same options or another --study-name"
        )

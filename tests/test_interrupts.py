"""Ctrl-C inside a storage call: held until the call has ended, so no transaction stays open
and SQLite is never left locked (the CI failure of test_jobs' Ctrl-C test: both workers
waited on a lock one of them held, until the parent killed them)."""

from __future__ import annotations

import os
import signal
import sqlite3

import optuna
import pytest

from vae_search import interrupts
from vae_search.storages import open_storage, rdb_of


@pytest.fixture
def handlers():
    """vae-search's handlers for the test, pytest's back afterwards."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for s, h in old.items():
        signal.signal(s, h)


def _signal_after(engine, monkeypatch, prefix: str | None = None, sig=signal.SIGINT) -> list:
    """Send `sig` to this process just after the first statement that starts with `prefix`
    (case aside), or by default the first that follows BEGIN IMMEDIATE (which took SQLite's
    lock): the handler runs inside SQLAlchemy's execute, where a raised KeyboardInterrupt once
    left the transaction open and the database locked. Returns the statements it followed;
    monkeypatch.undo() stops it."""
    real, sent = engine.dialect.do_execute, []

    def execute_then_signal(cursor, statement, *args, **kwargs):
        result = real(cursor, statement, *args, **kwargs)
        hit = statement.lstrip().upper().startswith(prefix) if prefix else not statement.startswith("BEGIN")
        if hit and not sent:
            sent.append(statement)
            os.kill(os.getpid(), sig)
        return result

    monkeypatch.setattr(engine.dialect, "do_execute", execute_then_signal)
    return sent


def _interrupt_here() -> None:
    """SIGINT to this process, then a moment of bytecodes for its handler to run in (where an
    interrupt is not held, it is raised here)."""
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10**6):
        pass


def _unlocked(path) -> bool:
    c = sqlite3.connect(path, timeout=0.5)
    try:
        c.execute("BEGIN IMMEDIATE")
        c.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        c.close()


def test_an_interrupt_in_a_storage_call_is_raised_after_it(tmp_path, handlers, monkeypatch):
    path = tmp_path / "s.db"
    storage = open_storage(f"sqlite:///{path}")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    _signal_after(rdb_of(storage).engine, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        trial.set_user_attr("history", [1.0, 2.0])
    monkeypatch.undo()
    assert _unlocked(path)  # the transaction ended: another worker can write at once
    assert study.trials[0].user_attrs["history"] == [1.0, 2.0]  # and the call was not cut in two
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # the interrupted trial's FAIL goes through
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_a_second_signal_does_not_interrupt_the_clean_up(tmp_path, handlers, monkeypatch):
    """A terminal's Ctrl-C reaches a worker directly and again as the parent's SIGTERM."""
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**8):  # the handler runs between bytecodes: soon
            pass
    _signal_after(rdb_of(storage).engine, monkeypatch, sig=signal.SIGTERM)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # what trial_loop.take_and_train does next
    monkeypatch.undo()
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_outside_storage_calls_an_interrupt_is_raised_at_once(handlers):
    counted = []
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        while len(counted) < 10**7:  # the handler runs between bytecodes: soon
            counted.append(1)
    assert len(counted) < 10**7
    interrupts.install()  # a new command in the same process starts afresh
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        reached = sum(1 for _ in range(1000))  # not cut short: the interrupt waits for the block's end
    assert reached == 1000


def test_an_interrupt_in_a_journal_append_is_raised_after_it(tmp_path, handlers, monkeypatch):
    from optuna.storages.journal import JournalFileBackend

    storage = open_storage(f"journal:///{tmp_path}/j.log")
    study = optuna.create_study(storage=storage, study_name="s")
    real = JournalFileBackend.append_logs

    def append_then_signal(self, logs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the lock file is held
        return real(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", append_then_signal)
    with pytest.raises(KeyboardInterrupt):
        study.ask()
    monkeypatch.undo()
    assert not list(tmp_path.glob("j.log.lock*"))  # no lock left behind
    assert len(study.trials) == 1  # the append went through whole


SPACE = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}


def test_an_interrupt_while_a_trial_is_asked_fails_that_trial(tmp_path, handlers, monkeypatch):
    """The storage call that creates the trial holds the interrupt and raises it as it ends,
    before `ask` has handed the trial over: it was once left RUNNING with nobody to end it
    (seen as a RUNNING trial after benchmarks/gpu.py's SIGTERM of a timed-out search)."""
    from vae_search import trial_loop

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, study_name="s")
    sent = _signal_after(rdb_of(storage).engine, monkeypatch, "INSERT INTO TRIALS ")
    trained = []
    with pytest.raises(KeyboardInterrupt):
        trial_loop.run_optimize(study, lambda t: trained.append(t.number) or 1.0, n_trials=3, space=SPACE)
    monkeypatch.undo()
    assert sent and not trained
    [t] = study.trials
    assert (t.state, t.user_attrs["fail_reason"]) == (optuna.trial.TrialState.FAIL, "interrupted")


def test_an_interrupt_in_the_checks_before_training_fails_the_trial(tmp_path, handlers, monkeypatch):
    """Between ask and training the proposal is checked against the study (surplus, twins)."""
    from vae_search import trial_loop

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="s")

    def interrupted(study, trial):
        raise KeyboardInterrupt

    monkeypatch.setattr(trial_loop, "twin_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trial_loop.run_optimize(study, lambda t: 1.0, n_trials=3, space=SPACE)
    [t] = study.trials
    assert (t.state, t.user_attrs["fail_reason"]) == (optuna.trial.TrialState.FAIL, "interrupted")


def test_an_interrupt_while_a_queued_point_is_taken_fails_that_trial(tmp_path, handlers, monkeypatch):
    """The grid's and confirm's way in: a WAITING trial set RUNNING by this worker."""
    from vae_search import trial_loop

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, study_name="s")
    trial_loop.enqueue_missing_points(study, [trial_loop.Point({"x": 0.5}, seed=0)])
    sent = _signal_after(rdb_of(storage).engine, monkeypatch, "UPDATE TRIALS SET STATE")
    trained = []
    with pytest.raises(KeyboardInterrupt):
        trial_loop.run_points(study, [trial_loop.Point({"x": 0.5}, seed=0)], lambda t: trained.append(t.number) or 1.0)
    monkeypatch.undo()
    assert sent and not trained
    [t] = study.trials
    assert (t.state, t.user_attrs["fail_reason"]) == (optuna.trial.TrialState.FAIL, "interrupted")


def test_an_interrupt_while_the_cached_storage_reads_trials_leaves_sqlite_unlocked(tmp_path, handlers, monkeypatch):
    """Optuna's cached storage reads trials through the RDB storage's private _get_trials: a
    SIGTERM there once left SQLite locked, and the trial's FAIL "interrupted" waited on the lock
    (seen in CI as a search that would not stop and a trial left RUNNING)."""
    path = tmp_path / "s.db"
    storage = open_storage(f"sqlite:///{path}")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    sent = _signal_after(rdb_of(storage).engine, monkeypatch, "SELECT", sig=signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        study.get_trials(deepcopy=False)
    monkeypatch.undo()
    assert sent and _unlocked(path)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_every_session_of_the_cached_storage_is_covered():
    """Every private method of the RDB storage that Optuna's cached storage calls itself opens a
    session of its own: each must be retried and hold interrupts like the public ones (an Optuna
    upgrade that adds one shows up here)."""
    import inspect
    import re

    from optuna.storages import RDBStorage, _cached_storage

    from vae_search.storages import ResilientRDBStorage

    called = set(re.findall(r"self\._backend\.(_\w+)\(", inspect.getsource(_cached_storage)))
    assert "_get_trials" in called
    assert all(getattr(ResilientRDBStorage, name) is not getattr(RDBStorage, name) for name in called), called


@pytest.fixture
def interrupt_as_training_ends(monkeypatch):
    """SIGINT as the trial's heartbeat stops, after the objective has returned and before the
    trial is told: a window that once let the interrupt out with the trial RUNNING and its
    outcome lost."""
    import contextlib

    from vae_search import trial_loop

    @contextlib.contextmanager
    def heartbeat_then_signal(storage, trial_id):
        yield
        _interrupt_here()

    monkeypatch.setattr(trial_loop, "_heartbeat", heartbeat_then_signal)


def test_an_interrupt_as_a_trained_trial_ends_keeps_its_value(tmp_path, handlers, interrupt_as_training_ends):
    from vae_search import trial_loop

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="s")
    with pytest.raises(KeyboardInterrupt):
        trial_loop.run_optimize(study, lambda t: 0.25, n_trials=3, space=SPACE)
    [t] = study.trials
    assert (t.state, t.value) == (optuna.trial.TrialState.COMPLETE, 0.25)


def test_an_interrupt_as_a_pruned_trial_ends_keeps_it_pruned(tmp_path, handlers, interrupt_as_training_ends):
    from vae_search import trial_loop

    def pruned(trial):
        raise optuna.TrialPruned

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="s")
    points = [trial_loop.Point({"x": 0.5}, seed=0)]
    with pytest.raises(KeyboardInterrupt):
        trial_loop.run_points(study, points, pruned)
    [t] = study.trials
    assert t.state == optuna.trial.TrialState.PRUNED and "fail_reason" not in t.user_attrs


def test_an_interrupt_before_training_ends_fails_the_trial(tmp_path, handlers):
    from vae_search import trial_loop

    def interrupted(trial):
        _interrupt_here()
        return 0.25

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="s")
    with pytest.raises(KeyboardInterrupt):
        trial_loop.run_optimize(study, interrupted, n_trials=3, space=SPACE)
    [t] = study.trials
    assert (t.state, t.user_attrs["fail_reason"]) == (optuna.trial.TrialState.FAIL, "interrupted")


def test_an_interrupt_while_a_journal_is_replayed_drops_no_log(tmp_path, handlers, monkeypatch):
    """Optuna counts a journal log as read before it replays it: an interrupt between the two
    dropped the log (here, a trial's creation) from the reading process's view for good."""
    from optuna.storages.journal._storage import JournalStorageReplayResult

    path = tmp_path / "j.log"
    writer = optuna.create_study(storage=open_storage(f"journal:///{path}"), study_name="s")
    reader = open_storage(f"journal:///{path}")  # another worker's view, up to date so far
    study_id = reader.get_study_id_from_name("s")
    writer.ask()
    real = JournalStorageReplayResult._apply_create_trial

    def signal_then_apply(self, log):
        _interrupt_here()
        return real(self, log)

    monkeypatch.setattr(JournalStorageReplayResult, "_apply_create_trial", signal_then_apply)
    with pytest.raises(KeyboardInterrupt):
        reader.get_all_trials(study_id)
    monkeypatch.undo()
    assert len(reader.get_all_trials(study_id)) == 1

"""Optuna storages as vae-search opens them, and what keeps them sound under faults.

    sqlite:///FILE, postgresql+psycopg://..., mysql+pymysql://...   RDBStorage (heartbeats)
    journal:///FILE.log                                             JournalStorage (no heartbeats)
    grpc://HOST:PORT                                                GrpcStorageProxy (no heartbeats)

What Optuna does not do by itself, and this module adds:
  - a database that restarts: every call of an RDB storage that fails for a lost or refused
    connection is retried with backoff for up to `OUTAGE_S` seconds, then `StorageUnavailable`
    (one line naming the storage) stops the worker; the running trial stays RUNNING, and
    the heartbeat check fails and re-queues it on the next run (trial_loop.py);
  - SQLite transactions that take the write lock first, so state changes are atomic;
  - commands that only read open a storage without creating anything in it;
  - passwords masked wherever a URL is shown.
It is also the one module that touches Optuna's private API (the last section).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import json
import math
import os
import random
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from vae_search import interrupts
from vae_search.errors import RunError, UsageError

DEFAULT_HEARTBEAT = 30  # seconds between heartbeats of a running trial (RDB storages)
SQLITE_TIMEOUT = 120  # seconds a writer waits for SQLite's lock instead of failing "locked"
LOOK_TIMEOUT = 10  # seconds the first look at a file waits: a worker's write takes milliseconds
OUTAGE_S = 60.0  # seconds a worker waits for its database to come back before it stops (VAE_SEARCH_OUTAGE_S)
STORAGE_HELP = (
    "sqlite:///FILE, postgresql+psycopg://USER:PASS@HOST:PORT/DB, mysql+pymysql://..., "
    "journal:///FILE.log or grpc://HOST:PORT"
)


class StorageUnavailable(RunError):
    """The database stayed unreachable for longer than OUTAGE_S seconds."""


def journal_path(url: str) -> Path:
    """The file of a journal:///FILE URL, read as SQLAlchemy reads sqlite:///FILE, the URLs it
    stands beside: three slashes and a path relative to the current folder, four for an
    absolute one. (The third slash once began the path: journal:///studies.log wrote
    /studies.log.) A relative file that is not there while the absolute one is, is refused:
    a worker started with the old reading must not start a second, empty journal."""
    rest = url.split(":", 1)[1]
    if not rest.startswith("///") and rest:
        raise UsageError(f"storage {url!r}: give journal:///FILE (relative to this folder, as sqlite:///FILE) or "
                         "journal:////ABSOLUTE/PATH")
    path = Path(rest[3:])
    old = Path("/", path)
    if not path.is_absolute() and not path.exists() and old.is_file():
        raise UsageError(f"no journal at {path} (journal:///{path} is relative to this folder, as sqlite:///{path} "
                         f"is); for the journal at {old} give journal:///{old}")
    return path


SECRET_KEYS = {"password", "passwd", "pwd", "pass", "secret", "token", "sslpassword", "api_key"}


def _split(url: str) -> tuple[str, str | None, str, list[tuple[str, str]]]:
    """(scheme://, user-info or None, host and path, query pairs) of a storage URL. The
    user-info ends at the *last* '@' before the path: a password may itself hold '@'."""
    from urllib.parse import parse_qsl

    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None, "", []
    rest, _, query = rest.partition("?")
    creds, at, hostpath = rest.rpartition("@")
    return scheme + "://", creds if at else None, hostpath if at else rest, parse_qsl(query, keep_blank_values=True)


def secrets_of(url: str) -> tuple[list[str], list[str]]:
    """The passwords of a URL (user-info and query), and their pieces around '@' and ':',
    which a driver that split the URL at the wrong '@' quotes back in its messages (a host
    named "ss@db" for the password "p@ss")."""
    _, creds, _, query = _split(url)
    found = [creds.split(":", 1)[1]] if creds and ":" in creds else []
    found += [v for k, v in query if k.lower() in SECRET_KEYS]
    found = [s for s in found if s]
    pieces = {p for s in found for p in s.replace(":", "@").split("@") if p} - set(found)
    return sorted(found, key=len, reverse=True), sorted(pieces, key=len, reverse=True)


def redact(url: str) -> str:
    """The URL without its passwords, for messages: postgresql://vae:***@db/x?password=***."""
    scheme, creds, hostpath, query = _split(url)
    if creds is None and not query:
        return url
    out = scheme + (f"{creds.split(':', 1)[0]}:***@" if creds and ":" in creds else f"{creds}@" if creds else "")
    out += hostpath
    if query:
        out += "?" + "&".join(f"{k}={'***' if k.lower() in SECRET_KEYS else v}" for k, v in query)
    return out


def scrub(text: str, url: str) -> str:
    """`text` (a driver's message, say) with every secret of `url` masked: whole passwords
    anywhere, their pieces, and passwords too short to be told from a word's letters (a
    password "e" in "refused"), where they stand alone (not the "ss" inside "address")."""
    import re

    whole, pieces = secrets_of(url)
    for secret in whole:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
        else:
            pieces.insert(0, secret)
    for piece in pieces:
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", "***", text)
    return text


# ---------------------------------------------------------------- an RDB storage that waits out a restart


def _connection_lost(e: BaseException | None) -> bool:
    """A lost, refused or locked connection (worth retrying), not a constraint or a bug.
    Optuna wraps errors raised inside its sessions in StorageInternalError: look at the cause."""
    import sqlalchemy.exc

    while e is not None:
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        e = e.__cause__
    return False


def _retrying(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline, delay = time.monotonic() + self.outage_s, 0.25
        while True:
            try:
                with interrupts.deferred():  # a Ctrl-C must not leave a transaction open (interrupts.py)
                    return method(self, *args, **kwargs)
            except Exception as e:
                if not _connection_lost(e):
                    raise
                if time.monotonic() + delay > deadline:
                    reason = scrub(str(getattr(e, "orig", None) or e).strip().splitlines()[0], self.url)
                    raise StorageUnavailable(
                        f"storage {self.label} unreachable for {self.outage_s:.0f} s ({reason}); finished trials are "
                        "saved: run the same command again once it is back"
                    ) from None
                time.sleep(delay * (0.5 + random.random()))  # jittered, so workers do not reconnect in step
                delay = min(2 * delay, 5.0)

    return call


class ResilientRDBStorage(RDBStorage):
    """RDBStorage whose every call survives a database restart (see the module docstring).

    Retrying is safe for Optuna's calls: state changes are guarded by the storage
    (a second COMPLETE raises UpdateFinishedTrialError, which the trial loop expects), and a
    trial created twice by a retried insert is a RUNNING trial with no heartbeat, which
    `fail_stale_trials` fails and re-queues like any other orphan."""

    outage_s: float  # set first thing in __init__, from VAE_SEARCH_OUTAGE_S (outage_s())
    label: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.outage_s = outage_s()  # before Optuna's first call: the constructor's own calls are retried too
        super().__init__(*args, **kwargs)


def outage_s() -> float:
    """VAE_SEARCH_OUTAGE_S where set, checked (it was read with float() on import: a typo was
    a traceback in every command), else OUTAGE_S."""
    text = os.environ.get("VAE_SEARCH_OUTAGE_S", "").strip()
    if not text:
        return OUTAGE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise UsageError(f"VAE_SEARCH_OUTAGE_S={text!r}: give the seconds a worker waits for its database to come "
                         f"back, 0 or more (default {OUTAGE_S:.0f})")
    return seconds


# Every public call opens its own session, so it can be retried whole; the private helpers
# work inside their caller's session and are retried with it. Some private methods open
# their own session too, and Optuna calls them directly: its cached storage (the wrapper
# every study gets) reads trials with _get_trials and creates them with _create_new_trial.
# They get the same retries and the same deferred interrupt: a Ctrl-C inside _get_trials
# once left SQLite locked, and the trial's FAIL "interrupted" after it waited SQLITE_TIMEOUT
# (benchmarks/gpu.py's SIGTERM of a timed-out search, in CI). tests/test_interrupts.py
# checks this list against what the cached storage calls.
SESSION_PRIVATE = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id", "_get_stale_trial_ids")
for _name, _member in list(vars(RDBStorage).items()):
    if callable(_member) and (not _name.startswith("_") or _name in SESSION_PRIVATE):
        setattr(ResilientRDBStorage, _name, _retrying(_member))


_ENGINES: weakref.WeakSet = weakref.WeakSet()  # the engines of the RDB storages this process opened


@atexit.register
def _close_connections() -> None:
    """Close the pooled database connections at exit, as a server expects: the quick exit of
    `__main__.entry` skips the garbage collection that would otherwise close them."""
    for engine in list(_ENGINES):
        with contextlib.suppress(Exception):  # a server already gone: nothing left to close politely
            engine.dispose()


# ---------------------------------------------------------------- opening a storage


def open_storage(url: str, *, heartbeat: int | None = DEFAULT_HEARTBEAT, must_exist: bool = False) -> BaseStorage:
    """An Optuna storage for `url`. RDB storages get heartbeats (a killed worker's trial is
    failed after 3 missed beats and re-queued by the retry callback) and ride out restarts.
    `must_exist`: for commands that read, the storage must already be an Optuna storage: a
    missing file, or a database without Optuna's tables, is an error, and nothing (no
    table, no folder) is created in it."""
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    url = scheme + sep + rest  # SQLAlchemy knows its dialects in lower case only: SQLITE:/// is sqlite:///
    if scheme == "journal":
        path = journal_path(url)
        if path.is_dir():  # journal:/// with no path is the current folder
            raise UsageError(f"storage {url!r} names a folder, not a journal file; use journal:///FILE")
        if must_exist and not path.is_file():
            raise UsageError(f"no study journal at {path}; run grid or optimize first")
        _check_journal(path)
        if not must_exist:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return _Journal(_JournalFile(str(path)))  # replays the whole journal
        except ValueError as e:  # json's JSONDecodeError, Optuna's "Invalid log format"
            raise UsageError(f"journal {path} is damaged: a line before its last is no journal record ({e}); nothing "
                             "was written to it") from None
    if scheme == "grpc":
        return _grpc_proxy(url)
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(f"storage URL {redact(url)!r} has an unknown scheme {scheme!r}; use {STORAGE_HELP}")
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path = _sqlite_file(url)
        if not path:
            raise UsageError(f"storage {url!r} is an in-memory database that lives and dies with one process: workers "
                             "and later commands would never see its studies; use sqlite:///FILE")
        if must_exist:
            _check_optuna_sqlite(Path(path))
        else:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create the folder of {path}: {e.strerror}") from None
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
    else:
        engine_kwargs["pool_pre_ping"] = True  # a connection that died with the server is replaced
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    # No heartbeat_stale_trial_callback: trial_loop.fail_stale_trials fails and re-queues stale
    # trials itself (with their reason); Optuna's own check is not called.
    hb = dict(heartbeat_interval=heartbeat, grace_period=3 * heartbeat) if heartbeat else {}
    for attempt in range(5):
        try:
            if must_exist and scheme != "sqlite":
                _check_optuna_tables(url, engine_kwargs)
            storage = ResilientRDBStorage(url=url, engine_kwargs=engine_kwargs, skip_table_creation=must_exist, **hb)
            storage.label = redact(url)
            _ENGINES.add(storage.engine)
            if scheme == "sqlite":
                _serialize_sqlite(storage.engine)
            return storage
        except ModuleNotFoundError as e:
            raise UsageError(f"storage URL {redact(url)!r} needs the Python package {e.name!r}; pip install it") from None
        except StorageUnavailable:
            raise UsageError(f"cannot open storage {redact(url)}: the server does not answer") from None
        except UsageError:
            raise
        except Exception as e:  # sqlalchemy's OperationalError and friends: refused, bad file
            reason = scrub(str(getattr(e, "orig", None) or e).strip().splitlines()[0], url)
            # Workers that open a new database at the same moment race to create its tables
            # (the loser sees the winner's rows); once the tables exist, opening succeeds.
            if attempt < 4 and any(m in reason for m in _CREATION_RACE):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise UsageError(f"cannot open storage {redact(url)}: {reason}") from None
    raise AssertionError("unreachable")


OPTUNA_TABLES = {"studies", "trials", "version_info"}  # what every Optuna RDB storage has


def _not_optuna(where: str, tables: set[str]) -> UsageError:
    have = ", ".join(sorted(tables)[:5]) or "no tables"
    return UsageError(f"{where} is not an Optuna storage (it has {have}); nothing was written to it: pass the --storage "
                      "of a study database")


def _check_journal(path: Path) -> None:
    """A file that is there must be a journal. Optuna takes a last line that is no record for
    one being written and appends after it: a text file given by mistake would be written to
    and then be a journal that no reader can replay. A journal's first line is a record."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and "op_code" in record):
        raise UsageError(f"{path} is not an Optuna journal (its first line is no journal record); nothing was written "
                         "to it: pass the journal:///FILE of a study journal, or a new file")


def _sqlite_file(url: str) -> str:
    """The file of a sqlite:/// URL, without SQLAlchemy's ?query (sqlite:///x.db?timeout=30
    is the file x.db); "" for an in-memory database."""
    path = url[len("sqlite:///"):].split("?", 1)[0] if url.lower().startswith("sqlite:///") else ""
    return "" if path == ":memory:" or "mode=memory" in url else path


def new_sqlite_file(url: str) -> bool:
    """Whether `url` names a SQLite file that does not exist yet: it holds no study to check a
    run against, so a training command creates it only once its data has loaded (a data file
    that fails to decode leaves no empty database behind)."""
    path = _sqlite_file(url)
    return bool(path) and not Path(path).exists()


def _check_optuna_sqlite(path: Path) -> None:
    """A read-only look at a SQLite file (sqlite3's mode=ro: not even a journal is made)."""
    import sqlite3

    if not path.is_file():
        raise UsageError(f"no study database at {path}; run grid or optimize first, or pass --storage")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=LOOK_TIMEOUT)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if "locked" in str(e):  # a storage that another program holds is still one: "not an Optuna storage" misled
            raise UsageError(f"{path} stayed locked by another program for {LOOK_TIMEOUT} s (an open sqlite3 shell's "
                             "transaction, or a copy in progress); nothing was written to it: try again when it is done") from None
        raise UsageError(f"{path} is not an Optuna storage ({e}); nothing was written to it") from None
    if not OPTUNA_TABLES <= tables:
        raise _not_optuna(str(path), tables)


def _check_optuna_tables(url: str, engine_kwargs: dict[str, Any]) -> None:
    """A server database must hold Optuna's tables before a command that reads opens it."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if not OPTUNA_TABLES <= tables:
        raise _not_optuna(redact(url), tables)


_CREATION_RACE = ("UNIQUE constraint", "already exists", "duplicate key", "database is locked")


def _serialize_sqlite(engine) -> None:
    """Make every SQLite transaction BEGIN IMMEDIATE (SQLAlchemy's recipe for pysqlite).

    pysqlite opens a transaction only before a write, so Optuna's read-then-write steps
    run their read outside any transaction: two workers could both read a trial as WAITING
    and both set it RUNNING, both training the same grid point (seen here with --jobs 2).
    With BEGIN IMMEDIATE each transaction takes the write lock first and waits for the
    other's (up to SQLITE_TIMEOUT): on SQLite, Optuna's state changes become atomic as they
    are on PostgreSQL, where the row is locked with SELECT ... FOR UPDATE."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_connection, record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna created the tables get the settings too


class _JournalFile(JournalFileBackend):
    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with interrupts.deferred():  # a Ctrl-C must not leave the journal's lock file behind (interrupts.py)
            super().append_logs(logs)


class _Journal(JournalStorage):
    def _sync_with_backend(self) -> None:
        # Optuna counts each log as read before it replays it: a Ctrl-C between the two would
        # drop that log from this process's view, and with it, say, the trial it must fail
        with interrupts.deferred():
            super()._sync_with_backend()


PROXY_WAIT_S = 10  # how long a client waits for `vae-search storage-proxy` to answer


def _grpc_proxy(url: str) -> BaseStorage:
    """A client of `vae-search storage-proxy` (Optuna's gRPC storage proxy)."""
    from optuna.storages import GrpcStorageProxy

    hostport = url.split("://", 1)[1].strip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"storage URL {url!r}: use grpc://HOST:PORT (the address of `vae-search storage-proxy`)")
    proxy = GrpcStorageProxy(host=host, port=int(port))
    try:
        proxy.wait_server_ready(timeout=PROXY_WAIT_S)
    except ConnectionError:
        raise UsageError(f"cannot open storage {url}: no storage proxy answers there within {PROXY_WAIT_S:g} s") from None
    return proxy


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """Seconds between heartbeats, or None where the storage keeps none (journal, gRPC)."""
    # Duck-typed: studies wrap an RDBStorage in Optuna's cache, which forwards heartbeats.
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


def set_heartbeat(storage: BaseStorage, interval: int | None) -> None:
    """Beat every `interval` seconds (None or 0: no heartbeats), failing trials silent for
    three beats. Only RDB storages keep heartbeats; for the others this does nothing."""
    rdb = rdb_of(storage)
    if rdb is not None:
        rdb.heartbeat_interval = interval or None
        rdb.grace_period = 3 * interval if interval else None


def rdb_of(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage behind Optuna's in-process cache, if there is one."""
    inner = getattr(storage, "_backend", storage)
    return inner if isinstance(inner, RDBStorage) else None


# ---------------------------------------------------------------- Optuna's private API, in one place
# Everything here reaches past Optuna's public API: check it on an Optuna upgrade. No other
# module touches a private name of Optuna (tests/test_structure.py keeps it so).


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study writes through (Optuna's in-process cache around RDB storages)."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (its number counts within the study; the id is global)."""
    return trial._trial_id


def trial_handle(study: optuna.Study, trial: FrozenTrial) -> optuna.Trial:
    """A live `optuna.Trial` for a stored trial: what a worker runs, and what notes and
    artifacts attach to."""
    return optuna.Trial(study, trial._trial_id)


def study_artifact_ids(study: optuna.Study) -> set[str]:
    """The ids of the artifacts attached to a study, read from the system attributes where
    `upload_artifact` records them. Not `get_all_artifact_meta`: optuna-dashboard marks an
    artifact deleted from its page with a JSON null there, on which that function raises
    TypeError; and a shared study's attributes are untrusted, so anything not shaped as
    Optuna writes it is skipped."""
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX

    ids = set()
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        if not key.startswith(ARTIFACTS_ATTR_PREFIX):
            continue
        try:
            meta = json.loads(value)
        except (TypeError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("artifact_id"), str):
            ids.add(meta["artifact_id"])
    return ids


def artifact_folder(store: FileSystemArtifactStore) -> str:
    """The folder a file-system artifact store writes to, for messages."""
    return str(store._base_path)


def stale_trial_ids(rdb: RDBStorage, study_id: int, grace: float) -> set[int]:
    """RUNNING trials of dead workers: Optuna's stale ones (no heartbeat for the grace
    period), and those that never beat and started more than `grace` seconds ago (their
    worker died before its first beat; Optuna's check skips them)."""
    stale = set(rdb._get_stale_trial_ids(study_id))
    return stale | set(_retrying(lambda self: _unbeaten_running_trials(self, study_id, grace))(rdb))


def _unbeaten_running_trials(rdb: RDBStorage, study_id: int, grace: float) -> list[int]:
    """RUNNING trials that never recorded a heartbeat and started more than `grace` seconds
    ago: their worker died before its first beat (Optuna's check skips them)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    now = datetime.datetime.now()
    with _create_scoped_session(rdb.scoped_session) as session:
        rows = (
            session.query(models.TrialModel)
            .outerjoin(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
            .filter(models.TrialModel.study_id == study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
            .all()
        )
        started = [(t.trial_id, t.datetime_start) for t in rows]  # local time, as Optuna reads it
    return [tid for tid, start in started if start is not None and (now - start).total_seconds() > grace]


def annotate_finished(storage: BaseStorage, trial_id: int, key: str, value: Any) -> None:
    """Write a user attribute on a finished trial. Optuna refuses that through its API (a
    finished trial is immutable), so for RDB storages it is one row written directly; the
    reason is worth it: a failed trial says why, and which trial retries it."""
    rdb = rdb_of(storage)
    if rdb is None:
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with interrupts.deferred(), _create_scoped_session(rdb.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        attr = models.TrialUserAttributeModel.find_by_trial_and_key(trial, key, session)
        if attr is None:
            session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value)))
        else:
            attr.value_json = json.dumps(value)

"""Studies and their budget: finding, creating and checking the Optuna studies vae-search
runs in. Running trials on them is trial_loop.py; the samplers and pruners are samplers.py."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from vae_search.errors import UsageError
from vae_search.storages import DEFAULT_HEARTBEAT, rdb_of, set_heartbeat, storage_of
from vae_search.trial_attrs import readable

DEFAULT_STORAGE = "sqlite:///studies/vae-search.db"
DEFAULT_ARTIFACT_DIR = Path("studies/artifacts")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --trials
TAKEN = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)  # configurations a new proposal must not repeat
OBJECTIVE_NAMES = {1: ["neg_elbo"], 2: ["neg_elbo", "params"]}  # shown by the dashboard and plots
NO_PRUNING = optuna.pruners.NopPruner()  # grids and confirmations: every run trains its whole budget

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
        raise UsageError(f"no study named {name!r}; studies in this storage: {', '.join(map(repr, sorted(names)))}")
    return optuna.load_study(study_name=name, storage=storage)


# ---------------------------------------------------------------- what a study records

# What vae-search records on a study, with the type it writes. Read back from a shared study,
# a value of another shape (another tool's attribute of the same name, or an edit) is one
# clear line, never an AttributeError deep in a command.
RECORDED = {"kind": str, "budget": dict, "heartbeat_s": int, "weights_not_kept": list, "best_note_trial_id": int}
BUDGET = {"epochs": int, "batch_size": int, "precision": str, "data_fingerprint": str}


def _is(value: object, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def recorded(study: optuna.Study, key: str) -> Any:
    """The study's attribute `key` as vae-search wrote it, or None where it has none."""
    value = study.user_attrs.get(key)
    if value is None:
        return None
    ok = _is(value, RECORDED[key])
    if ok and key == "budget":
        ok = all(_is(value[k], t) for k, t in BUDGET.items() if k in value) and all(
            value[k] > 0 for k in ("epochs", "batch_size") if k in value)
    elif ok and key == "heartbeat_s":
        ok = value >= 0
    elif ok and key == "weights_not_kept":
        ok = all(_is(n, int) for n in value)
    if not ok:
        raise UsageError(f"study {study.study_name!r} records {key!r} as {str(value)[:60]!r}, not as vae-search "
                         "writes it: made by another tool, or edited?")
    return value


KINDS = {"grid": "a grid (vae-search grid)", "search": "a search (vae-search optimize)",
         "confirm": "confirmation runs (vae-search confirm)"}


def require_kind(study: optuna.Study, *kinds: str) -> str:
    """The study's kind, if it is one of `kinds`: a study made by another tool (or another
    kind of ours) is one clear line, not a KeyError deep in a command."""
    kind = recorded(study, "kind")
    if kind in kinds:
        return kind
    wanted = " or ".join(KINDS[k] for k in kinds)
    instead = "; `vae-search best` and `vae-search report` read it" if kind in ("search", "confirm") else ""
    raise UsageError(f"study {study.study_name!r} {_what_it_is(kind)}; this command reads {wanted}{instead}")


def _what_it_is(kind: str | None) -> str:
    return f"is {KINDS[kind]}" if kind in KINDS else "was not made by vae-search (it has no 'kind' attribute)"


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


def require_compatible(study: optuna.Study | None, kind: str,
                       distributions: dict[str, BaseDistribution] | None = None) -> None:
    """A training command adds trials only to a study of its own kind whose parameters keep
    their kinds and categorical choices; each is one line before any data is loaded.
    - `optimize --study-name b1` (a typo, or a habit) once relabelled the grid a search and
      mixed searched points into its table. A study with no kind is taken where its trials are
      vae-search's (a copy of one made with plain Optuna) and refused where they are another tool's.
    - Optuna refuses other choices mid-study with a ValueError at the first trial (a traceback,
      once): a search resumed with a space file that changed them, or a grid with an edited preset."""
    if study is None:
        return
    have = recorded(study, "kind")
    trials = study.get_trials(deepcopy=False)  # read once: every worker start comes through here
    if have != kind and not (have is None and (not trials or any("neg_elbo" in t.user_attrs for t in trials))):
        raise UsageError(f"study {study.study_name!r} {_what_it_is(have)}; this command runs {KINDS[kind]}: "
                         "pass another --study-name")
    seen: dict[str, BaseDistribution] = {}
    for t in trials:
        for name, d in t.distributions.items():
            seen.setdefault(name, d)
    for name, new in (distributions or {}).items():
        if name not in seen:
            continue
        try:
            check_distribution_compatibility(seen[name], new)
        except ValueError:
            raise UsageError(f"study {study.study_name!r} has {name} as {_described(seen[name])}; this run gives "
                             f"{_described(new)}, which Optuna cannot mix in one study: keep the study's definition "
                             "or pass another --study-name") from None


def _described(d: BaseDistribution) -> str:
    if isinstance(d, CategoricalDistribution):
        return f"a choice of {', '.join(map(str, d.choices))}"
    return f"{'an int' if isinstance(d, IntDistribution) else 'a float'} from {d.low} to {d.high}"


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
    before = recorded(study, "budget")
    if before is None:
        if record:
            study.set_user_attr("budget", budget)
        return
    diff = {k: (before.get(k), v) for k, v in budget.items() if k in before and before.get(k) != v}
    if diff:
        said = "; ".join(f"{k} is {old} there, {new} here" + (
            " (other images: another --data-dir, --limit-train or --limit-val)" if k == "data_fingerprint" else "")
            for k, (old, new) in diff.items())
        raise UsageError(
            f"study {study.study_name!r} was run with another budget ({said}); "
            "use the same options or another --study-name"
        )
    if record and any(k not in before for k in budget):
        study.set_user_attr("budget", {**before, **budget})


HEARTBEAT_ATTR = "heartbeat_s"  # the study's heartbeat interval, recorded by its first run


def settle_heartbeat(storage: BaseStorage, study: optuna.Study | None, given: int | None) -> int:
    """The heartbeat interval this run uses, set on `storage`. The interval belongs to the
    study: a worker judges others' trials stale after three of *its own* intervals, so a
    worker with `--heartbeat 1` would fail a live `--heartbeat 30` worker's trial after 3 s.
    The first run records its interval (`record_heartbeat`); later runs take it, and one
    that asks for another is refused."""
    before = recorded(study, HEARTBEAT_ATTR) if study is not None else None
    if before is not None and given is not None and given != before:
        raise UsageError(
            f"study {study.study_name!r} records heartbeats every {before} s (its workers fail a trial silent for "
            f"{3 * before} s); --heartbeat {given} would judge its other workers by another clock: leave --heartbeat "
            f"out or pass {before}")
    interval = before if before is not None else (DEFAULT_HEARTBEAT if given is None else given)
    set_heartbeat(storage, interval)
    return interval


def record_heartbeat(study: optuna.Study, interval: int) -> None:
    """Record the first run's interval on the study (RDB storages: the others keep no heartbeats)."""
    if rdb_of(storage_of(study)) is not None and HEARTBEAT_ATTR not in study.user_attrs:
        study.set_user_attr(HEARTBEAT_ATTR, interval)


STRATEGY_ATTR = "strategy"  # {"sampler": name, "pruner": spec}: what the study's last run chose
DEFAULT_SAMPLER = "tpe"


def settle_strategy(study: optuna.Study | None, sampler: str | None, pruner: str | None,
                    default_pruner: str) -> tuple[str, str, list[str]]:
    """The sampler and pruner this run uses, and what to say about them. They belong to the
    study like its heartbeat: a resumed search (or a worker joining it) that leaves --sampler
    or --pruner out continues with the study's, rather than silently switching to the
    defaults halfway. One that names another switches, and says so (switching is legitimate,
    from random start-up points to TPE say; switching by omission is not)."""
    recorded = study.user_attrs.get(STRATEGY_ATTR) if study is not None else None
    recorded = recorded if isinstance(recorded, dict) else {}  # from a shared study: only names, checked by their factories
    said: list[str] = []
    chosen = {}
    for key, given, default in (("sampler", sampler, DEFAULT_SAMPLER), ("pruner", pruner, default_pruner)):
        before = recorded.get(key) if isinstance(recorded.get(key), str) else None
        chosen[key] = given if given is not None else before or default
        if given is not None and before is not None and given != before:
            said.append(f"note: study {study.study_name!r} switches its {key} from {before} to {given} "
                        f"(later runs keep {given} unless --{key} says otherwise)")
    return chosen["sampler"], chosen["pruner"], said


def record_strategy(study: optuna.Study, sampler: str, pruner: str) -> None:
    if study.user_attrs.get(STRATEGY_ATTR) != {"sampler": sampler, "pruner": pruner}:
        study.set_user_attr(STRATEGY_ATTR, {"sampler": sampler, "pruner": pruner})


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# ---------------------------------------------------------------- confirmation runs

CONFIRM_SUFFIX = "-confirm"


def confirm_study_name(name: str) -> str:
    """Confirmation runs of study NAME live in the companion study NAME-confirm: the search's
    sampler never sees them and they never count towards its --trials."""
    return name + CONFIRM_SUFFIX


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials that have their objective values and figures vae-search can read."""
    return [t for t in readable(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) if t.values]


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    return sorted(complete_trials(study), key=lambda t: (t.values[0], t.number))[:k]


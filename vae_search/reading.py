"""The reading commands under the CLI (`show`, `best`, `interpolate`, `report`): a study as
it is, never created or changed by reading it (`best` writes only its note, `interpolate` its
figure), and the files they write: into a folder that is checked first, and a write the system
refuses halfway is one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from vae_search import definitions, storages
from vae_search import study as st
from vae_search.errors import RunError, UsageError, system_reason

# ---------------------------------------------------------------- a study as it is


def load_for_reading(storage_url: str, study_name: str | None, notes: list[str]) -> tuple[BaseStorage, optuna.Study]:
    """A study as it is (nothing created); without a name, the most recently written, said
    in `notes` once the command has succeeded (so an error stays one line)."""
    storage = storages.open_storage(storage_url, must_exist=True, heartbeat=None)
    study = st.load_study(storage, study_name)
    if study_name is None:
        notes.append(f"(study {study.study_name!r}: the most recently written; pass --study-name for another)")
    _say_unreadable(study, notes)
    return storage, study


def _say_unreadable(study: optuna.Study, notes: list[str]) -> None:
    """Name the trials left out of tables and choices because their figures are not shaped as
    vae-search writes them (a shared study is untrusted input; trial_attrs.py)."""
    from vae_search.trial_attrs import unreadable

    bad = unreadable(study.get_trials(deepcopy=False))
    if bad:
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        notes.append(f"note: {len(bad)} trial(s) of study {study.study_name!r} left out, their figures not as "
                     f"vae-search writes them: {'; '.join(bad[:3])}{more}")


# ---------------------------------------------------------------- what the commands found


@dataclass
class Choice:
    """What `best` found: one object, rendered by the CLI (text or JSON), the dashboard note
    and the report."""

    study: optuna.Study
    selection: Any = None  # selection.Selection for one objective
    verdicts: list[str] = field(default_factory=list)  # a grid's B.2 statements
    front: Any = None  # the Pareto front (a DataFrame) for two objectives

    def to_dict(self) -> dict[str, Any]:
        """The same numbers as the text, for scripts (`best --json`)."""
        if self.front is not None:
            return {"study": self.study.study_name, "pareto_front": records(self.front)}
        sel = self.selection
        c = sel.candidate
        return {
            "study": self.study.study_name, "best": c.label, "trial": sel.trial.number, "params": c.params, "n": c.n,
            "seeds": sorted(int(r.user_attrs.get("seed", 0)) for r in c.runs),
            **{key: {"mean": c.mean(key), "sd": None if c.n < 2 else c.sd(key)}
               for key in ("neg_elbo", "val_loss", "recon_loss", "kl", "time_s")},
            "params_count": int(sel.trial.user_attrs["params"]), "reasons": sel.reasons, "verdicts": self.verdicts,
            "others": records(sel.others)}


def records(df) -> list[dict]:
    """A table's rows with NaN as null (JSON has no NaN)."""
    import json

    return json.loads(df.to_json(orient="records")) if df is not None and len(df) else []


@dataclass
class GridSummary:
    """A grid study's table beside its preset's figures, and the B.2 statements as verdicts."""

    study: optuna.Study
    preset: definitions.Preset
    table: Any  # DataFrame, one row per point
    verdicts: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study.study_name, "preset": self.preset.name, "rows": records(self.table),
                "verdicts": self.verdicts}


def grid_summary(study: optuna.Study, preset: definitions.Preset) -> GridSummary:
    from vae_search.tables import grid_table
    from vae_search.verdicts import grid_verdicts

    return GridSummary(study, preset, grid_table(study, preset), grid_verdicts(study, preset))


# ---------------------------------------------------------------- the commands


def show(storage_url: str, study_name: str | None, preset: str | None, notes: list[str]) -> GridSummary:
    """A grid study's table and verdicts; without a name, the study `grid --preset` made."""
    storage = storages.open_storage(storage_url, must_exist=True, heartbeat=None)
    study = st.load_study(storage, study_name if study_name is not None else (definitions.load_preset(preset).name if preset else "b1"))
    st.require_kind(study, "grid")
    _say_unreadable(study, notes)
    return grid_summary(study, definitions.grid_preset(study.user_attrs, preset))


def _preset_unused(study: optuna.Study, preset: str | None, notes: list[str]) -> None:
    """--preset names a grid's preset file: given for another kind of study, it is said to be
    unused rather than silently ignored."""
    if preset is not None and study.user_attrs.get("kind") != "grid":
        notes.append(f"note: --preset is read for grid studies only; study {study.study_name!r} is not one")


def choose_best(study: optuna.Study, storage: BaseStorage, preset: str | None = None,
                notes: list[str] | None = None) -> Choice:
    """The study's best and its reasons, also written as a note on the study and the trial."""
    from vae_search.selection import pareto_front, save_selection_notes, select_best
    from vae_search.verdicts import grid_verdicts

    _preset_unused(study, preset, notes if notes is not None else [])

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    if len(study.directions) > 1:
        return Choice(study, front=pareto_front(study))
    grid = definitions.grid_preset(study.user_attrs, preset) if study.user_attrs.get("kind") == "grid" else None
    sel = select_best(study, storage, preset=grid)
    verdicts = grid_verdicts(study, grid) if grid else []
    save_selection_notes(study, sel, verdicts)
    return Choice(study, sel, verdicts)


def interpolate(storage_url: str, study_name: str | None, notes: list[str], *, trial: str, artifact_dir: Path,
                out_dir: Path, rows: int, steps: int, mode: str, seed: int, data_dir: Path | None):
    """The trial's interpolation PNG (returned, with the trial) and its dashboard figure."""
    from vae_search.artifacts import artifact_store, load_model
    from vae_search.interpolation import publish_interpolation
    from vae_search.selection import choose_trial

    if mode == "images" and data_dir is None:  # never the study's recorded data_source: it is not trusted
        raise UsageError("--mode images needs the test images: pass --data-dir (or set VAE_SEARCH_DATA)")
    _, study = load_for_reading(storage_url, study_name, notes)
    chosen = choose_trial(study, trial)
    store = artifact_store(artifact_dir, create=False)
    model = load_model(store, chosen)
    images = _test_images(data_dir) if mode == "images" else None
    writable_folder(out_dir)
    with writing(f"the interpolation into {out_dir}"):
        png = publish_interpolation(study, chosen, model, store, out_dir=out_dir, rows=rows, steps=steps, mode=mode,
                                  seed=seed, images=images)
    return study, chosen, png


def _test_images(data_dir: Path | None):
    from vae_search.data import load_cifar10

    return load_cifar10(data_dir).test if data_dir is not None else None


def report(storage_url: str, study_name: str | None, notes: list[str], *, artifact_dir: Path, out: Path,
           data_dir: Path | None, preset: str | None = None) -> list[Path]:
    """The study's report in OUT/<the study's name as a safe folder name>/."""
    from vae_search.names import file_name, inside
    from vae_search.report import write_report

    storage, study = load_for_reading(storage_url, study_name, notes)
    st.require_kind(study, "grid", "search", "confirm")
    _preset_unused(study, preset, notes)
    writable_folder(out)
    images = _test_images(data_dir)
    with writing(f"the report into {out}"):
        return write_report(study, storage, artifact_dir, inside(out, file_name(study.study_name)), images=images,
                            preset=preset)


@dataclass(frozen=True)
class Runnable:
    """Makes the commands a text suggests (`vae-search grid ...`, `confirm ...`, `fail-stale ...`)
    run as printed, with the options this command was given: without --storage a suggested
    `grid --seeds 6` would start a new grid in the default storage; without --data-dir a
    suggested `confirm` would look for CIFAR-10 in the cache (and refuse other images), and
    without --artifact-dir it would keep its weights where `interpolate` does not look. Only the
    training commands (grid, confirm) take the data and artifact options. A dashboard note
    keeps its commands without (its readers have storages of their own). An option is left
    out where it is the default or its environment variable's value (the next command reads
    that too); a storage URL with a password is never printed (pass it through the environment)."""

    storage_url: str
    data_dir: Path | None = None
    artifact_dir: Path | None = None

    def __call__(self, lines: list[str]) -> list[str]:
        import re

        from vae_search.names import shell_word

        everywhere = ""
        if _given(self.storage_url, st.DEFAULT_STORAGE, "VAE_SEARCH_STORAGE") and \
                storages.redact(self.storage_url) == self.storage_url:
            everywhere = f" --storage {shell_word(self.storage_url)}"
        training = "".join(f" {option} {shell_word(str(value))}" for option, value, default, envvar in (
            ("--data-dir", self.data_dir, None, "VAE_SEARCH_DATA"),
            ("--artifact-dir", self.artifact_dir, st.DEFAULT_ARTIFACT_DIR, "VAE_SEARCH_ARTIFACTS"),
        ) if _given(value, default, envvar))

        def carry(m: re.Match) -> str:
            return f"`{m.group(1)}{training if m.group(2) in ('grid', 'confirm') else ''}{everywhere}`"

        return [re.sub(r"`(vae-search (grid|confirm|fail-stale) [^`]*)`", carry, line) for line in lines]


def _given(value: object, default: object, envvar: str) -> bool:
    """An option's value came from the command line: not its default, not its environment variable's."""
    import os

    return value is not None and str(value) not in (str(default), os.environ.get(envvar))


# ---------------------------------------------------------------- the files they write


def writable_folder(folder: Path) -> None:
    """`folder` exists and can be written, or one line says why."""
    import os

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder; give a folder to write into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {folder}: {e.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write to {folder}: permission denied")


def csv_target(path: Path) -> Path:
    """`--csv PATH` can be written: a file in a folder that exists or can be made, or a
    stream that exists (/dev/stdout, a FIFO), or one line says why."""
    if path.is_dir():
        raise UsageError(f"--csv {path} is a folder; give a file name, such as {path / 'table.csv'}")
    if not path.exists() or path.is_file():  # a stream's folder (/dev) need not be writable
        writable_folder(path.parent if str(path.parent) else Path("."))
    return path


def save_csv(table: Any, path: Path) -> Path:
    """The table as CSV at `path`; a failed write (a full disk) is one line, not a traceback."""
    from vae_search.tables import write_csv

    csv_target(path)
    with writing(str(path)):
        return write_csv(table, path)


@contextmanager
def writing(what: str) -> Iterator[None]:
    """A write the system refuses halfway (a full disk, a folder made read-only) is one line
    and exit 1, not a traceback; atomic writes leave the old files as they were."""
    try:
        yield
    except OSError as e:
        raise RunError(f"cannot write {what}: {system_reason(e)}") from None

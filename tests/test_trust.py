"""Safe to share: what a study or a data file says is untrusted input. Crafted pickles run
nothing, study names stay names, read-only commands write nothing, passwords stay hidden,
definitions ship in the package, and bad input from a study or a space file is one line."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import SMALL, TINY, one_line_error, sha256_of
from tests.samples import make_batches, synthetic_grid
from vae_search.definitions import load_space

ROOT = Path(__file__).resolve().parent.parent


class _Exploit:
    """A pickle that runs a shell command when loaded with the full pickle machinery."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_batches(root: Path, marker: Path) -> Path:
    """A cifar-10-batches-py folder whose first batch runs `touch marker` when unpickled."""
    make_batches(root)
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Exploit(marker), "labels": []}, f, protocol=2)
    return root


@pytest.fixture(scope="module")
def escaped(tmp_path_factory, batches_dir):
    """A storage with a complete trial in a study named '../escaped' (plain Optuna takes the
    name; any worker on a shared storage could make it)."""
    from tests.conftest import invoke

    tmp = tmp_path_factory.mktemp("escaped")
    storage = f"sqlite:///{tmp}/s.db"
    rc = invoke("optimize", "--trials", 1, "--epochs", 1, "--study-name", "../escaped", "--data-dir", batches_dir, *TINY,
                "--storage", storage, "--artifact-dir", tmp / "art")
    assert rc == 0
    return tmp, storage


# ---------------------------------------------------------------- pickles


def test_crafted_batches_in_a_folder_run_nothing(tmp_path, cli):
    marker = tmp_path / "pwned"
    data = _crafted_batches(tmp_path / "data", marker)
    rc, _, err = cli("grid", "--epochs", 1, "--data-dir", data, *TINY, "--storage", f"sqlite:///{tmp_path}/s.db",
                     "--artifact-dir", tmp_path / "art")
    assert rc == 2
    assert "refused to load posix.system" in one_line_error(err) or "refused to load os.system" in one_line_error(err)
    assert not marker.exists()


def test_crafted_batches_in_an_archive_run_nothing(tmp_path, cli):
    marker = tmp_path / "pwned"
    data = _crafted_batches(tmp_path / "data", marker)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    rc, _, err = cli("grid", "--epochs", 1, "--data-dir", archive, *TINY, "--storage", f"sqlite:///{tmp_path}/s.db",
                     "--artifact-dir", tmp_path / "art")
    assert rc == 2 and "unreadable batch file" in one_line_error(err)
    assert not marker.exists()


MISSING = object()


@pytest.mark.parametrize("attr, bad", [("params", "abc"), ("neg_elbo", [1, 2]), ("recon_loss", None),
                                       ("history", "junk"), ("time_s", float("nan")), ("seed", True),
                                       ("recon_loss", MISSING), ("neg_elbo", 1e200)])
def test_trials_with_figures_not_as_vae_search_writes_them_are_left_out_with_a_note(escaped, tmp_path, cli, attr, bad):
    """A shared study's trial attributes are untrusted: a trial whose figures are not shaped as
    vae-search writes them (a count that is a string, a loss that is a list) once ended best,
    report and interpolate in a traceback. It is left out, and the command names it."""
    import shutil

    tmp, _ = escaped
    shutil.copy(tmp / "s.db", tmp_path / "s.db")
    storage = f"sqlite:///{tmp_path}/s.db"
    src = optuna.load_study(study_name="../escaped", storage=storage).trials[0]
    study = optuna.create_study(study_name="mangled", storage=storage)
    study.set_user_attr("kind", "search")
    mangled = {**src.user_attrs, "neg_elbo": src.user_attrs["neg_elbo"] - 50, attr: bad}
    if bad is MISSING:
        del mangled[attr]
    for attrs in (src.user_attrs, mangled):
        study.add_trial(optuna.trial.create_trial(params=src.params, distributions=src.distributions,
                                                  value=attrs["neg_elbo"] if attr != "neg_elbo" else src.value - 50,
                                                  user_attrs=attrs))
    common = ("--study-name", "mangled", "--storage", storage, "--artifact-dir", tmp / "art")
    every = (("best",), ("report", "--out", tmp_path / "out"), ("interpolate", "--trial", "best", "--out", tmp_path))
    for command in every if attr == "params" else every[:1]:  # each command once; best reads every figure
        rc, out, err = cli(*command, *common)
        assert rc == 0 and "Traceback" not in err, err
        note = " ".join(err.split())
        why = f"trial 1: it has no {attr!r}" if bad is MISSING else f"trial 1: its {attr!r} is not"
        assert "1 trial(s) of study 'mangled' left out" in note and why in note, err
        if command[0] == "best":
            assert "best of study 'mangled': trial 0" in out
        if command[0] == "interpolate":
            assert "mangled-trial-0-interpolation-random.png" in out


def test_a_grid_trial_with_figures_not_as_written_is_left_out_of_show(tmp_path, cli):
    storage = f"sqlite:///{tmp_path}/s.db"
    study = synthetic_grid(storage, {1: [1912.0], 2: [1872.0], 3: [1843.0], 4: [1873.0]})
    t = study.trials[2]
    study.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=1000.0,
                                              user_attrs={**t.user_attrs, "val_loss": "1000", "seed": 1}))
    rc, out, err = cli("show", "--study-name", "b1", "--storage", storage, "--json")
    assert rc == 0, err
    assert "trial 4: its 'val_loss' is not a finite number" in " ".join(err.split())
    row = next(r for r in json.loads(out)["rows"] if r["config"] == 3)
    assert row["n"] == 1 and row["val_loss"] == 1843.0


@pytest.mark.parametrize("config, attr, bad, why", [
    (2, "val_loss", -3745.0, "its 'val_loss' (-3745) is not positive"),  # the baseline's mean 0: ZeroDivisionError
    (3, "recon_loss", 10**400, "its 'recon_loss' is not a finite number up to 1e+15"),  # JSON's integers: OverflowError
    (4, "params", 10**400, "its 'params' is not a count"),  # OverflowError in show's table
    (2, "val_loss", 1e200, "its 'val_loss' is not a finite number up to 1e+15"),  # a mean of 3e199 in the table
    (4, "time_s", -5.0, "its 'time_s' (-5) is negative")])
def test_figures_no_trial_can_record_are_left_out_of_show_and_best(tmp_path, cli, config, attr, bad, why):
    """Figures outside what a trial can record (a negative loss or time, 1e200, an integer of
    400 digits) ended show and best in a traceback, or went into the table as if measured. The
    trial is left out, with its reason."""
    storage = f"sqlite:///{tmp_path}/s.db"
    values = {c: [v, v + 1.0] for c, v in {1: 1913.0, 2: 1872.0, 3: 1843.0, 4: 1873.0}.items()}
    study = synthetic_grid(storage, values)
    t = next(t for t in study.trials if t.user_attrs["config"] == config)
    study.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value,
                                              user_attrs={**t.user_attrs, attr: bad, "seed": 2}))
    for command in (("show", "--json"), ("best", "--json")):
        rc, out, err = cli(*command, "--study-name", "b1", "--storage", storage)
        assert rc == 0 and "Traceback" not in err, err
        assert f"trial 8: {why}" in " ".join(err.split()), err
    row = next(r for r in json.loads(cli("show", "--json", "--storage", storage)[1])["rows"] if r["config"] == config)
    assert row["n"] == 2 and row["val_loss"] == values[config][0] + 0.5


@pytest.mark.parametrize("attr, bad", [("budget", "abc"), ("budget", {"epochs": "ten"}), ("heartbeat_s", "30"),
                                       ("weights_not_kept", 5), ("kind", ["search"])])
def test_study_attributes_not_as_vae_search_writes_them_are_one_line(escaped, tmp_path, cli, batches_dir, attr, bad):
    """What a study records (its kind, budget, heartbeat, which weights a copy left out) is read
    back from a shared database: another shape is one line and exit 2 from every command that
    reads it, never an AttributeError, and the database is left as it was."""
    import shutil

    tmp, _ = escaped
    shutil.copy(tmp / "s.db", tmp_path / "s.db")
    storage = f"sqlite:///{tmp_path}/s.db"
    optuna.load_study(study_name="../escaped", storage=storage).set_user_attr(attr, bad)
    before = sha256_of(tmp_path / "s.db")
    common = ("--study-name", "../escaped", "--storage", storage, "--artifact-dir", tmp / "art")
    resume = ("optimize", "--trials", 2, "--epochs", 1, "--data-dir", batches_dir, *TINY)
    commands = {"budget": [("report", "--out", tmp_path / "out"), resume], "heartbeat_s": [resume],
                "weights_not_kept": [("interpolate", "--out", tmp_path)],
                "kind": [("confirm", "--data-dir", batches_dir), ("best",), resume]}
    for command in commands[attr]:
        rc, _, err = cli(*command, *common)
        assert rc == 2, err
        assert f"records {attr!r} as" in one_line_error(err) and "not as vae-search writes it" in err
    assert sha256_of(tmp_path / "s.db") == before


@pytest.mark.parametrize("command, target, said", [
    ("optimize", "b1", "is a grid (vae-search grid)"), ("grid", "search", "is a search (vae-search optimize)"),
    ("optimize", "foreign", "was not made by vae-search")])
def test_a_training_command_adds_no_trials_to_a_study_of_another_kind(tmp_path, cli, batches_dir, command, target, said):
    """`optimize --study-name b1` (a typo, or a habit) ended in Optuna's ValueError after
    relabelling the grid; `grid --study-name` a search's name mixed grid points into it; another
    tool's study took vae-search's trials. Each is one line, before any data is loaded, and the
    database is left as it was."""
    storage = f"sqlite:///{tmp_path}/s.db"
    synthetic_grid(storage, {1: [1912.0], 2: [1872.0], 3: [1843.0], 4: [1873.0]})
    optuna.create_study(study_name="search", storage=storage).set_user_attr("kind", "search")
    optuna.create_study(study_name="foreign", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    before = sha256_of(tmp_path / "s.db")
    args = ("--trials", 2) if command == "optimize" else ("--preset", "b1")
    rc, _, err = cli(command, *args, "--study-name", target, "--epochs", 1, "--data-dir", batches_dir, *TINY,
                     "--storage", storage, "--artifact-dir", tmp_path / "art")
    assert rc == 2
    assert f"study {target!r} {said}" in one_line_error(err) and "pass another --study-name" in err
    assert sha256_of(tmp_path / "s.db") == before


def test_report_never_opens_the_data_a_study_names(escaped, tmp_path, cli):
    """A study whose trial's data_source names a folder of crafted pickles: `report` without
    --data-dir shows the name and opens nothing."""
    tmp, storage = escaped
    marker = tmp_path / "pwned"
    crafted = _crafted_batches(tmp_path / "data", marker)
    study = optuna.create_study(study_name="planted", storage=storage)
    src = optuna.load_study(study_name="../escaped", storage=storage).trials[0]
    study.add_trial(optuna.trial.create_trial(params=src.params, distributions=src.distributions, value=src.value,
                                              user_attrs={**src.user_attrs, "data_source": str(crafted)}))
    study.set_user_attr("kind", "search")
    rc, _, err = cli("report", "--study-name", "planted", "--out", tmp_path / "out", "--storage", storage,
                     "--artifact-dir", tmp / "art")
    assert rc == 0, err
    assert not marker.exists()
    assert "which a report never opens" in (tmp_path / "out" / "planted" / "report.md").read_text()


def test_interpolate_between_images_needs_data_dir(escaped, tmp_path, cli):
    tmp, storage = escaped
    rc, _, err = cli("interpolate", "--mode", "images", "--study-name", "../escaped", "--out", tmp_path / "out",
                     "--storage", storage, "--artifact-dir", tmp / "art")
    assert rc == 2 and "--mode images needs the test images: pass --data-dir" in one_line_error(err)


def test_the_restricted_reader_takes_real_batches(tmp_path):
    """Protocol-2 pickles of str-keyed dicts with numpy arrays, as tests and the original
    files hold: read as before."""
    from vae_search.data import _read_batches

    make_batches(tmp_path, n_train=50, n_test=10)
    train, test = _read_batches(tmp_path / "cifar-10-batches-py")
    assert train.shape == (50, 3, 32, 32) and test.shape == (10, 3, 32, 32)


# ---------------------------------------------------------------- names that stay names


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_a_study_name_never_writes_outside_out(escaped, tmp_path, cli):
    tmp, storage = escaped
    out = tmp_path / "box" / "out"
    out.mkdir(parents=True)
    rc, printed, err = cli("report", "--study-name", "../escaped", "--out", out, "--storage", storage,
                           "--artifact-dir", tmp / "art")
    assert rc == 0, err
    rc, printed2, err = cli("interpolate", "--study-name", "../escaped", "--out", out, "--storage", storage,
                            "--artifact-dir", tmp / "art")
    assert rc == 0, err
    assert not (tmp_path / "box" / "escaped").exists()
    written = _files(tmp_path / "box")
    assert written and all(out in p.parents for p in written)
    for line in (printed + printed2).split():
        assert out.resolve() in Path(line).resolve().parents


def test_file_names_from_names():
    from vae_search.names import file_name

    assert file_name("b1") == "b1" and file_name("search-confirm") == "search-confirm"
    for bad in ("../escaped", "/etc/passwd", "a/b", "..", ".hidden", "x\0y", "a\\b"):
        safe = file_name(bad)
        assert "/" not in safe and "\\" not in safe and not safe.startswith(".") and "\0" not in safe
    assert file_name("a/b") != file_name("a_b")  # two names never share a file


# ---------------------------------------------------------------- names in a terminal and a shell

# what a hostile worker can name a study: a window title, red text, a second line, a rich tag
EVIL = "x\x1b]0;PWNED\x07\x1b[31mred\nline2 [/b]"


def test_names_and_reasons_from_a_study_are_shown_not_obeyed(escaped, tmp_path, cli):
    tmp, storage = escaped
    theirs = f"sqlite:///{tmp_path}/theirs.db"
    optuna.copy_study(from_study_name="../escaped", from_storage=storage, to_storage=theirs, to_study_name=EVIL)
    study = optuna.load_study(study_name=EVIL, storage=theirs)
    params = study.trials[0].params
    study.add_trial(optuna.trial.create_trial(params=params, distributions=study.trials[0].distributions,
                                              state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"fail_reason": "oom\x1b[2J\r[/x]",
                                                          "@sum": "=HYPERLINK(\"http://x\")"}))
    rc, out, err = cli("best", "--study-name", EVIL, "--storage", theirs)
    assert rc == 0, err
    rc, _, err2 = cli("best", "--study-name", "nope", "--storage", theirs)
    assert rc == 2 and one_line_error(err2).endswith(f"studies in this storage: {EVIL!r}")
    rc, _, err3 = cli("report", "--study-name", EVIL, "--storage", theirs, "--out", tmp_path / "out",
                      "--artifact-dir", tmp / "art")
    assert rc == 0, err3
    for text in (out, err, err2, err3):
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    # a spreadsheet opening trials.csv runs no formula from the study (CSV injection)
    (csv_path,) = (tmp_path / "out").glob("*/trials.csv")
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert "'@sum" in rows[0] and "'=HYPERLINK(\"http://x\")" in rows[-1]
    assert not [c for row in rows for c in row if c[:1] in ("=", "+", "@")]
    from vae_search.ui import trial_line

    line = trial_line(study.trials[-1])
    assert line.endswith("FAIL (oom\\x1b[2J\\r[/x])") and line.isprintable()


def test_a_new_study_needs_a_name_one_can_type(tmp_path, cli, batches_dir):
    db = tmp_path / "s.db"
    for name, said in [("", "not empty"), ("  ", "not empty"), ("a\x1bb", "cannot hold control characters"),
                       ("x" * 513, "at most 512")]:
        for command in (("optimize", "--trials", 1), ("grid", *SMALL)):  # grid's "" was its preset's name
            rc, _, err = cli(*command, "--study-name", name, "--data-dir", batches_dir, *TINY,
                             "--storage", f"sqlite:///{db}")
            assert rc == 2 and said in one_line_error(err) and "\x1b" not in err, (command, name)
            assert not db.exists()  # refused before the storage was made


def test_a_name_with_brackets_is_a_name_not_markup(tmp_path, cli, batches_dir):
    storage = f"sqlite:///{tmp_path}/s.db"
    rc, _, err = cli("optimize", "--trials", 1, "--epochs", 1, "--study-name", "a[/b]", "--data-dir", batches_dir, *TINY,
                     "--storage", storage, "--artifact-dir", tmp_path / "art")
    assert rc == 0, err
    assert "study 'a[/b]'" in err


def test_the_live_bar_on_a_terminal_shows_a_name_with_brackets():
    """The bars draw only on a terminal, where the test above has none."""
    import io

    from rich.console import Console

    from vae_search.ui import progress_bar

    screen = io.StringIO()
    bar = progress_bar("{task.fields[info]}", Console(file=screen, force_terminal=True, width=120, markup=False))
    bar.add_task("study 'a[/b]': finished trials", total=3, completed=1, info="[worker 1]")
    bar.console.print(bar.make_tasks_table(bar.tasks))
    assert "study 'a[/b]': finished trials" in screen.getvalue() and "[worker 1]" in screen.getvalue()


def test_printable_and_shell_word():
    from vae_search.names import printable, shell_word

    assert printable("b1 é 東") == "b1 é 東"
    assert printable("a\x1b[31mb\tc\u202ed") == "a\\x1b[31mb\\tc\\u202ed"
    assert shell_word("search") == "search" and shell_word("my search; rm -rf ~") == "'my search; rm -rf ~'"


# ---------------------------------------------------------------- read-only commands write nothing


@pytest.fixture
def strangers_db(tmp_path) -> Path:
    path = tmp_path / "customers.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('Ada')")
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("command", [["show"], ["best"], ["report", "--out", "OUT"], ["interpolate", "--out", "OUT"],
                                     ["fail-stale", "--older-than", "1h"]])
def test_a_database_that_is_not_a_storage_is_left_byte_for_byte(strangers_db, tmp_path, cli, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sha256_of(strangers_db)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    rc, _, err = cli(*args, "--storage", f"sqlite:///{strangers_db}")
    assert rc == 2
    assert "is not an Optuna storage (it has customers)" in one_line_error(err)
    assert sha256_of(strangers_db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.db"]  # no studies/, no out/, no journal


def test_reading_commands_create_no_folders_here(escaped, tmp_path, cli, monkeypatch):
    tmp, storage = escaped
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli("best", "--study-name", "../escaped", "--storage", storage)[0] == 0
    assert cli("report", "--study-name", "../escaped", "--storage", storage, "--out", tmp_path / "out")[0] == 0
    assert list(here.iterdir()) == []


def test_in_memory_sqlite_is_refused_at_once(cli):
    for url in ("sqlite:///:memory:", "sqlite://"):
        start = time.monotonic()
        rc, _, err = cli("show", "--storage", url)
        assert rc == 2 and "in-memory database" in one_line_error(err)
        assert time.monotonic() - start < 10


# ---------------------------------------------------------------- passwords


@pytest.mark.parametrize("url, secret", [
    ("postgresql+psycopg://vae:hunter2@127.0.0.1:1/vae", "hunter2"),
    ("postgresql+psycopg://vae:p@ss@127.0.0.1:1/vae", "ss"),
    ("postgresql+psycopg://vae@127.0.0.1:1/vae?password=hunter2", "hunter2"),
])
def test_passwords_never_reach_a_message(cli, url, secret):
    rc, out, err = cli("show", "--storage", url)
    assert rc == 2
    line = one_line_error(err)
    assert "***" in line and secret not in line.replace("address", "").replace("does not", "")


def test_scrub_masks_short_passwords_without_eating_words():
    from vae_search.storages import scrub

    message = 'connection to server at "db" (10.0.0.1), port 5432 failed: FATAL: password e rejected for vae:e'
    assert scrub(message, "postgresql://vae:e@db/x") == (
        'connection to server at "db" (10.0.0.1), port 5432 failed: FATAL: password *** rejected for vae:***')
    assert scrub("bad host 'ss@db'; address unknown", "postgresql://vae:p@ss@db/x") == "bad host '***@db'; address unknown"
    assert scrub("auth failed for hunter2x and hunter2", "postgresql://vae:hunter2@db/x") == "auth failed for ***x and ***"


def test_redact():
    from vae_search.storages import redact

    assert redact("postgresql+psycopg://vae:s3cret@db:5432/vae") == "postgresql+psycopg://vae:***@db:5432/vae"
    assert redact("postgresql://vae:p@ss@db/x") == "postgresql://vae:***@db/x"
    assert redact("mysql+pymysql://u@db/x?password=pw&charset=utf8") == "mysql+pymysql://u@db/x?password=***&charset=utf8"
    assert redact("sqlite:///studies/x.db") == "sqlite:///studies/x.db"


# ---------------------------------------------------------------- definitions in the package


def test_a_local_studies_folder_does_not_override_the_packaged_preset(tmp_path, batches_dir, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "b1.toml").write_text(
        'name = "b1"\nepochs = 1\n[[points]]\nconfig = 1\nlatent_dim = 2\nbase_channels = 16\nbeta = 1.0\nlr = 0.003\n')
    common = ("--epochs", 1, "--data-dir", batches_dir, *TINY, "--artifact-dir", tmp_path / "art")
    rc, _, err = cli("grid", "--storage", f"sqlite:///{tmp_path}/a.db", *common)
    assert rc == 0, err
    assert f"preset 'b1': {ROOT / 'vae_search' / 'studies' / 'b1.toml'}" in err
    assert len(optuna.load_study(study_name="b1", storage=f"sqlite:///{tmp_path}/a.db").trials) == 4
    rc, _, err = cli("grid", "--preset", "./studies/b1.toml", "--storage", f"sqlite:///{tmp_path}/b.db", *common)
    assert rc == 0, err
    assert "preset 'b1': studies/b1.toml" in err
    assert len(optuna.load_study(study_name="b1", storage=f"sqlite:///{tmp_path}/b.db").trials) == 1


def test_a_study_cannot_name_a_preset_file(tmp_path, cli):
    from vae_search.definitions import preset_of

    assert preset_of({"preset": "/old/checkout/studies/b1.toml"}).name == "b1"  # older studies recorded a path
    with pytest.raises(Exception, match="not a packaged preset"):
        preset_of({"preset": "/etc/passwd"})
    with pytest.raises(Exception, match="not a packaged preset"):
        preset_of({"preset": "../../somewhere/x.toml"})


def test_a_grid_from_a_preset_file_of_ones_own_is_read_with_preset(tmp_path, cli):
    """The study names its preset, never a path: `show`, `best` and `report` say in one line to
    pass the file, and read the grid with it."""
    url = f"sqlite:///{tmp_path}/s.db"
    synthetic_grid(url, {1: [1850.0, 1851.0], 2: [1849.0, 1850.0], 3: [1845.0, 1846.0], 4: [1849.5, 1850.5]})
    optuna.load_study(study_name="b1", storage=url).set_user_attr("preset", "mine")
    mine = tmp_path / "mine.toml"
    mine.write_text((ROOT / "vae_search" / "studies" / "b1.toml").read_text().replace('name = "b1"', 'name = "mine"'))
    for command, *extra in (("show",), ("best",), ("report", "--out", tmp_path / "rep")):
        rc, _, err = cli(command, "--study-name", "b1", "--storage", url, *extra)
        assert rc == 2 and "the study's preset 'mine' is not a packaged preset" in one_line_error(err), command
        assert "pass --preset with its file" in err
    rc, out, err = cli("show", "--study-name", "b1", "--storage", url, "--preset", mine)
    assert rc == 0 and "1845.50 +- 0.71" in out, err
    rc, out, err = cli("best", "--study-name", "b1", "--storage", url, "--preset", mine)
    assert rc == 0 and "best of study 'b1': config 3" in out, err
    rc, out, err = cli("report", "--study-name", "b1", "--storage", url, "--preset", mine, "--out", tmp_path / "rep")
    assert rc == 0, err
    row = re.compile(r"\|\s*3\s*\|\s*16\s*\|\s*32\s*\|\s*2\s*\|\s*1845\.50 \+- 0\.71\s*\|\s*1843\.23")
    assert row.search((tmp_path / "rep" / "b1" / "report.md").read_text())  # config 3's row beside the report's


@pytest.mark.slow
def test_a_wheel_installed_without_e_finds_its_presets(tmp_path, batches_dir):
    import shutil

    # built from a copy: setuptools writes build/ beside the sources, and the checkout stays as it is
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "results", "docs"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, src],
                   check=True, capture_output=True)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site,
                    next(wheels.glob("*.whl"))], check=True, capture_output=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "VAE_SEARCH_CACHE": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-c", "import vae_search; print(vae_search.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(site) in where  # the wheel's copy, not this checkout
    proc = subprocess.run([sys.executable, "-m", "vae_search", "grid", "--preset", "b1", "--epochs", "1", "--data-dir",
                           batches_dir, *map(str, TINY)], cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"preset 'b1': {site}" in proc.stderr


# ---------------------------------------------------------------- studies of other tools, space files


def test_other_tools_studies_are_one_line(tmp_path, cli):
    storage = f"sqlite:///{tmp_path}/s.db"
    single = optuna.create_study(study_name="theirs", storage=storage)
    single.tell(single.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 1.0)
    pareto = optuna.create_study(study_name="theirs2", storage=storage, directions=["minimize", "minimize"])
    pareto.tell(pareto.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), [1.0, 2.0])
    for args in (["confirm", "--study-name", "theirs"], ["best", "--study-name", "theirs2"],
                 ["report", "--study-name", "theirs", "--out", tmp_path / "out"], ["show", "--study-name", "theirs"]):
        rc, _, err = cli(*args, "--storage", storage)
        assert rc == 2, (args, err)
        assert "was not made by vae-search" in one_line_error(err)


def test_show_on_a_search_names_the_commands_that_read_it(tmp_path, cli):
    storage = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="search", storage=storage).set_user_attr("kind", "search")
    rc, _, err = cli("show", "--study-name", "search", "--storage", storage)
    assert rc == 2 and one_line_error(err).endswith(
        "is a search (vae-search optimize); this command reads a grid (vae-search grid); "
        "`vae-search best` and `vae-search report` read it")


SPACE = (ROOT / "vae_search" / "studies" / "search.toml").read_text()


@pytest.mark.parametrize("change, message", [
    (('[beta]\ntype = "float"\nlow = 0.25', '[beta]\ntype = "float"\nlow = "nan"'), "low must be a finite number"),
    (('[beta]\ntype = "float"\nlow = 0.25', '[beta]\ntype = "float"\nlow = nan'), "low must be a finite number"),
    (("choices = [16, 32, 48, 64]", "choices = [16, { a = 1 }]"), "is not a single value"),
    (("choices = [16, 32, 48, 64]", "choices = [0, 16]"), "choice must be at least 1"),
    (("log = true\n\n[base_channels]", "lg = true\n\n[base_channels]"), "unknown key(s) lg"),
    (("low = 2\n", "low = 2.9\n"), "low must be a whole number, not 2.9"),
    (('[lr]\ntype = "float"\nlow = 1e-4', '[lr]\ntype = "float"\nlow = 0.0'), "low must be above 0"),
    (("choices = [16, 32, 48, 64]", "choices = []"), "choices must be a non-empty list"),
    (("choices = [16, 32, 48, 64]", "choices = [16, 16]"), "repeat a value"),
    (('[beta]\ntype = "float"\n', '[beta]\n'), "[beta] needs a type: int, float or categorical"),
])
def test_space_files_are_validated_whole(tmp_path, change, message):
    old, new = change
    assert old in SPACE
    path = tmp_path / "space.toml"
    path.write_text(SPACE.replace(old, new, 1))
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_space(path)


def test_optional_parameters_are_validated(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(SPACE + '\n[batch_size]\ntype = "categorical"\nchoices = [0]\n')
    with pytest.raises(Exception, match="choice must be at least 1"):
        load_space(path)
    path.write_text(SPACE + '\n[lr_schedule]\ntype = "categorical"\nchoices = ["warp"]\n')
    with pytest.raises(Exception, match="not one of constant, cosine, onecycle"):
        load_space(path)


def test_a_bad_space_is_one_line_before_any_trial(tmp_path, batches_dir, cli):
    path = tmp_path / "space.toml"
    path.write_text(SPACE.replace("low = 2\n", "low = 2.9\n", 1))
    rc, _, err = cli("optimize", "--trials", 2, "--space", path, "--data-dir", batches_dir, *TINY,
                     "--storage", f"sqlite:///{tmp_path}/s.db")
    assert rc == 2 and "[latent_dim] low must be a whole number, not 2.9" in one_line_error(err)
    assert not (tmp_path / "s.db").exists()


PRESET = (ROOT / "vae_search" / "studies" / "b1.toml").read_text()


@pytest.mark.parametrize("change, message", [
    (("[[points]]", "[[pointz]]"), "the file has unknown key(s) pointz"),
    (("lr = 3e-3", "lr = 3e-3\nlatnet_dim = 4"), "point 1 (config 1) has unknown key(s) latnet_dim"),
    (("val_loss = 1912.02", "val_los = 1912.02"), "point 1 (config 1)'s report has unknown key(s) val_los"),
    (("beta = 1.0\n", ""), "point 1 (config 1) has no beta;"),  # was "malformed (KeyError: 'beta')"
    (("val_loss = 1912.02", 'val_loss = "1912"'), "report val_loss must be a finite number"),
    (("config = 2", "config = 1"), "config 1 is given to more than one point"),
    (("latent_dim = 16", "latent_dim = 8"), "configs 2, 3 have the same parameters"),
    (("baseline = 2", 'baseline = "2"'), "baseline must be a whole number"),
])
def test_preset_files_are_validated_whole(tmp_path, cli, change, message):
    """A misspelt key was silently left out (a `[[pointz]]` dropped its point), a repeated
    point or a report figure that is text ended in a table that could not be built."""
    old, new = change
    assert old in PRESET
    path = tmp_path / "mine.toml"
    path.write_text(PRESET.replace(old, new, 1))
    rc, _, err = cli("grid", "--preset", path, "--storage", f"sqlite:///{tmp_path}/s.db")
    assert rc == 2 and message in one_line_error(err)
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("text, message", [('name = "x"\n', "it has no [[points]] tables"),
                                           ('name = "x"\npoints = 3\n', "points must be [[points]] tables")])
def test_a_preset_without_point_tables_is_one_line(tmp_path, cli, text, message):
    """Read as a list of tables: no points was a KeyError, points = 3 "'int' object is not iterable"."""
    path = tmp_path / "mine.toml"
    path.write_text(text)
    rc, _, err = cli("grid", "--preset", path, "--storage", f"sqlite:///{tmp_path}/s.db")
    assert rc == 2 and f"preset file {path}: {message}" in one_line_error(err)


def test_a_study_keeps_its_parameters_choices(tmp_path, batches_dir, cli):
    """Optuna refuses other categorical choices within one study with a ValueError at the first
    trial (a traceback, once): a resumed search whose space file changed them, or a grid whose
    preset file did, is one line before any data is loaded, and the study is left as it was."""
    storage = f"sqlite:///{tmp_path}/s.db"
    common = ("--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir", tmp_path / "art")
    assert cli("optimize", "--trials", 1, *common)[0] == 0
    narrower = tmp_path / "space.toml"
    narrower.write_text(SPACE.replace("choices = [16, 32, 48, 64]", "choices = [16, 32]", 1))
    before = sha256_of(tmp_path / "s.db")
    rc, _, err = cli("optimize", "--trials", 2, "--space", narrower, *common)
    assert rc == 2 and ("study 'search' has base_channels as a choice of 16, 32, 48, 64; this run gives a choice of "
                        "16, 32") in one_line_error(err)
    assert sha256_of(tmp_path / "s.db") == before
    synthetic_grid(storage, {1: [1912.0], 2: [1872.0], 3: [1843.0], 4: [1873.0]})
    before = sha256_of(tmp_path / "s.db")
    wider = tmp_path / "b1.toml"
    wider.write_text(PRESET.replace("base_channels = 64", "base_channels = 48", 1))
    rc, _, err = cli("grid", "--preset", wider, *common)
    assert rc == 2 and "study 'b1' has base_channels as a choice of 32, 64; this run gives a choice of 32, 48" in (
        one_line_error(err))
    assert sha256_of(tmp_path / "s.db") == before


def test_the_packaged_spaces_load_by_name():
    assert set(load_space("search")) == {"latent_dim", "base_channels", "beta", "lr"}
    assert {"batch_size", "lr_schedule"} <= set(load_space("search-wide"))


def test_lr_schedules_match_the_trainer():
    from vae_search import definitions, train

    assert definitions.LR_SCHEDULES == train.LR_SCHEDULES


def test_dashboard_warns_off_loopback(tmp_path, cli, monkeypatch, escaped):
    import optuna_dashboard

    _, storage = escaped
    seen = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, host, port, artifact_store: seen.update(host=host))
    rc, _, err = cli("dashboard", "--host", "0.0.0.0", "--storage", storage, "--artifact-dir", escaped[0] / "art")
    # the server returned (here at once): stopped, as after Ctrl-C
    assert rc == 130 and seen["host"] == "0.0.0.0"
    assert "optuna-dashboard has no authentication" in err and "delete studies" in err
    rc, _, err = cli("dashboard", "--storage", storage, "--artifact-dir", escaped[0] / "art")
    assert rc == 130 and "no authentication" not in err


def test_queued_parameters_not_as_optuna_writes_them_are_no_parameters(tmp_path, batches_dir, cli):
    """A trial whose fixed_params is not a mapping (written by hand into a shared study) ended
    every later proposal in a TypeError: the repeat check and the finite space's sampler read
    every trial's. They count it as a trial with the parameters it suggested."""
    space = tmp_path / "two.toml"
    space.write_text('[latent_dim]\ntype = "categorical"\nchoices = [2, 3]\n[base_channels]\ntype = "categorical"\n'
                     'choices = [16]\n[beta]\ntype = "categorical"\nchoices = [1.0]\n[lr]\ntype = "categorical"\n'
                     'choices = [0.003]\n')
    common = ("--space", space, "--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage",
              f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "art")
    assert cli("optimize", "--trials", 1, *common)[0] == 0
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("INSERT INTO trial_system_attributes (trial_id, key, value_json) VALUES (1, 'fixed_params', '\"x\"')")
    rc, _, err = cli("optimize", "--trials", 2, *common)
    assert rc == 0, err
    trials = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path}/s.db").get_trials()
    assert sorted(t.params["latent_dim"] for t in trials) == [2, 3]

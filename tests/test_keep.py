"""benchmarks/keep.py: a long run's studies copied into git with the small artifacts and only
the weights worth keeping; what was left out is said, not a failure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import optuna

from tests.conftest import TINY, one_line_error

ROOT = Path(__file__).resolve().parent.parent


def _keep_module():
    spec = importlib.util.spec_from_file_location("keep", ROOT / "benchmarks" / "keep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["keep"] = module
    spec.loader.exec_module(module)
    return module


def test_keep_copies_the_study_and_says_which_weights_it_left_out(tmp_path, batches_dir, cli):
    src, dst = tmp_path / "src", tmp_path / "dst"
    results = "benchmarks/results/search"
    storage = f"sqlite:///{src / results / 'studies.db'}"
    assert cli("optimize", "--trials", 2, "--epochs", 1, "--pruner", "none", "--data-dir", batches_dir, *TINY,
               "--storage", storage, "--artifact-dir", src / results / "artifacts")[0] == 0
    search = optuna.load_study(study_name="search", storage=storage)
    confirmed = min(search.trials, key=lambda t: t.value).number  # as `confirm --top 1` would pick
    other = 1 - confirmed
    runs = optuna.create_study(study_name="search-confirm", storage=storage)
    runs.add_trial(optuna.trial.create_trial(params=search.trials[confirmed].params,
                                             distributions=search.trials[confirmed].distributions, value=1.0,
                                             user_attrs={"source_trial": confirmed, "seed": 1}))
    keep = _keep_module()
    keep.TOP_KEPT = 0  # only the confirmed trial's weights, to see the others left out
    keep.keep(src, dst)

    copy = f"sqlite:///{dst / results / 'studies.db'}"
    assert set(optuna.get_all_study_names(copy)) == {"search", "search-confirm"}
    kept = optuna.load_study(study_name="search", storage=copy)
    assert kept.user_attrs["weights_not_kept"] == [other]
    art = dst / results / "artifacts"
    assert (art / kept.trials[confirmed].user_attrs["weights_artifact_id"]).is_file()
    assert not (art / kept.trials[other].user_attrs["weights_artifact_id"]).exists()
    assert (art / kept.trials[other].user_attrs["reconstructions_artifact_id"]).is_file()  # images stay

    from optuna_dashboard import get_note

    from vae_search.storages import trial_handle

    assert "were not kept" in get_note(trial_handle(kept, kept.trials[other]))
    rc, _, err = cli("interpolate", "--trial", other, "--study-name", "search", "--storage", copy, "--artifact-dir", art,
                     "--out", tmp_path / "out")
    assert rc == 2 and f"the weights of trial {other} were not kept" in one_line_error(err)
    rc, _, err = cli("interpolate", "--trial", confirmed, "--study-name", "search", "--storage", copy,
                     "--artifact-dir", art, "--out", tmp_path / "out")
    assert rc == 0, err

    # A copy whose best trial's weights were left out (the long runs' b1 keeps each point's first
    # seed only): the report's B.3 says so and names the trials it can draw, as interpolate does.
    kept.set_user_attr("weights_not_kept", [confirmed, other])
    (art / kept.trials[confirmed].user_attrs["weights_artifact_id"]).unlink()
    rc, _, err = cli("report", "--study-name", "search", "--storage", copy, "--artifact-dir", art,
                     "--out", tmp_path / "report")
    assert rc == 0, err
    text = " ".join((tmp_path / "report" / "search" / "report.md").read_text().split())
    assert (f"Weights of trial {confirmed} not available: the weights of trial {confirmed} were not kept in this copy "
            "of the study (its images are in the dashboard); no trial has weights") in text


def test_check_fails_where_best_would_change_a_committed_study_until_it_is_refreshed(tmp_path, cli):
    """keep.py --check (a CI step: the tests never read the committed results) runs `best` on a
    copy of every committed study the docs name and fails where a byte changed, with the
    command that refreshes it; after that command, it passes."""
    from tests.samples import synthetic_grid

    keep = _keep_module()
    db = tmp_path / keep.RESULTS / "studies.db"
    db.parent.mkdir(parents=True)
    synthetic_grid(f"sqlite:///{db}", {1: [1848.0, 1849.0], 2: [1844.0, 1845.5], 3: [1846.0, 1846.4], 4: [1850.0, 1851.0]})
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "runs.md").write_text(
        "    vae-search best --study-name b1 --storage sqlite:///benchmarks/results/search/studies.db\n"
        "    vae-search best --study-name search --storage sqlite:///benchmarks/results/gone/studies.db\n")
    assert keep.committed_best_commands(tmp_path) == {("b1", "benchmarks/results/search/studies.db"),
                                                     ("search", "benchmarks/results/gone/studies.db")}
    committed = db.read_bytes()
    problems = keep.check(tmp_path, keep.committed_best_commands(tmp_path))
    assert db.read_bytes() == committed  # checked on a copy
    refresh = "run `vae-search best --study-name b1 --storage sqlite:///benchmarks/results/search/studies.db`"
    assert problems == [f"benchmarks/results/search/studies.db: `best --study-name b1` changed it: {refresh} "
                        "and commit the file", "benchmarks/results/gone/studies.db: named by the docs, not committed"]

    assert cli("best", "--study-name", "b1", "--storage", f"sqlite:///{db}")[0] == 0  # the refresh it asks for
    (tmp_path / "docs" / "runs.md").write_text("    vae-search best --study-name b1 --storage "
                                              "sqlite:///benchmarks/results/search/studies.db\n")
    assert keep.check(tmp_path, keep.committed_best_commands(tmp_path)) == []

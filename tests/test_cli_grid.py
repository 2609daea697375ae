"""`vae-search grid --preset b1` end to end on a tiny generated dataset."""

import re
import shlex

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests.conftest import one_line_error

QUICK = ("--epochs", "1", "--limit-train", "256", "--limit-val", "64", "--compile", "off")
ATTRS = {
    "val_loss", "recon_loss", "kl", "neg_elbo", "train_loss", "time_s", "params", "epochs", "batch_size",
    "seed", "device", "torch", "optuna", "data_fingerprint", "history", "weights_artifact_id",
}
EXPECTED_PARAMS = {(4, 32): 285_355, (8, 32): 309_939, (16, 32): 359_107, (8, 64): 1_131_859}


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, batches_dir):
    """One grid run shared by the tests below (training four models is the slow part)."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("grid")
    storage = f"sqlite:///{tmp}/studies.db"
    args = ["grid", "--preset", "b1", *QUICK, "--data-dir", str(batches_dir), "--storage", storage,
            "--artifact-dir", str(tmp / "artifacts"), "--csv", str(tmp / "b1.csv")]
    proc = subprocess.run([sys.executable, "-m", "vae_search", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "VAE_SEARCH_CACHE": str(tmp / "cache"), "VAE_SEARCH_JOBS": "1"})
    return tmp, storage, args, proc


def test_four_complete_trials_with_every_attribute(grid_run):
    tmp, storage, _, proc = grid_run
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="b1", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert ATTRS <= set(t.user_attrs), ATTRS - set(t.user_attrs)
        p = t.params
        assert set(p) == {"latent_dim", "base_channels", "beta", "lr"}
        assert p["beta"] == 1.0 and p["lr"] == 3e-3
        assert t.user_attrs["params"] == EXPECTED_PARAMS[(p["latent_dim"], p["base_channels"])]
        assert t.value == pytest.approx(t.user_attrs["neg_elbo"])
        assert t.intermediate_values and set(t.intermediate_values) == {1}
        assert t.user_attrs["epochs"] == 1 and len(t.user_attrs["history"]) == 1
    assert {(t.params["latent_dim"], t.params["base_channels"]) for t in trials} == set(EXPECTED_PARAMS)
    # stderr is a pipe, not a terminal: a line per epoch (a log file has no live progress bar)
    assert sorted(line.split(" L=")[0] for line in proc.stderr.splitlines() if line.endswith(" epoch 1/1")) == \
        sorted(f"trial {t.number}" for t in trials), proc.stderr


def test_table_beside_the_report(grid_run):
    tmp, _, _, proc = grid_run
    assert "1843.23" in proc.stdout and "1,131,859" in proc.stdout  # report value, exact params
    df = pd.read_csv(tmp / "b1.csv")
    assert list(df["config"]) == [1, 2, 3, 4]
    assert list(df["params"]) == list(df["params_report"])  # exact counts, to the unit
    row = df[df.config == 3].iloc[0]
    assert row["val_loss_diff_pct"] == pytest.approx(100 * (row["val_loss"] - row["val_loss_report"]) / row["val_loss_report"])


def test_second_run_adds_no_trial(grid_run, cli, tmp_path):
    """On a copy of the shared study (the other tests read the original as the first run left it)."""
    import shutil

    tmp, storage, args, _ = grid_run
    shutil.copy(tmp / "studies.db", tmp_path / "studies.db")
    copy = f"sqlite:///{tmp_path}/studies.db"
    rc, out, err = cli(*[copy if a == storage else str(tmp_path / "b1.csv") if a.endswith("b1.csv") else a for a in args])
    assert rc == 0, err
    study = optuna.load_study(study_name="b1", storage=copy)
    assert len(study.get_trials()) == 4
    assert "this run trained 0 trial(s)" in err


def test_missing_point_is_completed_alone(grid_run, cli, tmp_path):
    """Copy the study without one point: the grid reruns just that one."""
    _, storage, args, _ = grid_run
    copy = f"sqlite:///{tmp_path}/copy.db"
    src = optuna.load_study(study_name="b1", storage=storage)
    dst = optuna.create_study(study_name="b1", storage=copy)
    for t in src.get_trials():
        if t.params["latent_dim"] != 16:
            dst.add_trial(t)
    new_args = [a if a != storage else copy for a in args]
    rc, _, err = cli(*new_args)
    assert rc == 0, err
    trials = optuna.load_study(study_name="b1", storage=copy).get_trials()
    assert len(trials) == 4
    assert [t.params["latent_dim"] for t in trials if t.number == 3] == [16]


def test_more_seeds_keep_the_studys_budget_and_subset(cli, tmp_path, batches_dir):
    """A study keeps one budget: `grid --seeds 2` after a run with --epochs 1 --limit-train 100
    (what show's and best's seed hints print: no budget options) trains the new seeds with that
    budget on that subset and says so; another --epochs or --limit-train is still refused."""
    from tests.conftest import SMALL

    common = (*SMALL, "--compile", "off", "--data-dir", batches_dir, "--storage", f"sqlite:///{tmp_path}/s.db",
              "--artifact-dir", tmp_path / "a")
    rc, out, err = cli("grid", *common, "--epochs", "1", "--limit-train", "100", "--limit-val", "60")
    assert rc == 0, err
    # the hint runs as printed: it carries the --data-dir, --artifact-dir and --storage given here
    hint = re.search(r"`(vae-search grid [^`]*--seeds 3[^`]*)`", " ".join(out.split()))
    assert hint is not None, out
    printed = shlex.split(hint.group(1))
    for option in ("--data-dir", "--artifact-dir", "--storage"):
        assert printed[printed.index(option) + 1] == str(common[common.index(option) + 1])
    printed[printed.index("--seeds") + 1] = "2"  # two seeds are enough to check the budget
    rc, _, err = cli(*printed[1:], "--compile", "off")
    assert rc == 0, err
    assert "keeps its budget: epochs 1" in err and "keeps the subset its trials record: 100 of 250 training images" in err
    assert "validation images" not in err  # --limit-val 60 took all 60: nothing was cut, nothing to say
    trials = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path}/s.db").get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {(t.user_attrs["epochs"], t.user_attrs["n_train"], t.user_attrs["n_val"]) for t in trials} == {(1, 100, 60)}
    assert len({t.user_attrs["data_fingerprint"] for t in trials}) == 1
    for option, value, why in (("--epochs", "2", "epochs is 1 there, 2 here"), ("--limit-train", "90", "data_fingerprint")):
        rc, _, err = cli("grid", *common, "--seeds", "3", option, value)
        assert rc == 2 and "another budget" in one_line_error(err) and why in err


def test_show_prints_the_table(grid_run, cli):
    _, storage, _, _ = grid_run
    rc, out, err = cli("show", "--study-name", "b1", "--storage", storage)
    assert rc == 0, err
    assert "1912.02" in out and "285,355" in out


class TestBadInput:
    def test_unknown_preset(self, cli, tmp_path):
        rc, _, err = cli("grid", "--preset", "b9", "--storage", f"sqlite:///{tmp_path}/s.db")
        assert rc == 2 and "unknown preset 'b9'" in one_line_error(err) and "b1" in err

    def test_missing_data_dir(self, cli, tmp_path):
        rc, _, err = cli("grid", *QUICK, "--data-dir", tmp_path / "nope", "--storage", f"sqlite:///{tmp_path}/s.db",
                         "--artifact-dir", tmp_path / "a")
        line = one_line_error(err)
        assert rc == 2 and str(tmp_path / "nope") in line and "accepted layouts" in line

    def test_empty_data_dir(self, cli, tmp_path):
        (tmp_path / "empty").mkdir()
        rc, _, err = cli("grid", *QUICK, "--data-dir", tmp_path / "empty", "--storage", f"sqlite:///{tmp_path}/s.db",
                         "--artifact-dir", tmp_path / "a")
        assert rc == 2 and "is empty" in one_line_error(err)

    def test_unknown_layout(self, cli, tmp_path):
        (tmp_path / "odd").mkdir()
        (tmp_path / "odd" / "x.txt").write_text("x")
        rc, _, err = cli("grid", *QUICK, "--data-dir", tmp_path / "odd", "--storage", f"sqlite:///{tmp_path}/s.db",
                         "--artifact-dir", tmp_path / "a")
        assert rc == 2 and "no layout" in one_line_error(err)

    def test_unreadable_image(self, cli, tmp_path):
        from tests.samples import make_image_folder

        root = make_image_folder(tmp_path / "imgs", n_train=10, n_test=10)
        next((root / "train").rglob("*.png")).write_bytes(b"broken")
        rc, _, err = cli("grid", *QUICK, "--data-dir", root, "--storage", f"sqlite:///{tmp_path}/db/s.db",
                         "--artifact-dir", tmp_path / "a" / "b")
        line = one_line_error(err)
        assert rc == 2 and "unreadable image" in line and "(not an image format PIL reads)" in line
        assert "BytesIO" not in line  # the reason in words, not PIL's repr of the buffer it read
        # the images fail after the cheap checks: no database, no folder was made for them
        assert not (tmp_path / "db").exists() and not (tmp_path / "a").exists()

    def test_no_internet(self, cli, tmp_path, offline):
        rc, _, err = cli("grid", *QUICK, "--storage", f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "a")
        assert rc == 2 and "could not download CIFAR-10" in one_line_error(err)

    @pytest.mark.parametrize("option", ["--epochs", "--batch-size", "--limit-train", "--limit-val"])
    @pytest.mark.parametrize("value", ["0", "-3", "ten"])
    def test_bad_numbers(self, cli, tmp_path, option, value):
        rc, _, err = cli("grid", option, value, "--storage", f"sqlite:///{tmp_path}/s.db")
        assert rc == 2 and option in one_line_error(err)
        assert not (tmp_path / "s.db").exists()  # nothing was created

    def test_show_unknown_study(self, grid_run, cli):
        _, storage, _, _ = grid_run
        rc, _, err = cli("show", "--study-name", "nope", "--storage", storage)
        assert rc == 2 and "no study named 'nope'" in one_line_error(err)

    def test_show_of_a_preset_reads_the_study_that_preset_made(self, cli, tmp_path, batches_dir):
        from tests.conftest import SMALL, TINY

        storage = f"sqlite:///{tmp_path}/s.db"
        rc, _, err = cli("grid", *SMALL, "--epochs", "1", *TINY, "--jobs", "1", "--data-dir", batches_dir,
                         "--storage", storage, "--artifact-dir", tmp_path / "a")
        assert rc == 0, err
        rc, out, err = cli("show", *SMALL, "--storage", storage)  # no --study-name: 'small', not 'b1'
        assert rc == 0, err
        assert "study 'small'" in out and "23,347" in out

    def test_show_without_database(self, cli, tmp_path):
        rc, _, err = cli("show", "--storage", f"sqlite:///{tmp_path}/none.db")
        assert rc == 2 and "no study database" in one_line_error(err)
        assert not (tmp_path / "none.db").exists()


def test_report_of_a_grid_is_small_and_reproduces_b1_to_b3(grid_run, cli, tmp_path):
    _, storage, args, _ = grid_run
    artifacts = args[args.index("--artifact-dir") + 1]
    rc, _, err = cli("report", "--study-name", "b1", "--out", tmp_path, "--storage", storage, "--artifact-dir", artifacts)
    assert rc == 0, err
    html = (tmp_path / "b1" / "report.html").read_text()
    for part in ("B.1 Architecture configuration comparison", "B.2 Final architecture selection",
                 "B.3 Latent space interpolation", "1843.23", "1,131,859"):
        assert part in html, part
    assert "Plotly" not in html and len(html) < 1_000_000  # no figure, so no 4.5 MB of plotly.js

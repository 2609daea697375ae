"""optimize, best, interpolate, report and dashboard, end to end on a tiny dataset."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from html import unescape

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from PIL import Image

from tests.conftest import TINY, invoke, one_line_error, sha256_of
from vae_search import objective as objective_module
from vae_search import train as train_module
from vae_search.storages import storage_of, study_id_of


@pytest.fixture(scope="module")
def searched(tmp_path_factory, batches_dir):
    """A 4-trial search with the B.1 points enqueued first, 2 epochs each."""
    tmp = tmp_path_factory.mktemp("search")
    common = ("--storage", f"sqlite:///{tmp}/s.db", "--artifact-dir", tmp / "artifacts")
    rc = invoke("optimize", "--trials", 4, "--epochs", 2, "--include-preset", "b1", "--pruner", "none", "--data-dir", batches_dir,
                *TINY, *common)
    assert rc == 0
    return tmp, common


def _study(tmp, name="search"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/s.db")


class TestOptimize:
    def test_reaches_n_with_preset_first(self, searched):
        tmp, _ = searched
        trials = _study(tmp).get_trials()
        assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
        # the B.1 points were enqueued first, in order
        assert [(t.params["latent_dim"], t.params["base_channels"]) for t in trials] == [(4, 32), (8, 32), (16, 32), (8, 64)]
        for t in trials:
            assert {"weights_artifact_id", "reconstructions_artifact_id", "samples_artifact_id",
                    "interpolation_artifact_id", "history", "data_fingerprint"} <= set(t.user_attrs)

    def test_second_run_does_not_exceed_n_and_a_larger_n_continues(self, searched, batches_dir, tmp_path):
        import shutil

        # on a copy: the module's study stays the 4 trials every other test here reads
        shutil.copy(searched[0] / "s.db", tmp_path / "s.db")
        shutil.copytree(searched[0] / "artifacts", tmp_path / "artifacts")
        tmp, common = tmp_path, ("--storage", f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "artifacts")
        assert invoke("optimize", "--trials", 4, "--epochs", 2, "--data-dir", batches_dir, *TINY, *common) == 0
        assert len(_study(tmp).get_trials()) == 4
        assert invoke("optimize", "--trials", 5, "--epochs", 2, "--data-dir", batches_dir, *TINY, *common) == 0
        trials = _study(tmp).get_trials()
        assert len(trials) == 5 and trials[-1].state in (TrialState.COMPLETE, TrialState.PRUNED)

    def test_other_budget_is_refused(self, searched, batches_dir, cli):
        tmp, common = searched
        rc, _, err = cli("optimize", "--trials", 9, "--epochs", 3, "--data-dir", batches_dir, *TINY, *common)
        assert rc == 2 and "another budget" in one_line_error(err) and "epochs is 2 there, 3 here" in err
        assert len(_study(tmp).get_trials()) == 4


def _flaky_train(monkeypatch, failing_call: int, how: str):
    """Make the failing_call-th training of this test go wrong: a NaN loss or an exception."""
    calls = []
    real_train, real_step = objective_module.train, train_module._step_loss

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) != failing_call:
            return real_train(*args, **kwargs)
        if how == "raise":
            raise RuntimeError("simulated crash in training")
        with monkeypatch.context() as m:
            m.setattr(train_module, "_step_loss", lambda *a: real_step(*a) * float("nan"))
            return real_train(*args, **kwargs)

    monkeypatch.setattr(objective_module, "train", flaky)


@pytest.mark.parametrize("how, reason", [("nan", "non-finite loss"), ("raise", "simulated crash")])
def test_failed_trial_is_recorded_and_the_study_goes_on(tmp_path, batches_dir, monkeypatch, how, reason):
    _flaky_train(monkeypatch, failing_call=2, how=how)
    storage = f"sqlite:///{tmp_path}/s.db"
    rc = invoke("optimize", "--trials", 3, "--epochs", 1, "--pruner", "none", "--data-dir", batches_dir, *TINY,
                "--storage", storage, "--artifact-dir", tmp_path / "a")
    assert rc == 0
    trials = optuna.load_study(study_name="search", storage=storage).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 3
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert failed.number == 1 and reason in failed.user_attrs["fail_reason"]


@pytest.mark.parametrize("pruner", ["median", "percentile", "cohort", "sha", "hyperband"])
def test_pruner_prunes_a_clearly_worse_trial(tmp_path, batches_dir, pruner, cli):
    """Five finished trials with an impossibly good neg_elbo of 100 at every epoch: a real
    trial is far worse and is pruned at the first epoch the pruner acts on, keeping its history."""
    from vae_search.definitions import load_space
    from vae_search.samplers import make_pruner

    storage = f"sqlite:///{tmp_path}/s.db"
    # The reference trials go through the pruner as real ones do (successive halving keeps
    # its rungs in the trials' system attributes).
    study = optuna.create_study(study_name="search", storage=storage, pruner=make_pruner(pruner, 4))
    study.set_user_attr("kind", "search")  # as a vae-search search records before its first trial
    space = load_space()
    for _ in range(5):
        trial = study.ask(fixed_distributions=space)
        for epoch in range(1, 5):
            trial.report(100.0, epoch)
            trial.should_prune()
        study.tell(trial, 100.0)
    rc, _, err = cli("optimize", "--trials", 6, "--epochs", 4, "--pruner", pruner, "--data-dir", batches_dir, *TINY,
                     "--storage", storage, "--artifact-dir", tmp_path / "a")
    assert rc == 0, err
    # what pruning saved, over the study: five full runs and one of a single epoch
    assert "6 finished in all; 1 pruned, 21 of 24 epochs trained (88%)" in " ".join(err.split())
    t = optuna.load_study(study_name="search", storage=storage).get_trials()[-1]
    assert t.state == TrialState.PRUNED
    first = 1  # every pruner here may act from the first epoch (README, Performance)
    assert t.user_attrs["pruned_at_epoch"] == first and len(t.user_attrs["history"]) == first
    assert t.user_attrs["neg_elbo"] == t.user_attrs["history"][-1]["neg_elbo"]
    assert sorted(t.intermediate_values) == list(range(1, first + 1))
    assert t.user_attrs["params"] > 0  # known before training
    assert t.user_attrs["compiled"] is False  # so is whether it compiles (TINY: --compile off)


def test_a_trial_that_regresses_is_pruned_with_the_reason(tmp_path, batches_dir, cli, monkeypatch):
    """The first trial of a study has nothing to be compared with, so no pruner stops it for
    being worse; one whose val neg_elbo jumps 8% above its best (a collapsed posterior, as in
    the onecycle-lr search) is stopped all the same, and says why."""
    def collapsing(model_config, train_config, data, *, on_epoch, **kwargs):
        for epoch, value in enumerate([1858.0, 2010.0, 2124.0], start=1):
            on_epoch({**{k: value for k in objective_module.METRICS}, "epoch": epoch, "kl": 0.1})
        raise AssertionError("trained past a regression")

    monkeypatch.setattr(objective_module, "train", collapsing)
    rc, _, err = cli("optimize", "--trials", 1, "--epochs", 5, "--data-dir", batches_dir, *TINY,
                     "--storage", f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "a")
    assert rc == 0, err
    t = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path}/s.db").trials[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["pruned_at_epoch"] == 2
    assert t.user_attrs["pruned_because"] == "regressed: val neg_elbo 2010.0, 8% above its best so far (1858.0)"
    assert "pruned after epoch 2 (regressed: val neg_elbo 2010.0" in err


def test_a_rerun_of_best_on_an_unchanged_study_writes_nothing(searched, cli, tmp_path):
    """The note is saved only when it changes (optuna-dashboard keeps every saved version):
    the second `best` leaves the database byte for byte the same."""
    import shutil

    from optuna_dashboard import get_note

    tmp, _ = searched
    shutil.copy(tmp / "s.db", tmp_path / "s.db")
    common = ("--study-name", "search", "--storage", f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp / "artifacts")
    assert cli("best", *common)[0] == 0
    written = sha256_of(tmp_path / "s.db")
    assert cli("best", *common)[0] == 0
    assert sha256_of(tmp_path / "s.db") == written
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path}/s.db")
    assert "best of study 'search'" in get_note(study)


def test_best_prints_the_selection(searched, cli):
    tmp, common = searched
    rc, out, err = cli("best", *common[:2])
    assert rc == 0, err
    study = _study(tmp)
    best = min((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"trial {best.number}" in out
    assert f"{best.user_attrs['neg_elbo']:.2f}" in out
    assert f"{3072 / best.params['latent_dim']:.0f}x" in out
    # the over-fitting line is on the loss trained, which is not the neg_elbo above it unless beta = 1
    a = best.user_attrs
    assert a["val_loss"] == pytest.approx(a["recon_loss"] + best.params["beta"] * a["kl"], rel=1e-9)
    assert (f"the final model's loss on {a['n_val']} training images {a['train_eval_loss']:.2f}, on the validation images "
            f"{a['val_loss']:.2f} (recon + beta x KL, the loss it trains)") in " ".join(out.split())
    for word in ("vs B.1 baseline", "parameters", "KL", "over-fitting", "compression", "other top configurations"):
        assert word in out
    assert "most recently written" in err  # no --study-name: said which study
    # the other top configurations are rounded like the main lines, not to six decimals
    lines = [line.strip().strip("|").split("|") for line in out.split("other top configurations:")[1].strip().splitlines()]
    header, rows = [h.strip() for h in lines[0]], lines[2:]
    assert rows
    for row in rows:
        cells = dict(zip(header, (c.strip() for c in row), strict=True))
        for key in ("beta", "lr"):  # 4 significant digits, as in the main lines
            assert len(cells[key].replace("0.", "").lstrip("0").replace(".", "")) <= 4, cells
        for key in ("neg_elbo", "vs_best_pct", "recon_loss"):  # 2 decimals
            assert len(cells[key].split(".")[-1]) <= 2, cells


def test_two_objectives_give_a_pareto_front(tmp_path, batches_dir, cli):
    common = ("--storage", f"sqlite:///{tmp_path}/s.db", "--artifact-dir", tmp_path / "a")
    rc, out, err = cli("optimize", "--trials", 3, "--epochs", 1, "--objectives", "neg_elbo,params", "--study-name", "pareto",
                       "--data-dir", batches_dir, *TINY, *common)
    assert rc == 0, err
    study = optuna.load_study(study_name="pareto", storage=common[1])
    assert len(study.directions) == 2 and len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert "Pareto front" in out
    front = {t.number for t in study.best_trials}
    assert all(f"| {n} " in out or f"|{n} " in out or f" {n} |" in out for n in front)
    # "best" of two objectives is the front's lowest neg_elbo, for interpolate and the report's B.3 alike
    lowest = min(study.best_trials, key=lambda t: t.values[0]).number
    rc, out, err = cli("interpolate", "--study-name", "pareto", "--out", tmp_path / "fig", *common)
    assert rc == 0, err
    assert f"trial {lowest} (the lowest neg_elbo of the Pareto front) of study 'pareto'" in " ".join(err.split())
    rc, _, err = cli("report", "--study-name", "pareto", "--out", tmp_path / "rep", *common)
    assert rc == 0, err
    md = (tmp_path / "rep" / "pareto" / "report.md").read_text()
    assert "B.3 draws its lowest neg_elbo" in md and f"Trial {lowest} (latent" in md
    assert (tmp_path / "rep" / "pareto" / "interpolation-random.png").read_bytes()[:4] == b"\x89PNG"


class TestInterpolate:
    def test_png_attached_and_figure_on_the_dashboard(self, searched, cli, tmp_path):
        tmp, common = searched
        rc, out, err = cli("interpolate", "--trial", "best", "--steps", 6, "--rows", 3, "--out", tmp_path / "fig", *common)
        assert rc == 0, err
        png = next(p for p in out.split() if p.endswith(".png"))
        with Image.open(png) as im:  # make_grid: 32-pixel images with 2-pixel padding
            assert im.size == (6 * 34 + 2, 3 * 34 + 2)
        assert not list((tmp_path / "fig").glob("*.html"))  # no multi-megabyte HTML per figure
        names = {a.filename for a in optuna.artifacts.get_all_artifact_meta(_study(tmp))}
        assert any(n.endswith("interpolation-random.png") for n in names)
        study = _study(tmp)
        attrs = storage_of(study).get_study_system_attrs(study_id_of(study))
        figures = {k: v for k, v in attrs.items() if k.startswith("dashboard:plot_data:")}
        assert any("interpolation-random" in k for k in figures)
        assert sum(len(v) for v in figures.values()) < 300_000  # the pixels as one PNG, not a JSON array

    def test_a_rerun_that_draws_the_same_picture_writes_nothing(self, searched, cli, tmp_path):
        """The same picture again leaves the database byte for byte the same and attaches no
        copy; another picture (more rows) is attached and replaces the figure."""
        import shutil

        tmp, _ = searched
        shutil.copy(tmp / "s.db", tmp_path / "s.db")
        shutil.copytree(tmp / "artifacts", tmp_path / "artifacts")
        storage = f"sqlite:///{tmp_path}/s.db"
        common = ("--trial", "0", "--steps", 4, "--out", tmp_path / "fig", "--study-name", "search", "--storage", storage,
                  "--artifact-dir", tmp_path / "artifacts")

        def state() -> tuple[str, int, int]:
            study = optuna.load_study(study_name="search", storage=storage)
            metas = optuna.artifacts.get_all_artifact_meta(study)
            pngs = [a for a in metas if a.filename.endswith("trial-0-interpolation-random.png")]
            files = sum(1 for p in (tmp_path / "artifacts").rglob("*") if p.is_file())
            return sha256_of(tmp_path / "s.db"), len(pngs), files

        assert cli("interpolate", "--rows", 2, *common)[0] == 0
        first = state()
        assert first[1] == 1
        assert cli("interpolate", "--rows", 2, *common)[0] == 0
        assert state() == first
        rc, out, err = cli("interpolate", "--rows", 3, *common)
        assert rc == 0, err
        db, pngs, files = state()
        assert db != first[0] and pngs == 2 and files == first[2] + 1
        study = optuna.load_study(study_name="search", storage=storage)
        attrs = storage_of(study).get_study_system_attrs(study_id_of(study))
        prefix = "dashboard:plot_data:trial-0-interpolation-random"
        shown = "".join(v for k, v in sorted(attrs.items()) if k.startswith(prefix))
        assert "trial 0: random interpolation" in shown
        with Image.open(next(p for p in out.split() if p.endswith(".png"))) as im:
            assert im.size[1] == 3 * 34 + 2  # the new picture, three rows

    def test_a_figure_deleted_in_the_dashboard_is_attached_again(self, searched, cli, tmp_path):
        """optuna-dashboard's delete button marks a study artifact with a JSON null, on which
        Optuna's get_all_artifact_meta raises TypeError: interpolate then ended in a traceback.
        It draws and attaches the figure again."""
        import shutil
        from wsgiref.util import setup_testing_defaults

        from optuna_dashboard import wsgi

        from vae_search.artifacts import artifact_store

        tmp, _ = searched
        shutil.copy(tmp / "s.db", tmp_path / "s.db")
        shutil.copytree(tmp / "artifacts", tmp_path / "artifacts")
        storage = f"sqlite:///{tmp_path}/s.db"
        common = ("--trial", "0", "--out", tmp_path / "fig", "--study-name", "search", "--storage", storage,
                  "--artifact-dir", tmp_path / "artifacts")
        assert cli("interpolate", *common)[0] == 0
        study = optuna.load_study(study_name="search", storage=storage)
        before = {a.artifact_id for a in optuna.artifacts.get_all_artifact_meta(study)}
        attached = study.user_attrs["interpolations_published"]["trial-0-interpolation-random"]["artifact_id"]
        # the dashboard's own DELETE, as its page sends it
        environ = {"REQUEST_METHOD": "DELETE", "PATH_INFO": f"/api/artifacts/{study_id_of(study)}/{attached}"}
        setup_testing_defaults(environ)
        statuses: list[str] = []
        app = wsgi(study._storage, artifact_store=artifact_store(tmp_path / "artifacts", create=False))
        b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        assert statuses[0].startswith("204")
        with pytest.raises(TypeError):  # what the library does with the dashboard's marker
            optuna.artifacts.get_all_artifact_meta(study)

        rc, out, err = cli("interpolate", *common)
        assert rc == 0 and "Traceback" not in err and "trial-0-interpolation-random.png" in out, err
        attrs = storage_of(study).get_study_system_attrs(study_id_of(study))
        assert json.loads(attrs[f"artifacts:{attached}"]) is None  # still the dashboard's marker
        live = {m["artifact_id"] for k, v in attrs.items() if k.startswith("artifacts:") and (m := json.loads(v))}
        (new,) = live - before
        assert (tmp_path / "artifacts" / new).is_file()

    def test_images_mode(self, searched, cli, tmp_path, batches_dir):
        _, common = searched
        rc, out, err = cli("interpolate", "--trial", "0", "--mode", "images", "--data-dir", batches_dir, "--out", tmp_path, *common)
        assert rc == 0, err
        assert "trial-0-interpolation-images.png" in out

    def test_trial_without_weights(self, tmp_path, batches_dir, cli):
        storage = f"sqlite:///{tmp_path}/s.db"
        study = optuna.create_study(study_name="s", storage=storage)
        study.tell(study.ask(), state=TrialState.FAIL)
        rc, _, err = cli("interpolate", "--trial", "0", "--storage", storage, "--artifact-dir", tmp_path / "a")
        assert rc == 2 and "trial 0 has no weights (it is FAIL)" in one_line_error(err)

    def test_unknown_trial_lists_those_with_weights(self, searched, cli):
        _, common = searched
        rc, _, err = cli("interpolate", "--trial", "99", *common)
        assert rc == 2 and one_line_error(err).endswith("no trial 99; trials 0, 1, 2, 3 have weights")

    def test_unknown_study(self, searched, cli):
        _, common = searched
        rc, _, err = cli("interpolate", "--study-name", "nope", *common)
        assert rc == 2 and "no study named 'nope'" in one_line_error(err)


@pytest.mark.chromium
def test_report_writes_one_document(searched, cli, tmp_path, batches_dir):
    tmp, common = searched
    rc, out, err = cli("report", "--study-name", "search", "--out", tmp_path, "--data-dir", batches_dir, *common)
    assert rc == 0, err
    folder = tmp_path / "search"
    html = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    # one file that opens offline: plotly.js inlined once, pictures embedded, nothing fetched
    from plotly.offline import get_plotlyjs

    assert html.count(get_plotlyjs()) == 1
    page = html.replace(get_plotlyjs(), "")
    assert "src='http" not in page and 'src="http' not in page and "cdn.plot.ly" not in page
    assert html.count("data:image/png;base64,") >= 4  # B.3 random and image pairs, reconstructions, samples
    for part in ("B.2 Final architecture selection", "B.3 Latent space interpolation", "time_to_quality", "learning_curves",
                 "history", "importances", "neg_elbo_vs_params"):
        assert part in html, part
    # report.md: the same parts, its PNGs beside it
    pngs = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert {"interpolation-random.png", "interpolation-images.png", "history.png", "time_to_quality.png",
            "learning_curves.png"} <= set(pngs)
    for name in pngs:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with Image.open(folder / "time_to_quality.png") as im:
        assert im.size[0] >= 800
    best_text = cli("best", "--study-name", "search", *common)[1]
    headline = best_text.splitlines()[0]
    assert headline in md and headline in unescape(html)  # B.2 is the text of `best`
    df = pd.read_csv(folder / "trials.csv")
    assert {"latent_dim", "base_channels", "beta", "lr", "neg_elbo", "recon_loss", "params"} <= set(df.columns)


def test_report_without_a_browser_says_so_and_keeps_the_figures_in_the_html(searched, cli, tmp_path):
    """No Chrome or Chromium for kaleido (conftest gives this tier none): the report is still
    written, with a note; report.md points to report.html for each figure and links no PNG
    that is not there."""
    tmp, common = searched
    rc, _, err = cli("report", "--study-name", "search", "--out", tmp_path, *common)
    assert rc == 0, err
    assert "figures not written as PNG" in err and "apt-get install chromium" in err
    folder = tmp_path / "search"
    md = (folder / "report.md").read_text()
    assert "(in report.html)" in md
    linked = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert linked and all((folder / name).exists() for name in linked)  # the trials' pictures, not kaleido's
    assert not (folder / "history.png").exists() and "history" in (folder / "report.html").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_study_attributes_and_artifacts(searched, cli, tmp_path):
    """What a user reads in optuna-dashboard, through its own HTTP API on loopback: the metric
    name, the note `best` writes on the study and the chosen trial, the interpolation figure,
    every trial's attributes, images and learning curve."""
    tmp, common = searched
    assert cli("best", "--study-name", "search", *common)[0] == 0
    assert cli("best", "--study-name", "search", *common)[0] == 0  # a second run replaces its note, not adds one
    assert cli("interpolate", "--study-name", "search", "--out", tmp_path, *common)[0] == 0
    chosen = min((t for t in _study(tmp).get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vae_search", "dashboard", "--port", str(port), *map(str, common)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=2))["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.25)
        else:
            pytest.fail("the dashboard did not answer")
        study = next(s for s in studies if s["study_name"] == "search")
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{study['study_id']}", timeout=10))
        assert detail["objective_names"] == ["neg_elbo"]
        note = detail["note"]["body"]
        assert note.count(f"best of study 'search': trial {chosen.number}") == 1 and "margin:" in note
        by_number = {t["number"]: t for t in detail["trials"]}
        assert f"trial {chosen.number}" in by_number[chosen.number]["note"]["body"]
        figures = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
        assert figures[f"trial-{chosen.number}-interpolation-random"]["data"][0]["type"] == "image"
        assert detail["has_intermediate_values"]
        # the learning curves: every epoch a trial ran (2 for complete ones, fewer for pruned ones)
        ran = {t.number: t.user_attrs["epochs_run"] for t in _study(tmp).get_trials() if "epochs_run" in t.user_attrs}
        assert ran and all(len(by_number[n]["intermediate_values"]) == e for n, e in ran.items())
        assert any(len(t["intermediate_values"]) == 2 for t in detail["trials"] if t["state"] == "Complete")
        trial = next(t for t in detail["trials"] if t["state"] == "Complete")
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {"neg_elbo", "recon_loss", "params", "history"} <= set(attrs)
        pngs = [a for a in trial["artifacts"] if a["mimetype"] == "image/png"]
        assert len(pngs) >= 3  # reconstructions, prior samples, interpolation
        body = urllib.request.urlopen(
            f"{base}/artifacts/{study['study_id']}/{trial['trial_id']}/{pngs[0]['artifact_id']}", timeout=10).read()
        assert body[:8] == b"\x89PNG\r\n\x1a\n"
        # stopped (SIGTERM, as Ctrl-C), a server says so and exits 130, not 0 as bottle would
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and err.decode().strip().splitlines()[-1] == "vae-search: stopped", err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


class TestBadInput:
    @pytest.mark.parametrize("command", ["grid", "optimize"])
    @pytest.mark.parametrize("bad", ["missing", "empty"])
    def test_a_data_dir_that_is_no_data_writes_nothing(self, cli, tmp_path, command, bad):
        """Refused before the storage is opened: no database, no artifact folder left behind."""
        data = tmp_path / "data"
        if bad == "empty":
            data.mkdir()
        rc, _, err = cli(command, "--data-dir", data, "--storage", f"sqlite:///{tmp_path}/db/s.db",
                         "--artifact-dir", tmp_path / "art")
        assert rc == 2 and ("does not exist" if bad == "missing" else "is empty") in one_line_error(err)
        assert not (tmp_path / "db").exists() and not (tmp_path / "art").exists()

    def test_missing_space_file(self, cli, tmp_path):
        rc, _, err = cli("optimize", "--space", tmp_path / "none.toml", "--storage", f"sqlite:///{tmp_path}/s.db")
        assert rc == 2 and "does not exist" in one_line_error(err)
        assert not (tmp_path / "s.db").exists()

    def test_malformed_space_file(self, cli, tmp_path):
        bad = tmp_path / "bad.toml"
        bad.write_text("[latent_dim\ntype = ")
        rc, _, err = cli("optimize", "--space", bad, "--storage", f"sqlite:///{tmp_path}/s.db")
        assert rc == 2 and "not valid TOML" in one_line_error(err)

    def test_space_missing_a_parameter(self, cli, tmp_path):
        bad = tmp_path / "bad.toml"
        bad.write_text('[lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\n')
        rc, _, err = cli("optimize", "--space", bad, "--storage", f"sqlite:///{tmp_path}/s.db")
        assert rc == 2 and "missing latent_dim" in one_line_error(err)

    @pytest.mark.parametrize("value", ["0", "-1", "many"])
    def test_bad_trials(self, cli, tmp_path, value):
        rc, _, err = cli("optimize", "--trials", value, "--storage", f"sqlite:///{tmp_path}/s.db")
        assert rc == 2 and "--trials" in one_line_error(err)

    def test_bad_objectives(self, cli, tmp_path):
        rc, _, err = cli("optimize", "--objectives", "params", "--storage", f"sqlite:///{tmp_path}/s.db")
        assert rc == 2 and "--objectives" in one_line_error(err)

    def test_best_on_empty_storage(self, cli, tmp_path):
        optuna.create_study(study_name="empty", storage=f"sqlite:///{tmp_path}/s.db").set_user_attr("kind", "search")
        rc, _, err = cli("best", "--storage", f"sqlite:///{tmp_path}/s.db")
        assert rc == 2 and "no complete trial" in one_line_error(err)


@pytest.mark.parametrize("sampler", ["random", "gp", "cmaes", "tpe"])
def test_every_sampler_runs(tmp_path, batches_dir, sampler):
    storage = f"sqlite:///{tmp_path}/s.db"
    rc = invoke("optimize", "--trials", 2, "--epochs", 1, "--sampler", sampler, "--pruner", "none", "--seed", 3,
                "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir", tmp_path / "a")
    assert rc == 0
    trials = optuna.load_study(study_name="search", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].params != trials[1].params


@pytest.mark.parametrize("command", ["report", "interpolate"])
def test_out_naming_a_file_is_one_line_and_leaves_the_file(searched, cli, tmp_path, command):
    _, common = searched
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    rc, _, err = cli(command, "--study-name", "search", "--out", target, *common)
    assert rc == 2 and f"{target} is a file, not a folder" in one_line_error(err)
    assert target.read_text() == "mine"

"""What `best` says about a search: the winner against the report's best and the B.1 grid in
the same storage, each with a noise verdict; single runs judged by the seed noise measured
elsewhere in the storage; ties named smaller and faster first, with the command that settles
them. Synthetic studies: no training needed."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tests.samples import synthetic_grid
from vae_search.definitions import load_preset

DIST = {"latent_dim": IntDistribution(2, 128), "base_channels": CategoricalDistribution([16, 32, 48, 64]),
        "beta": FloatDistribution(0.25, 4.0), "lr": FloatDistribution(1e-4, 1e-2)}


def _trial(params: dict, neg_elbo: float, n_params: int, time_s: float, seed: int = 0, **extra):
    attrs = {"neg_elbo": neg_elbo, "val_loss": neg_elbo, "recon_loss": neg_elbo - 20, "kl": 20.0,
             "train_loss": neg_elbo - 5, "time_s": time_s, "params": n_params, "epochs": 10, "batch_size": 128,
             "seed": seed, "n_train": 50_000, "n_val": 10_000, **extra}
    return optuna.trial.create_trial(params=params, distributions={k: DIST[k] for k in params}, value=neg_elbo,
                                     user_attrs=attrs)


@pytest.fixture
def storage(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    # every point 2.5 above the report's val loss, two seeds 0.6 apart: sd 0.42 per point
    synthetic_grid(url, {p.config: [p.report["val_loss"] + 2.2, p.report["val_loss"] + 2.8] for p in load_preset("b1").points})
    search = optuna.create_study(study_name="search", storage=url)
    search.set_user_attr("kind", "search")
    wide = {"latent_dim": 63, "base_channels": 64, "beta": 0.851, "lr": 1.9e-3}
    narrow = {"latent_dim": 70, "base_channels": 32, "beta": 0.9, "lr": 2e-3}
    search.add_trial(_trial(wide, 1824.32, 1_500_000, 1200.0))
    search.add_trial(_trial(narrow, 1824.59, 580_000, 460.0))
    return url


def test_best_of_a_search_speaks_to_the_question(storage, cli):
    rc, out, err = cli("best", "--study-name", "search", "--storage", storage)
    assert rc == 0, err
    text = " ".join(out.split())
    # one run each, 0.01% apart: inside the noise measured on the grid's seeds; the smaller, faster one named first
    assert "trial 1 and trial 0 are tied: 0.01% apart with one run each, inside the seed noise" in text
    assert "4 configurations with several seeds in study 'b1'" in text
    assert "trial 1 is smaller and faster (580,000 parameters, 460 s)" in text
    # with the --storage this command was given: as printed, it runs on this study
    assert f"`vae-search confirm --study-name search --trial 0 --trial 1 --seeds 3 --storage {storage}` would settle it" in text
    # against the report's best (config 3, 1843.23) and the grid here (config 3's mean, 1845.73)
    assert "vs the report's best (config 3, val loss 1843.23, one run): neg_elbo -1.03%, beyond the seed noise" in text
    assert "vs the B.1 grid's best here (config 3 of study 'b1', 1845.73 +- 0.42 (n = 2)): neg_elbo -1.16%" in text


def test_suggested_commands_run_on_the_storage_they_were_read_from(storage, cli, monkeypatch):
    """A suggested `grid --seeds N` without the --storage the user gave would start a new grid
    in the default storage: the terminal's commands carry it; the dashboard note (read by
    people with storages of their own) and a storage from VAE_SEARCH_STORAGE do not need it."""
    from optuna_dashboard import get_note

    from vae_search.reading import Runnable

    rc, out, err = cli("best", "--study-name", "search", "--storage", storage)
    assert rc == 0, err
    assert f"--seeds 3 --storage {storage}` would settle it" in " ".join(out.split())
    note = get_note(optuna.load_study(study_name="search", storage=storage))
    assert "--trial 1 --seeds 3` would settle it" in " ".join(note.split()) and "--storage" not in note
    monkeypatch.setenv("VAE_SEARCH_STORAGE", storage)
    rc, out, err = cli("best", "--study-name", "search")
    assert rc == 0, err
    assert "--trial 1 --seeds 3` would settle it" in " ".join(out.split()) and "--storage" not in out
    hint = ["tied; `vae-search grid --preset b1 --seeds 3` adds seeds"]
    monkeypatch.delenv("VAE_SEARCH_STORAGE")
    assert Runnable("sqlite:///studies/vae-search.db")(hint) == hint  # the default
    assert Runnable("postgresql+psycopg://vae:secret@db/x")(hint) == hint  # a password is never printed
    assert Runnable("sqlite:///my runs/s.db")(hint) == ["tied; `vae-search grid --preset b1 --seeds 3 --storage "
                                                        "'sqlite:///my runs/s.db'` adds seeds"]
    # after a training run: its --data-dir and --artifact-dir go to the training commands only
    both = ["`vae-search confirm --trial 1 --seeds 3` would settle it; `vae-search fail-stale --older-than 2h`"]
    after = Runnable("sqlite:///s.db", Path("my data/c.tar.gz"), Path("arts"))
    assert after(both) == ["`vae-search confirm --trial 1 --seeds 3 --data-dir 'my data/c.tar.gz' --artifact-dir arts "
                           "--storage sqlite:///s.db` would settle it; `vae-search fail-stale --older-than 2h --storage "
                           "sqlite:///s.db`"]
    secret = Runnable("postgresql+psycopg://vae:secret@db/x", Path("c.tar.gz"), Path("studies/artifacts"))
    assert secret(both)[0].startswith("`vae-search confirm --trial 1 --seeds 3 --data-dir c.tar.gz` would")
    monkeypatch.setenv("VAE_SEARCH_DATA", "my data/c.tar.gz")  # the next command reads it too
    assert "--data-dir" not in after(both)[0] and "--artifact-dir arts" in after(both)[0]


def test_a_preset_given_for_a_search_is_said_to_be_unused(storage, cli, tmp_path):
    """--preset names a grid's preset file: for a search it is not read, and says so."""
    rc, out, err = cli("best", "--study-name", "search", "--storage", storage, "--preset", "/etc/passwd")
    assert rc == 0, err
    assert "best of study 'search'" in out
    assert "note: --preset is read for grid studies only; study 'search' is not one" in err
    rc, _, err = cli("best", "--study-name", "search", "--storage", storage)
    assert rc == 0 and "--preset" not in err


def test_the_settling_command_quotes_the_study_name_for_a_shell(storage, cli):
    optuna.copy_study(from_study_name="search", from_storage=storage, to_storage=storage,
                      to_study_name="my search; rm -rf ~")
    rc, out, err = cli("best", "--study-name", "my search; rm -rf ~", "--storage", storage)
    assert rc == 0, err
    assert "`vae-search confirm --study-name 'my search; rm -rf ~' --trial 0 --trial 1 --seeds 3 --storage" in " ".join(out.split())


def test_a_clear_winner_with_single_runs_is_beyond_the_measured_noise(storage, cli):
    search = optuna.load_study(study_name="search", storage=storage)
    search.add_trial(_trial({"latent_dim": 8, "base_channels": 16, "beta": 1.0, "lr": 1e-3}, 1900.0, 100_000, 300.0))
    rc, out, _ = cli("best", "--study-name", "search", "--storage", storage, "--json")
    import json

    reasons = json.loads(out)["reasons"]
    assert any("tied" in r for r in reasons)  # the top two are still tied
    rc, out, _ = cli("best", "--study-name", "search", "--storage", storage)
    assert "1900" not in out.split("other top configurations")[0]


def test_a_subset_study_is_not_compared_with_the_report(tmp_path, cli):
    url = f"sqlite:///{tmp_path}/s.db"
    search = optuna.create_study(study_name="search", storage=url)
    search.set_user_attr("kind", "search")
    search.add_trial(_trial({"latent_dim": 8, "base_channels": 16, "beta": 1.0, "lr": 1e-3}, 1900.0, 100_000, 30.0,
                            n_train=5000, n_val=2000))
    rc, out, err = cli("best", "--storage", url, "--study-name", "search")
    assert rc == 0, err
    assert ("vs the report's best: not comparable (this study trains 10 epochs on 5,000 images and validates on 2,000"
            in " ".join(out.split()))
    # a study of other epochs whose trials predate the recorded sizes: not "on None images"
    old = optuna.create_study(study_name="old", storage=url)
    old.set_user_attr("kind", "search")
    early = _trial({"latent_dim": 8, "base_channels": 16, "beta": 1.0, "lr": 1e-3}, 1900.0, 100_000, 30.0, epochs=3)
    del early.user_attrs["n_train"], early.user_attrs["n_val"]
    old.add_trial(early)
    rc, out, err = cli("best", "--storage", url, "--study-name", "old")
    assert rc == 0, err
    assert "not comparable (this study trains 3 epochs on data of unrecorded size;" in " ".join(out.split())


def test_a_grid_still_running_is_not_taken_for_the_grids_best(tmp_path, cli):
    """With only config 4 run (the grid hands out its widest point first), its best so far
    is not the grid's best: `best` says the comparison waits for the rest."""
    url = f"sqlite:///{tmp_path}/s.db"
    synthetic_grid(url, {1: [], 2: [], 3: [], 4: [1875.71, 1875.04]})
    search = optuna.create_study(study_name="search", storage=url)
    search.set_user_attr("kind", "search")
    search.add_trial(_trial({"latent_dim": 114, "base_channels": 32, "beta": 1.7, "lr": 2.6e-3}, 1832.47, 961_415, 700.0))
    rc, out, err = cli("best", "--study-name", "search", "--storage", url)
    assert rc == 0, err
    text = " ".join(out.split())
    assert "vs the B.1 grid here (study 'b1'): not yet, config 1, config 2, config 3 of 4 have no complete run" in text
    assert "vs the B.1 grid's best here" not in text


def test_the_confirm_command_named_for_a_tie_runs_exactly_that_pair(storage, cli):
    """Where both have several runs and Welch's test finds no difference, `best` names the
    `confirm` that gives the pair as many runs as would tell a difference of the observed size,
    by trial number (it used to be two more each, which "would tell a smaller difference")."""
    runs = optuna.create_study(study_name="search-confirm", storage=storage)
    runs.set_user_attr("kind", "confirm")
    search = optuna.load_study(study_name="search", storage=storage)
    for t, extra in zip(search.trials, ([1824.9, 1823.7], [1823.9, 1825.2]), strict=True):
        for seed, value in enumerate(extra, start=1):
            runs.add_trial(_trial(t.params, value, t.user_attrs["params"], t.user_attrs["time_s"], seed=seed,
                                  source_trial=t.number))
    rc, out, err = cli("best", "--study-name", "search", "--storage", storage)
    assert rc == 0, err
    text = " ".join(out.split())
    assert "are tied within seed noise (Welch's t-test" in text and "n = 3 and 3" in text
    # trial 0's mean (1824.31) is the lower; trial 1 (1824.56) is the smaller and faster, so named first
    assert "trial 1 and trial 0 are tied within seed noise" in text and "trial 1 is smaller and faster" in text
    # 1824.31 +- 0.60 against 1824.56 +- 0.65, 0.257 apart: ceil(z^2 (0.60^2 + 0.65^2) / 0.257^2) + 1 = 95 each
    assert ("about 95 runs each would tell a difference this size: `vae-search confirm --study-name search --trial 0 "
            f"--trial 1 --seeds 95 --storage {storage}`") in text


@pytest.mark.parametrize("sizes, times, said", [
    ((580_000, 1_500_000), (460.0, 1200.0), "trial 0 is smaller and faster (580,000 parameters, 460 s)"),
    ((580_000, 1_500_000), (1200.0, 460.0), "trial 0 is smaller (580,000 against 1,500,000 parameters), trial 1 faster "
                                            "(460 s against 1200 s)"),
    ((580_000, 580_000), (1200.0, 460.0), "both have 580,000 parameters; trial 1 is faster (460 s against 1200 s)"),
    ((580_000, 1_500_000), (11.4, 11.2), "trial 0 is smaller (580,000 against 1,500,000 parameters); both take 11 s"),
    ((580_000, 580_000), (11.4, 11.2), "both have 580,000 parameters and take 11 s"),
])
def test_a_tied_pair_is_told_apart_by_size_and_time_only_where_they_differ(sizes, times, said):
    """Two trials of one architecture have the same parameter count, and times that round
    alike once read "config 3 faster (11 s against 11 s)"."""
    from vae_search.selection import Candidate, _lighter

    pair = []
    for number, (n_params, time_s) in enumerate(zip(sizes, times, strict=True)):
        t = _trial({"latent_dim": 70, "base_channels": 32, "beta": 0.9, "lr": 2e-3 * (1 + number)}, 1824.0, n_params,
                   time_s)
        pair.append(Candidate(t, [t], f"trial {number}"))
    assert _lighter(*pair) == said


@pytest.mark.parametrize("with_weights, said", [([], "no trial has weights"), ([0], "trial 0 has weights"),
                                                ([0, 2], "trials 0, 2 have weights")])
def test_a_trial_without_weights_names_those_with_them_in_words(tmp_path, with_weights, said):
    """Read as a sentence: "trials with weights: 0" was taken for a count."""
    from vae_search.artifacts import WEIGHTS_ATTR
    from vae_search.errors import UsageError
    from vae_search.selection import choose_trial

    study = optuna.create_study(study_name="search", storage=f"sqlite:///{tmp_path}/s.db")
    for number in range(3):
        extra = {WEIGHTS_ATTR: f"id-{number}"} if number in with_weights else {}
        study.add_trial(_trial({"latent_dim": 8 + number, "base_channels": 32, "beta": 1.0, "lr": 3e-3},
                               1850.0 - number, 300_000, 60.0, **extra))
    with pytest.raises(UsageError) as e:
        choose_trial(study, "7")
    assert str(e.value) == f"study 'search' has no trial 7; {said}"


@pytest.mark.parametrize(("gaps4", "verdict"), [
    ([7.8, 8.4, 8.1], "holds beyond seed noise"),  # config 4 fits its training images clearly better
    ([3.1, 4.2, 3.4], "does not hold beyond seed noise"),
    (None, "untested (these runs predate"),
])
def test_the_reports_overfitting_claim_is_tested_on_the_gaps(tmp_path, cli, gaps4, verdict):
    url = f"sqlite:///{tmp_path}/s.db"
    values = {p.config: [p.report["val_loss"] + d for d in (2.2, 2.8, 2.5)] for p in load_preset("b1").points}
    gaps = None if gaps4 is None else {1: [3.0, 3.3, 3.6], 2: [3.2, 3.9, 3.5], 3: [3.0, 3.4, 3.1], 4: gaps4}
    synthetic_grid(url, values, gaps)
    rc, out, err = cli("show", "--storage", url)
    assert rc == 0, err
    line = next(x for x in " ".join(out.split()).split(" - ") if x.startswith("'mild overfitting'"))
    assert line.startswith(f"'mild overfitting' (config 4 against config 2): {verdict}")
    if gaps4 is not None:
        assert f"train-val gap {sum(gaps4) / 3:+.2f} against +3.53 nats" in line


@pytest.mark.parametrize(("gaps4", "hint"), [
    # config 2's gaps are [3.2, 3.9, 3.5]: a difference of 0.4 with the same spread on both sides
    # (variance 0.1233 each), 2.8^2 x 0.2467 / 0.4^2 = 12.1, so 13 seeds, plus one
    ([3.6, 4.3, 3.9], "about 14 seeds per point would tell a difference this size: `vae-search grid --preset b1 --seeds 14"),
    ([3.1, 4.2, 3.4], "a difference this small would need more than 100 seeds per point to tell"),
    ([7.8, 8.4, 8.1], None),  # the claim holds: nothing to add
    ([2.6, 3.3, 2.9], None),  # config 4 fits its training images worse: more seeds would not make the claim hold
])
def test_a_claim_seed_noise_cannot_tell_says_how_many_seeds_would(tmp_path, cli, gaps4, hint):
    """Three seeds said no to the report's "mild overfitting" and six said yes (docs/results.md):
    a verdict "does not hold" for a claim that points the right way says what would tell."""
    url = f"sqlite:///{tmp_path}/s.db"
    values = {p.config: [p.report["val_loss"] + d for d in (2.2, 2.8, 2.5)] for p in load_preset("b1").points}
    synthetic_grid(url, values, {1: [3.0, 3.3, 3.6], 2: [3.2, 3.9, 3.5], 3: [3.0, 3.4, 3.1], 4: gaps4})
    rc, out, err = cli("show", "--storage", url)
    assert rc == 0, err
    line = next(x for x in " ".join(out.split()).split(" - ") if x.startswith("'mild overfitting'"))
    if hint is None:
        assert "seeds per point" not in line
    else:
        assert line.startswith("'mild overfitting' (config 4 against config 2): does not hold beyond seed noise")
        assert hint in line


def test_the_seeds_hint_starts_from_the_grids_first_seed(tmp_path, cli):
    """`--seeds N` runs seeds --seed ... --seed+N-1: for a grid run with --seed 3 the hint says
    --seed 3, so that each point then has N seeds (from seed 0 it would have N plus the three)."""
    url = f"sqlite:///{tmp_path}/s.db"
    values = {p.config: [p.report["val_loss"] + d for d in (2.2, 2.8, 2.5)] for p in load_preset("b1").points}
    synthetic_grid(url, values, {1: [3.0, 3.3, 3.6], 2: [3.2, 3.9, 3.5], 3: [3.0, 3.4, 3.1], 4: [3.6, 4.3, 3.9]},
                   first_seed=3)
    rc, out, err = cli("show", "--storage", url)
    assert rc == 0, err
    line = next(x for x in " ".join(out.split()).split(" - ") if x.startswith("'mild overfitting'"))
    assert line.endswith("about 14 seeds per point would tell a difference this size: "
                         f"`vae-search grid --preset b1 --seed 3 --seeds 14 --storage {url}`")


def test_a_grid_point_is_named_by_its_first_seed_not_its_first_trial(tmp_path, cli):
    """A seed-0 run that failed and was retried comes after seed 1's trial: the point is still
    named by seed 0, whose weights a shared copy keeps (benchmarks/keep.py), so `best` and
    `interpolate --trial best` name a trial that has them."""
    import json

    url = f"sqlite:///{tmp_path}/s.db"
    study = synthetic_grid(url, {1: [1910.0], 2: [1880.0], 3: [], 4: [1875.0]})
    point = next(p for p in load_preset("b1").points if p.config == 3)
    for seed in (1, 0):  # seed 1 first, as after a retry of seed 0
        study.add_trial(optuna.trial.create_trial(
            params=point.params, distributions=load_preset("b1").distributions(), value=1845.0 + seed,
            user_attrs={"val_loss": 1845.0 + seed, "neg_elbo": 1845.0 + seed, "recon_loss": 1825.0, "kl": 20.0,
                        "train_loss": 1844.0, "time_s": 10.0, "params": 359107, "epochs": 10, "batch_size": 128,
                        "seed": seed, "config": 3}))
    rc, out, err = cli("best", "--json", "--storage", url)
    assert rc == 0, err
    chosen = json.loads(out)
    assert chosen["best"] == "config 3" and chosen["seeds"] == [0, 1]
    assert study.trials[chosen["trial"]].user_attrs["seed"] == 0 and chosen["trial"] == len(study.trials) - 1


def test_seeds_to_tell_gives_the_power_it_promises():
    """With the seeds it names, Welch's test at 5% tells a true difference of the observed size
    and spread in about 80% of repetitions (simulated), and with fewer clearly less often."""
    import numpy as np
    from scipy.stats import ttest_ind

    from vae_search.noise import seeds_to_tell

    n = seeds_to_tell([-1.0, 0.0, 1.0], [0.0, 1.0, 2.0])  # difference 1, sd 1 on each side
    assert n == 17  # 7.85 x 2 / 1, rounded up, plus one

    def power(n: int) -> float:
        rng = np.random.default_rng(0)
        a, b = rng.normal(0.0, 1.0, (4000, n)), rng.normal(1.0, 1.0, (4000, n))
        return float((ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05).mean())

    assert 0.78 < power(n) < 0.88
    assert power(n // 2) < 0.6
    assert seeds_to_tell([1.0, 2.0], [1.0, 2.0]) is None and seeds_to_tell([1.0, 1.0], [2.0, 2.0]) is None


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on the no-spread side tested
@pytest.mark.parametrize("seed", range(6))
def test_welch_p_and_the_noise_band_are_scipy_stats_figures(seed):
    """noise.py computes Welch's test and the t band from scipy.special (scipy.stats is slow to
    import): the same p-values as ttest_ind and the same quantile as t.ppf, on unequal sizes
    and spreads, with one side's spread zero, and with no spread at all."""
    import numpy as np
    from scipy.stats import t as student
    from scipy.stats import ttest_ind

    from vae_search.noise import Noise, welch_p_of

    rng = np.random.default_rng(seed)
    for _ in range(50):
        n_a, n_b = rng.integers(2, 12, size=2)
        a = list(rng.normal(1850.0, rng.uniform(0.1, 5.0), n_a))
        b = list(rng.normal(1850.0 + rng.uniform(-6.0, 6.0), rng.uniform(0.1, 5.0), n_b))
        assert welch_p_of(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9, abs=1e-300)
    flat = [1850.0] * int(rng.integers(2, 6))
    assert welch_p_of(flat, b) == pytest.approx(ttest_ind(flat, b, equal_var=False).pvalue, rel=1e-9)
    assert welch_p_of(flat, flat) == 1.0 and welch_p_of(flat, [1851.0, 1851.0]) == 0.0  # ttest_ind: nan
    df = int(rng.integers(1, 40))
    noise = Noise(sd=1.5, df=df, source="test")
    assert noise.band(1, 3) == pytest.approx(student.ppf(0.975, df) * 1.5 * (1 + 1 / 3) ** 0.5, rel=1e-12)


def test_best_measures_over_fitting_on_the_final_model_where_it_can(tmp_path, cli):
    url = f"sqlite:///{tmp_path}/s.db"
    search = optuna.create_study(study_name="search", storage=url)
    search.set_user_attr("kind", "search")
    search.add_trial(_trial({"latent_dim": 8, "base_channels": 16, "beta": 1.0, "lr": 1e-3}, 1900.0, 100_000, 30.0,
                            train_eval_loss=1890.5))
    rc, out, err = cli("best", "--storage", url)
    assert rc == 0, err
    text = " ".join(out.split())
    assert ("over-fitting: the final model's loss on 10,000 training images 1890.50, on the validation images 1900.00 "
            "(recon + beta x KL, the loss it trains), gap +9.50 (+0.50%)") in text
    search.add_trial(_trial({"latent_dim": 9, "base_channels": 16, "beta": 1.0, "lr": 1e-3}, 1800.0, 100_000, 30.0))
    rc, out, err = cli("best", "--storage", url)  # the new best predates the measurement: the running mean, said so
    assert rc == 0 and "train loss 1795.00 (the last epoch's running mean, which lags the final model)" in " ".join(out.split())


def test_a_duration_keeps_a_figure_under_ten_seconds():
    """A tiny-data trial of 0.2 s was "0 s" in the trial line and in a tie's "faster (0 s)"."""
    from vae_search.ui import seconds

    assert [seconds(x) for x in (0.2, 9.94, 9.96, 577.4)] == ["0.2 s", "9.9 s", "10 s", "577 s"]


def test_a_time_against_a_baseline_timed_otherwise_is_not_a_ratio(tmp_path, cli):
    """A grid copied from another machine, or run in another precision, made best print
    "-69.3% against the baseline" for a bf16 trial against an fp32 one: a ratio of settings,
    not of models."""
    url = f"sqlite:///{tmp_path}/s.db"
    base = {"latent_dim": 8, "base_channels": 32, "beta": 1.0, "lr": 3e-3}
    wide = {"latent_dim": 63, "base_channels": 48, "beta": 0.825, "lr": 1e-3}
    for name, precision in (("mixed", "fp32"), ("same", "bf16")):
        study = optuna.create_study(study_name=name, storage=url)
        study.set_user_attr("kind", "search")
        study.add_trial(_trial(wide, 1823.91, 1_163_889, 245.9, precision="bf16", device="cpu"))
        study.add_trial(_trial(base, 1872.0, 309_939, 800.5, precision=precision, device="cpu"))
    rc, out, err = cli("best", "--study-name", "mixed", "--storage", url)
    assert rc == 0, err
    assert "time: 245.9 s to train and validate (the baseline's 800.5 s is not comparable: precision fp32 there, bf16 here;" in out
    rc, out, err = cli("best", "--study-name", "same", "--storage", url)
    assert rc == 0, err
    assert "time: 245.9 s to train and validate (-69.3% against the baseline;" in out

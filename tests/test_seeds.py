"""Seeds as a dimension: grid --seeds, confirm, the noise verdicts of best/show, searched
batch size and learning-rate schedule."""

from __future__ import annotations

import shutil
from collections import Counter

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.conftest import TINY, invoke, one_line_error
from tests.samples import synthetic_grid
from vae_search.definitions import packaged_dir
from vae_search.selection import Candidate, compare, welch_p

B1 = {(4, 32), (8, 32), (16, 32), (8, 64)}


@pytest.fixture(scope="module")
def seeded_grid(tmp_path_factory, batches_dir):
    tmp = tmp_path_factory.mktemp("seeds")
    common = ("--epochs", 1, "--data-dir", batches_dir, *TINY, "--storage", f"sqlite:///{tmp}/s.db", "--artifact-dir",
              tmp / "art")
    assert invoke("grid", "--seeds", 2, *common) == 0
    return tmp, common


def _trials(tmp, name="b1"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/s.db").get_trials()


class TestGridSeeds:
    def test_each_point_and_seed_complete_once(self, seeded_grid):
        tmp, _ = seeded_grid
        trials = _trials(tmp)
        assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
        got = Counter((t.params["latent_dim"], t.params["base_channels"], t.user_attrs["seed"]) for t in trials)
        assert got == Counter({(*p, s): 1 for p in B1 for s in (0, 1)})
        # the seed is the training's: two seeds of one point give two different results
        by_point = {}
        for t in trials:
            by_point.setdefault((t.params["latent_dim"], t.params["base_channels"]), set()).add(t.value)
        assert all(len(v) == 2 for v in by_point.values())

    def test_a_rerun_adds_none_and_more_seeds_add_only_the_new_ones(self, seeded_grid, cli):
        tmp, common = seeded_grid
        rc, _, err = cli("grid", "--seeds", 2, *common)
        assert rc == 0 and "this run trained 0 trial(s)" in err
        assert len(_trials(tmp)) == 8

    def test_show_prints_mean_sd_and_n(self, seeded_grid, cli):
        tmp, common = seeded_grid
        rc, out, err = cli("show", "--study-name", "b1", "--storage", f"sqlite:///{tmp}/s.db")
        assert rc == 0, err
        trials = [t for t in _trials(tmp) if t.params["latent_dim"] == 16]
        values = torch.tensor([t.user_attrs["val_loss"] for t in trials], dtype=torch.float64)
        assert f"{values.mean():.2f} +- {values.std():.2f}" in out  # the sample sd (n - 1)
        assert "1843.23" in out and "seeds per point: 2" in out


# ---------------------------------------------------------------- noise verdicts on studies with known numbers


def _best_of_grid(storage: str, cli, values: dict[int, list[float]]) -> str:
    """`best` on a b1 grid study whose runs have these val losses, its output on one line."""
    synthetic_grid(storage, values)
    rc, out, err = cli("best", "--study-name", "b1", "--storage", storage)
    assert rc == 0, err
    return " ".join(out.split())


def test_best_says_beyond_noise_for_a_clear_winner(tmp_path, cli):
    text = _best_of_grid(f"sqlite:///{tmp_path}/s.db", cli, {1: [1912, 1913, 1911], 2: [1872.0, 1873.0, 1871.0],
                                                             3: [1840, 1841, 1839], 4: [1872.5, 1871.5, 1873.0]})
    assert "best of study 'b1': config 3 (3 seeds)" in text
    assert "config 3 is best by 1.74% over config 2 (beyond seed noise: Welch's t-test p =" in text
    # the report's "more parameters gave a higher loss" is inside the noise here
    assert "'more parameters gave a higher loss' (config 4, 3.7x the parameters of config 2): does not hold" in text
    assert "config 4 against the baseline config 2: val loss +0.02% (within seed noise" in text
    assert "compression 3072 values -> 16 latents = 192x" in text


def test_best_says_tied_within_noise(tmp_path, cli):
    text = _best_of_grid(f"sqlite:///{tmp_path}/s.db", cli, {1: [1912, 1913, 1911], 2: [1872.0, 1875.0, 1869.0],
                                                             3: [1871.0, 1874.5, 1870.0], 4: [1890, 1891, 1889]})
    assert "config 2 and config 3 are tied within seed noise (Welch's t-test p =" in text
    assert "config 2 is smaller (309,939 against 359,107 parameters)" in text
    # 0.01% apart with an sd of 2 to 3 nats: no number of seeds worth running would tell them
    assert "are tied within seed noise (Welch's t-test p = 0.94, n = 3 and 3, 0.01% apart)" in text
    assert "a difference this small would need more than 100 runs each to tell" in text and "--seeds" not in text


def test_a_grid_tie_names_the_grid_that_would_settle_it(tmp_path, cli):
    """confirm reads searches only: a grid's tie is settled by the grid with as many seeds per
    point as would tell a difference of the observed size."""
    storage = f"sqlite:///{tmp_path}/s.db"
    text = _best_of_grid(storage, cli, {1: [1912, 1913, 1911], 2: [1872.0, 1874.0, 1870.0], 3: [1870.0, 1872.0, 1868.0],
                                        4: [1890, 1891, 1889]})
    # 2 nats apart, sd 2 on each side: ceil(z^2 (4 + 4) / 4) + 1 = 17 seeds per point (z = 1.96 + 0.84)
    assert ("config 2 and config 3 are tied within seed noise" in text
            and f"about 17 runs each would tell a difference this size: `vae-search grid --preset b1 --seeds 17 "
                f"--storage {storage}`" in text)


def test_welch_p_matches_scipy_and_needs_two_runs():
    from scipy.stats import ttest_ind

    def cand(values, number):
        trials = [optuna.trial.create_trial(value=v, user_attrs={"neg_elbo": v}) for v in values]
        return Candidate(trials[0], trials, f"trial {number}")

    a, b = cand([1.0, 2.0, 3.0], 1), cand([4.0, 5.0, 7.0], 2)
    assert welch_p(a, b) == pytest.approx(ttest_ind([1, 2, 3], [4, 5, 7], equal_var=False).pvalue)
    single = cand([1.0], 3)
    assert welch_p(a, single) is None
    assert "but with 1 and 3 runs the margin cannot be told from seed noise" in compare(single, b)


# ---------------------------------------------------------------- confirm


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, batches_dir):
    tmp = tmp_path_factory.mktemp("confirm")
    common = ("--data-dir", batches_dir, *TINY, "--storage", f"sqlite:///{tmp}/s.db", "--artifact-dir", tmp / "art")
    assert invoke("optimize", "--trials", 3, "--epochs", 1, "--pruner", "none", *common) == 0
    assert invoke("confirm", "--study-name", "search", "--top", 2, "--seeds", 3, *common) == 0
    return tmp, common


class TestConfirm:
    def test_adds_the_seeds_in_a_companion_study(self, confirmed):
        tmp, _ = confirmed
        search = _trials(tmp, "search")
        best2 = sorted((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)[:2]
        runs = _trials(tmp, "search-confirm")
        assert all(t.state == TrialState.COMPLETE for t in runs)
        got = Counter((t.user_attrs["source_trial"], t.user_attrs["seed"]) for t in runs)
        assert got == Counter({(t.number, s): 1 for t in best2 for s in (1, 2)})
        for t in runs:
            source = search[t.user_attrs["source_trial"]]
            assert t.params == source.params and t.value != source.value  # same configuration, another seed

    def test_does_not_count_towards_trials_and_resumes(self, confirmed, cli):
        tmp, common = confirmed
        rc, _, err = cli("optimize", "--trials", 3, "--epochs", 1, "--pruner", "none", *common)
        assert rc == 0 and "this run trained 0 trial(s)" in err
        assert len(_trials(tmp, "search")) == 3
        rc, _, err = cli("confirm", "--study-name", "search", "--top", 2, "--seeds", 3, *common)
        assert rc == 0 and "this run trained 0 trial(s)" in err
        assert len(_trials(tmp, "search-confirm")) == 4

    def test_best_ranks_by_the_mean_over_seeds(self, confirmed, cli):
        tmp, common = confirmed
        rc, out, err = cli("best", "--study-name", "search", *common[-4:])
        assert rc == 0, err
        search, runs = _trials(tmp, "search"), _trials(tmp, "search-confirm")
        means = {t.number: sum([t.value] + [r.value for r in runs if r.user_attrs["source_trial"] == t.number])
                 / (1 + sum(r.user_attrs["source_trial"] == t.number for r in runs))
                 for t in search if t.state == TrialState.COMPLETE}
        confirmed_means = {n: m for n, m in means.items() if any(r.user_attrs["source_trial"] == n for r in runs)}
        winner = min(means, key=means.get)
        assert f"best of study 'search': trial {winner}" in out
        assert confirmed_means  # the fixture confirmed some trials
        # a confirmed winner is named with its seeds; an unconfirmed one (its mean was lower alone) without
        assert ("best of study 'search': trial " + str(winner) + " (3 seeds)" in out) == (winner in confirmed_means)

    def test_trial_retrains_exactly_the_trials_named(self, confirmed, cli, tmp_path):
        tmp, common = confirmed
        shutil.copy(tmp / "s.db", tmp_path / "s.db")  # a copy: the module's study stays as the other tests expect
        common = [f"sqlite:///{tmp_path}/s.db" if str(a).startswith("sqlite:") else tmp_path / "art" if a == tmp / "art"
                  else a for a in common]
        search = _trials(tmp_path, "search")
        before = {t.number for t in _trials(tmp_path, "search-confirm")}
        worst = max((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        rc, _, err = cli("confirm", "--study-name", "search", "--trial", worst.number, "--seeds", 2, *common)
        assert rc == 0, err
        added = [t for t in _trials(tmp_path, "search-confirm") if t.number not in before]
        assert [(t.user_attrs["source_trial"], t.user_attrs["seed"], t.state) for t in added] == [
            (worst.number, 1, TrialState.COMPLETE)]

    def test_without_limits_takes_the_searchs_subset(self, confirmed, cli, tmp_path):
        tmp, common = confirmed
        shutil.copy(tmp / "s.db", tmp_path / "s.db")
        storage = f"sqlite:///{tmp_path}/s.db"
        search = _trials(tmp_path, "search")
        worst = max((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        rc, _, err = cli("confirm", "--study-name", "search", "--trial", worst.number, "--seeds", 2, "--compile", "off",
                         "--data-dir", common[1], "--storage", storage, "--artifact-dir", tmp_path / "art")
        assert rc == 0, err  # no --limit-train/--limit-val: the search's 128 and 32 images
        added = [t for t in _trials(tmp_path, "search-confirm") if t.user_attrs["source_trial"] == worst.number]
        assert [(t.user_attrs["n_train"], t.user_attrs["n_val"]) for t in added] == [(128, 32)]

    def test_bad_input(self, confirmed, cli, tmp_path):
        tmp, common = confirmed
        rc, _, err = cli("confirm", "--study-name", "nope", "--storage", f"sqlite:///{tmp}/s.db")
        assert rc == 2 and "no study named 'nope'" in one_line_error(err)
        rc, _, err = cli("confirm", "--study-name", "search-confirm", "--storage", f"sqlite:///{tmp}/s.db")
        assert rc == 2 and "holds confirmation runs" in one_line_error(err)
        rc, _, err = cli("confirm", "--study-name", "search", "--seeds", 1, "--storage", f"sqlite:///{tmp}/s.db")
        assert rc == 2 and "--seeds" in one_line_error(err)
        rc, _, err = cli("confirm", "--study-name", "search", "--trial", 99, "--storage", f"sqlite:///{tmp}/s.db")
        assert rc == 2 and "--trial 99: study 'search' has no complete trial 99" in one_line_error(err)
        rc, _, err = cli("confirm", "--study-name", "search", "--trial", 0, "--top", 2, "--storage", f"sqlite:///{tmp}/s.db")
        assert rc == 2 and "give --top or --trial, not both" in one_line_error(err)
        other = [a if a != "128" else "100" for a in common]  # another --limit-train: other data
        rc, _, err = cli("confirm", "--study-name", "search", "--top", 1, *other)
        line = one_line_error(err)  # and it says what the search had, so the user can pass it
        assert rc == 2 and "these data differ" in line and "128 training and 32 validation images, here 100 and 32" in line


# ---------------------------------------------------------------- searched batch size and schedule


def test_a_space_with_batch_size_and_schedule_runs(tmp_path, batches_dir, cli):
    space = tmp_path / "space.toml"
    space.write_text(
        '[latent_dim]\ntype = "int"\nlow = 2\nhigh = 8\n[base_channels]\ntype = "categorical"\nchoices = [8, 16]\n'
        '[beta]\ntype = "float"\nlow = 0.5\nhigh = 2.0\n[lr]\ntype = "float"\nlow = 1e-3\nhigh = 3e-3\nlog = true\n'
        '[batch_size]\ntype = "categorical"\nchoices = [32, 64]\n'
        '[lr_schedule]\ntype = "categorical"\nchoices = ["constant", "cosine", "onecycle"]\n'
    )
    storage = f"sqlite:///{tmp_path}/s.db"
    rc, out, err = cli("optimize", "--trials", 3, "--epochs", 2, "--space", space, "--pruner", "none", "--data-dir",
                       batches_dir, *TINY, "--storage", storage, "--artifact-dir", tmp_path / "a", "--batch-size", 16)
    assert rc == 0, err
    assert "note: --batch-size 16 is not used: the space sets batch_size" in err  # not silently ignored
    trials = optuna.load_study(study_name="search", storage=storage).get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.params["batch_size"] in (32, 64) and t.params["lr_schedule"] in ("constant", "cosine", "onecycle")
        assert t.user_attrs["batch_size"] == t.params["batch_size"]  # what the training used


def test_a_bad_schedule_in_the_space_is_one_line(tmp_path, cli):
    space = tmp_path / "space.toml"
    space.write_text(
        '[latent_dim]\ntype = "int"\nlow = 2\nhigh = 8\n[base_channels]\ntype = "categorical"\nchoices = [8]\n'
        '[beta]\ntype = "float"\nlow = 0.5\nhigh = 2.0\n[lr]\ntype = "float"\nlow = 1e-3\nhigh = 3e-3\n'
        '[lr_schedule]\ntype = "categorical"\nchoices = ["constant", "exponential"]\n'
    )
    rc, _, err = cli("optimize", "--space", space, "--storage", f"sqlite:///{tmp_path}/s.db")
    assert rc == 2 and "[lr_schedule] choice 'exponential' is not one of constant, cosine, onecycle" in one_line_error(err)


@pytest.mark.parametrize("schedule, start, peak, end", [("constant", 1.0, 1.0, 1.0), ("cosine", 1.0, 1.0, 0.0),
                                                         ("onecycle", 0.04, 1.0, 0.0)])
def test_lr_schedules(schedule, start, peak, end):
    from vae_search.model import VAE, ModelConfig
    from vae_search.train import TrainConfig, _scheduler

    opt = torch.optim.Adam(VAE(ModelConfig(4, 8)).parameters(), lr=1e-3)
    sched = _scheduler(opt, TrainConfig(lr=1e-3, lr_schedule=schedule), total_steps=100)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(99):
        opt.step()
        if sched:
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] / 1e-3 == pytest.approx(start, abs=1e-3)
    assert max(lrs) / 1e-3 == pytest.approx(peak, rel=1e-2)
    assert lrs[-1] / 1e-3 == pytest.approx(end, abs=0.02)


def test_a_grid_with_some_points_unseeded_says_so(tmp_path, cli):
    storage = f"sqlite:///{tmp_path}/s.db"
    synthetic_grid(storage, {1: [1912.0], 2: [1872.0], 3: [1840.0, 1841.0], 4: [1872.5, 1871.5]})
    rc, out, err = cli("best", "--study-name", "b1", "--storage", storage)
    assert rc == 0, err
    text = " ".join(out.split())
    assert "seeds per point: 1 to 2 (some points have one seed" in text
    # the runner-up (config 2) has one run: no test, and the message says how many runs each side has
    assert "config 3 is best by 1.71% over config 2, but with 2 and 1 runs the margin cannot be told" in text
    assert f"from seed noise (`vae-search grid --preset b1 --seeds 3 --storage {storage}` adds seeds)" in text
    # a preset of the user's own is named by its file, and the study by its name where that differs
    mine = tmp_path / "mine.toml"
    mine.write_text((packaged_dir() / "b1.toml").read_text().replace('name = "b1"', 'name = "mine"'))
    rc, out, err = cli("best", "--study-name", "b1", "--storage", storage, "--preset", str(mine))
    assert rc == 0, err
    assert f"(`vae-search grid --preset {mine} --study-name b1 --seeds 3 --storage {storage}` adds seeds)" in " ".join(out.split())


def test_show_and_best_print_the_same_numbers_as_json(seeded_grid, cli):
    """--json: the table's numbers and the choice, for scripts (Optuna's own CLI has -f json)."""
    import json

    tmp, common = seeded_grid
    storage = common[common.index("--storage") + 1]
    rc, out, err = cli("show", "--json", "--storage", storage)
    assert rc == 0, err
    shown = json.loads(out)
    assert [r["config"] for r in shown["rows"]] == [1, 2, 3, 4] and all(r["n"] == 2 for r in shown["rows"])
    assert any("seeds per point: 2" in v for v in shown["verdicts"])
    rc, out, err = cli("best", "--json", "--study-name", "b1", "--storage", storage)
    assert rc == 0, err
    chosen = json.loads(out)
    best_row = min(shown["rows"], key=lambda r: r["val_loss"])
    assert chosen["n"] == 2 and chosen["params"]["latent_dim"] == best_row["latent_dim"]
    assert chosen["val_loss"]["mean"] == pytest.approx(best_row["val_loss"])

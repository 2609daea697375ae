"""Figures of a search: over several sessions the clock counts only the hours with trials
running and the time-to-quality line runs to the last trial; the importances are the dashboard's;
the report's budget line names the batch size the trials trained with; a search whose
trials all still run has a report."""

from __future__ import annotations

import datetime
import warnings

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from vae_search.tables import running_clock, time_to_quality

T0 = datetime.datetime(2026, 11, 25, 9, 0)


def _at(hours: float) -> datetime.datetime:
    return T0 + datetime.timedelta(hours=hours)


def test_the_running_clock_adds_sessions_and_leaves_out_the_gaps():
    # session 1: two workers 0-1 h and 0.5-2 h (overlapping: 2 h of wall time); nothing for
    # 10 h; session 2: 12-13 h
    clock = running_clock([(_at(0.5), _at(2)), (_at(0), _at(1)), (_at(12), _at(13))])
    assert clock(_at(13)) / 3600 == 3.0
    assert clock(_at(2)) / 3600 == 2.0
    assert clock(_at(7)) / 3600 == 2.0  # the gap between sessions does not tick
    assert clock(_at(12.5)) / 3600 == 2.5
    assert clock(_at(0)) == 0.0
    assert running_clock([])(_at(1)) == 0.0


def _trial(number: int, state: TrialState, start: float, end: float, value: float | None) -> FrozenTrial:
    return FrozenTrial(number=number, state=state, value=value, datetime_start=_at(start), datetime_complete=_at(end),
                       params={"x": 0.1 * number}, distributions={"x": FloatDistribution(0, 10)}, user_attrs={},
                       system_attrs={}, intermediate_values={1: 2000.0 - number}, trial_id=number)


def test_time_to_quality_counts_running_hours_and_runs_to_the_last_trial():
    study = optuna.create_study()
    for t in (_trial(0, TrialState.COMPLETE, 0, 1, 1850.0),       # session 1
              _trial(1, TrialState.COMPLETE, 1, 2, 1840.0),
              _trial(2, TrialState.COMPLETE, 20, 21, 1845.0),     # session 2, a day later: no better
              _trial(3, TrialState.PRUNED, 21, 21.5, None)):
        study.add_trial(t)
    fig = time_to_quality(study, reference=("the report's best (config 3)", 1843.23))
    line = fig.data[0]
    assert list(line.x) == [1.0, 2.0, 3.0, 3.5]  # not 21 and 21.5: the night between is left out
    assert list(line.y) == [1850.0, 1840.0, 1840.0, 1840.0]
    assert any(s.y0 == 1843.23 for s in fig.layout.shapes)  # the report's best as a line


def test_time_to_quality_is_empty_without_a_complete_trial():
    study = optuna.create_study()
    study.add_trial(_trial(0, TrialState.PRUNED, 0, 1, None))
    assert not time_to_quality(study).data


def test_the_importances_are_the_dashboards_with_one_objective_or_two():
    """The report's importance figure is PED-ANOVA, as optuna-dashboard's, whatever Optuna's
    default evaluator; a two-objective study's (neg_elbo first) prints no warning to the user."""
    from optuna.distributions import IntDistribution
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    from vae_search.tables import figures

    space = {"latent_dim": IntDistribution(2, 128), "beta": FloatDistribution(0.1, 2.0), "lr": FloatDistribution(1e-4, 1e-2)}
    for directions in (["minimize"], ["minimize", "minimize"]):
        study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(30):
            trial = study.ask(space)
            neg_elbo = 1800 + 40 * trial.params["beta"] + 0.01 * trial.params["latent_dim"]  # beta matters most
            params = 1000 * trial.params["latent_dim"]
            trial.set_user_attr("neg_elbo", neg_elbo)
            trial.set_user_attr("params", params)
            study.tell(trial, neg_elbo if len(directions) == 1 else [neg_elbo, params])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bar = figures(study)["importances"].data[0]
        assert not [w for w in caught if "PedAnova" in str(w.message)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same warning, for the same minimised target
            expected = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=lambda t: t.values[0])
        shown = dict(zip(bar.y, bar.x, strict=True))
        assert set(shown) == set(expected) and max(shown, key=shown.get) == "beta"
        assert all(abs(shown[k] - expected[k]) < 1e-9 for k in expected)


def test_the_report_names_the_batch_size_the_trials_trained_with():
    """A space that fixes or searches batch_size overrides the study's --batch-size: the
    onecycle search trained at 64 and its report said "batch 128", the budget's."""
    from vae_search.report import batch_text

    budget = {"epochs": 10, "batch_size": 128}
    study = optuna.create_study()
    assert batch_text(study, budget) == "batch 128"
    for b in (256, 64, 128, 64):
        study.add_trial(optuna.trial.create_trial(params={"batch_size": b}, value=1.0,
                                                  distributions={"batch_size": CategoricalDistribution([64, 128, 256])}))
    assert batch_text(study, budget) == "batch 64, 128, 256 (a parameter of the space)"


def test_the_report_of_a_search_whose_trials_are_all_running(tmp_path):
    """A search a minute old (its first trials still running) has no trial duration yet:
    the report's trial table was a traceback (pandas' .dt on a column of None)."""
    from vae_search.report import write_report

    storage = optuna.storages.get_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, study_name="new")
    study.set_user_attr("kind", "search")
    study.ask()
    written = write_report(study, storage, tmp_path / "artifacts", tmp_path / "out")
    assert "| RUNNING |" in (tmp_path / "out" / "trials.md").read_text()
    assert "1 trials (1 running)" in next(p for p in written if p.name == "report.md").read_text()


def test_the_trial_table_of_a_study_with_an_integer_no_float_holds(tmp_path):
    """A study's JSON holds integers of any size: a trial's attribute of 400 digits in a column
    of floats ended the report's trials.md in tabulate's OverflowError. It shows as inf."""
    from vae_search.report import write_report

    storage = optuna.storages.get_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, study_name="odd")
    study.set_user_attr("kind", "search")
    for i, kl in enumerate((20.5, 10**400, -(10**400))):
        study.add_trial(optuna.trial.create_trial(value=1850.0 + i, user_attrs={"kl": kl}))
    write_report(study, storage, tmp_path / "artifacts", tmp_path / "out")
    header, _, *rows = [[c.strip() for c in line.split("|")] for line in (tmp_path / "out" / "trials.md").read_text().splitlines()]
    assert [row[header.index("kl")] for row in rows] == ["20.5", "inf", "-inf"]
    assert str(10**400) in (tmp_path / "out" / "trials.csv").read_text()  # the CSV keeps the digits

"""The pruners `--pruner` builds, on synthetic studies (no training): what each compares a
trial with, and where it stops acting."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from vae_search.errors import UsageError
from vae_search.samplers import make_pruner, parse_pruner


def _study(spec: str, direction: str = "minimize") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(pruner=make_pruner(spec, 10), direction=direction)


def _finished(study: optuna.Study, curve: list[float], state: TrialState) -> None:
    trial = study.ask()
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
    study.tell(trial, curve[-1] if state == TrialState.COMPLETE else None, state=state)


def _asks_at(study: optuna.Study, curve: list[float]) -> bool:
    """A new trial reports `curve` and asks whether to stop at its last epoch (it stays
    RUNNING, and running trials are part of the cohort of later ones)."""
    trial = study.ask()
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
    return trial.should_prune()


def _history(study: optuna.Study) -> None:
    """Two finished trials that started fastest, and eight pruned at epoch 1 behind them:
    what a hard-pruning search leaves."""
    _finished(study, [1.0] * 10, TrialState.COMPLETE)
    _finished(study, [2.0] * 10, TrialState.COMPLETE)
    for value in range(3, 11):
        _finished(study, [float(value)], TrialState.PRUNED)


def test_cohort_compares_with_every_trial_that_reached_the_epoch():
    """A trial at 1.5 after epoch 1 is in the best fifth of the ten trials so far: the cohort
    pruner keeps it; Optuna's percentile pruner, which looks at the two finished trials only,
    stops it (the ratchet of docs/performance.md)."""
    cohort, percentile = _study("cohort:p=20:startup=2"), _study("percentile:p=20:startup=2")
    for study in (cohort, percentile):
        _history(study)
    assert _asks_at(cohort, [5.0])  # the 20th percentile of 1..10 is 2.8
    assert not _asks_at(cohort, [1.5])
    assert _asks_at(percentile, [1.5])


def test_cohort_waits_for_startup_trials_at_that_epoch():
    study = _study("cohort:p=20:startup=3")
    _finished(study, [1.0, 1.0], TrialState.COMPLETE)
    _finished(study, [2.0], TrialState.PRUNED)
    assert not _asks_at(study, [9.0])  # 2 others at epoch 1, fewer than 3: no verdict yet
    assert not _asks_at(study, [9.0, 9.0])  # and only one at epoch 2
    assert _asks_at(study, [9.0])  # 1, 2, 9 and 1 at epoch 1 now


def test_cohort_for_a_maximized_value_and_a_non_finite_one():
    study = _study("cohort:p=20:startup=2", direction="maximize")
    _history(study)
    assert _asks_at(study, [1.5]) and not _asks_at(study, [9.5])
    assert _asks_at(_study("cohort:startup=0"), [math.nan])


@pytest.mark.parametrize("spec", ["cohort", "percentile", "median"])
def test_no_pruner_acts_after_until(spec):
    """A trial that has passed epoch `until` (3 by default) trains to the end, however bad,
    unless it regresses."""
    study = _study(spec)
    _history(study)
    _finished(study, [1.5] * 10, TrialState.COMPLETE)  # the median pruner waits for three
    assert _asks_at(study, [100.0])
    assert not _asks_at(study, [100.0] * 4)


@pytest.mark.parametrize("spec", ["cohort", "percentile", "median", "sha", "hyperband", "patient"])
def test_a_regressed_trial_is_pruned_at_any_epoch(spec):
    """The onecycle-lr search's collapsed trials rose 14% above their best by epoch 3 and
    trained to epoch 10, unpruned (too few finished trials to compare with). A rise of more
    than 5% above a trial's own best stops it at any epoch, with no history needed; a smaller
    one is a curve's wobble (1.7% at most in every study recorded here)."""
    from vae_search.samplers import regressed

    assert _asks_at(_study(spec), [1858.0, 2016.0])
    assert _asks_at(_study(spec), [1858.0] * 6 + [1960.0])
    assert not _asks_at(_study(spec), [1858.0] * 6 + [1890.0])
    assert not _asks_at(_study("none"), [1858.0, 2124.0])  # none means none
    assert not _asks_at(_study(spec, direction="maximize"), [1858.0, 1.0])  # a loss is minimised
    assert regressed([1858.0, 2016.0, 2124.0]) == "regressed: val neg_elbo 2124.0, 14% above its best so far (1858.0)"
    assert regressed([1858.0]) is None and regressed([1858.0, 1890.0]) is None


@pytest.mark.parametrize("spec, message", [
    ("cohort:p=0", "p is a percentile between 0 and 100"),
    ("cohort:rf=3", "pruner 'cohort' has no setting 'rf'"),
    ("sha:rf=1", "rf must be at least 2"),
    ("percentile:p=x", "is not a number"),
    ("asha", "unknown pruner 'asha'"),
])
def test_bad_specs_are_one_line(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_pruner(spec)

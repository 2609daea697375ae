"""A trial's figures as vae-search reads them back from a study, checked first.

A study is shared by people and machines, so its trials' user attributes are untrusted
input: a trial whose figures are not shaped as vae-search writes them (a count that is a
string, a loss that is a list, a history that is not a list of epochs) is left out of every
table, choice and figure, as another tool's trial is, and the command says which and why,
instead of ending in a traceback on the first float() of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from optuna.trial import FrozenTrial

REQUIRED = ("neg_elbo", "recon_loss", "kl", "val_loss", "train_loss", "time_s", "params", "epochs", "batch_size")
NUMBERS = ("neg_elbo", "recon_loss", "kl", "val_loss", "train_loss", "time_s", "train_eval_loss")  # finite reals
# ... within what a trial can record. Losses are sums of per-pixel cross-entropies, so
# positive; a time is not negative; no figure or count comes near LARGEST (a validation
# neg_elbo above ten times an untrained model's, 21,290 nats, fails the trial). The tables
# divide by losses (a baseline's mean of 0 ended `show` in a ZeroDivisionError) and turn
# figures into floats (an integer of 400 digits, which JSON holds, ended it in an
# OverflowError); a loss of 1e200 went into the table as if measured.
POSITIVE = ("neg_elbo", "recon_loss", "val_loss", "train_loss", "train_eval_loss")
NOT_NEGATIVE = ("time_s",)
LARGEST = 1e15
COUNTS = ("params", "epochs", "batch_size", "seed", "source_trial", "epochs_run", "n_train", "n_val", "jobs",
          "threads", "config")  # non-negative integers
NAMES = ("weights_artifact_id", "reconstructions_artifact_id", "samples_artifact_id", "interpolation_artifact_id",
         "precision", "data_source")  # strings


def _real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= LARGEST


def _epoch(entry: object) -> bool:
    """One entry of `history`: the epoch and its figures (NaN allowed: a diverging epoch)."""
    return (isinstance(entry, dict) and _count(entry.get("epoch")) and _real(entry.get("neg_elbo"))
            and all(_real(v) for v in entry.values()))


def problem(t: FrozenTrial) -> str | None:
    """Why vae-search cannot read this trial's figures, or None when it can."""
    a = t.user_attrs
    missing = [key for key in REQUIRED if key not in a]
    if missing:
        return f"it has no {', '.join(map(repr, missing))}"
    for key in (k for k in NUMBERS if k in a):
        x = a[key]
        if not (_real(x) and abs(x) <= LARGEST):  # NaN and the infinities fail the comparison too
            return f"its {key!r} is not a finite number up to {LARGEST:.0e}"
        if key in POSITIVE and x <= 0:
            return f"its {key!r} ({x:.4g}) is not positive"
        if key in NOT_NEGATIVE and x < 0:
            return f"its {key!r} ({x:.4g}) is negative"
    for key in COUNTS:
        if key in a and not _count(a[key]):
            return f"its {key!r} is not a count"
    for key in NAMES:
        if key in a and not isinstance(a[key], str):
            return f"its {key!r} is not a string"
    history = a.get("history")
    if history is not None and not (isinstance(history, list) and all(_epoch(e) for e in history)):
        return "its 'history' is not a list of epochs"
    return None


def readable(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials with vae-search figures (a neg_elbo), every one there and shaped as it writes them."""
    return [t for t in trials if "neg_elbo" in t.user_attrs and problem(t) is None]


def unreadable(trials: Iterable[FrozenTrial]) -> list[str]:
    """"trial 3: its 'params' is not a count", for each trial with figures that are not."""
    return [f"trial {t.number}: {why}" for t in trials if "neg_elbo" in t.user_attrs and (why := problem(t))]


def planned_params(t: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters: its enqueued fixed_params (all a WAITING trial has), with what it
    has suggested so far. fixed_params that are not a mapping (a hand-made study) count as none:
    they ended every proposal of a search in a TypeError."""
    fixed = t.system_attrs.get("fixed_params")
    return {**(fixed if isinstance(fixed, dict) else {}), **t.params}

"""`vae-search best`: the B.2 selection, computed from the numbers rather than written."""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from vae_search.errors import UsageError
from vae_search.model import IMAGE_VALUES
from vae_search.report import pct

BASELINE = {"latent_dim": 8, "base_channels": 32}  # the report's Config 2


@dataclass
class Selection:
    trial: FrozenTrial
    reasons: list[str] = field(default_factory=list)
    others: pd.DataFrame | None = None


def find_baseline(study: optuna.Study, storage: optuna.storages.BaseStorage) -> tuple[FrozenTrial, str] | None:
    """The (latent 8, base 32, beta 1) trial: in this study if it has one, else in study b1."""
    def match(t: FrozenTrial) -> bool:
        return all(t.params.get(k) == v for k, v in BASELINE.items()) and t.params.get("beta") == 1.0

    candidates: list[tuple[FrozenTrial, str]] = [
        (t, study.study_name) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if match(t)
    ]
    if not candidates and study.study_name != "b1" and "b1" in optuna.get_all_study_names(storage=storage):
        b1 = optuna.load_study(study_name="b1", storage=storage)
        candidates = [(t, "b1") for t in b1.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if match(t)]
    return min(candidates, key=lambda c: c[0].user_attrs["neg_elbo"]) if candidates else None


def select_best(study: optuna.Study, storage: optuna.storages.BaseStorage, top: int = 5) -> Selection:
    """The COMPLETE trial with the lowest validation neg_elbo, and why, in numbers."""
    done = sorted(
        (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "neg_elbo" in t.user_attrs),
        key=lambda t: t.user_attrs["neg_elbo"],
    )
    if not done:
        raise UsageError(f"study {study.study_name!r} has no complete trial with vae-search metrics")
    best = done[0]
    a = best.user_attrs
    p = best.params
    reasons = [
        f"config: latent_dim {p['latent_dim']}, base_channels {p['base_channels']}, beta {p['beta']:.4g}, lr {p['lr']:.4g} "
        f"({a['epochs']} epochs, batch {a['batch_size']}, seed {a['seed']})",
        f"quality: val neg_elbo {a['neg_elbo']:.2f}, recon loss {a['recon_loss']:.2f} per image "
        f"(lowest neg_elbo of {len(done)} complete trials)",
    ]
    rows = []
    for t in done[1:top]:
        rows.append({
            "trial": t.number, **t.params, "neg_elbo": t.user_attrs["neg_elbo"],
            "neg_elbo_vs_best_pct": pct(t.user_attrs["neg_elbo"], a["neg_elbo"]),
            "recon_loss": t.user_attrs["recon_loss"], "params": t.user_attrs["params"],
        })
    if rows:
        runner_up = rows[0]
        reasons.append(
            f"margin: the runner-up (trial {runner_up['trial']}) has a {runner_up['neg_elbo_vs_best_pct']:.2f}% higher neg_elbo, "
            f"number {len(rows) + 1} (trial {rows[-1]['trial']}) {rows[-1]['neg_elbo_vs_best_pct']:.2f}% higher"
        )
    base = find_baseline(study, storage)
    if base is not None and not (base[1] == study.study_name and base[0].number == best.number):
        bt, where = base
        b = bt.user_attrs
        reasons.append(
            f"vs B.1 baseline (latent 8, base 32; trial {bt.number} of study {where!r}): neg_elbo {pct(a['neg_elbo'], b['neg_elbo']):+.2f}%, "
            f"recon loss {pct(a['recon_loss'], b['recon_loss']):+.2f}%"
        )
        reasons.append(
            f"size: {a['params']:,} parameters, {pct(a['params'], b['params']):+.1f}% against the baseline's {b['params']:,}"
        )
        reasons.append(f"time: {a['time_s']:.1f} s to train and validate ({pct(a['time_s'], b['time_s']):+.1f}% against the baseline)")
    else:
        reasons.append(f"size: {a['params']:,} parameters")
        reasons.append(f"time: {a['time_s']:.1f} s to train and validate")
    reasons.append(f"KL: {a['kl']:.2f} nats per image (0 would mean posterior collapse)")
    gap = a["val_loss"] - a["train_loss"]
    reasons.append(
        f"over-fitting: train loss {a['train_loss']:.2f}, val loss {a['val_loss']:.2f}, gap {gap:+.2f} ({pct(a['val_loss'], a['train_loss']):+.2f}%)"
    )
    reasons.append(f"compression: {IMAGE_VALUES} values -> {p['latent_dim']} latents, {IMAGE_VALUES / p['latent_dim']:.0f}x")
    return Selection(trial=best, reasons=reasons, others=pd.DataFrame(rows) if rows else None)


def pareto_front(study: optuna.Study) -> pd.DataFrame:
    rows = [
        {"trial": t.number, **t.params, "neg_elbo": t.values[0], "params": int(t.values[1]),
         "recon_loss": t.user_attrs.get("recon_loss"), "time_s": t.user_attrs.get("time_s")}
        for t in study.best_trials
    ]
    return pd.DataFrame(rows).sort_values("params") if rows else pd.DataFrame()

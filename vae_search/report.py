"""Tables (pandas) and figures (plotly) of a study's trials."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.table import Table

from vae_search.definitions import Preset
from vae_search.storage_io import atomic_write


def _pct(measured: float, reported: float) -> float:
    return 100.0 * (measured - reported) / reported


def grid_table(study: optuna.Study, preset: Preset) -> pd.DataFrame:
    """One row per preset point: the measured figures of its COMPLETE trial beside the
    report's, with the difference in percent. Points not yet run have empty measurements."""
    done = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        point = preset.point_for(t.params)
        if point is not None and point.config not in done:
            done[point.config] = t
    rows = []
    for p in preset.points:
        t = done.get(p.config)
        a = t.user_attrs if t else {}
        r = p.report
        row = {
            "config": p.config,
            "latent_dim": p.params["latent_dim"],
            "base_channels": p.params["base_channels"],
            "trial": t.number if t else None,
        }
        for key in ("val_loss", "recon_loss", "time_s", "params"):
            row[key] = a.get(key)
            row[f"{key}_report"] = r.get(key)
            row[f"{key}_diff_pct"] = _pct(a[key], r[key]) if key in a and r.get(key) else None
        row["kl"] = a.get("kl")
        rows.append(row)
    return pd.DataFrame(rows)


def grid_rich_table(df: pd.DataFrame, title: str) -> Table:
    table = Table(title=title)
    for col in ("config", "latent", "base ch", "val loss", "report", "diff", "recon loss", "report", "diff", "KL", "time s", "report", "params", "report"):
        table.add_column(col, justify="right")

    def f(x: object, fmt: str) -> str:
        return "-" if x is None or pd.isna(x) else format(x, fmt)

    for r in df.to_dict("records"):
        table.add_row(
            str(r["config"]), str(r["latent_dim"]), str(r["base_channels"]),
            f(r["val_loss"], ".2f"), f(r["val_loss_report"], ".2f"), f(r["val_loss_diff_pct"], "+.2f") + "%",
            f(r["recon_loss"], ".2f"), f(r["recon_loss_report"], ".2f"), f(r["recon_loss_diff_pct"], "+.2f") + "%",
            f(r["kl"], ".2f"), f(r["time_s"], ".1f"), f(r["time_s_report"], ".1f"),
            f(r["params"], ",.0f"), f(r["params_report"], ",.0f"),
        )
    return table


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write(Path(path), lambda f: f.write(df.to_csv(index=False).encode()))

"""Tables (pandas) and figures (plotly) of a study's trials."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.table import Table

from vae_search.definitions import Preset
from vae_search.storage_io import atomic_write


def pct(measured: float, reported: float) -> float:
    """Difference of `measured` from `reported`, in percent of `reported`."""
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
            row[f"{key}_diff_pct"] = pct(a[key], r[key]) if key in a and r.get(key) else None
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


# ---------------------------------------------------------------- `vae-search report`

_DROP_ATTRS = ("history",)  # a list per trial: drawn as learning curves, not a CSV column


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Trials with their params and user attributes, without Optuna's internal columns."""
    df = study.trials_dataframe(attrs=("number", "state", "value" if len(study.directions) == 1 else "values",
                                       "params", "user_attrs", "duration"))
    df = df.drop(columns=[c for c in df.columns if c.removeprefix("user_attrs_") in _DROP_ATTRS], errors="ignore")
    df.columns = [c.removeprefix("params_").removeprefix("user_attrs_") for c in df.columns]
    if "duration" in df:
        df["duration"] = df["duration"].dt.total_seconds()
    return df


def markdown(df: pd.DataFrame) -> str:
    """A markdown table with integers as integers and floats to six significant digits.
    (pandas' to_markdown hands tabulate numpy scalars, which it prints as floats.)"""
    from tabulate import tabulate

    rows = df.astype(object).where(df.notna(), None).values.tolist()
    rows = [[v.item() if hasattr(v, "item") else v for v in row] for row in rows]
    return tabulate(rows, headers=list(df.columns), tablefmt="pipe", floatfmt=".6g", intfmt=",", missingval="")


def markdown_table(df: pd.DataFrame) -> str:
    cols = [c for c in ("number", "state", "latent_dim", "base_channels", "beta", "lr", "neg_elbo", "recon_loss", "kl",
                        "val_loss", "params", "time_s", "epochs_run") if c in df]
    return markdown(df[cols])


def figures(study: optuna.Study) -> dict[str, plotly.graph_objects.Figure]:  # noqa: F821
    """The study's plotly figures by file stem; those a study cannot have yet are left out."""
    import plotly.express as px
    import plotly.graph_objects as go
    from optuna import visualization as vis

    multi = len(study.directions) > 1
    target = {"target": (lambda t: t.values[0]), "target_name": "neg_elbo"} if multi else {"target_name": "neg_elbo"}
    out: dict[str, go.Figure] = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        out["history"] = vis.plot_optimization_history(study, **target)
        out["parallel_coordinates"] = vis.plot_parallel_coordinate(study, **target)
    if len(complete) >= 2:
        try:
            out["importances"] = vis.plot_param_importances(study, **target)
        except (RuntimeError, ValueError):
            pass  # e.g. every trial had the same parameters (a grid with one varying axis)
    rows = [
        {"trial": t.number, "neg_elbo": t.user_attrs["neg_elbo"], "params": t.user_attrs.get("params"),
         "latent_dim": t.params.get("latent_dim"), "base_channels": t.params.get("base_channels"), "state": t.state.name}
        for t in study.get_trials(deepcopy=False) if "neg_elbo" in t.user_attrs
    ]
    if rows:
        out["neg_elbo_vs_params"] = px.scatter(
            pd.DataFrame(rows), x="params", y="neg_elbo", color="state", hover_data=["trial", "latent_dim", "base_channels"],
            log_x=True, title="validation neg_elbo against parameter count",
        )
    curves = go.Figure()
    for t in study.get_trials(deepcopy=False):
        history = t.user_attrs.get("history") or []
        if history:
            curves.add_trace(go.Scatter(x=[h["epoch"] for h in history], y=[h["neg_elbo"] for h in history],
                                        mode="lines+markers", name=f"trial {t.number} ({t.state.name.lower()})"))
    if curves.data:
        curves.update_layout(title="learning curves: validation neg_elbo per epoch", xaxis_title="epoch", yaxis_title="neg_elbo")
        out["learning_curves"] = curves
    return out


def write_html(fig, path: Path, plotlyjs: str | bool = True) -> Path:
    """An HTML page of the figure. plotly.js is inlined by default (works offline, ~4 MB);
    `plotlyjs="plotly.min.js"` references a copy beside the page instead."""
    return atomic_write(Path(path), lambda f: f.write(fig.to_html(include_plotlyjs=plotlyjs, full_html=True).encode()))


def _write_plotlyjs(out_dir: Path) -> Path:
    from plotly.offline import get_plotlyjs

    return atomic_write(out_dir / "plotly.min.js", lambda f: f.write(get_plotlyjs().encode()))


def write_report(study: optuna.Study, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    written = [
        write_csv(df, out_dir / "trials.csv"),
        atomic_write(out_dir / "trials.md", lambda f: f.write((markdown_table(df) + "\n").encode())),
    ]
    figs = figures(study)
    if figs:  # one copy of plotly.js for all pages, so the folder works offline
        written.append(_write_plotlyjs(out_dir))
    for name, fig in figs.items():
        written.append(write_html(fig, out_dir / f"{name}.html", plotlyjs="plotly.min.js"))
    return written

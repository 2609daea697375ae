"""Tables (pandas) and figures (plotly) of a study's trials; report.py puts them together."""

from __future__ import annotations

import datetime
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.table import Table

if TYPE_CHECKING:
    import plotly.graph_objects as go

from vae_search.atomic import atomic_write
from vae_search.definitions import Preset
from vae_search.names import printable
from vae_search.trial_attrs import readable


def pct(measured: float, reported: float) -> float:
    """Difference of `measured` from `reported`, in percent of `reported`."""
    return 100.0 * (measured - reported) / reported


def grid_table(study: optuna.Study, preset: Preset) -> pd.DataFrame:
    """One row per preset point: the mean (and standard deviation, n) over its COMPLETE
    trials, one per seed, beside the report's figures, with the difference of the mean in
    percent. Points not yet run have empty measurements."""
    runs: dict[int, list] = {p.config: [] for p in preset.points}
    for t in readable(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
        point = preset.point_for(t.params)
        if point is not None and "val_loss" in t.user_attrs:
            runs[point.config].append(t)
    rows = []
    for p in preset.points:
        trials = sorted(runs[p.config], key=lambda t: t.number)
        r = p.report
        row = {
            "config": p.config,
            "latent_dim": p.params["latent_dim"],
            "base_channels": p.params["base_channels"],
            "n": len(trials),
            "trials": " ".join(str(t.number) for t in trials),
        }
        for key in ("val_loss", "recon_loss", "kl", "time_s", "params"):
            values = pd.Series([float(t.user_attrs[key]) for t in trials if key in t.user_attrs], dtype=float)
            row[key] = values.mean() if len(values) else None
            if key != "params":
                row[f"{key}_sd"] = values.std() if len(values) > 1 else None  # pandas: sample sd (n - 1)
            # a preset of one's own may have no report figures: the columns stay, empty
            row[f"{key}_report"] = r.get(key)
            row[f"{key}_diff_pct"] = pct(row[key], r[key]) if key in r and row[key] is not None else None
        row["params_report_text"] = r.get("params_text") or ""  # what the report prints: "285K", not the exact count
        rows.append(row)
    return pd.DataFrame(rows)


def _num(x: object, fmt: str) -> str:
    return "-" if x is None or pd.isna(x) else format(x, fmt)


def mean_sd(mean: object, sd: object, fmt: str = ".2f") -> str:
    """"1845.08 +- 0.61" (or the mean alone for one seed)."""
    return _num(mean, fmt) + ("" if sd is None or pd.isna(sd) else f" +- {format(sd, fmt)}")


GRID_HEADERS = ("config", "latent", "base ch", "n", "val loss", "report", "diff", "recon loss", "report", "diff",
                "KL", "time s", "report", "params (exact)", "report")


def _pct(x: object) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:+.2f}%"


def grid_cells(r: dict) -> list[str]:
    """One row of the grid table as text, the same in the terminal, the report and markdown."""
    return [
        str(r["config"]), str(r["latent_dim"]), str(r["base_channels"]), str(r["n"]),
        mean_sd(r["val_loss"], r["val_loss_sd"]), _num(r["val_loss_report"], ".2f"), _pct(r["val_loss_diff_pct"]),
        mean_sd(r["recon_loss"], r["recon_loss_sd"]), _num(r["recon_loss_report"], ".2f"), _pct(r["recon_loss_diff_pct"]),
        mean_sd(r["kl"], r["kl_sd"]), mean_sd(r["time_s"], r["time_s_sd"], ".1f"), _num(r["time_s_report"], ".1f"),
        _num(r["params"], ",.0f"), r["params_report_text"] or _num(r["params_report"], ",.0f"),
    ]


def grid_rich_table(df: pd.DataFrame, title: str) -> Table:
    table = Table(title=title)
    for col in GRID_HEADERS:
        table.add_column(col, justify="right")
    for r in df.to_dict("records"):
        table.add_row(*grid_cells(r))
    return table


def grid_markdown(df: pd.DataFrame) -> str:
    """The grid table as markdown, in the terminal table's words."""
    from tabulate import tabulate

    rows = [grid_cells(r) for r in df.to_dict("records")]
    return tabulate(rows, headers=GRID_HEADERS, tablefmt="pipe", disable_numparse=True)


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...),
# =cmd|...): the CSV injection OWASP describes, and a study's text (another worker's failure
# reason, an attribute's name) can start so. Such a cell is written with a ' in front.
_FORMULA_START = ("=", "+", "-", "@")


def _inert(value: object) -> object:
    """Text as one printable line (an unquoted carriage return would split the row), never a formula."""
    if not isinstance(value, str):
        return value
    value = printable(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """`df` as CSV: numbers stay numbers; text from a study is made inert for a spreadsheet."""
    safe = df.rename(columns=_inert).map(_inert)
    return atomic_write(Path(path), lambda f: f.write(safe.to_csv(index=False).encode()))


# ---------------------------------------------------------------- `vae-search report`

_DROP_ATTRS = ("history",)  # a list per trial: drawn as learning curves, not a CSV column


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Trials with their params and user attributes, without Optuna's internal columns."""
    df = study.trials_dataframe(attrs=("number", "state", "value" if len(study.directions) == 1 else "values",
                                       "params", "user_attrs", "duration"))
    df = df.drop(columns=[c for c in df.columns if c.removeprefix("user_attrs_") in _DROP_ATTRS], errors="ignore")
    df.columns = [c.removeprefix("params_").removeprefix("user_attrs_") for c in df.columns]
    if "duration" in df:
        # a column of only unfinished trials holds None, not timedeltas, and has no .dt
        df["duration"] = pd.to_timedelta(df["duration"]).dt.total_seconds()
    return df


def markdown(df: pd.DataFrame) -> str:
    """A markdown table with integers as integers and floats to six significant digits.
    (pandas' to_markdown hands tabulate numpy scalars, which it prints as floats.)"""
    from tabulate import tabulate

    rows = df.astype(object).where(df.notna(), None).values.tolist()
    rows = [[_cell(v) for v in row] for row in rows]
    return tabulate(rows, headers=list(df.columns), tablefmt="pipe", floatfmt=".6g", intfmt=",", missingval="")


def _cell(v: object) -> object:
    v = v.item() if hasattr(v, "item") else v
    # An integer past float's range (a study's JSON holds any) shows as inf: tabulate formats a
    # column with a float in it through float(), which raised OverflowError on it.
    return (math.inf if v > 0 else -math.inf) if isinstance(v, int) and abs(v) > sys.float_info.max else v


def markdown_table(df: pd.DataFrame) -> str:
    cols = [c for c in ("number", "state", "latent_dim", "base_channels", "beta", "lr", "neg_elbo", "recon_loss", "kl",
                        "val_loss", "params", "time_s", "epochs_run") if c in df]
    return markdown(df[cols])


def figures(study: optuna.Study, reference: tuple[str, float] | None = None) -> dict[str, go.Figure]:
    """The study's plotly figures by name, in report order; those a study cannot have yet
    are left out; `reference` (label, neg_elbo) is drawn on the time-to-quality figure. Axes say neg_elbo (the study's metric name), never "Objective Value"."""
    import plotly.express as px
    from optuna import visualization as vis
    from optuna.importance import PedAnovaImportanceEvaluator

    multi = len(study.directions) > 1
    target = {"target": (lambda t: t.values[0]), "target_name": "neg_elbo"} if multi else {"target_name": "neg_elbo"}
    out: dict[str, go.Figure] = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        out["history"] = vis.plot_optimization_history(study, **target)  # with the best value so far
        out["history"].update_layout(title="optimisation history: validation neg_elbo and best so far")
    if len(complete) >= 2:
        try:
            # PED-ANOVA, named rather than left to Optuna's default, so that the figure is the
            # dashboard's (optuna_dashboard/_importance.py). Like the dashboard, quiet its warning that a
            # `target` is minimised: ours is neg_elbo, which is.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes the importances")
                out["importances"] = vis.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), **target)
        except (RuntimeError, ValueError, ZeroDivisionError):
            pass  # e.g. every trial had the same parameters (a grid with one varying axis)
    if multi and complete:
        out["pareto_front"] = vis.plot_pareto_front(study, target_names=["neg_elbo", "params"])
    rows = [
        {"trial": t.number, "neg_elbo": t.user_attrs["neg_elbo"], "params": t.user_attrs.get("params"),
         "latent_dim": t.params.get("latent_dim"), "base_channels": t.params.get("base_channels"), "state": t.state.name}
        for t in readable(study.get_trials(deepcopy=False))
    ]
    if rows:
        out["neg_elbo_vs_params"] = px.scatter(
            pd.DataFrame(rows), x="params", y="neg_elbo", color="state", hover_data=["trial", "latent_dim", "base_channels"],
            log_x=True, title="validation neg_elbo against parameter count (pruned: at the epoch it stopped)",
        )
    if complete:
        out["parallel_coordinates"] = vis.plot_parallel_coordinate(study, **target)
    curves = learning_curves(study)
    if curves.data:
        out["learning_curves"] = curves
    ttq = time_to_quality(study, reference)
    if ttq.data:
        out["time_to_quality"] = ttq
    return out


def learning_curves(study: optuna.Study) -> go.Figure:
    """Validation neg_elbo per epoch of every trial that has one; pruned trials dashed."""
    import plotly.graph_objects as go

    curves = go.Figure()
    for t in readable(study.get_trials(deepcopy=False)):
        history = t.user_attrs.get("history") or []
        if history:
            curves.add_trace(go.Scatter(
                x=[h["epoch"] for h in history], y=[h["neg_elbo"] for h in history], mode="lines+markers",
                name=f"trial {t.number} ({t.state.name.lower()})",
                line={"dash": "dot" if t.state == TrialState.PRUNED else "solid"}))
    curves.update_layout(title="learning curves: validation neg_elbo per epoch (pruned trials dotted)",
                         xaxis_title="epoch", yaxis_title="neg_elbo")
    return curves


def running_clock(spans: list[tuple[datetime.datetime, datetime.datetime]]) -> Callable[[datetime.datetime], float]:
    """Seconds during which at least one of `spans` (start, end) was running, up to a moment:
    the union of the spans, so time spent across several sessions adds up and the gaps
    between them (nothing running) do not count. `clock(last end)` is the wall time in all."""
    merged: list[list[datetime.datetime]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])

    def clock(moment: datetime.datetime) -> float:
        return sum((min(b, moment) - a).total_seconds() for a, b in merged if a < moment)

    return clock


def time_to_quality(study: optuna.Study, reference: tuple[str, float] | None = None) -> go.Figure:
    """Best validation neg_elbo so far against the hours the study has had trials running
    (all workers together; the gaps between sessions cut out, so a search resumed over days
    reads as one run), from the first trial's start to the last trial's end. `reference`
    (label, value) draws a horizontal line, e.g. the report's best."""
    import plotly.graph_objects as go

    trials = study.get_trials(deepcopy=False)  # read once: a study on a server is a query per call
    spans = [(t.datetime_start, t.datetime_complete) for t in trials
             if t.datetime_start is not None and t.datetime_complete is not None]
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete and t.values),
                  key=lambda t: t.datetime_complete)
    fig = go.Figure()
    if not done:
        return fig
    clock = running_clock(spans)
    hours, best, labels, current = [], [], [], float("inf")
    for t in done:
        current = min(current, t.values[0])
        hours.append(clock(t.datetime_complete) / 3600)
        best.append(current)
        labels.append(f"trial {t.number}: {t.values[0]:.2f}")
    end = clock(max(b for _, b in spans)) / 3600
    if end > hours[-1]:  # the trials after the last improvement: the line runs on to the end
        hours.append(end)
        best.append(current)
        labels.append("last trial ended")
    fig.add_trace(go.Scatter(x=hours, y=best, mode="lines+markers", line_shape="hv", text=labels, name="best so far"))
    if reference is not None:
        fig.add_hline(y=reference[1], line_dash="dash", annotation_text=f"{reference[0]}: {reference[1]:.2f}",
                      annotation_position="top right")
    fig.update_layout(title="time to quality: best validation neg_elbo so far against hours with trials running",
                      xaxis_title="hours with trials running (all workers; gaps between sessions left out)",
                      yaxis_title="best neg_elbo so far")
    return fig

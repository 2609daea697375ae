"""`vae-search report`: one document per study that reproduces the seed report from the
stored studies, as report.html (one file that opens offline: plotly.js inlined once, images
embedded) and report.md with its PNGs beside it.

    B.1  the grid table beside the report's figures (mean +- sd over seeds), parameters, time
    B.2  the selection and its computed reasons (the text of `vae-search best`)
    B.3  the chosen trial's latent interpolation: random pairs (the report's) and image pairs
    and, for a search: history with best-so-far, parameter importances, neg_elbo against
    parameters (the Pareto front for two objectives), learning curves, time to quality.

The PNGs of plotly figures come from kaleido, which drives a Chrome or Chromium; without one
the markdown lists the figures by name and report.html still has them all.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch

from vae_search.atomic import atomic_write
from vae_search.errors import UsageError
from vae_search.study import recorded
from vae_search.tables import figures, grid_markdown, grid_table, markdown, markdown_table, trials_frame, write_csv
from vae_search.ui import err

FIGURE_TEXT = {
    "history": "Optimisation history: each trial's validation neg_elbo and the best so far.",
    "importances": "Parameter importances (PED-ANOVA over the complete trials: what matters to reach the best tenth, as optuna-dashboard computes them).",
    "pareto_front": "Pareto front: validation neg_elbo against parameter count.",
    "neg_elbo_vs_params": "Validation neg_elbo against parameter count, pruned trials at the epoch they stopped.",
    "parallel_coordinates": "Parallel coordinates of the parameters, coloured by neg_elbo.",
    "learning_curves": "Learning curves: validation neg_elbo after each epoch, pruned trials included.",
    "time_to_quality": "Time to quality: the best neg_elbo so far against the hours with trials running (gaps between sessions left out), with the report's best where the budget is the report's.",
}


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # markdown paragraphs / list items, before the table
    table_md: str | None = None
    after: list[str] = field(default_factory=list)  # paragraphs / list items after the table
    images: list[tuple[str, bytes, str]] = field(default_factory=list)  # (file name, PNG bytes, caption)
    figures: list[tuple[str, object, str]] = field(default_factory=list)  # (name, plotly figure, caption)


# ---------------------------------------------------------------- the parts


def _b1(study: optuna.Study, storage: optuna.storages.BaseStorage, given: str | None) -> Section | None:
    """The grid table: this study's if it is a grid (with the preset `given`, else its own),
    else study b1's from the same storage."""
    from vae_search.definitions import grid_preset, preset_of
    from vae_search.verdicts import grid_verdicts

    grid = study
    if study.user_attrs.get("kind") != "grid":
        if "b1" not in optuna.get_all_study_names(storage=storage):
            return None
        grid = optuna.load_study(study_name="b1", storage=storage)
        preset = preset_of(grid.user_attrs)
    else:
        preset = grid_preset(grid.user_attrs, given)
    df = grid_table(grid, preset)
    s = Section(f"B.1 {preset.title.split(':', 1)[-1].strip().capitalize()} (study {grid.study_name!r})")
    budget = recorded(grid, "budget") or {}
    s.text.append(f"{preset.epochs if not budget else budget.get('epochs')} epochs, batch {budget.get('batch_size', preset.batch_size)}, "
                  f"precision {budget.get('precision', 'fp32')}; values are mean +- sd over the seeds (n), beside the "
                  "report's; parameter counts are exact.")
    s.table_md = grid_markdown(df)
    verdicts = grid_verdicts(grid, preset)
    if verdicts:
        s.after.append("**The report's B.2 statements, computed** (Welch's t-test at 5% over seeds):")
        s.after += [f"- {v}" for v in verdicts]
    return s


def _b2(study: optuna.Study, storage: optuna.storages.BaseStorage,
        given: str | None) -> tuple[Section, optuna.trial.FrozenTrial | None]:
    from vae_search.definitions import grid_preset
    from vae_search.selection import choose_trial, pareto_front, select_best

    s = Section("B.2 Final architecture selection")
    if len(study.directions) > 1:
        front = pareto_front(study)
        s.text.append(f"Two objectives: the Pareto front of neg_elbo against parameters, {len(front)} trials; "
                      "B.3 draws its lowest neg_elbo, the trial `interpolate --trial best` draws.")
        s.table_md = markdown(front)
        try:
            return s, choose_trial(study, "best")
        except UsageError:  # no weights: B.3 says there is no trial to draw
            return s, None
    preset = grid_preset(study.user_attrs, given) if study.user_attrs.get("kind") == "grid" else None
    try:
        sel = select_best(study, storage, preset=preset)
    except UsageError as e:
        s.text.append(str(e))
        return s, None
    s.text.append(f"**{sel.headline}**")
    s.text += [f"- {r}" for r in sel.reasons]
    if sel.others is not None:
        s.text.append("Other top configurations:")
        s.table_md = markdown(sel.others)
    return s, sel.trial


def _b3(study: optuna.Study, trial, artifact_dir: Path, images: torch.Tensor | None) -> Section:
    from torchvision.utils import save_image

    from vae_search.artifacts import artifact_store, load_model
    from vae_search.images import interpolation_frames
    from vae_search.selection import choose_trial

    s = Section("B.3 Latent space interpolation")
    if trial is None:
        s.text.append("No chosen trial (no complete trial with weights yet).")
        return s
    try:
        choose_trial(study, str(trial.number))  # a copy that left these weights out says so, naming those it kept
        model = load_model(artifact_store(artifact_dir, create=False), trial)
    except UsageError as e:
        s.text.append(f"Weights of trial {trial.number} not available: {e}")
        return s
    c = model.config
    for mode, test in (("random", None), ("images", images)):
        if mode == "images" and test is None:
            recorded = trial.user_attrs.get("data_source")
            s.text.append("Interpolation between test images: pass --data-dir (or set VAE_SEARCH_DATA)"
                          + (f"; the trial recorded its data as {recorded!r}, which a report never opens on the "
                             "study's word" if recorded else "") + ".")
            continue
        frames = interpolation_frames(model, rows=8, steps=10, mode=mode, seed=0, images_u8=test)
        buf = io.BytesIO()
        save_image(frames.flatten(0, 1), buf, format="png", nrow=10, padding=2)
        what = ("between pairs of random latent vectors z ~ N(0, I), as in the report's Figure 1" if mode == "random"
                else "between the encodings (posterior means) of pairs of test images")
        s.images.append((f"interpolation-{mode}.png", buf.getvalue(),
                         f"Trial {trial.number} (latent {c.latent_dim}, base {c.base_channels}): linear interpolation "
                         f"{what}; 8 pairs, 10 steps."))
    return s


def _trial_images(study: optuna.Study, trial, artifact_dir: Path) -> list[tuple[str, bytes, str]]:
    """The chosen trial's stored reconstructions and prior samples."""
    from vae_search.artifacts import artifact_store

    try:
        store, out = artifact_store(artifact_dir, create=False), []
    except UsageError:  # no artifact folder: the report goes without the pictures
        return []
    for attr, name, caption in (("reconstructions_artifact_id", "reconstructions.png", "Eight test images (top) and their reconstructions."),
                                ("samples_artifact_id", "samples.png", "Sixteen samples from the prior.")):
        aid = trial.user_attrs.get(attr)
        if not aid:
            continue
        try:
            with store.open_reader(aid) as f:
                out.append((name, f.read(), f"Trial {trial.number}: {caption}"))
        except Exception:  # a missing artifact only leaves the picture out
            continue
    return out


def batch_text(study: optuna.Study, budget: dict) -> str:
    """The batch size a search trained with: a space that searches (or fixes) batch_size
    overrides the study's --batch-size in every trial, which the report said instead."""
    trials = study.get_trials(deepcopy=False)
    searched = sorted({str(t.params["batch_size"]) for t in trials if "batch_size" in t.params}, key=lambda b: (len(b), b))
    if searched:
        return f"batch {', '.join(searched)} (a parameter of the space)"
    return f"batch {budget.get('batch_size', '?')}"


def _search(study: optuna.Study) -> Section | None:
    from vae_search.selection import report_reference

    if study.user_attrs.get("kind") == "grid":
        return None
    s = Section(f"The search (study {study.study_name!r})")
    frame = trials_frame(study)  # one read of the trials (a deep copy each was 0.8 s of 3,000 trials' report)
    states = frame["state"].value_counts().to_dict() if len(frame) else {}
    budget = recorded(study, "budget") or {}
    s.text.append(
        f"{len(frame)} trials ({', '.join(f'{n} {k.lower()}' for k, n in sorted(states.items()))}); budget "
        f"{budget.get('epochs', '?')} epochs, {batch_text(study, budget)}, precision {budget.get('precision', 'fp32')}."
    )
    for name, fig in figures(study, report_reference(study)).items():
        s.figures.append((name, fig, FIGURE_TEXT.get(name, name)))
    return s


# ---------------------------------------------------------------- writing


def write_report(study: optuna.Study, storage: optuna.storages.BaseStorage, artifact_dir: Path, out_dir: Path,
                 images: torch.Tensor | None = None, preset: str | None = None) -> list[Path]:
    """Write report.html, report.md with PNGs, trials.csv and trials.md into `out_dir`; a grid
    study's table with `preset` (a name or a file) where its own is not a packaged one."""

    out_dir.mkdir(parents=True, exist_ok=True)
    b2, chosen = _b2(study, storage, preset)
    b3 = _b3(study, chosen, artifact_dir, images)
    if chosen is not None:
        b3.images += _trial_images(study, chosen, artifact_dir)
    sections = [s for s in (_b1(study, storage, preset), b2, b3, _search(study)) if s]
    title = f"vae-search report: study {study.study_name!r}"

    df = trials_frame(study)
    written = [write_csv(df, out_dir / "trials.csv"),
               atomic_write(out_dir / "trials.md", lambda f: f.write((markdown_table(df) + "\n").encode()))]
    pngs = _write_pngs(sections, out_dir)
    written += pngs
    written.append(atomic_write(out_dir / "report.md", lambda f: f.write(_markdown(title, sections, pngs).encode())))
    written.append(atomic_write(out_dir / "report.html", lambda f: f.write(_html(title, sections).encode())))
    return written


def _write_pngs(sections: list[Section], out_dir: Path) -> list[Path]:
    """Every picture and figure as a PNG beside report.md; figures through kaleido, all in
    one browser session."""
    import plotly.io as pio

    written = []
    for s in sections:
        for name, data, _ in s.images:
            written.append(atomic_write(out_dir / name, lambda f, d=data: f.write(d)))
    figs = [(name, fig) for s in sections for name, fig, _ in s.figures]
    if figs:
        paths = [out_dir / f"{name}.png" for name, _ in figs]
        try:
            pio.write_images([fig for _, fig in figs], paths, width=1000, height=560)
            written += paths
        except Exception as e:  # kaleido needs Chrome/Chromium
            err.print(f"note: figures not written as PNG ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                      "they need Chrome or Chromium for kaleido (`plotly_get_chrome`, or apt-get install chromium); "
                      "report.html has them all", highlight=False)
    return written


def _markdown(title: str, sections: list[Section], pngs: list[Path]) -> str:
    have = {p.name for p in pngs}
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += _md_paragraphs(s.text)
        if s.table_md:
            lines += [s.table_md, ""]
        lines += _md_paragraphs(s.after)
        for name, _, caption in s.images:
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        for name, _, caption in s.figures:
            if f"{name}.png" in have:
                lines += [f"![{caption}]({name}.png)", "", f"*{caption}*", ""]
            else:
                lines += [f"*{caption}* (in report.html)", ""]
    return "\n".join(lines)


def _md_paragraphs(text: list[str]) -> list[str]:
    """Paragraphs separated by blank lines; consecutive "- " items as one list."""
    lines: list[str] = []
    for i, t in enumerate(text):
        lines.append(t)
        if not t.startswith("- ") or i + 1 == len(text) or not text[i + 1].startswith("- "):
            lines.append("")
    return lines


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}figure{margin:1.5em 0}figcaption{color:#555;font-size:0.9em}img{image-rendering:pixelated;max-width:100%}
li{margin:0.2em 0}"""


def _html(title: str, sections: list[Section]) -> str:
    from plotly.offline import get_plotlyjs

    # plotly.js (about 4.5 MB) once, and only where a figure needs it (a grid's report has none)
    script = f"<script>{get_plotlyjs()}</script>" if any(s.figures for s in sections) else ""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style>{script}</head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += _html_paragraphs(s.text)
        if s.table_md:
            parts.append(_md_table_html(s.table_md))
        parts += _html_paragraphs(s.after)
        for name, data, caption in s.images:
            src = "data:image/png;base64," + base64.b64encode(data).decode()
            width = "" if "interpolation" not in name else " width='680'"
            parts.append(f"<figure><img src='{src}' alt='{html.escape(name)}'{width}>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        for name, fig, caption in s.figures:
            parts.append(f"<figure>{fig.to_html(full_html=False, include_plotlyjs=False, div_id=name)}"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_paragraphs(text: list[str]) -> list[str]:
    parts: list[str] = []
    items: list[str] = []
    for t in text:
        if t.startswith("- "):
            items.append(f"<li>{_inline(t[2:])}</li>")
            continue
        if items:
            parts.append("<ul>" + "".join(items) + "</ul>")
            items = []
        parts.append(f"<p>{_inline(t)}</p>")
    if items:
        parts.append("<ul>" + "".join(items) + "</ul>")
    return parts


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in an otherwise escaped line."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _md_table_html(table: str) -> str:
    """A pipe table (as tabulate writes it) as an HTML table."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.strip().splitlines()]
    head, body = rows[0], [r for r in rows[2:]]
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")

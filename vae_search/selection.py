"""`vae-search best`: the B.2 selection, computed from the numbers rather than written.

A candidate is one configuration with all its runs: a search trial with its confirmation
runs (study NAME-confirm, `vae-search confirm`), or a grid point with all its seeds.
Candidates rank by their mean validation neg_elbo. Whether the winner's margin is real or
seed noise is Welch's t-test (two-sided, 5%) on the runs' neg_elbo (noise.py): with one run a
side, the seed noise measured elsewhere in the storage judges it, or the text says it cannot
be told. The report's B.2 statements about the grid are tested in verdicts.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import mean, stdev

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from vae_search.artifacts import WEIGHTS_ATTR, trials_with_weights
from vae_search.definitions import GridPoint, Preset, load_preset, packaged_dir
from vae_search.errors import UsageError
from vae_search.names import shell_word
from vae_search.noise import (
    ADD_SEEDS,
    ALPHA,
    MOST_SEEDS,
    Noise,
    noise_words,
    seeds_to_tell,
    single_run_verdict,
    welch_p_of,
)
from vae_search.notes import update_note
from vae_search.storages import storage_of, trial_handle, trial_id_of
from vae_search.study import CONFIRM_SUFFIX, confirm_study_name, recorded
from vae_search.tables import pct
from vae_search.trial_attrs import readable
from vae_search.ui import seconds

REFERENCE_PRESET = "b1"  # the report whose baseline and figures a search is compared with
IMAGE_VALUES = 3 * 32 * 32  # a CIFAR-10 image: what the latents compress


# ---------------------------------------------------------------- candidates: configurations with their runs


@dataclass
class Candidate:
    trial: FrozenTrial  # the one that names it: the search trial, or a grid point's first seed
    runs: list[FrozenTrial]  # every complete run of these parameters (seeds), `trial` included
    label: str = ""  # "trial 12" or "config 3"

    def values(self, key: str = "neg_elbo") -> list[float]:
        return [float(t.user_attrs[key]) for t in self.runs if key in t.user_attrs]

    def mean(self, key: str = "neg_elbo") -> float:
        return mean(self.values(key))

    def sd(self, key: str = "neg_elbo") -> float:
        v = self.values(key)
        return stdev(v) if len(v) > 1 else float("nan")

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def params(self) -> dict:
        return self.trial.params

    def text(self, key: str = "neg_elbo", digits: int = 2) -> str:
        """"1845.08" for one run, "1845.08 +- 0.61 (n = 3)" for several."""
        if self.n == 1:
            return f"{self.mean(key):.{digits}f}"
        return f"{self.mean(key):.{digits}f} +- {self.sd(key):.{digits}f} (n = {self.n})"


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return readable(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _params_key(t: FrozenTrial) -> tuple:
    return tuple(sorted(t.params.items()))


def candidates(study: optuna.Study, preset: Preset | None = None) -> list[Candidate]:
    """The study's configurations, best mean neg_elbo first. A grid groups its trials by
    parameters (one per seed); a search pairs each trial with its confirmation runs."""
    done = _complete(study)
    out: list[Candidate] = []
    if study.user_attrs.get("kind") == "grid":
        groups: dict[tuple, list[FrozenTrial]] = {}
        for t in done:
            groups.setdefault(_params_key(t), []).append(t)
        for runs in groups.values():
            # the first seed names the point (the weights a shared copy keeps, benchmarks/keep.py), not the
            # first trial number: a retried seed 0 comes after seed 1's trial
            runs.sort(key=lambda t: (t.user_attrs.get("seed", 0), t.number))
            point = preset.point_for(runs[0].params) if preset else None
            label = f"config {point.config}" if point else f"trial {runs[0].number}"
            out.append(Candidate(runs[0], runs, label))
    else:
        confirmations = _confirmations(study)
        for t in done:
            out.append(Candidate(t, [t, *confirmations.get(t.number, [])], f"trial {t.number}"))
    return sorted(out, key=lambda c: (c.mean(), c.trial.number))


def _confirmations(study: optuna.Study) -> dict[int, list[FrozenTrial]]:
    """Complete confirmation runs of each search trial, by the trial's number."""
    name = confirm_study_name(study.study_name)
    if study.study_name.endswith(CONFIRM_SUFFIX) or name not in optuna.get_all_study_names(storage=storage_of(study)):
        return {}
    out: dict[int, list[FrozenTrial]] = {}
    for t in _complete(optuna.load_study(study_name=name, storage=storage_of(study))):
        if "source_trial" in t.user_attrs:  # a count where present (trial_attrs checked it)
            out.setdefault(t.user_attrs["source_trial"], []).append(t)
    return out


# ---------------------------------------------------------------- margins between candidates, against seed noise


def welch_p(a: Candidate, b: Candidate, key: str = "neg_elbo") -> float | None:
    """noise.welch_p_of the two candidates' runs."""
    return welch_p_of(a.values(key), b.values(key))


def compare(winner: Candidate, other: Candidate, key: str = "neg_elbo", noise: Noise | None = None,
            settle: Callable[[int], str] | None = None) -> str:
    """The winner's margin over another candidate, in plain words with the test. Where a side
    has one run, the seed noise measured elsewhere in the storage (`noise`) judges it; tied
    candidates are named smaller and faster first, with the command that would settle it
    (`settle(n)`: the command that gives each n runs), or why none would."""
    margin = pct(other.mean(key), winner.mean(key))  # how much higher the other is, in % of the winner (as in "others")
    p = welch_p(winner, other, key)
    n = seeds_to_settle(winner, other, key)
    command = settle(n) if settle is not None and n is not None else ""
    if p is None:
        runs = "one run each" if winner.n == other.n == 1 else f"{winner.n} and {other.n} runs"
        diff = other.mean(key) - winner.mean(key)
        if noise is not None and abs(diff) < noise.band(winner.n, other.n):
            return (f"{_tied_pair(winner, other)} are tied: {margin:.2f}% apart with {runs}, "
                    f"{single_run_verdict(diff, noise, winner.n, other.n)}; {_lighter(winner, other)}"
                    + (f"; {command} would settle it" if command else ""))
        if noise is not None:
            return (f"{winner.label} is best by {margin:.2f}% over {other.label} ({runs}), "
                    f"{single_run_verdict(diff, noise, winner.n, other.n)}")
        return (f"{winner.label} is best by {margin:.2f}% over {other.label}, but with {runs} the margin cannot be "
                f"told from seed noise ({command + ' adds seeds' if command else ADD_SEEDS})")
    if p < ALPHA:
        return (f"{winner.label} is best by {margin:.2f}% over {other.label} (beyond seed noise: Welch's t-test "
                f"p = {p:.3g}, n = {winner.n} and {other.n})")
    tied = (f"{_tied_pair(winner, other)} are tied within seed noise (Welch's t-test p = {p:.2g}, n = {winner.n} "
            f"and {other.n}, {margin:.2f}% apart); {_lighter(winner, other)}")
    if n is None:
        return tied + f"; a difference this small would need more than {MOST_SEEDS} runs each to tell"
    return tied + f"; about {n} runs each would tell a difference this size" + (f": {command}" if command else "")


def seeds_to_settle(a: Candidate, b: Candidate, key: str = "neg_elbo") -> int | None:
    """Runs per candidate that would settle a tie. Where one has a single run: three (or as
    many as the better covered one has), so that Welch's test can judge them. Where both have
    several and the test found no difference: as many as would tell a difference the size of
    the observed one with the observed spread (noise.seeds_to_tell), at least one more each;
    None where that is more than MOST_SEEDS (two more each would not settle the search's 0.04%
    tie, which needs some sixty)."""
    va, vb = a.values(key), b.values(key)
    if min(len(va), len(vb)) < 2:
        return max(3, a.n, b.n)
    n = seeds_to_tell(va, vb)
    if n is None:  # no difference, or no spread, to go on
        return max(a.n, b.n) + 2
    return None if n > MOST_SEEDS else max(n, a.n + 1, b.n + 1)


def confirm_command(study: optuna.Study, a: Candidate, b: Candidate, seeds: int) -> str:
    """The `confirm` that runs exactly these two search candidates again, to `seeds` runs each."""
    pair = " ".join(f"--trial {c.trial.number}" for c in (a, b))
    return f"`vae-search confirm --study-name {shell_word(study.study_name)} {pair} --seeds {seeds}`"


def grid_seeds_command(study: optuna.Study, preset: Preset, seeds: int, ranked: list[Candidate]) -> str:
    """The `grid` that gives every point of this grid study (its candidates `ranked`) `seeds`
    seeds (`confirm` reads searches only). A preset of the user's own is named by its file, as
    it was given."""
    packaged = preset.path is None or preset.path.parent == packaged_dir()
    name = preset.name if packaged else shell_word(str(preset.path))
    study_opt = "" if study.study_name == preset.name else f" --study-name {shell_word(study.study_name)}"
    # --seeds N runs seeds --seed ... --seed+N-1: from the grid's first seed, so that N is what each point then has
    # (the study's budget and subset it keeps without being told, run._kept_budget)
    first = min((int(r.user_attrs.get("seed", 0)) for c in ranked for r in c.runs), default=0)
    seed_opt = f" --seed {first}" if first else ""
    return f"`vae-search grid --preset {name}{study_opt}{seed_opt} --seeds {seeds}`"


def _tied_pair(a: Candidate, b: Candidate) -> str:
    """"trial 46 and trial 44", the smaller (then faster) one first."""
    first, second = sorted((a, b), key=lambda c: (int(c.trial.user_attrs.get("params", 0)), c.mean("time_s")))
    return f"{first.label} and {second.label}"


def _lighter(a: Candidate, b: Candidate) -> str:
    """Which of two tied candidates is smaller and which is faster; "both" where they are the
    same as shown (two trials of one architecture have the same parameters, and times that
    round alike once read "faster (11 s against 11 s)")."""
    size = {c.label: int(c.trial.user_attrs.get("params", 0)) for c in (a, b)}
    time_s = {c.label: c.mean("time_s") for c in (a, b)}
    smaller, faster = min(size, key=size.get), min(time_s, key=time_s.get)
    sizes = f"{size[smaller]:,} against {max(size.values()):,} parameters"
    times = f"{seconds(time_s[faster])} against {seconds(max(time_s.values()))}"
    same_size, same_time = len(set(size.values())) == 1, len({seconds(t) for t in time_s.values()}) == 1
    if same_size and same_time:
        return f"both have {size[smaller]:,} parameters and take {seconds(time_s[faster])}"
    if same_size:
        return f"both have {size[smaller]:,} parameters; {faster} is faster ({times})"
    if same_time:
        return f"{smaller} is smaller ({sizes}); both take {seconds(time_s[faster])}"
    if smaller == faster:
        return f"{smaller} is smaller and faster ({size[smaller]:,} parameters, {seconds(time_s[smaller])})"
    return f"{smaller} is smaller ({sizes}), {faster} faster ({times})"


def train_val_gaps(c: Candidate) -> list[float] | None:
    """Each run's over-fitting gap: val loss minus the final model's loss on as many training
    images (train.py), or None where a run predates that measurement."""
    if not all("train_eval_loss" in t.user_attrs for t in c.runs):
        return None
    return [float(t.user_attrs["val_loss"]) - float(t.user_attrs["train_eval_loss"]) for t in c.runs]


def beyond_noise(a: Candidate, b: Candidate, key: str) -> str:
    """"beyond seed noise, p = 0.01" / "within seed noise, p = 0.4" / "one seed: noise unknown"."""
    return noise_words(welch_p(a, b, key))


def pooled_noise(study: optuna.Study, ranked: list[Candidate], storage: optuna.storages.BaseStorage) -> Noise | None:
    """The seed noise measured anywhere in the storage: this study's candidates with several
    runs (`ranked`, already computed), then the b1 grid's points with several seeds."""
    groups = [(study.study_name, c.values()) for c in ranked]
    if study.study_name != "b1" and "b1" in optuna.get_all_study_names(storage=storage):
        grid = optuna.load_study(study_name="b1", storage=storage)
        if grid.user_attrs.get("kind") == "grid":
            groups += [("b1", c.values()) for c in candidates(grid, _preset_of(grid))]
    return Noise.pooled(groups)


def _verdict(a: Candidate, b: Candidate, noise: Noise | None) -> str:
    """Welch's t-test where both sides have several runs, else the noise measured elsewhere."""
    if a.n > 1 and b.n > 1:
        return beyond_noise(a, b, "neg_elbo")
    return single_run_verdict(a.mean() - b.mean(), noise, a.n, b.n)


# ---------------------------------------------------------------- the selection


@dataclass
class Selection:
    trial: FrozenTrial
    candidate: Candidate
    headline: str
    reasons: list[str] = field(default_factory=list)
    others: pd.DataFrame | None = None


def _preset_of(study: optuna.Study) -> Preset | None:
    """A grid study's preset (its candidates are then named by the report's config numbers)."""
    if study.user_attrs.get("kind") != "grid":
        return None
    from vae_search.definitions import preset_of

    try:
        return preset_of(study.user_attrs)
    except UsageError:
        return None


def find_baseline(study: optuna.Study, storage: optuna.storages.BaseStorage) -> tuple[Candidate, str] | None:
    """The report's baseline configuration (b1.toml's `baseline`: config 2, latent 8, base 32,
    beta 1): in this study if it has one, else in study b1."""
    ref = load_preset(REFERENCE_PRESET)
    point = next(p for p in ref.points if p.config == ref.baseline)
    baseline = {k: point.params[k] for k in ("latent_dim", "base_channels", "beta")}

    def match(c: Candidate) -> bool:
        return all(c.params.get(k) == v for k, v in baseline.items())

    found = [(c, study.study_name) for c in candidates(study, _preset_of(study)) if match(c)]
    if not found and study.study_name != "b1" and "b1" in optuna.get_all_study_names(storage=storage):
        b1 = optuna.load_study(study_name="b1", storage=storage)
        found = [(c, "b1") for c in candidates(b1, _preset_of(b1)) if match(c)]
    return min(found, key=lambda f: f[0].mean()) if found else None


def select_best(study: optuna.Study, storage: optuna.storages.BaseStorage, top: int = 5, preset: Preset | None = None) -> Selection:
    """The candidate with the lowest mean validation neg_elbo, and why, in numbers."""
    ranked = candidates(study, preset)
    if not ranked:
        raise UsageError(f"study {study.study_name!r} has no complete trial with vae-search metrics")
    best = ranked[0]
    t, a, p = best.trial, best.trial.user_attrs, best.params
    over = f" ({best.n} seeds)" if best.n > 1 else ""
    headline = f"best of study {study.study_name!r}: {best.label}{over}"
    extra = "".join(f", {k} {p[k]}" for k in ("batch_size", "lr_schedule") if k in p)
    seeds = sorted(int(r.user_attrs.get("seed", 0)) for r in best.runs)
    reasons = [
        f"config: latent_dim {p['latent_dim']}, base_channels {p['base_channels']}, beta {p['beta']:.4g}, lr {p['lr']:.4g}"
        f"{extra} ({a['epochs']} epochs, batch {a['batch_size']}, seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))})",
        f"quality: val neg_elbo {best.text()}, recon loss {best.text('recon_loss')} per image (lowest mean neg_elbo of "
        f"{len(ranked)} configurations)",
    ]
    noise = pooled_noise(study, ranked, storage) if study.user_attrs.get("kind") != "grid" else None
    if len(ranked) > 1:
        kind, second = study.user_attrs.get("kind"), ranked[1]
        settle: Callable[[int], str] | None = (
            (lambda n: confirm_command(study, best, second, n)) if kind == "search"
            else (lambda n: grid_seeds_command(study, preset, n, ranked)) if kind == "grid" and preset is not None
            else None)
        reasons.append(f"margin: {compare(best, second, noise=noise, settle=settle)}")
    if study.user_attrs.get("kind") != "grid":
        reasons += _against_the_report(best, study, storage, noise)
    base = find_baseline(study, storage)
    if base is not None and not (base[1] == study.study_name and base[0].trial.number == t.number):
        bc, where = base
        b = bc.trial.user_attrs
        reasons.append(
            f"vs B.1 baseline (latent 8, base 32; {bc.label} of study {where!r}, {bc.n} run{'s' * (bc.n > 1)}): "
            f"neg_elbo {pct(best.mean(), bc.mean()):+.2f}% ({_verdict(best, bc, noise)}), "
            f"recon loss {pct(best.mean('recon_loss'), bc.mean('recon_loss')):+.2f}%"
        )
        reasons.append(f"size: {a['params']:,} parameters, {pct(a['params'], b['params']):+.1f}% against the baseline's {b['params']:,}")
        unlike = _run_settings_unlike(a, b)
        against = (f"the baseline's {bc.mean('time_s'):.1f} s is not comparable: {unlike}" if unlike
                   else f"{pct(best.mean('time_s'), bc.mean('time_s')):+.1f}% against the baseline")
        reasons.append(f"time: {best.mean('time_s'):.1f} s to train and validate ({against}; {a.get('jobs', 1)} job(s), "
                       f"{a.get('threads', '?')} thread(s))")
    else:
        reasons.append(f"size: {a['params']:,} parameters")
        reasons.append(f"time: {best.mean('time_s'):.1f} s to train and validate")
    reasons.append(f"KL: {best.mean('kl'):.2f} nats per image (0 would mean posterior collapse)")
    # On the loss it trains (recon + beta x KL), not neg_elbo: with beta != 1 the two differ, and the
    # line would otherwise seem to contradict the quality line above it.
    gaps = train_val_gaps(best)
    if gaps is not None:
        fit = best.mean("train_eval_loss")
        images = f"{a['n_val']:,}" if "n_val" in a else "as many"
        reasons.append(f"over-fitting: the final model's loss on {images} training images {fit:.2f}, on the "
                       f"validation images {best.mean('val_loss'):.2f} (recon + beta x KL, the loss it trains), gap "
                       f"{mean(gaps):+.2f} ({pct(best.mean('val_loss'), fit):+.2f}%)")
    else:  # runs from before the final model was measured on training images
        reasons.append(f"over-fitting: train loss {best.mean('train_loss'):.2f} (the last epoch's running mean, which lags "
                       f"the final model), val loss {best.mean('val_loss'):.2f} (recon + beta x KL, the loss it trains), gap "
                       f"{best.mean('val_loss') - best.mean('train_loss'):+.2f}")
    reasons.append(f"compression: {IMAGE_VALUES} values -> {p['latent_dim']} latents, {IMAGE_VALUES / p['latent_dim']:.0f}x")
    rows = [
        {"candidate": c.label, **{k: _sig(v) for k, v in c.params.items()}, "n": c.n, "neg_elbo": round(c.mean(), 2),
         "sd": round(c.sd(), 2) if c.n > 1 else None, "vs_best_pct": round(pct(c.mean(), best.mean()), 2),
         "recon_loss": round(c.mean("recon_loss"), 2), "params": int(c.trial.user_attrs["params"])}
        for c in ranked[1:top]
    ]
    return Selection(t, best, headline, reasons, pd.DataFrame(rows) if rows else None)


TIMED_BY = ("device", "device_name", "precision", "jobs", "threads")  # what a trial's time_s depends on, as recorded


def _run_settings_unlike(a: dict, b: dict) -> str:
    """How the baseline's run was timed unlike this one ("precision fp32 there, bf16 here"), where
    both recorded it; empty where nothing recorded differs. A grid copied in from another
    machine, or run in another precision, makes a time ratio meaningless."""
    return ", ".join(f"{key.replace('_', ' ')} {b[key]} there, {a[key]} here" for key in TIMED_BY
                     if key in a and key in b and a[key] != b[key])


def report_best(ref: Preset) -> GridPoint:
    """The report's best row (lowest val loss) of the reference preset."""
    return min((p for p in ref.points if "val_loss" in p.report), key=lambda p: p.report["val_loss"])


def comparable_with_report(attrs: dict, ref: Preset) -> bool:
    """A trial (its user attributes) trained on the report's budget: the full CIFAR-10 split
    and the report's epochs (a trial from before the data sizes were recorded counts)."""
    return (attrs.get("n_train"), attrs.get("n_val"), attrs.get("epochs")) in (
        (50_000, 10_000, ref.epochs), (None, None, ref.epochs))


def report_reference(study: optuna.Study) -> tuple[str, float] | None:
    """("the report's best (config 3)", its val loss) for a study of the report's budget,
    drawn as a line on its time-to-quality figure; None for other budgets or no trials."""
    ref = load_preset(REFERENCE_PRESET)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done or not comparable_with_report(done[0].user_attrs, ref):
        return None
    top = report_best(ref)
    return f"the report's best (config {top.config})", top.report["val_loss"]


def _against_the_report(best: Candidate, study: optuna.Study, storage: optuna.storages.BaseStorage,
                        noise: Noise | None) -> list[str]:
    """The winner against the report's best (b1.toml's reference figures: one run, seed
    unknown) and against the B.1 grid's best in the same storage (its mean over seeds),
    each with a noise verdict. The report's val loss is recon + KL at beta 1: neg_elbo."""
    ref = load_preset(REFERENCE_PRESET)
    top = report_best(ref)
    a = best.trial.user_attrs
    if not comparable_with_report(a, ref):
        n_train, n_val = a.get("n_train"), a.get("n_val")
        sizes = (f"on {n_train:,} images and validates on {n_val:,}" if isinstance(n_train, int) and isinstance(n_val, int)
                 else "on data of unrecorded size")
        return [f"vs the report's best: not comparable (this study trains {a.get('epochs')} epochs {sizes}; the report: "
                f"{ref.epochs} on 50,000 and 10,000)"]
    diff = best.mean() - top.report["val_loss"]
    out = [f"vs the report's best (config {top.config}, val loss {top.report['val_loss']:.2f}, one run): neg_elbo "
           f"{pct(best.mean(), top.report['val_loss']):+.2f}%, {single_run_verdict(diff, noise, best.n, 1)}"]
    names = optuna.get_all_study_names(storage=storage)
    if REFERENCE_PRESET in names and study.study_name != REFERENCE_PRESET:
        grid = optuna.load_study(study_name=REFERENCE_PRESET, storage=storage)
        ranked = candidates(grid, _preset_of(grid)) if grid.user_attrs.get("kind") == "grid" else []
        have = {p.config for c in ranked if (p := ref.point_for(c.trial.params))}
        missing = [f"config {p.config}" for p in ref.points if p.config not in have]
        if ranked and missing:  # its best so far is not the grid's best: no comparison until every point has run
            out.append(f"vs the B.1 grid here (study {REFERENCE_PRESET!r}): not yet, {', '.join(missing)} of "
                       f"{len(ref.points)} ha{'s' if len(missing) == 1 else 've'} no complete run (`vae-search grid "
                       "--preset b1` completes it)")
        elif ranked:
            g = ranked[0]
            verdict = _verdict(best, g, noise)
            out.append(f"vs the B.1 grid's best here ({g.label} of study {REFERENCE_PRESET!r}, {g.text()}): neg_elbo "
                       f"{pct(best.mean(), g.mean()):+.2f}%, {verdict}")
    return out


def _sig(v: object) -> object:
    """A float parameter to 4 significant digits, as the main lines print it."""
    return float(f"{v:.4g}") if isinstance(v, float) else v


def pareto_front(study: optuna.Study) -> pd.DataFrame:
    rows = [
        {"trial": t.number, **{k: _sig(v) for k, v in t.params.items()}, "neg_elbo": round(t.values[0], 2), "params": int(t.values[1]),
         "recon_loss": round(t.user_attrs.get("recon_loss", float("nan")), 2), "time_s": round(t.user_attrs.get("time_s", float("nan")), 1)}
        for t in study.best_trials
    ]
    return pd.DataFrame(rows).sort_values("params") if rows else pd.DataFrame()


# ---------------------------------------------------------------- the note on the dashboard


def selection_markdown(study: optuna.Study, sel: Selection, verdicts: list[str] | None = None) -> str:
    from vae_search.tables import markdown

    parts = [f"### {sel.headline}", "", *[f"- {r}" for r in sel.reasons]]
    if verdicts:
        parts += ["", "**B.2, computed** (Welch's t-test at 5% over seeds):", "", *[f"- {v}" for v in verdicts]]
    if sel.others is not None:
        parts += ["", "Other top configurations:", "", markdown(sel.others)]
    parts += ["", "_Written by `vae-search best`; it replaces this part on every run._"]
    return "\n".join(parts)


def save_selection_notes(study: optuna.Study, sel: Selection, verdicts: list[str] | None = None) -> None:
    """Write the selection as a markdown note on the study and on the chosen trial
    (optuna-dashboard shows both), replacing the part an earlier `best` wrote, including
    on a trial that is no longer the best."""
    body = selection_markdown(study, sel, verdicts)
    update_note(study, "best", body)
    previous, chosen = recorded(study, "best_note_trial_id"), trial_id_of(sel.trial)
    if previous is not None and previous != chosen:
        update_note(optuna.Trial(study, previous), "best", "")
    update_note(trial_handle(study, sel.trial), "best", body)
    if previous != chosen:
        study.set_user_attr("best_note_trial_id", chosen)


# ---------------------------------------------------------------- the trial a command names


def choose_trial(study: optuna.Study, which: str) -> FrozenTrial:
    """The trial `--trial` names: "best" (what `vae-search best` chooses: the lowest mean
    neg_elbo over seeds; for two objectives the lowest neg_elbo) or a number."""
    # A copy of a study may leave some weights out (benchmarks/keep.py records which): say so.
    dropped = set(recorded(study, "weights_not_kept") or [])
    have = [t for t in readable(trials_with_weights(study)) if t.number not in dropped]
    numbers = [str(t.number) for t in have]  # said as a sentence: "trials with weights: 0" read as a count
    listing = ("no trial has weights" if not numbers else f"trial {numbers[0]} has weights" if len(numbers) == 1
               else f"trials {', '.join(numbers)} have weights")
    if which == "best":
        if not have:
            raise UsageError(f"study {study.study_name!r} has no trial with weights" + (" kept" if dropped else " yet"))
        if len(study.directions) > 1:
            return min(have, key=lambda t: t.user_attrs["neg_elbo"])
        ranked = [c.trial for c in candidates(study) if WEIGHTS_ATTR in c.trial.user_attrs]
        if ranked and ranked[0].number in dropped:
            raise UsageError(f"the weights of trial {ranked[0].number}, the best of study {study.study_name!r}, were "
                             f"not kept in this copy of the study; {listing}")
        return ranked[0] if ranked else min(have, key=lambda t: t.user_attrs["neg_elbo"])
    try:
        number = int(which)
    except ValueError:
        raise UsageError(f"--trial {which!r}: give 'best' or a trial number; {listing}") from None
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise UsageError(f"study {study.study_name!r} has no trial {number}; {listing}")
    if number in dropped:
        raise UsageError(f"the weights of trial {number} were not kept in this copy of the study (its images are in "
                         f"the dashboard); {listing}")
    if found[0].state != TrialState.COMPLETE or WEIGHTS_ATTR not in found[0].user_attrs:
        raise UsageError(f"trial {number} has no weights (it is {found[0].state.name}); {listing}")
    return found[0]

"""The seed document's B.2 statements about the B.1 grid, tested over seeds.

The report chose a best configuration, compared each with its baseline, and said that more
parameters gave a higher loss and that the largest model overfitted mildly. `grid_verdicts`
computes each of these from a grid study's runs and says whether it holds beyond seed noise,
and, where a claim points the right way but its seeds cannot tell it, how many would
(`show`, `best` and `report` print the lines).
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import mean

import optuna

from vae_search.definitions import Preset
from vae_search.noise import ALPHA, MOST_SEEDS, claim_verdict, noise_words, seeds_to_tell, welch_p_of
from vae_search.selection import (
    IMAGE_VALUES,
    Candidate,
    beyond_noise,
    candidates,
    compare,
    grid_seeds_command,
    train_val_gaps,
    welch_p,
)
from vae_search.tables import pct


def grid_verdicts(study: optuna.Study, preset: Preset) -> list[str]:
    """The seed document's B.2 statements about the grid, computed with their seed noise:
    which configuration is best, how each compares with the baseline, and whether more
    parameters gave a higher loss. Empty until every point has a complete run."""
    by_config = {int(c.label.split()[-1]): c for c in candidates(study, preset) if c.label.startswith("config ")}
    if len(by_config) < len(preset.points) or len(by_config) < 2:
        return []
    key = "val_loss"
    ranked = sorted(by_config.values(), key=lambda c: c.mean(key))
    best = ranked[0]
    n_min, n_max = min(c.n for c in by_config.values()), max(c.n for c in by_config.values())
    lines = [f"seeds per point: {n_min if n_min == n_max else f'{n_min} to {n_max}'}"
             + (f" ({'one seed' if n_max < 2 else 'some points have one seed'}: their differences cannot be told "
                f"from seed noise; run grid --seeds 3)" if n_min < 2 else "")]
    def seeds_command(n: int) -> str:
        return grid_seeds_command(study, preset, n, ranked)

    lines.append(f"best: {best.label} (latent {best.params['latent_dim']}, base {best.params['base_channels']}), "
                 f"val loss {best.text(key)}; {compare(best, ranked[1], key, settle=seeds_command)}")
    if preset.baseline in by_config:
        base = by_config[preset.baseline]
        for config, c in sorted(by_config.items()):
            if config == preset.baseline:
                continue
            lines.append(f"{c.label} against the baseline {base.label}: val loss {pct(c.mean(key), base.mean(key)):+.2f}% "
                         f"({beyond_noise(c, base, key)})")
        biggest = max(by_config.values(), key=lambda c: c.trial.user_attrs["params"])
        if biggest is not base:
            d, p = pct(biggest.mean(key), base.mean(key)), welch_p(biggest, base, key)
            ratio = biggest.trial.user_attrs["params"] / base.trial.user_attrs["params"]
            lines.append(
                f"'more parameters gave a higher loss' ({biggest.label}, {ratio:.1f}x the parameters of {base.label}): "
                f"{claim_verdict(p, d)} (val loss {d:+.2f}%, {noise_words(p)})"
                + _more_seeds(seeds_command, p, d, biggest.values(key), base.values(key))
            )
            lines.append(_overfitting_verdict(seeds_command, biggest, base))
        if best is not base:
            a, b = best.trial.user_attrs, base.trial.user_attrs
            lines.append(
                f"{best.label} against {base.label}: recon loss {pct(best.mean('recon_loss'), base.mean('recon_loss')):+.2f}% "
                f"({beyond_noise(best, base, 'recon_loss')}), parameters {pct(a['params'], b['params']):+.1f}%, "
                f"time {pct(best.mean('time_s'), base.mean('time_s')):+.1f}%, KL {best.mean('kl'):.2f} nats, "
                f"compression {IMAGE_VALUES} values -> {best.params['latent_dim']} latents = "
                f"{IMAGE_VALUES / best.params['latent_dim']:.0f}x"
            )
    return lines


def _more_seeds(seeds_command: Callable[[int], str], p: float | None, difference: float, va: list[float],
                vb: list[float]) -> str:
    """Where a claim points the right way but its test cannot tell it from seed noise: how many
    seeds would (three seeds said no to the report's "mild overfitting"; six said yes,
    docs/results.md). Empty where the claim holds, points the other way or has one seed."""
    if p is None or p < ALPHA or difference <= 0:
        return ""
    n = seeds_to_tell(va, vb)
    if n is None or n <= min(len(va), len(vb)):
        return ""
    if n > MOST_SEEDS:
        return f"; a difference this small would need more than {MOST_SEEDS} seeds per point to tell"
    return f"; about {n} seeds per point would tell a difference this size: {seeds_command(n)}"


def _overfitting_verdict(seeds_command: Callable[[int], str], biggest: Candidate, base: Candidate) -> str:
    """The report's "mild overfitting" of its largest model, tested: its gap between the final
    model's loss on training and on validation images against the baseline's, over seeds."""
    claim = f"'mild overfitting' ({biggest.label} against {base.label})"
    gb, gs = train_val_gaps(biggest), train_val_gaps(base)
    if gb is None or gs is None:
        return (f"{claim}: untested (these runs predate the final model's loss on training images; a grid run "
                "with this version measures it)")
    p, d = welch_p_of(gb, gs), mean(gb) - mean(gs)
    return (f"{claim}: {claim_verdict(p, d)} (train-val gap {mean(gb):+.2f} against {mean(gs):+.2f} nats, {d:+.2f}, "
            f"{noise_words(p)}; the final models' loss on training against validation images)"
            + _more_seeds(seeds_command, p, d, gb, gs))

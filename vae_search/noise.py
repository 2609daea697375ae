"""Seed noise: whether two configurations differ by more than their runs differ by seed.

Each side is a list of per-run values (one per seed). Welch's t-test (two-sided, at ALPHA)
says whether their means differ beyond seed noise; with one run on a side there is no
spread to test against, and the sd of one run measured elsewhere (`Noise`, pooled over
configurations with several seeds) judges the difference instead. `seeds_to_tell` says how
many seeds a difference of the observed size would need. Numbers in, words out: nothing
here knows a study.

Student's t comes from `scipy.special` (stdtr, stdtrit), not `scipy.stats`: importing
scipy.stats made `best` 3.3 s instead of 2.0 on 2 AVX2 cores (`benchmarks/startup.py`), for
one p-value and one quantile. Welch's statistic and its degrees of freedom are the two
lines scipy.stats.ttest_ind computes (tests compare them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, mean, stdev

import numpy as np

ALPHA = 0.05  # Welch's t-test level for "beyond seed noise"
POWER = 0.8  # the chance that a real difference of the observed size is told from seed noise
MOST_SEEDS = 100  # beyond this, a difference is too small to chase with seeds
ADD_SEEDS = "`vae-search confirm` / `grid --seeds 3` add seeds"


def welch_p_of(va: list[float], vb: list[float]) -> float | None:
    """Two-sided Welch's t-test p-value of two lists of per-run values; None with fewer than
    two runs on either side (then there is no estimate of the noise)."""
    from scipy.special import stdtr

    if len(va) < 2 or len(vb) < 2:
        return None
    a, b = np.asarray(va, dtype=np.float64), np.asarray(vb, dtype=np.float64)
    with np.errstate(all="ignore"):  # past float's range: inf and nan, as in ttest_ind, not an exception
        sa, sb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size  # squared standard errors
        t = (a.mean() - b.mean()) / np.sqrt(sa + sb)
        df = (sa + sb) ** 2 / (sa**2 / (a.size - 1) + sb**2 / (b.size - 1))  # Welch-Satterthwaite
        p = float(2 * stdtr(df, -abs(t)))
    if math.isnan(p):  # no spread on either side: only identical means are a tie
        return 1.0 if mean(va) == mean(vb) else 0.0
    return p


def seeds_to_tell(va: list[float], vb: list[float]) -> int | None:
    """Seeds per side with which Welch's test at ALPHA would tell a difference the size of the
    observed one, with the observed spread, in POWER of repetitions: n = z^2 (sd_a^2 + sd_b^2)
    / d^2 with z = z(1 - ALPHA/2) + z(POWER) (the normal approximation), plus one seed for the
    t distribution's heavier tails. None without a difference or a spread to go on."""
    d, var = abs(mean(va) - mean(vb)), stdev(va) ** 2 + stdev(vb) ** 2
    if d == 0 or var == 0:
        return None
    z = NormalDist().inv_cdf(1 - ALPHA / 2) + NormalDist().inv_cdf(POWER)
    return math.ceil(z * z * var / (d * d)) + 1


def noise_words(p: float | None) -> str:
    """"beyond seed noise, p = 0.01" / "within seed noise, p = 0.4" / "one seed: noise unknown"."""
    if p is None:
        return "one seed: noise unknown"
    return f"{'beyond' if p < ALPHA else 'within'} seed noise, p = {p:.2g}"


def claim_verdict(p: float | None, difference: float) -> str:
    """Whether a statement that one side is higher (`difference` > 0) holds beyond seed noise."""
    if p is None:
        return "untested (one seed)"
    return "holds beyond seed noise" if p < ALPHA and difference > 0 else "does not hold beyond seed noise"


@dataclass
class Noise:
    """Seed noise of one run's neg_elbo, pooled over configurations with several seeds."""

    sd: float  # pooled standard deviation of one run, nats per image
    df: int  # its degrees of freedom: sum of (runs - 1)
    source: str  # where it was measured, in words

    def band(self, n_a: int, n_b: int) -> float:
        """Half-width of the 95% band of a difference of means of n_a and n_b runs."""
        from scipy.special import stdtrit

        return float(stdtrit(self.df, 0.975)) * self.sd * math.sqrt(1 / n_a + 1 / n_b)

    @classmethod
    def pooled(cls, groups: list[tuple[str, list[float]]]) -> Noise | None:
        """The sd of one run pooled over (study name, runs of one configuration) groups of
        several runs each, weighted by their degrees of freedom; None without any."""
        groups = [(name, v) for name, v in groups if len(v) > 1]
        if not groups:
            return None
        df = sum(len(v) - 1 for _, v in groups)
        sd = math.sqrt(sum((len(v) - 1) * stdev(v) ** 2 for _, v in groups) / df)
        where = ", ".join(f"study {n!r}" for n in dict.fromkeys(n for n, _ in groups))
        return cls(sd, df, f"{len(groups)} configurations with several seeds in {where}")


def single_run_verdict(diff: float, noise: Noise | None, n_a: int, n_b: int) -> str:
    """Whether a difference of `diff` nats is inside seed noise measured elsewhere."""
    if noise is None:
        return f"no seed noise measured in this storage yet ({ADD_SEEDS})"
    band = noise.band(n_a, n_b)
    inside = "inside" if abs(diff) < band else "beyond"
    return (f"{inside} the seed noise measured in this storage (+-{band:.2f} nats at 95%, from one run's sd "
            f"{noise.sd:.2f} over {noise.source})")

"""Proposals in a finite search space: what the trial loop's repeat check cost before
`samplers.FiniteSpace`, and what the sampler that never proposes a trained configuration finds.

    python benchmarks/finite_space.py                 # 100 seeds per sampler, a few minutes on 2 cores
    python benchmarks/finite_space.py --seeds 3       # smoke run

A space of categorical parameters (180 configurations, the shape of a user's own
`--space` file of choices) and a cheap stand-in objective with one optimum (latent 32, base
32, beta 1, lr 3e-3), so that only the proposals are measured, not training. Each sampler
runs `trial_loop.run_optimize` for --trials finished trials from an empty study, once per
seed, in two ways:

- before: the sampler as it was (`make_sampler(name, seed)`), every proposal of a trained
  configuration failed by the trial loop as a repeat, 50 in a row stopping the worker;
- now: `make_sampler(name, seed, space=...)`, which proposes only untried configurations.

Per sampler and way: the mean number of trials trained and of FAIL repeats recorded, the
runs stopped early ("the space looks exhausted"), the runs that found the optimum and the
mean best value (0 at the optimum). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.distributions import CategoricalDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from vae_search import samplers  # noqa: E402
from vae_search import trial_loop as loop  # noqa: E402
from vae_search.errors import RunError  # noqa: E402
from vae_search.objective import suggest  # noqa: E402

SPACE = {
    "latent_dim": CategoricalDistribution([8, 16, 32, 64, 128]),
    "base_channels": CategoricalDistribution([16, 32, 48, 64]),
    "beta": CategoricalDistribution([0.5, 1.0, 2.0]),
    "lr": CategoricalDistribution([1e-3, 3e-3, 1e-2]),
}


def stand_in(trial: optuna.Trial) -> float:
    """0 at latent 32, base 32, beta 1, lr 3e-3; smooth in the logs of the parameters."""
    p = {name: suggest(trial, name, dist) for name, dist in SPACE.items()}
    return ((math.log2(p["latent_dim"]) - 5) ** 2 + (p["base_channels"] - 32) ** 2 / 256
            + math.log2(p["beta"]) ** 2 + math.log10(p["lr"] / 3e-3) ** 2)


def one_run(sampler: str, seed: int, trials: int, now: bool) -> dict[str, float]:
    study = optuna.create_study(sampler=samplers.make_sampler(sampler, seed, space=SPACE if now else None))
    stopped = 0
    try:
        loop.run_optimize(study, stand_in, n_trials=trials, space=SPACE)
    except RunError:  # 50 repeats in a row: the worker gave up
        stopped = 1
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = min(t.value for t in trained)
    return {"trained": len(trained), "repeats": len(study.trials) - len(trained), "stopped": stopped,
            "optimum": int(best < 1e-9), "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="runs per sampler and way (default 100)")
    parser.add_argument("--trials", type=int, default=25, help="finished trials each run asks for (default 25)")
    parser.add_argument("--samplers", default="tpe,random", help="comma-separated (default tpe,random; gp is slow)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for sampler in args.samplers.split(","):
        for way, now in (("before", False), ("now", True)):
            runs = [one_run(sampler, seed, args.trials, now) for seed in range(args.seeds)]
            summary = {key: statistics.fmean(r[key] for r in runs) for key in runs[0]}
            summary = {**summary, "stopped": sum(r["stopped"] for r in runs), "optimum": sum(r["optimum"] for r in runs)}
            results.setdefault(sampler, {})[way] = summary
            print(f"{sampler:6} {way:6}: trained {summary['trained']:5.1f}, FAIL repeats {summary['repeats']:5.1f}, "
                  f"stopped early {summary['stopped']:3d}/{args.seeds}, optimum found {summary['optimum']:3d}/"
                  f"{args.seeds}, mean best {summary['best']:.4f}", flush=True)
    print(json.dumps({"space_size": samplers.space_size(SPACE), "trials": args.trials, "seeds": args.seeds,
                      "samplers": results}))


if __name__ == "__main__":
    main()

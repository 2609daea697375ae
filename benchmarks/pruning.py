"""What pruning saves: the same seeded TPE search with and without the default pruner.

    python benchmarks/pruning.py --data-dir data/cifar10-jpeg           # ~5,000 images, 30 trials each
    python benchmarks/pruning.py --quick                                # smoke run, generated data

Runs vae-search's own optimize loop twice on one subset of the data (in-memory storages):
once with `--pruner none`, once with the default pruner. Prints the epochs each consumed and
the best validation neg_elbo of each, and the ratios. Target: the pruned study uses <= 40% of
the epochs and its best is within 0.5% of the unpruned best.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import _data  # noqa: E402

from vae_search import study as st  # noqa: E402
from vae_search.artifacts import artifact_store  # noqa: E402
from vae_search.definitions import load_space  # noqa: E402
from vae_search.objective import RunSettings, make_objective  # noqa: E402


def run(pruner: str, settings: RunSettings, trials: int, seed: int, **pruner_args) -> dict:
    study = optuna.create_study(sampler=st.make_sampler("tpe", seed), pruner=st.make_pruner(pruner, settings.epochs, **pruner_args))
    start = time.perf_counter()
    st.run_optimize(study, make_objective(settings, load_space()), n_trials=trials,
                    on_trial_end=lambda t: print(f"  [{pruner}] trial {t.number}: {t.state.name.lower()} after "
                                                  f"{t.user_attrs.get('epochs_run', '?')} epochs, neg_elbo "
                                                  f"{t.user_attrs.get('neg_elbo', float('nan')):.2f}", flush=True))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return {
        "epochs": sum(t.user_attrs["epochs_run"] for t in finished),
        "best": study.best_value,
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", default=f"{st.WARMUP_EPOCHS}:{st.STARTUP_TRIALS}:{st.PRUNE_PERCENTILE:g}",
                    help="pruner settings to compare, as WARMUP_EPOCHS:STARTUP_TRIALS:PERCENTILE[,...]; the first is "
                         "reported in the JSON line (default: the tool's own)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512 images, 8 trials of 4 epochs")
    args = ap.parse_args()
    if args.quick:
        args.train_images, args.val_images, args.trials, args.epochs = 512, 128, 8, 4
    data = _data(args.data_dir, None).limit(args.train_images, args.val_images)
    settings = RunSettings(data=data, epochs=args.epochs, batch_size=128, seed=args.seed, device=torch.device("cpu"),
                           store=artifact_store(Path(tempfile.mkdtemp(prefix="pruning-bench-"))), compile="auto")
    print(f"{len(data.train)} train / {len(data.test)} val images, {args.trials} trials of {args.epochs} epochs, TPE seed {args.seed}")
    unpruned = run("none", settings, args.trials, args.seed)
    print(f"no pruner: {unpruned['epochs']} epochs, best neg_elbo {unpruned['best']:.2f} ({unpruned['seconds']:.0f} s)")
    results = []
    for setting in args.settings.split(","):
        warmup, startup, percentile = setting.split(":")
        warmup, startup, percentile = int(warmup), int(startup), float(percentile)
        pruned = run("median", settings, args.trials, args.seed, warmup_epochs=warmup, startup_trials=startup,
                     percentile=percentile)
        ratio = pruned["epochs"] / unpruned["epochs"]
        gap = 100 * (pruned["best"] - unpruned["best"]) / unpruned["best"]
        print(f"pruner: warm-up {warmup} epochs, {startup} startup trials, percentile {percentile:g}: {pruned['epochs']} epochs "
              f"({pruned['pruned']} trials pruned), best neg_elbo {pruned['best']:.2f} ({pruned['seconds']:.0f} s): "
              f"{100 * ratio:.1f}% of the epochs, best {gap:+.2f}% against unpruned", flush=True)
        results.append({"warmup_epochs": warmup, "startup_trials": startup, "percentile": percentile,
                        "epochs_pruned": pruned["epochs"],
                        "epochs_ratio": round(ratio, 4), "best_pruned": round(pruned["best"], 3), "best_gap_pct": round(gap, 4)})
    print(json.dumps({"epochs_unpruned": unpruned["epochs"], "best_unpruned": round(unpruned["best"], 3),
                      **results[0], "others": results[1:]}))


if __name__ == "__main__":
    main()

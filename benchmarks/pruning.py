"""What pruning saves: the same seeded TPE search without a pruner and with each candidate.

    python benchmarks/pruning.py --data-dir data/cifar10-jpeg                       # hours: see README
    python benchmarks/pruning.py --data-dir data/cifar10-jpeg --pruners none,sha --seeds 1,2
    python benchmarks/pruning.py --quick                                             # smoke run, generated data

Each run is vae-search's own optimize loop (in-memory storage, TPE seeded with the run's seed)
on one fixed subset of the data (5,000 training and 2,000 validation images by default), 40
trials of 10 epochs, one process with one torch thread; `--parallel` runs go at once (one per
core). A run's result is kept in --out as JSON, so an interrupted benchmark resumes and a
later call can add pruners or seeds; the summary covers every run found there.

For each pruner and seed: the epochs it trained against the unpruned run of the same seed,
and its best validation neg_elbo against that run's best. Target (README, Performance): the
default pruner uses at most 40% of the epochs, with its best within 0.5%, for every seed.
The last line is one JSON object: the default pruner's worst `epochs_fraction` and worst
`best_delta_pct` over the seeds, and every pruner's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import _data  # noqa: E402

from vae_search import samplers  # noqa: E402
from vae_search import study as st  # noqa: E402


def run(pruner: str, seed: int, args: dict) -> dict:
    """One search, in a process of its own with one torch thread."""
    import optuna
    import torch
    from optuna.trial import TrialState

    from vae_search.artifacts import artifact_store
    from vae_search.definitions import load_space
    from vae_search.objective import RunSettings, make_objective

    torch.set_num_threads(1)
    data = _data(args["data_dir"], args["quick_n"]).limit(args["train_images"], args["val_images"])
    settings = RunSettings(data=data, epochs=args["epochs"], batch_size=128, seed=seed, device=torch.device("cpu"),
                           store=artifact_store(Path(tempfile.mkdtemp(prefix="pruning-bench-"))), compile="auto")
    study = optuna.create_study(sampler=samplers.make_sampler("tpe", seed), pruner=samplers.make_pruner(pruner, args["epochs"]))
    start = time.perf_counter()
    st.run_optimize(study, make_objective(settings, load_space()), n_trials=args["trials"])
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return {
        "pruner": pruner, "seed": seed, "trials": len(finished),
        "epochs": sum(t.user_attrs["epochs_run"] for t in finished),
        "best": study.best_value, "best_trial": study.best_trial.number, "best_params": study.best_params,
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "seconds": time.perf_counter() - start,
        "log": [[t.number, t.state.name, t.user_attrs["epochs_run"], round(t.user_attrs["neg_elbo"], 3), t.params]
                for t in finished],
    }


def _file(out: Path, pruner: str, seed: int) -> Path:
    return out / f"{pruner.replace(':', '_').replace('=', '-')}-seed{seed}.json"


def summary(out: Path, pruners: list[str], seeds: list[int], default: str) -> dict:
    results = {(r["pruner"], r["seed"]): r for r in (json.loads(p.read_text()) for p in sorted(out.glob("*.json")))}
    table, figures = [], {}
    for pruner in pruners:
        if pruner == "none":
            continue
        fractions, deltas = [], []
        for seed in seeds:
            base, r = results.get(("none", seed)), results.get((pruner, seed))
            if not base or not r:
                continue
            fractions.append(r["epochs"] / base["epochs"])
            deltas.append(100 * (r["best"] - base["best"]) / base["best"])
            table.append(f"| {pruner} | {seed} | {r['epochs']} of {base['epochs']} | {100 * fractions[-1]:.1f}% | "
                         f"{r['pruned']} | {r['best']:.2f} | {base['best']:.2f} | {deltas[-1]:+.2f}% | "
                         f"{r['seconds'] / 60:.0f} / {base['seconds'] / 60:.0f} min |")
        if fractions:
            figures[pruner] = {"seeds": len(fractions), "epochs_fraction": round(max(fractions), 4),
                               "best_delta_pct": round(max(deltas), 4),
                               "meets_target": max(fractions) <= 0.40 and max(deltas) <= 0.5}
    print("| pruner | seed | epochs | of unpruned | pruned trials | best | unpruned best | best vs unpruned | time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(table))
    mine = figures.get(default, {})
    return {"pruner": default, "epochs_fraction": mine.get("epochs_fraction"), "best_delta_pct": mine.get("best_delta_pct"),
            "seeds": mine.get("seeds", 0), "pruners": figures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1,2", help="TPE seeds, one repetition each")
    ap.add_argument("--pruners", default=f"none,{samplers.DEFAULT_PRUNER},median,percentile,hyperband",
                    help="pruner specs to run (NAME or NAME:KEY=VALUE:..., see vae_search/study.py); "
                         "none, the unpruned reference, is needed once per seed")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once, one process each (one per core)")
    ap.add_argument("--out", default="benchmarks/results/pruning", help="folder of the runs' JSON results")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512 generated images, 6 trials of 3 epochs")
    args = ap.parse_args()
    out = Path(args.out)
    if args.quick:
        args.train_images, args.val_images, args.trials, args.epochs = 512, 128, 6, 3
        out = Path(tempfile.mkdtemp(prefix="pruning-quick-"))
    out.mkdir(parents=True, exist_ok=True)
    pruners = [p for p in args.pruners.split(",") if p]  # the runs to make (those not in --out yet)
    seeds = [int(s) for s in args.seeds.split(",")]
    for p in pruners:
        samplers.parse_pruner(p)  # a bad spec fails now, not after hours
    shared = {"data_dir": args.data_dir, "quick_n": 2048 if args.quick else None, "train_images": args.train_images,
              "val_images": args.val_images, "trials": args.trials, "epochs": args.epochs}
    todo = [(p, s) for s in seeds for p in pruners if not _file(out, p, s).exists()]
    print(f"{args.train_images} train / {args.val_images} val images, {args.trials} trials of {args.epochs} epochs; "
          f"{len(todo)} run(s) to do, {args.parallel} at a time; results in {out}", flush=True)
    with ProcessPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(run, p, s, shared): (p, s) for p, s in todo}
        for f in as_completed(futures):
            r = f.result()
            _file(out, r["pruner"], r["seed"]).write_text(json.dumps(r))
            print(f"{r['pruner']} seed {r['seed']}: {r['epochs']} epochs, {r['pruned']} of {r['trials']} trials pruned, "
                  f"best {r['best']:.2f} (trial {r['best_trial']}), {r['seconds'] / 60:.1f} min", flush=True)
    # The summary compares every pruner found in --out with the unpruned run of its seed.
    found = sorted({json.loads(p.read_text())["pruner"] for p in out.glob("*.json")} | set(pruners))
    print(json.dumps(summary(out, found, seeds, samplers.DEFAULT_PRUNER)))


if __name__ == "__main__":
    main()

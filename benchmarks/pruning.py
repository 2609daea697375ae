"""What pruning saves on a 10-epoch budget, measured as HPO benchmarks do: record the full
learning curves of one unpruned search once, then replay every candidate pruner on them.

    python benchmarks/pruning.py --record --data-dir ../shared/data/cifar10-jpeg.tar.gz   # once: ~1 h on 2 cores
    python benchmarks/pruning.py --replay                                               # a minute, from the curves
    python benchmarks/pruning.py --live --data-dir ../shared/data/cifar10-jpeg.tar.gz   # the default, live
    python benchmarks/pruning.py --quick                                                # smoke run, generated data

--record runs `vae-search optimize --pruner none` (TPE, --seed 0, 40 trials of 10 epochs on a
fixed subset of 5,000 training and 2,000 validation images, the default --jobs) into
benchmarks/results/pruning/curves.db (resumable: the same command continues it), then keeps
each trial's parameters, per-epoch val neg_elbo and per-epoch seconds in curves.json.

--replay feeds the recorded curves, epoch by epoch, to each candidate pruner, the real
Optuna pruner that `vae-search optimize --pruner SPEC` builds, through a real in-memory
study: a trial reports its epoch's value and asks `should_prune()`, exactly as it would
live, and stops there when told to. The order in which configurations arrive changes what
a pruner has seen, so every candidate runs in several orders (the recorded one and seeded
shuffles). For each: the epochs trained against the unpruned 10 per trial, and the best
final neg_elbo among the trials it let finish against the best of all. The last line is one
JSON object: the default pruner's worst `epochs_fraction` and worst `best_delta_pct` over
the orders, and every candidate's.

--live runs the default pruner (or --pruner SPEC) on the same subset as a real search
(curves-live.db, a study per pruner and --seed) and prints the same two figures against the recorded
unpruned search, with the number of trials pruned: a replay cannot show how pruning changes
what the sampler proposes next, a live run does.

Target (docs/performance.md): the default pruner trains at most 30% of the unpruned
epochs, with its best within 0.5% of the unpruned best, in every order.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vae_search import samplers  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "pruning"
# Successive halving and Hyperband with other rungs, median and percentile, patience, the
# percentile of the whole cohort at an epoch (pruned trials included); each
# stopping at epoch `until` (a late rung costs most of a trial before it saves anything).
CANDIDATES = [
    "percentile:p=20:startup=2:until=3", "percentile:p=15:startup=2:until=2", "percentile:p=15:until=3",
    "percentile:p=20:until=3", "sha:min=1:rf=5:until=5", "sha:min=1:rf=8:until=1",
    "sha:min=1:rf=3:until=9", "sha:min=1:rf=3:until=3", "sha:min=1:rf=3:until=1",
    "sha:min=1:rf=2:until=8", "sha:min=1:rf=2:until=4", "sha:min=1:rf=2:until=2",
    "sha:min=1:rf=4:until=4", "sha:min=1:rf=4:until=1", "sha:min=2:rf=3:until=6", "sha:min=2:rf=2:until=4",
    "hyperband:min=1:rf=3:until=9", "hyperband:min=1:rf=3:until=3",
    "median:until=9", "median:until=3", "median:until=1", "median:startup=5:until=3",
    "percentile:p=25:until=3", "percentile:p=33:until=3", "percentile:p=25:until=1", "percentile:p=33:until=1",
    "patient:patience=1:until=8", "patient:patience=2:until=8",
    "cohort", "cohort:p=25:startup=2", "cohort:p=20:startup=2", "cohort:p=15:startup=2", "cohort:p=25:startup=2:until=2",
]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vae_search", *args], check=True)


def record(args: argparse.Namespace, out: Path) -> None:
    db = out / "curves.db"
    common = ["--storage", f"sqlite:///{db}", "--study-name", "curves"]
    cli("optimize", "--trials", str(args.trials), "--epochs", str(args.epochs), "--pruner", "none", "--seed", "0",
        "--limit-train", str(args.train_images), "--limit-val", str(args.val_images),
        "--artifact-dir", str(Path(tempfile.gettempdir()) / "vae-search-pruning-artifacts"),
        *(["--data-dir", args.data_dir] if args.data_dir else []), *common)
    extract(f"sqlite:///{db}", "curves", out / "curves.json")


def extract(storage: str, study_name: str, path: Path) -> None:
    """The recorded curves of a study's complete trials, in trial order, as JSON."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    epochs = max(len(t.user_attrs.get("history", [])) for t in trials)
    curves = []
    for t in trials:
        history = t.user_attrs["history"]
        if len(history) != epochs:
            continue
        times = [h["time_s"] for h in history]
        curves.append({"trial": t.number, "params": t.params, "neg_elbo": [h["neg_elbo"] for h in history],
                       "epoch_s": [b - a for a, b in zip([0.0, *times], times, strict=False)]})
    a = trials[0].user_attrs
    meta = {"study": study_name, "epochs": epochs, "n_train": a.get("n_train"), "n_val": a.get("n_val"),
            "precision": a.get("precision"), "device_name": a.get("device_name"), "torch": a.get("torch"),
            "sampler": "tpe, seed 0, pruner none"}
    path.write_text(json.dumps({"meta": meta, "curves": curves}, indent=1))
    print(f"{len(curves)} curves of {epochs} epochs -> {path}")


def replay(spec: str, curves: list[dict], order: list[int], epochs: int) -> dict:
    """One pruner on the recorded curves, arriving in `order`: the epochs it trains and the
    best final value among the trials it lets finish."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A fixed name: Hyperband assigns trials to brackets by a hash of the study name.
    study = optuna.create_study(study_name="replay", pruner=samplers.make_pruner(spec, epochs))
    trained, seconds, finished = 0, 0.0, []
    for i in order:
        trial = study.ask()
        values = curves[i]["neg_elbo"]
        for epoch, value in enumerate(values, start=1):
            trained += 1
            seconds += curves[i]["epoch_s"][epoch - 1]
            trial.report(value, epoch)
            if epoch < epochs and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, values[-1])
            finished.append(values[-1])
    return {"epochs": trained, "seconds": seconds, "best": min(finished), "complete": len(finished)}


def replay_all(curves: list[dict], epochs: int, candidates: list[str], n_orders: int, default: str) -> dict:
    orders = [list(range(len(curves)))]
    rng = random.Random(0)
    while len(orders) < n_orders:
        order = list(range(len(curves)))
        rng.shuffle(order)
        orders.append(order)
    full = len(curves) * epochs
    full_s = sum(sum(c["epoch_s"]) for c in curves)
    best = min(c["neg_elbo"][-1] for c in curves)
    figures = {}
    print(f"{len(curves)} recorded curves of {epochs} epochs, unpruned best {best:.2f}; {len(orders)} orders "
          "(the recorded one, then seeded shuffles)")
    print("| pruner | epochs trained (worst order) | of unpruned (worst / median order) | training time, of unpruned (worst) "
          "| best vs unpruned (worst / median order) | trials finished (median) | meets target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in dict.fromkeys([default, *candidates]):
        runs = [replay(spec, curves, order, epochs) for order in orders]
        fraction = max(r["epochs"] for r in runs) / full
        time_fraction = max(r["seconds"] for r in runs) / full_s
        delta = max(100 * (r["best"] - best) / best for r in runs)
        meets = fraction <= 0.30 and delta <= 0.5
        median_fraction = statistics.median(r["epochs"] for r in runs) / full
        median_delta = statistics.median(100 * (r["best"] - best) / best for r in runs)
        median_complete = statistics.median(r["complete"] for r in runs)
        figures[spec] = {"epochs_fraction": round(fraction, 4), "seconds_fraction": round(time_fraction, 4),
                         "best_delta_pct": round(delta, 4), "median_epochs_fraction": round(median_fraction, 4),
                         "median_best_delta_pct": round(median_delta, 4), "median_complete": median_complete,
                         "meets_target": meets}
        print(f"| `{spec}`{' (default)' if spec == default else ''} | {max(r['epochs'] for r in runs)} of {full} | "
              f"{100 * fraction:.1f}% / {100 * median_fraction:.1f}% | {100 * time_fraction:.1f}% | "
              f"{delta:+.2f}% / {median_delta:+.2f}% | {median_complete:g} | {'yes' if meets else 'no'} |")
    mine = figures[default]
    return {"pruner": default, "resolved": _resolved(default), "epochs_fraction": mine["epochs_fraction"],
            "best_delta_pct": mine["best_delta_pct"], "orders": len(orders), "curves": len(curves), "candidates": figures}


def _resolved(spec: str) -> str:
    name, settings = samplers.parse_pruner(spec)
    return ":".join([name, *(f"{k}={v:g}" for k, v in settings.items())])


def live(args: argparse.Namespace, out: Path) -> dict:
    """A pruner (the default unless --pruner) in a real search on the same subset, against
    the recorded unpruned one. Each pruner has its own study in curves-live.db: "live" for
    the default, "live-SPEC" for another; the same command resumes it."""
    import optuna
    from optuna.trial import TrialState

    db, spec, resolved = out / "curves-live.db", args.pruner, _resolved(args.pruner)
    name = ("live" if spec == samplers.DEFAULT_PRUNER else f"live-{resolved}") + (f"-seed{args.seed}" if args.seed else "")
    cli("optimize", "--trials", str(args.trials), "--epochs", str(args.epochs), "--seed", str(args.seed), "--pruner", spec,
        "--limit-train", str(args.train_images), "--limit-val", str(args.val_images),
        "--artifact-dir", str(Path(tempfile.gettempdir()) / "vae-search-pruning-artifacts"),
        *(["--data-dir", args.data_dir] if args.data_dir else []),
        "--storage", f"sqlite:///{db}", "--study-name", name)
    recorded = json.loads((out / "curves.json").read_text())
    unpruned_best = min(c["neg_elbo"][-1] for c in recorded["curves"])
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    epochs = sum(t.user_attrs["epochs_run"] for t in finished)
    return {"pruner": spec, "resolved": resolved, "live": True, "study": name, "seed": args.seed,
            "trials": len(finished), "pruned": sum(t.state == TrialState.PRUNED for t in finished),
            "epochs_fraction": round(epochs / (len(finished) * args.epochs), 4),
            "best_delta_pct": round(100 * (study.best_value - unpruned_best) / unpruned_best, 4),
            "best": study.best_value, "unpruned_best": unpruned_best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", action="store_true", help="run the unpruned search and keep its curves")
    mode.add_argument("--replay", action="store_true", help="replay every candidate pruner on the recorded curves")
    mode.add_argument("--live", action="store_true", help="run a pruner (--pruner) live on the same subset")
    mode.add_argument("--quick", action="store_true", help="smoke run: record and replay on generated data")
    ap.add_argument("--data-dir")
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--orders", type=int, default=50, help="orders of arrival per pruner (at least 3)")
    ap.add_argument("--pruner", default=samplers.DEFAULT_PRUNER, help="the pruner --live runs (default: the default)")
    ap.add_argument("--seed", type=int, default=0, help="the --live search's --seed (its own study, live...-seedN)")
    ap.add_argument("--pruners", default=",".join(CANDIDATES), help="candidate specs, comma-separated")
    ap.add_argument("--out", type=Path, default=OUT, help="folder of curves.db, curves.json and curves-live.db")
    args = ap.parse_args()
    candidates = [p for p in args.pruners.split(",") if p]
    for p in [*candidates, args.pruner]:
        samplers.parse_pruner(p)  # a bad spec fails now
    out = args.out
    if args.quick:
        out = Path(tempfile.mkdtemp(prefix="pruning-quick-"))
        args.data_dir = str(_tiny_data(out / "data"))
        args.train_images, args.val_images, args.trials, args.epochs, args.orders = 256, 64, 6, 3, 3
    out.mkdir(parents=True, exist_ok=True)
    if args.record or args.quick:
        record(args, out)
    if args.live:
        print(json.dumps(live(args, out)))
        return
    if args.replay or args.quick:
        recorded = json.loads((out / "curves.json").read_text())
        print(json.dumps(replay_all(recorded["curves"], recorded["meta"]["epochs"], candidates, max(3, args.orders),
                                    samplers.DEFAULT_PRUNER)))


def _tiny_data(root: Path) -> Path:
    from tests.samples import make_image_folder

    return make_image_folder(root, n_train=256, n_test=64)


if __name__ == "__main__":
    main()

"""Keep a long run's state in git: copy the study database and the small artifacts of a
running or finished `benchmarks/long_runs.sh` into this checkout's benchmarks/results/search/.

    python benchmarks/keep.py --from /work/wt-search     # then git add benchmarks/results/search && git commit

The database is copied with SQLite's backup API (a consistent snapshot even while workers
write to it). Every PNG artifact is copied; weights only for the trials worth loading later:
the search's 3 best trials and its confirmed ones (the candidates of `best`, and what
`interpolate --trial best` loads) and the first seed of each B.1 point. The copy records which weights it left out (study user attribute
`weights_not_kept`) and says so in a dashboard note on the study and on each such trial, so
`interpolate` and optuna-dashboard say "not kept" instead of failing on a missing file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = Path("benchmarks/results/search")
TOP_KEPT = 3  # the search's best trials whose weights are kept (confirm's --top)
KEPT_RULE = ("benchmarks/results/search keeps the weights of the search's 3 best and confirmed trials and of each B.1 "
             "point's first seed; every trial's images are kept")
NOT_KEPT = f"The weights of this trial were not kept in this copy of the study ({KEPT_RULE})."
def snapshot(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".db.tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True) as source, sqlite3.connect(tmp) as target:
        source.backup(target)
    tmp.replace(dst)


def keep(src_root: Path, dst_root: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from vae_search.artifacts import WEIGHTS_ATTR
    from vae_search.notes import update_note
    from vae_search.storages import trial_handle
    from vae_search.study import top_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    snapshot(src_root / RESULTS / "studies.db", dst_root / RESULTS / "studies.db")
    storage = f"sqlite:///{dst_root / RESULTS / 'studies.db'}"
    names = optuna.get_all_study_names(storage)
    keep_weights: set[str] = set()
    weights_ids: set[str] = set()
    confirmed: set[int] = set()
    if "search-confirm" in names:
        runs = optuna.load_study(study_name="search-confirm", storage=storage).get_trials(deepcopy=False)
        confirmed = {int(t.user_attrs["source_trial"]) for t in runs if "source_trial" in t.user_attrs}
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        # the search's current best few: what `confirm --top 3` will retrain and `interpolate --trial best` loads
        top = {t.number for t in top_trials(study, TOP_KEPT)}
        dropped = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            wid = t.user_attrs.get(WEIGHTS_ATTR)
            if wid is None:
                continue
            weights_ids.add(wid)
            wanted = ((name == "search" and (t.number in confirmed or t.number in top))
                      or (name == "b1" and t.user_attrs.get("seed") == 0))
            if wanted:
                keep_weights.add(wid)
                update_note(trial_handle(study, t), "keep", "")  # left out by an earlier copy, kept now
            else:
                dropped.append(t.number)
                update_note(trial_handle(study, t), "keep", NOT_KEPT)
        study.set_user_attr("weights_not_kept", dropped)
        update_note(study, "keep", f"Weights not kept in this copy for trial(s) {', '.join(map(str, dropped))}: "
                    f"{KEPT_RULE}." if dropped else "")
    src_art, dst_art = src_root / RESULTS / "artifacts", dst_root / RESULTS / "artifacts"
    dst_art.mkdir(parents=True, exist_ok=True)
    copied = size = 0
    for f in src_art.iterdir() if src_art.is_dir() else []:
        if f.name.startswith("."):
            continue
        if f.name in weights_ids and f.name not in keep_weights:
            (dst_art / f.name).unlink(missing_ok=True)
            continue
        if not (dst_art / f.name).exists() or (dst_art / f.name).stat().st_size != f.stat().st_size:
            shutil.copy2(f, dst_art / f.name)
        copied += 1
        size += f.stat().st_size
    status = {name: study_status(optuna.load_study(study_name=name, storage=storage)) for name in sorted(names)}
    (dst_root / RESULTS / "status.json").write_text(json.dumps(status, indent=1) + "\n")
    for name, st in status.items():
        print(f"  {name}: {st['finished']} finished ({st['complete']} complete, {st['pruned']} pruned), {st['failed']} "
              f"failed, {st['running']} running; {st['wall_h']:.2f} h of wall time with trials running, "
              f"{st['trial_h']:.2f} h of trial time; best {st['best']}")
    print(f"kept {dst_root / RESULTS}: studies {', '.join(sorted(names))}; {copied} artifacts ({size / 2**20:.1f} MiB), "
          f"weights of {len(keep_weights)} trials")


def study_status(study) -> dict:
    """Counts, and the wall time in all from the trials' own timestamps: the union of every
    trial's [start, end], so time spent across several sessions adds up and a pause between
    them does not count."""
    from optuna.trial import TrialState

    from vae_search.tables import running_clock

    trials = study.get_trials(deepcopy=False)
    spans = [(t.datetime_start, t.datetime_complete) for t in trials if t.datetime_start and t.datetime_complete]
    wall = running_clock(spans)(max(b for _, b in spans)) if spans else 0.0
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    best = min(complete, key=lambda t: t.values[0]) if complete else None
    return {"finished": count[TrialState.COMPLETE] + count[TrialState.PRUNED], "complete": count[TrialState.COMPLETE],
            "pruned": count[TrialState.PRUNED], "failed": count[TrialState.FAIL], "running": count[TrialState.RUNNING],
            "wall_h": round(wall / 3600, 3), "trial_h": round(sum((b - a).total_seconds() for a, b in spans) / 3600, 3),
            "workers": sorted({t.user_attrs.get("jobs") for t in trials if t.user_attrs.get("jobs")}),
            "precision": sorted({t.user_attrs.get("precision") for t in trials if t.user_attrs.get("precision")}),
            "best": None if best is None else {"trial": best.number, "neg_elbo": round(best.values[0], 2),
                                               "params": best.params}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="src", type=Path, required=True, help="the worktree that runs long_runs.sh")
    ap.add_argument("--to", dest="dst", type=Path, default=ROOT, help="the checkout to copy into (this one)")
    args = ap.parse_args()
    keep(args.src, args.dst)


if __name__ == "__main__":
    main()

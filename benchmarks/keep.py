"""Keep a long run's state in git: copy the study database and the small artifacts of a
running or finished `benchmarks/long_runs.sh` into this checkout's benchmarks/results/search/.

    python benchmarks/keep.py --from /work/wt-search     # then git add benchmarks/results/search && git commit

The database is copied with SQLite's backup API (a consistent snapshot even while workers
write to it). Every PNG artifact is copied; weights only for the trials worth loading later:
the search's 3 best trials and its confirmed ones (the candidates of `best`, and what
`interpolate --trial best` loads) and the first seed of each B.1 point. The copy records which weights it left out (study user attribute
`weights_not_kept`) and says so in a dashboard note on the study and on each such trial, so
`interpolate` and optuna-dashboard say "not kept" instead of failing on a missing file.

    python benchmarks/keep.py --check     # .ci/run: the committed studies are as `best` leaves them

The docs tell a user to run `vae-search best` on the committed studies and say it writes its
note only where it differs, so the file stays as committed. A change to what `best` writes
must come with those notes refreshed (run the command on each study, then commit the file):
--check runs `best` on a copy of each and fails, naming the file, where a byte changed. It is a
CI step rather than a test, as the tests never read the long runs' results.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import sys
import tempfile
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


# `vae-search best` on a committed study, as the docs write it
BEST_COMMAND = re.compile(r"vae-search best --study-name (\S+) --storage sqlite:///(benchmarks/results/\S+?\.db)")


def committed_best_commands(root: Path) -> set[tuple[str, str]]:
    """(study, database) of every `vae-search best` the docs tell a user to run on a committed
    study, and the B.1 grid beside the search (the README's `show --study-name b1` there)."""
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "benchmarks").rglob("README.md"))]
    found = {m for doc in docs if doc.is_file() for m in BEST_COMMAND.findall(doc.read_text())}
    if (root / RESULTS / "studies.db").is_file():
        found.add(("b1", str(RESULTS / "studies.db")))
    return found


def _best(study: str, storage: str) -> tuple[int, str]:
    """`vae-search best` in this process (a process for each took four times as long: 31.6
    against 7.5 s for the ten committed studies, 2 AVX2 cores): its exit status and the last
    line it wrote to stderr."""
    import contextlib
    import io

    from vae_search.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(["best", "--study-name", study, "--storage", storage])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, (err.getvalue().strip().splitlines() or ["?"])[-1]


def check(root: Path, commands: set[tuple[str, str]]) -> list[str]:
    """One line for each committed study of `commands` (committed_best_commands: the docs')
    that `best` would change, or that it cannot read."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="keep-check-") as tmp:
        for i, (study, db) in enumerate(sorted(commands)):
            committed = root / db
            if not committed.is_file():
                problems.append(f"{db}: named by the docs, not committed")
                continue
            copy = Path(tmp) / f"{i}.db"
            shutil.copy(committed, copy)
            code, last = _best(study, f"sqlite:///{copy}")
            if code != 0:
                problems.append(f"{db}: `best --study-name {study}` exited {code}: {last}")
            elif copy.read_bytes() != committed.read_bytes():
                problems.append(f"{db}: `best --study-name {study}` changed it: run `vae-search best --study-name "
                                f"{study} --storage sqlite:///{db}` and commit the file")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="src", type=Path, help="the worktree that runs long_runs.sh")
    ap.add_argument("--to", dest="dst", type=Path, default=ROOT, help="the checkout to copy into, or to --check (this one)")
    ap.add_argument("--check", action="store_true",
                    help="copy nothing: check that `best` leaves every committed study the docs name as committed")
    args = ap.parse_args()
    if args.check:
        commands = committed_best_commands(args.dst)
        if not commands:
            sys.exit(f"keep.py: no `vae-search best` on a committed study in {args.dst}'s docs: nothing to check")
        problems = check(args.dst, commands)
        for line in problems:
            print(f"keep.py: {line}", file=sys.stderr)
        print(f"keep.py: {len(commands)} committed studies checked: "
              + (f"{len(problems)} problem(s) above" if problems else "`best` leaves each as committed"))
        sys.exit(1 if problems else 0)
    if args.src is None:
        ap.error("--from is required (or --check)")
    keep(args.src, args.dst)


if __name__ == "__main__":
    main()

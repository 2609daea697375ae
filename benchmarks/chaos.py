"""Faults at scale: workers killed at random and a database restart, then a count of what was
lost or duplicated (both must be 0).

    python benchmarks/chaos.py                          # about 5 minutes of kills, 4 workers
    python benchmarks/chaos.py --minutes 1 --workers 3 --preset tests/small.toml  # the test suite's short run

Starts a real PostgreSQL server (tests/pgserver.py, the test fixtures' way: initdb in a
temporary folder, 127.0.0.1) and tiny generated CIFAR-10 data, then W worker processes of the
real CLI on one storage with a 2 s heartbeat: two on `grid --preset b1 --seeds 2` (or `--preset`'s grid), the rest on
`optimize --trials 12`. For `--minutes`, a supervisor SIGKILLs a random worker every few
seconds (exponential gaps, seeded) and starts a replacement of the same kind; at half time it
restarts the server (fast shutdown, start). Then it stops killing and the workers finish on
their own (a worker that stops with an error is started again).

At the end it checks the studies: every grid (point, seed) COMPLETE exactly once, exactly 12
finished search trials, no trial left RUNNING, and every COMPLETE trial's weights load and
re-evaluate to its stored metrics. The last line is one JSON object with the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pgserver import PgServer  # noqa: E402
from tests.samples import make_image_folder  # noqa: E402

GRID_SEEDS = 2
SEARCH_TRIALS = 12


def _stopped_with_error(proc: subprocess.Popen) -> bool:
    """Ended, neither done (0) nor killed by the supervisor (SIGKILL)."""
    return proc.poll() not in (None, 0, -signal.SIGKILL)


class Fleet:
    """The workers: their roles, processes, and what happened to them."""

    def __init__(self, commands: dict[str, list[str]], roles: list[str], env: dict, logs: Path) -> None:
        self.commands, self.env, self.logs = commands, env, logs
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.restarted: set[int] = set()  # pids of failed workers already replaced
        self.log_of: dict[int, Path] = {}
        self.started = self.errors = 0
        for role in roles:
            self.start(role)

    def start(self, role: str) -> None:
        self.started += 1
        path = self.logs / f"worker-{self.started:03d}-{role}.log"
        with open(path, "w") as log:  # the child holds its own copy of the descriptor
            proc = subprocess.Popen([sys.executable, "-m", "vae_search", *self.commands[role]], env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((role, proc))
        self.log_of[proc.pid] = path

    def live(self) -> list[tuple[str, subprocess.Popen]]:
        return [(r, p) for r, p in self.procs if p.poll() is None]

    def reap(self) -> None:
        """Restart a worker that stopped with an error (a database that was down when it
        started, say); one that finished its work stays finished."""
        for role, proc in list(self.procs):
            if _stopped_with_error(proc) and proc.pid not in self.restarted:
                self.restarted.add(proc.pid)
                self.errors += 1
                time.sleep(1)
                self.start(role)

    def print_errors(self, most: int = 4, lines: int = 12) -> None:
        """The last lines of the logs of workers that stopped with an error (not killed, not
        finished): what a failed run in CI needs in its own output, the folder being gone."""
        bad = [(r, p) for r, p in self.procs if _stopped_with_error(p)]
        for role, proc in bad[-most:]:
            tail = self.log_of[proc.pid].read_text(errors="replace").splitlines()[-lines:]
            print(f"--- {self.log_of[proc.pid].name} ({role}, exit {proc.returncode}), last lines:", flush=True)
            print("\n".join(tail), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long the supervisor kills workers")
    ap.add_argument("--workers", type=int, default=4, help="workers at a time: 2 on the grid, the rest on the search")
    ap.add_argument("--kill-every", type=float, default=5.0, help="mean seconds between kills")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--preset", default="b1", help="the grid the grid workers run: b1, or a TOML file (tests/small.toml)")
    ap.add_argument("--images", type=int, default=768, help="training images (a quarter as many for validation)")
    ap.add_argument("--heartbeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, artifacts)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="vae-search-chaos-"))
    (tmp / "logs").mkdir()
    server = PgServer()
    server.start()
    start = time.monotonic()
    try:
        storage = server.create_database("chaos")
        data = make_image_folder(tmp / "data", n_train=args.images, n_test=args.images // 4)
        env = {**os.environ, "VAE_SEARCH_CACHE": str(tmp / "cache"), "VAE_SEARCH_JOBS": "1", "OMP_NUM_THREADS": "1",
               "VAE_SEARCH_OUTAGE_S": "60", "PYTHONUNBUFFERED": "1"}
        from vae_search.data import load_cifar10

        load_cifar10(data, cache_dir=tmp / "cache")  # decoded once, not by every worker
        common = ["--epochs", str(args.epochs), "--batch-size", "64", "--data-dir", str(data), "--storage", storage,
                  "--artifact-dir", str(tmp / "artifacts"), "--heartbeat", str(args.heartbeat), "--compile", "off"]
        commands = {"grid": ["grid", "--preset", args.preset, "--seeds", str(GRID_SEEDS), *common],
                    "search": ["optimize", "--trials", str(SEARCH_TRIALS), *common]}
        roles = ["grid", "grid", *["search"] * max(1, args.workers - 2)][: max(args.workers, 3)]
        fleet = Fleet(commands, roles, env, tmp / "logs")
        killed = restarts = 0
        deadline = start + 60 * args.minutes
        restart_at = start + 30 * args.minutes
        next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every)
        print(f"chaos: {len(roles)} workers on {storage.rsplit('@', 1)[1]} for {args.minutes:g} min, a kill every "
              f"~{args.kill_every:g} s, one server restart; logs in {tmp / 'logs'}", flush=True)
        while time.monotonic() < deadline:
            # reaped before asking who is alive: a last worker that died with an error (a
            # database down at its start) is restarted, not taken for the end of the work
            fleet.reap()
            if not fleet.live():
                break
            now = time.monotonic()
            if restarts == 0 and now >= restart_at:
                server.restart()
                restarts += 1
                print(f"  {now - start:5.0f} s: PostgreSQL restarted", flush=True)
            if now >= next_kill:
                role, victim = rng.choice(fleet.live())
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed += 1
                fleet.start(role)
                next_kill = now + rng.expovariate(1 / args.kill_every)
            time.sleep(0.2)
        if restarts == 0:  # the work ended before half time: restart anyway, so the count is honest
            server.restart()
            restarts += 1
        print(f"  {time.monotonic() - start:5.0f} s: {killed} kills; no more kills, waiting for the workers to finish",
              flush=True)
        finish_deadline = time.monotonic() + max(600, 120 * args.minutes)
        while time.monotonic() < finish_deadline:
            fleet.reap()
            if not fleet.live():
                break
            time.sleep(0.5)
        hung = len(fleet.live())
        for _, p in fleet.live():
            p.kill()
        result = check(storage, args.preset, data, tmp / "artifacts", tmp / "cache")
        result.update(killed=killed, restarts=restarts, worker_errors=fleet.errors, workers_started=fleet.started,
                      hung=hung, wall_s=round(time.monotonic() - start, 1))
        print(f"grid: {result['grid_complete']} of {result['grid_points']} (point, seed) complete; search: "
              f"{result['search_finished']} of {SEARCH_TRIALS} finished; {result['running_left']} RUNNING left; "
              f"{result['weights_checked']} checkpoints re-evaluated, {result['bad_weights']} bad; "
              f"{result['retried']} trials failed and retried; {killed} workers killed, {restarts} server restart(s)")
        keys = ("killed", "retried", "restarts", "lost", "duplicates", "complete", "wall_s", "running_left", "bad_weights",
                "hung", "worker_errors")
        if any(result[k] for k in ("lost", "duplicates", "running_left", "bad_weights", "hung")):
            fleet.print_errors()
            args.keep = True  # the logs and the artifacts are what a failure is read from
            print(f"something was lost or left behind: kept {tmp} (logs/, artifacts/)", flush=True)
        print(json.dumps({k: result[k] for k in keys}))
    finally:
        server.cleanup()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def reevaluate(store, trial, data) -> tuple[str, float, float]:
    """A complete trial's weights evaluated again as its training evaluated them: (precision,
    stored neg_elbo, re-evaluated neg_elbo). In the trial's own recorded precision: a bf16
    trial (optimize's `auto` on AVX512_BF16 cores) re-evaluated in fp32 differs by more than
    float noise, and that is no sign of a bad checkpoint."""
    import torch

    from vae_search.artifacts import load_model
    from vae_search.train import evaluate

    a = trial.user_attrs
    precision = a.get("precision", "fp32")
    model = load_model(store, trial)
    again = evaluate(model, data.test, trial.params["beta"], int(a["seed"]) + 1, torch.device("cpu"), precision)
    return precision, float(a["neg_elbo"]), again["neg_elbo"]


def check(storage_url: str, preset_name: str, data_dir: Path, artifact_dir: Path, cache: Path) -> dict:
    """What the studies hold, against what the workers owed."""
    import optuna
    from optuna.trial import TrialState

    from vae_search.artifacts import artifact_store
    from vae_search.data import load_cifar10
    from vae_search.definitions import load_preset

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    preset = load_preset(preset_name)
    grid = optuna.load_study(study_name=preset.name, storage=storage_url).get_trials()
    search = optuna.load_study(study_name="search", storage=storage_url).get_trials()
    owed = Counter({(p.params["latent_dim"], p.params["base_channels"], s): 0
                    for p in preset.points for s in range(GRID_SEEDS)})
    for t in grid:
        if t.state == TrialState.COMPLETE:
            owed[(t.params["latent_dim"], t.params["base_channels"], t.user_attrs["seed"])] += 1
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in search)
    lost = sum(1 for n in owed.values() if n == 0) + max(0, SEARCH_TRIALS - finished)
    duplicates = sum(n - 1 for n in owed.values() if n > 1) + max(0, finished - SEARCH_TRIALS)
    data = load_cifar10(data_dir, cache_dir=cache)
    store, bad, checked = artifact_store(artifact_dir), 0, 0
    for name, t in [(n, t) for n, ts in ((preset.name, grid), ("search", search)) for t in ts if t.state == TrialState.COMPLETE]:
        try:
            precision, stored, again = reevaluate(store, t, data)
            rel = abs(again - stored) / abs(stored)
            ok = rel <= 1e-5  # float noise of thread counts
            if not ok:
                print(f"  trial {t.number} of study {name!r}: stored neg_elbo {stored!r}, re-evaluated in {precision} "
                      f"{again!r} (relative difference {rel:.2e} > 1e-5)", flush=True)
        except Exception as e:  # a missing or corrupt checkpoint
            print(f"  trial {t.number} of study {name!r}: {e}", flush=True)
            ok = False
        checked += 1
        bad += not ok
    everything = grid + search
    return {
        "grid_points": len(owed), "grid_complete": sum(1 for n in owed.values() if n >= 1), "search_finished": finished,
        "lost": lost + bad, "duplicates": duplicates, "bad_weights": bad, "weights_checked": checked,
        "complete": sum(t.state == TrialState.COMPLETE for t in everything),
        "running_left": sum(t.state == TrialState.RUNNING for t in everything),
        "retried": sum("retried as trial" in t.user_attrs.get("fail_reason", "") for t in everything),
    }


if __name__ == "__main__":
    main()

"""How long a reading command takes from the shell prompt back to the prompt, as the console
script runs it (`vae_search.__main__.entry`: the command, then a quick exit), against two
baselines timed in the same run, alternately, on one synthetic B.1 grid (no training, no
data): the same command ending with Python's own shutdown (what `entry` skips), and that
with torch and torchvision imported first, as every command did before the reading
commands stopped importing them; and the console script with scipy.stats imported first, as
`best` and `show` did for Welch's test before noise.py took Student's t from scipy.special:

    python benchmarks/startup.py            # 5 rounds; the last line is one JSON object
    python benchmarks/startup.py --jobs-parent   # a --jobs 2 search's time to its first trial

Each round starts a fresh interpreter per command (what a user's shell does); the figures
are the medians. The OS file cache is warm after the first round, as on a machine that ran
the tool before; a cold first start is slower for all three.

--jobs-parent times a training command instead: `optimize --trials 2 --jobs 2 --epochs 1`
on tiny generated data (its cache decoded before the first round), from the command's start
to the first `[worker N] trial` line (the parent's imports, data, study and the workers'
start-up), against the same parent with torchvision imported first, as it was before data.py
imported torchvision only where images are decoded; the workers are the same in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMMANDS = {"best": ["best"], "show": ["show"]}
ENTRY = "from vae_search.__main__ import entry\nentry()\n"  # the console script
# The baselines: cli.main, which ends in sys.exit and so in Python's module teardown; and
# that after `import torch, torchvision`, which the old import chain (run -> objective ->
# artifacts -> images -> torchvision) paid for every command.
RUN = "import sys\n{pre}from vae_search.cli import main\nmain(sys.argv[1:])\n"


def _time(code: str, args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"startup: {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return elapsed


def _first_trial(code: str, args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds from the command's start to its first trial's first line."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first, tail = None, []
    for line in proc.stderr:
        if first is None and line.startswith("[worker") and " trial " in line:
            first = time.perf_counter() - start
        tail = [*tail[-4:], line.rstrip()]
    if proc.wait() != 0 or first is None:
        sys.exit(f"startup: {' '.join(args)} failed (exit {proc.returncode}): {tail}")
    return first


def jobs_parent(rounds: int, warmup: int) -> dict:
    from tests.samples import make_batches
    from vae_search.data import load_cifar10

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        make_batches(cwd)
        load_cifar10(cwd, cache_dir=cwd / "cache")  # decoded once, before any round
        env = {**os.environ, "VAE_SEARCH_CACHE": str(cwd / "cache"), "VAE_SEARCH_JOBS": ""}
        args = ["optimize", "--trials", "2", "--jobs", "2", "--epochs", "1", "--data-dir", str(cwd), "--limit-train", "128",
                "--limit-val", "32", "--batch-size", "64", "--compile", "off", "--storage", f"sqlite:///{cwd}/s.db",
                "--artifact-dir", str(cwd / "art")]
        variants = {"now": ENTRY, "with_torchvision": "import torchvision\n" + ENTRY}
        times: dict[str, list[float]] = {v: [] for v in variants}
        for i in range(warmup + rounds):
            for variant, code in variants.items():
                (cwd / "s.db").unlink(missing_ok=True)  # a new search each time, its data cache kept
                shutil.rmtree(cwd / "art", ignore_errors=True)
                took = _first_trial(code, args, cwd, env)
                if i >= warmup:
                    times[variant].append(took)
    now, before = (statistics.median(times[v]) for v in variants)
    print(f"optimize --jobs 2, to the first trial: {now:.2f} s (median of {rounds}); with torchvision imported by the "
          f"parent {before:.2f} s ({before / now:.2f}x)", flush=True)
    return {"jobs_parent_first_trial_s": round(now, 3), "jobs_parent_with_torchvision_s": round(before, 3),
            "jobs_parent_speedup": round(before / now, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per command and variant (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds first, to warm the OS file cache (default 1; 0 for a smoke run)")
    parser.add_argument("--commands", default=",".join(COMMANDS),
                        help=f"the reading commands to time, comma-separated (default {','.join(COMMANDS)})")
    parser.add_argument("--jobs-parent", action="store_true",
                        help="time a --jobs 2 search's start to its first trial instead of the reading commands")
    args = parser.parse_args()
    unknown = [name for name in args.commands.split(",") if name not in COMMANDS]
    if unknown:
        parser.error(f"--commands: {', '.join(unknown)} is not one of {', '.join(COMMANDS)}")
    commands = {name: COMMANDS[name] for name in args.commands.split(",")}
    if args.jobs_parent:
        import torch

        print(json.dumps({"cpu": torch.backends.cpu.get_cpu_capability(), "rounds": args.rounds,
                          **jobs_parent(args.rounds, args.warmup)}))
        return

    import optuna
    import torch

    from tests.samples import synthetic_grid

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        storage = f"sqlite:///{cwd}/s.db"
        synthetic_grid(storage, {1: [1912.0, 1913.0], 2: [1872.0, 1873.0], 3: [1845.0, 1846.0], 4: [1846.0, 1847.0]})
        variants = {"now": ENTRY, "python_exit": RUN.format(pre=""),
                    "with_torch": RUN.format(pre="import torch, torchvision\n"),
                    "with_scipy_stats": "import scipy.stats\n" + ENTRY}
        times: dict[str, dict[str, list[float]]] = {c: {v: [] for v in variants} for c in commands}
        for _ in range(args.warmup):  # untimed: the file cache, as on a machine that ran the tool
            for cmd in commands.values():
                for code in variants.values():
                    _time(code, [*cmd, "--storage", storage], cwd)
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                for variant, code in variants.items():
                    times[name][variant].append(_time(code, [*cmd, "--storage", storage], cwd))

    result: dict[str, object] = {"cpu": torch.backends.cpu.get_cpu_capability(), "rounds": args.rounds}
    for name in commands:
        now, slow_exit, before, stats = (statistics.median(times[name][v]) for v in variants)
        print(f"{name}: {now:.2f} s (median of {args.rounds}); with Python's own exit {slow_exit:.2f} s "
              f"({slow_exit / now:.2f}x); with torch and torchvision imported first too {before:.2f} s "
              f"({before / now:.2f}x); with scipy.stats imported first {stats:.2f} s ({stats / now:.2f}x)", flush=True)
        result[f"{name}_s"], result[f"{name}_python_exit_s"] = round(now, 3), round(slow_exit, 3)
        result[f"{name}_with_torch_s"], result[f"{name}_with_scipy_stats_s"] = round(before, 3), round(stats, 3)
        result[f"{name}_exit_speedup"], result[f"{name}_speedup"] = round(slow_exit / now, 2), round(before / now, 2)
        result[f"{name}_scipy_stats_speedup"] = round(stats / now, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

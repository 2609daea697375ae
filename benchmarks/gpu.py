"""The GPU path, checked in one command: the CUDA tests, the full-data B.1 grid in bf16,
training throughput with 1, 2 and 4 workers sharing the GPU and, with --search, the README's
search itself.

    python benchmarks/gpu.py --data-dir data/cifar10-jpeg.tar.gz     # on a GPU machine: 4.5 minutes on an H200
    python benchmarks/gpu.py --data-dir data/cifar10-jpeg.tar.gz --search 50    # 5 minutes in all on an H100
    python benchmarks/gpu.py --device cpu --quick                    # the same code on tiny data, 1 and 2 workers (the test suite)

On a bare GPU machine (the `device` tool sends the checkout, not ../shared), from the
repository root, with the archive copied into the working tree first:

    python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && \\
        .venv/bin/python benchmarks/gpu.py --data-dir data/cifar10-jpeg.tar.gz

Where that machine has no package index but has PyTorch (the `device` tool's), the missing
packages travel as wheels downloaded here for its Python (optuna, sqlalchemy, alembic,
colorlog, mako, cmaes, optuna-dashboard, bottle; plotly and narwhals too where `report` is
run there: the device README's `pip download` recipe), installed there with `pip install --no-index --no-deps --target
/tmp/site .whl/*.whl` and PYTHONPATH=/tmp/site; that is how benchmarks/results/gpu/ was
measured.

Prints progress on stderr and, as its last line on stdout, one JSON object (exit status 1,
with what failed on stderr and in its `problems`, when a part did not pass or a loss is more
than AGREE_PCT from the CPU's fp32 for the same point):
  - cuda_tests: what `pytest -m cuda` said (passed, failed, skipped, which warnings), and its exit code;
  - grid: per B.1 config, the trial's time_s, val and recon loss in bf16 on the device,
    beside the CPU fp32 figures of benchmarks/results/b1-cpu-fp32.json (measured from a fresh
    clone on 2 AVX2 cores) and the difference in percent; the grid's wall time and --jobs;
  - throughput: training images per second of latent 16 / base 32 (batch 128, bf16 on
    CUDA) for 1, 2 and 4 worker processes (--workers for others) on the device at once, their sum, and each
    worker's peak GPU memory (torch.cuda.max_memory_allocated), so that the default --jobs
    on a GPU can be set from a measurement;
  - search (with --search N): `optimize --trials N` with the defaults, then `confirm --top 3
    --seeds 3`: their wall times and where each went (`*_timing`: from the command's start
    to its first trial's, the trials, from the last trial's end to the command's), the
    trials' states, the share of the unpruned epochs trained, distinct parameter sets, the
    winner as `best` says it, and the points this search shares with the CPU search in
    benchmarks/results/search/ (same parameters, seed, data and budget: the first trials of
    searches with the same --seed draw the same points), with the relative difference of
    their values. A part that outlasts
    --search-timeout is stopped as a Ctrl-C stops it (its running trials FAIL
    "interrupted") and the study is reported as it stands.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CPU_REFERENCE = ROOT / "benchmarks" / "results" / "b1-cpu-fp32.json"


def say(message: str) -> None:
    print(f"gpu.py: {message}", file=sys.stderr, flush=True)


def cuda_tests(timeout: float) -> dict:
    start = time.monotonic()
    try:
        # In one process, whatever pyproject's addopts say: the tests share the one GPU, and a
        # bare GPU machine may have pytest without pytest-xdist (addopts' `-n auto`).
        proc = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                               "tests/test_cuda.py"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"rc": None, "timed_out": True, "seconds": round(time.monotonic() - start, 1),
                "tail": (e.stdout or b"")[-2000:].decode(errors="replace")}  # bytes, whatever text= says
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:]
    # "error" matches pytest's "5 errors" too: one key, whatever the count
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"rc": proc.returncode, "summary": summary, **counts, "failures": failed[:10],
            "warnings": pytest_warnings(proc.stdout), "seconds": round(time.monotonic() - start, 1)}


def pytest_warnings(stdout: str) -> list[str]:
    """"test: Category: message" for each warning in pytest's warnings summary: a GPU check is
    a rare event, and a bare "1 warning" in its summary told nobody which."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "warnings summary" in line and line.startswith("=")), None)
    if start is None:
        return []
    found, test = [], ""
    for line in lines[start + 1:]:
        if line.startswith(("-- Docs:", "=")):
            break
        if line and not line.startswith(" "):
            test = line  # the test (or tests) that warned
        elif m := re.match(r"\s+\S+:\d+: (\w+): (.*)", line):
            found.append(f"{test}: {m[1]}: {m[2]}")
    return found[:10]


def grid(args: argparse.Namespace, tmp: Path) -> dict:
    import optuna
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp}/gpu.db"
    limits = ["--limit-train", "256", "--limit-val", "64", "--epochs", "1", "--batch-size", "64"] if args.quick else []
    cmd = [sys.executable, "-m", "vae_search", "grid", "--preset", "b1", "--precision", args.precision, "--device",
           args.device, "--storage", storage, "--artifact-dir", str(tmp / "art"), "--study-name", "b1-gpu",
           *(["--data-dir", args.data_dir] if args.data_dir else []), *(["--jobs", str(args.jobs)] if args.jobs else []),
           *limits]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.grid_timeout)
    except subprocess.TimeoutExpired:
        proc = None  # the trials finished so far are in the study: report them rather than nothing
    timed_out = proc is None
    wall = time.monotonic() - start
    if proc is not None and proc.returncode != 0:
        return {"rc": proc.returncode, "error": proc.stderr.strip().splitlines()[-1:] or ["?"], "wall_s": round(wall, 1)}
    reference = json.loads(CPU_REFERENCE.read_text())["configs"]
    out: dict = {"rc": 0, "timed_out": timed_out, "wall_s": round(wall, 1), "precision": args.precision, "configs": {}}
    trials = optuna.load_study(study_name="b1-gpu", storage=storage).get_trials(states=(TrialState.COMPLETE,))
    for t in sorted(trials, key=lambda t: t.user_attrs["config"]):
        a, ref = t.user_attrs, reference[str(t.user_attrs["config"])]
        out["jobs"] = a["jobs"]
        out["device_name"] = a.get("device_name")
        out["configs"][a["config"]] = {
            "time_s": round(a["time_s"], 1), "val_loss": round(a["val_loss"], 2), "recon_loss": round(a["recon_loss"], 2),
            "cpu_fp32": ref, "val_diff_pct": round(100 * (a["val_loss"] - ref["val_loss"]) / ref["val_loss"], 3),
            "recon_diff_pct": round(100 * (a["recon_loss"] - ref["recon_loss"]) / ref["recon_loss"], 3),
        }
    return out


def search(args: argparse.Namespace, tmp: Path) -> dict:
    """The README's search with every default (the device's default --jobs, TPE, the default
    pruner), then `confirm --top 3 --seeds 3` and `best`: wall times, what the pruner saved,
    the winner; and, where the CPU search in benchmarks/results/search/ trained the same point
    with the same seed on the same data and budget (the first trials of any search with the
    same --seed draw the same parameters), how far this device's value is from the CPU's."""
    import optuna
    from optuna.trial import TrialState

    db = Path(args.search_db) if args.search_db else tmp / "search.db"
    storage = f"sqlite:///{db.resolve()}"
    limits = ["--limit-train", "256", "--limit-val", "64", "--epochs", "2", "--batch-size", "64"] if args.quick else []
    common = ["--device", args.device, "--precision", args.precision, "--storage", storage, "--artifact-dir",
              str(tmp / "search-art"), *(["--data-dir", args.data_dir] if args.data_dir else []), *limits]
    top, seeds = (2, 2) if args.quick else (3, 3)
    out: dict = {"trials": args.search, "storage": str(db)}
    for part, name, cmd in (
            ("optimize", "search", ["optimize", "--trials", str(args.search), *common]),
            ("confirm", "search-confirm", ["confirm", "--study-name", "search", "--top", str(top), "--seeds", str(seeds),
                                           *common])):
        started, start = datetime.now(), time.monotonic()  # naive local time, as Optuna stamps its trials
        proc = subprocess.Popen([sys.executable, "-m", "vae_search", *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = proc.communicate(timeout=args.search_timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM, as a user's Ctrl-C: vae-search ends its running trials as FAIL "interrupted" and keeps the
            # rest (a SIGKILL would leave them RUNNING); then what the study holds is still measured. It gets
            # longer than its own grace for a worker that does not stop (after which it kills it and fails
            # its trial itself): killed at the same moment, it could not.
            from vae_search.workers import STOP_GRACE_S

            proc.terminate()
            try:
                proc.communicate(timeout=STOP_GRACE_S + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            out.update({"timed_out": part, f"{part}_wall_s": round(time.monotonic() - start, 1),
                        f"{part}_timing": _timing(storage, name, started, None)})
            break
        out[f"{part}_wall_s"] = round(time.monotonic() - start, 1)
        out[f"{part}_timing"] = _timing(storage, name, started, datetime.now())
        if proc.returncode != 0:
            return {**out, "rc": proc.returncode, "failed": part, "error": stderr.strip().splitlines()[-1:] or ["?"]}
    try:
        trials = optuna.load_study(study_name="search", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # optimize ended before it made the study
        return {**out, "rc": None}
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not done:
        return {**out, "rc": None, "states": dict(Counter(t.state.name for t in trials))}
    out.update(
        rc=None if "timed_out" in out else 0, jobs=done[0].user_attrs.get("jobs"),
        states=dict(Counter(t.state.name for t in trials)),
        # as pruning.py --live counts them: the epochs each trial ran, against all of them running the budget
        epochs_fraction=round(sum(t.user_attrs["epochs_run"] for t in done) / (done[0].user_attrs["epochs"] * len(done)), 3),
        distinct=len({tuple(sorted(t.params.items())) for t in done}),
    )
    out["vs_cpu_search"] = _against_cpu(storage)
    if out["rc"] is None:
        return out
    best = subprocess.run([sys.executable, "-m", "vae_search", "best", "--json", "--study-name", "search", "--storage",
                           storage], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if best.returncode == 0:
        chosen = json.loads(best.stdout)
        out["best"] = {"params": chosen["params"], "n": chosen["n"], "neg_elbo": chosen["neg_elbo"]}
    return out


def _timing(storage: str, name: str, started: datetime, ended: datetime | None) -> dict:
    """Where a command's wall time went: from its start to its first trial's (imports, data,
    the memory check, spawning the workers), the trials themselves, and from the last trial's
    end to the command's (joining the workers, the closing summary; None when it was cut
    short). Trials finished by an earlier command in the same storage are left out."""
    import optuna

    try:
        trials = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
                  if t.datetime_start and t.datetime_start >= started]
    except KeyError:
        trials = []
    if not trials:
        return {"trials": 0}
    first = min(t.datetime_start for t in trials)
    last = max((t.datetime_complete for t in trials if t.datetime_complete), default=None)
    return {"trials": len(trials), "startup_s": round((first - started).total_seconds(), 1),
            "trials_wall_s": round((last - first).total_seconds(), 1) if last else None,
            "finish_s": round((ended - last).total_seconds(), 1) if ended and last else None}


def _against_cpu(storage: str) -> dict:
    """Relative differences (%) where this search and the CPU one finished the same point with
    the same seed, data and budget (both studies: the search and its confirmation)."""
    import optuna
    from optuna.trial import TrialState

    reference = ROOT / "benchmarks" / "results" / "search" / "studies.db"
    diffs = []

    def finished(url: str, name: str) -> dict:
        try:
            study = optuna.load_study(study_name=name, storage=url)
        except KeyError:  # no such study there
            return {}
        return {(tuple(sorted(t.params.items())), t.user_attrs.get("seed"), t.user_attrs.get("data_fingerprint"),
                 t.user_attrs.get("epochs"), t.user_attrs.get("batch_size")): t.value
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}

    for name in ("search", "search-confirm"):
        mine, cpu = finished(storage, name), finished(f"sqlite:///{reference}", name)
        diffs += [100 * (mine[k] - cpu[k]) / cpu[k] for k in mine.keys() & cpu.keys()]
    if not diffs:
        return {"shared": 0}
    return {"shared": len(diffs), "min_abs_pct": round(min(map(abs, diffs)), 3), "max_abs_pct": round(max(map(abs, diffs)), 3),
            "mean_abs_pct": round(sum(map(abs, diffs)) / len(diffs), 3)}


def _worker(device: str, precision: str, images: int, epochs: int, ready, results) -> None:
    """One worker process: train latent 16 / base 32 on random images and report img/s of
    the epochs after the first (which pays for cuDNN's autotuning and any compilation)."""
    import torch

    from vae_search.data import Cifar10
    from vae_search.model import ModelConfig
    from vae_search.train import TrainConfig, train

    torch.set_num_threads(1)
    dev = torch.device(device)
    x = torch.randint(0, 256, (images + 512, 3, 32, 32), dtype=torch.uint8)
    data = Cifar10(x[:images], x[images:], "random")
    times: list[float] = []
    ready.wait()  # every worker starts its training at the same moment, once all have spawned and imported
    train(ModelConfig(16, 32), TrainConfig(epochs=epochs, batch_size=128), data, device=dev, compile=False,
          precision=precision, on_epoch=lambda m: times.append(m["time_s"]))
    per_epoch = (times[-1] - times[0]) / (len(times) - 1)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    results.put({"img_s": images / per_epoch, "peak_gpu_bytes": peak})


def throughput(args: argparse.Namespace) -> dict:
    # --quick checks the code, so one and two workers say all it can; more are measured on the GPU
    images, epochs = (256, 2) if args.quick else (args.throughput_images, 4)
    counts = args.workers or ((1, 2) if args.quick else (1, 2, 4))
    ctx = mp.get_context("spawn")  # CUDA does not survive fork
    out = {}
    for n in counts:
        results, ready = ctx.Queue(), ctx.Barrier(n, timeout=args.grid_timeout)
        procs = [ctx.Process(target=_worker, args=(args.device, args.precision, images, epochs, ready, results))
                 for _ in range(n)]
        for p in procs:
            p.start()
        got = [results.get(timeout=args.grid_timeout) for _ in procs]
        for p in procs:
            p.join()
        out[n] = {"img_s_total": round(sum(g["img_s"] for g in got)), "img_s_each": [round(g["img_s"]) for g in got],
                  "peak_gpu_mib_each": [round(g["peak_gpu_bytes"] / 2**20) if g["peak_gpu_bytes"] else None for g in got]}
        say(f"{n} worker(s): {out[n]['img_s_total']} img/s in all")
    return out


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts separated by commas, such as 1,4,8") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every worker count is at least 1")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="CIFAR-10 (archive or folder) for the grid; without it, torchvision's download")
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run of the same code")
    ap.add_argument("--precision", default=None, help="bf16 on cuda (default), fp32 on cpu")
    ap.add_argument("--jobs", type=int, default=None, help="workers of the grid (default: vae-search's default)")
    ap.add_argument("--quick", action="store_true", help="tiny data and epochs: checks the code, measures nothing")
    ap.add_argument("--skip-grid", action="store_true", help="leave out the full-data grid")
    ap.add_argument("--skip-tests", action="store_true", help="leave out the CUDA tests")
    ap.add_argument("--skip-throughput", action="store_true", help="leave out the throughput runs")
    ap.add_argument("--workers", type=_counts, default=None,
                    help="worker counts of the throughput runs, such as 1,4,8,16 (default 1,2,4; --quick 1,2)")
    ap.add_argument("--throughput-images", type=int, default=25_000, help="images per epoch in the throughput runs")
    ap.add_argument("--grid-timeout", type=float, default=420.0, help="seconds the grid may take")
    ap.add_argument("--search", type=int, default=0, metavar="TRIALS",
                    help="also run the README's search with this many trials (50 on a GPU), then confirm and best "
                         "(default 0: left out)")
    ap.add_argument("--search-db", help="keep the search's study database here (default: a temporary folder)")
    ap.add_argument("--search-timeout", type=float, default=420.0, help="seconds the search and confirm may take, each")
    ap.add_argument("--json", type=Path, help="also write the JSON here, rewritten after each part, so a run cut "
                                              "short by a time limit still leaves what it measured")
    args = ap.parse_args()
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    # the grid and the search measure vae-search's default --jobs on this device (or --jobs): not one a shell set
    os.environ.pop("VAE_SEARCH_JOBS", None)
    if args.quick and not args.data_dir:
        from tests.samples import make_batches

        args.data_dir = str(make_batches(Path(tempfile.mkdtemp(prefix="gpu-quick-"))).parent)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu.py: error: --device cuda but torch sees no CUDA GPU here; --device cpu --quick checks the code",
              file=sys.stderr)
        sys.exit(2)
    result: dict = {"device": args.device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "quick": args.quick}

    def keep(part: str, value: dict) -> None:
        result[part] = value
        say(f"{part}: {json.dumps(value)}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        os.environ.setdefault("VAE_SEARCH_CACHE", str(Path(tmp) / "cache"))
        if not args.skip_tests:
            say("CUDA tests ...")
            keep("cuda_tests", cuda_tests(timeout=300))  # 68 s on an H100 before the gradient tests came
        if not args.skip_grid:
            say("B.1 grid ...")
            keep("grid", grid(args, Path(tmp)))
        if not args.skip_throughput:
            say("throughput ...")
            keep("throughput", throughput(args))
        if args.search:
            say(f"the search, {args.search} trials ...")
            keep("search", search(args, Path(tmp)))
    result["problems"] = problems(result)
    print(json.dumps(result))
    if result["problems"]:
        say("the check did not pass: " + "; ".join(result["problems"]))
        sys.exit(1)


# How far a value on the device may be from the CPU's fp32 for the same point, seed, data and
# budget: issue 9's rule for bf16 against fp32. Measured on GPUs: within 0.061% (grid) and 0.123%
# (search); on commit 5c83e36 with torch 2.11 every compiled trial learned nothing (11-17% off),
# and this check passed all the same (benchmarks/results/gpu/h100-check-4/).
AGREE_PCT = 0.3


def problems(result: dict) -> list[str]:
    """What keeps the check from passing, one line per part: a CUDA test that failed or could
    not set up, a grid or search that ended in an error or ran out of its time, and losses
    that differ from the CPU's fp32 by more than AGREE_PCT (not with --quick: tiny data has no
    reference). The JSON line comes all the same (what did run was measured); the exit status
    says whether to trust it."""
    found = []
    tests = result.get("cuda_tests")
    if tests and (tests["rc"] not in (0, 5) or tests.get("failed") or tests.get("error")):
        found.append(f"cuda_tests: {tests.get('summary') or 'timed out'}")
    grid = result.get("grid")
    if grid and grid["rc"] != 0:
        found.append(f"grid: rc {grid['rc']}: {' '.join(grid['error'])}")
    elif grid and (grid["timed_out"] or len(grid["configs"]) != 4):
        found.append(f"grid: {len(grid['configs'])} of 4 configs" + (" (timed out)" if grid["timed_out"] else ""))
    if grid and grid["rc"] == 0 and not result.get("quick"):
        found += [f"grid: config {n}'s {what} loss {c[f'{what}_loss']} is {c[f'{what}_diff_pct']:+}% from the CPU's fp32 "
                  f"{c['cpu_fp32'][f'{what}_loss']} (more than {AGREE_PCT}%)"
                  for n, c in grid["configs"].items() for what in ("val", "recon") if abs(c[f"{what}_diff_pct"]) > AGREE_PCT]
    search = result.get("search")
    if search and "timed_out" in search:
        found.append(f"search: {search['timed_out']} timed out")
    elif search and search.get("rc") != 0:
        found.append(f"search: {' '.join(search.get('error', ['no finished trial']))}")
    against = (search or {}).get("vs_cpu_search", {})
    if against.get("shared") and against["max_abs_pct"] > AGREE_PCT and not result.get("quick"):
        found.append(f"search: {against['shared']} points shared with the CPU search differ from its fp32 values by up to "
                     f"{against['max_abs_pct']}% (more than {AGREE_PCT}%)")
    return found


if __name__ == "__main__":
    main()

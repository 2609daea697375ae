"""What vae_search.allocator's settings save: epochs of train() in fresh processes, as many at
once as `--jobs` starts here, with the system's allocator (`VAE_SEARCH_ALLOCATOR=system`) and
with vae-search's, in ABBA order.

    python benchmarks/allocator.py                 # about 10 minutes on 2 cores
    python benchmarks/allocator.py --quick         # smoke run

Each measurement starts `--jobs` new Python processes at once (both settings belong to a
process: torch reads its huge-page switch once, on import), each of which calls
`allocator.tune()` as the console script does (under VAE_SEARCH_ALLOCATOR=system that changes
nothing), then runs vae_search.train.train() with one torch thread, as a `--jobs` worker:
one warm-up epoch and one timed epoch of `--train` random uint8 images, each with its
validation of `--val` images, exactly as a trial's epochs run. A process reports the timed
epoch's time (steps and validation), its minor page faults per training step, and its peak
memory. The two allocators alternate A B B A, `--repeats` times, for the B.1 grid's
smallest and largest base in each precision the machine has natively (fp32 always, bf16
where `--precision auto` picks it); medians over repetitions and processes. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARCHITECTURES = [(16, 32), (8, 64)]  # (latent, base): B.1's base 32 and its base-64 point


def child(latent: int, base: int, precision: str, n_train: int, n_val: int) -> None:
    """One worker-like process: its JSON on stdout."""
    from vae_search import allocator

    state = allocator.tune()

    import resource

    import torch

    import vae_search.train as train_module
    from vae_search.data import Cifar10
    from vae_search.model import ModelConfig
    from vae_search.train import TrainConfig, train

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = Cifar10(torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 256, (n_val, 3, 32, 32), dtype=torch.uint8, generator=g), "generated")
    faults: dict[int, int] = {}

    def on_epoch(metrics: dict) -> None:
        faults[int(metrics["epoch"])] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    train_module.PROGRESS_EVERY = 10**9  # no progress callbacks
    result = train(ModelConfig(latent, base), TrainConfig(epochs=2), data, precision=precision, on_epoch=on_epoch)
    first, second = result.history
    steps = -(-n_train // TrainConfig().batch_size)
    print(json.dumps({"epoch_s": second["time_s"] - first["time_s"], "allocator": state,
                      "faults_per_step": (faults[max(faults)] - faults[min(faults)]) / steps,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(system: bool, jobs: int, *args: object) -> list[dict]:
    """`jobs` processes at once, as `--jobs` runs its workers."""
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "VAE_SEARCH_ALLOCATOR")}
    if system:
        env["VAE_SEARCH_ALLOCATOR"] = "system"
    procs = [subprocess.Popen([sys.executable, __file__, "--child", *map(str, args)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit("a measurement process failed")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=12_800, help="training images per epoch (100 steps)")
    ap.add_argument("--val", type=int, default=10_000, help="validation images per epoch (a trial's 10,000)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of A B B A (the two allocators)")
    ap.add_argument("--jobs", type=int, help="processes at once (default: what --jobs defaults to here)")
    ap.add_argument("--quick", action="store_true", help="smoke run: the smaller model, tiny epochs, one pair")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        latent, base, precision, n_train, n_val = args.child
        child(int(latent), int(base), precision, int(n_train), int(n_val))
        return

    import torch

    from vae_search.train import resolve_precision
    from vae_search.workers import default_jobs

    cpu = torch.device("cpu")
    jobs = args.jobs or default_jobs(cpu)
    if args.quick:
        args.train, args.val, args.repeats = 256, 64, 1
    precisions = sorted({"fp32", resolve_precision("auto", cpu)})
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"AVX512_BF16 {torch.cpu._is_avx512_bf16_supported()}; {jobs} process(es) at once, 1 thread each; "
          f"epochs of {args.train} training and {args.val} validation images")
    print("| latent / base | precision | epoch, system's (s) | vae-search's (s) | speed-up | page faults per step "
          "| peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows, tuned_state = [], ""
    for latent, base in ARCHITECTURES[:1] if args.quick else ARCHITECTURES:
        for precision in precisions:
            runs: dict[bool, list[dict]] = {True: [], False: []}
            for _ in range(args.repeats):
                # A B B A: drift over the run cancels; a smoke run needs each side once
                for system in (True, False) if args.quick else (True, False, False, True):
                    runs[system] += measure(system, jobs, latent, base, precision, args.train, args.val)
            med = {s: {k: statistics.median(r[k] for r in runs[s]) for k in ("epoch_s", "faults_per_step", "peak_rss_mb")}
                   for s in runs}
            tuned_state = runs[False][0]["allocator"]
            sys_, ours = med[True], med[False]
            row = {"latent": latent, "base": base, "precision": precision,
                   **{f"system_{k}": round(v, 3) for k, v in sys_.items()},
                   **{f"tuned_{k}": round(v, 3) for k, v in ours.items()},
                   "speedup": round(sys_["epoch_s"] / ours["epoch_s"], 3)}
            rows.append(row)
            print(f"| {latent} / {base} | {precision} | {sys_['epoch_s']:.2f} | {ours['epoch_s']:.2f} | "
                  f"{row['speedup']:.2f}x | {sys_['faults_per_step']:,.0f} -> {ours['faults_per_step']:,.0f} | "
                  f"{sys_['peak_rss_mb']:,.0f} -> {ours['peak_rss_mb']:,.0f} |", flush=True)
    print(f"vae-search's allocator here: {tuned_state}")
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                      "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "jobs": jobs,
                      "allocator": tuned_state, "rows": rows}))


if __name__ == "__main__":
    main()

"""What vae_search.allocator's settings save: training steps and validation in fresh processes
with the system's allocator (`VAE_SEARCH_ALLOCATOR=system`) and with vae-search's, alternating.

    python benchmarks/allocator.py                 # one torch thread, as a --jobs worker; about 4 minutes
    python benchmarks/allocator.py --threads 2
    python benchmarks/allocator.py --quick         # smoke run

Each measurement is a new Python process, because both settings belong to a process (torch
reads its huge-page switch once, on import): it calls `allocator.tune()` as the console
script does (or, for the system's allocator, runs it under VAE_SEARCH_ALLOCATOR=system), then
times vae_search.train's eager step (uint8 -> float, forward, fp32 loss, backward, fused Adam)
on random uint8 images after a warm-up, counts the page faults per step, and times
validation's forward pass (`evaluate`, one chunk of 2,500 images as a trial validates). Every
precision the machine has natively (fp32 always, bf16 where `--precision auto` picks it), for
B.1's four architectures and the search's smallest base; the two allocators alternate over
`--repeats` repetitions and the medians are taken. The last line is one JSON object.
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

# (latent, base): B.1's four points, then the search space's smallest base
ARCHITECTURES = [(4, 32), (8, 32), (16, 32), (8, 64), (16, 16)]


def child(latent: int, base: int, precision: str, threads: int, batch: int, steps: int, val: int) -> None:
    """One measurement, in this process: its JSON on stdout."""
    from vae_search import allocator

    state = allocator.tune()  # under VAE_SEARCH_ALLOCATOR=system this changes nothing

    import resource
    import time

    import torch

    from vae_search.model import VAE, ModelConfig
    from vae_search.train import _adam_kwargs, _step_loss, evaluate

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = ModelConfig(latent_dim=latent, base_channels=base)
    model = VAE(config).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, **_adam_kwargs(torch.device("cpu")))
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    beta, bf16 = torch.tensor(1.0), precision == "bf16"

    def one() -> None:
        loss = _step_loss(model, x, torch.randn(batch, latent), beta, bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # oneDNN's primitive caches, the allocator's first blocks
        one()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        one()
    step_ms = 1000 * (time.perf_counter() - start) / steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps

    images = torch.randint(0, 256, (val, 3, 32, 32), dtype=torch.uint8)
    evaluate(model, images, 1.0, 1, torch.device("cpu"), precision)  # warm-up
    start = time.perf_counter()
    evaluate(model, images, 1.0, 1, torch.device("cpu"), precision)
    val_ms = 1000 * (time.perf_counter() - start)
    print(json.dumps({"step_ms": step_ms, "faults_per_step": faults, "val_ms": val_ms, "allocator": state,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(system: bool, *args: object) -> dict:
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)  # each side sets its own
    if system:
        env["VAE_SEARCH_ALLOCATOR"] = "system"
    else:
        env.pop("VAE_SEARCH_ALLOCATOR", None)
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a --jobs worker has one per core)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--val", type=int, default=2500, help="validation images timed per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions, the two allocators alternating")
    ap.add_argument("--quick", action="store_true", help="smoke run: the smallest model, batch 8, 2 steps, once")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.steps, args.val, args.repeats = 8, 2, 16, 1
    if args.child:
        latent, base, precision, threads, batch, steps, val = args.child
        child(int(latent), int(base), precision, int(threads), int(batch), int(steps), int(val))
        return

    import torch

    from vae_search.train import resolve_precision

    precisions = sorted({"fp32", resolve_precision("auto", torch.device("cpu"))})
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"AVX512_BF16 {torch.cpu._is_avx512_bf16_supported()}, {args.threads} thread(s), batch {args.batch}, "
          f"validation {args.val} images")
    print("| latent | base | precision | step, system (ms) | step, vae-search (ms) | speed-up "
          "| page faults per step | validation, system (ms) | vae-search (ms) | speed-up | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows, tuned_state = [], ""
    for latent, base in ARCHITECTURES[-1:] if args.quick else ARCHITECTURES:
        for precision in precisions:
            runs: dict[bool, list[dict]] = {True: [], False: []}
            for _ in range(args.repeats):
                for system in (True, False):
                    runs[system].append(measure(system, latent, base, precision, args.threads, args.batch,
                                                args.steps, args.val))
            med = {s: {k: statistics.median(r[k] for r in runs[s])
                       for k in ("step_ms", "faults_per_step", "val_ms", "peak_rss_mb")} for s in runs}
            tuned_state = runs[False][0]["allocator"]
            sys_, ours = med[True], med[False]
            row = {"latent": latent, "base": base, "precision": precision,
                   **{f"system_{k}": round(v, 2) for k, v in sys_.items()},
                   **{f"tuned_{k}": round(v, 2) for k, v in ours.items()},
                   "step_speedup": round(sys_["step_ms"] / ours["step_ms"], 3),
                   "val_speedup": round(sys_["val_ms"] / ours["val_ms"], 3)}
            rows.append(row)
            print(f"| {latent} | {base} | {precision} | {sys_['step_ms']:.1f} | {ours['step_ms']:.1f} | "
                  f"{row['step_speedup']:.2f}x | {sys_['faults_per_step']:.0f} -> {ours['faults_per_step']:.0f} | "
                  f"{sys_['val_ms']:.0f} | {ours['val_ms']:.0f} | {row['val_speedup']:.2f}x | "
                  f"{sys_['peak_rss_mb']:.0f} -> {ours['peak_rss_mb']:.0f} |", flush=True)
    print(f"vae-search's allocator here: {tuned_state}")
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                      "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "threads": args.threads,
                      "allocator": tuned_state, "rows": rows}))


if __name__ == "__main__":
    main()

"""Where a training step's time goes: torch.profiler on vae-search's own step.

    python benchmarks/profile_step.py                          # latent 16 / base 32, one torch thread
    python benchmarks/profile_step.py --base 64 --threads 2

The step is vae_search.train's (uint8 -> float, forward, fp32 loss, backward, fused Adam),
eager or compiled as `--compile auto` would run a full-data trial on this machine, on random
uint8 images (the data does not change the cost). After a warm-up, `--steps` steps are
profiled; the CPU time of the top-level operators is grouped into convolutions (forward,
backward), linear layers, elementwise work and the optimiser. The last line is one JSON
object with the step time and the shares.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vae_search.model import VAE, ModelConfig  # noqa: E402
from vae_search.train import _adam_kwargs, _get_step, should_compile  # noqa: E402

# operator name -> part; the first matching prefix wins, the rest is "elementwise and other"
PARTS = [
    ("aten::convolution_backward", "convolution backward"),
    ("aten::convolution", "convolution forward"),
    ("aten::_convolution", "convolution forward"),
    ("aten::mkldnn_convolution", "convolution forward"),
    ("aten::addmm", "linear layers"),
    ("aten::mm", "linear layers"),
    ("aten::_fused_adam", "Adam"),
    ("Optimizer.step", "Adam"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a --jobs worker has one per core)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    cfg = ModelConfig(latent_dim=args.latent, base_channels=args.base)
    model = VAE(cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, **_adam_kwargs(device))
    compiled = should_compile("auto", device, 500_000)
    step = _get_step(compiled)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8)
    beta = torch.tensor(1.0)

    def one() -> None:
        eps = torch.randn(args.batch, args.latent)
        loss = step(model, x, eps, beta, False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up (compilation, oneDNN primitive caches)
        one()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            one()
    step_ms = 1000 * (time.perf_counter() - start) / args.steps

    # Self CPU time of every operator, so nested calls are not counted twice.
    shares: dict[str, float] = {}
    total = 0.0
    for ev in prof.key_averages():
        self_us = ev.self_cpu_time_total
        total += self_us
        part = next((p for prefix, p in PARTS if ev.key.startswith(prefix)), None)
        if part is None:
            low = ev.key.lower()
            part = ("convolution backward" if "backward" in low and "conv" in low else
                    "convolution forward" if "conv" in low else "elementwise and other")
        shares[part] = shares.get(part, 0.0) + self_us
    shares = {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}

    print(f"latent {args.latent} / base {args.base}, batch {args.batch}, {args.threads} thread(s), "
          f"{'compiled' if compiled else 'eager'}, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{step_ms:.1f} ms per step under the profiler ({1000 * args.batch / step_ms:.0f} img/s)")
    print("| part | share of CPU time |\n| --- | --- |")
    for part, share in shares.items():
        print(f"| {part} | {100 * share:.0f}% |")
    print("top operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(json.dumps({"step_ms": round(step_ms, 2), "compiled": compiled, "threads": args.threads,
                      "shares": {k: round(v, 4) for k, v in shares.items()}}))


if __name__ == "__main__":
    main()

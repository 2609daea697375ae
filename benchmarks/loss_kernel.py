"""What vae_loss's own BCE saves: a whole training step with torch's
binary_cross_entropy_with_logits against the same step with vae_search.model's, in one run.

    python benchmarks/loss_kernel.py                 # one torch thread, as a --jobs worker; about 2 minutes
    python benchmarks/loss_kernel.py --threads 2

On CPUs torch computes the BCE through log_sigmoid, whose log1p is a scalar loop; vae_loss
computes the same values from vectorised kernels, with torch's gradient to the bit (so training
is unchanged: tests/test_model.py). The step is vae_search.train's, eager (as `--compile auto`
runs on CPUs), on random uint8 images (the data do not change the cost), for the B.1 grid's
architectures and the search space's smallest and largest base. Each precision the machine
has natively (fp32 always, bf16 where `--precision auto` picks it) is measured; the two losses
alternate over `--repeats` repetitions of `--steps` steps after a warm-up, and the median
is taken. The last line is one JSON object: ms per step of each and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vae_search.train as train_module  # noqa: E402
from vae_search.model import VAE, ModelConfig  # noqa: E402
from vae_search.train import _adam_kwargs, _step_loss, resolve_precision  # noqa: E402

OURS = train_module.vae_loss
# (latent, base): B.1's four points, then the search space's smallest base
ARCHITECTURES = [(4, 32), (8, 32), (16, 32), (8, 64), (16, 16)]


def torch_loss(logits, x, mu, logvar):
    """vae_loss as it was, with torch's own BCE."""
    recon = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)
    mu, logvar = mu.float(), logvar.float()
    return recon, -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def step_ms(loss_fn, config: ModelConfig, bf16: bool, batch: int, steps: int) -> float:
    train_module.vae_loss = loss_fn  # what _step_loss calls
    try:
        torch.manual_seed(0)
        model = VAE(config).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3, **_adam_kwargs(torch.device("cpu")))
        x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
        beta = torch.tensor(1.0)

        def one() -> None:
            loss = _step_loss(model, x, torch.randn(batch, config.latent_dim), beta, bf16)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):  # oneDNN's primitive caches
            one()
        start = time.perf_counter()
        for _ in range(steps):
            one()
        return 1000 * (time.perf_counter() - start) / steps
    finally:
        train_module.vae_loss = OURS


def step_arguments(doc: str, alternating: str) -> argparse.Namespace:
    """The options of a benchmark that times `step_ms` against a variant (this one and
    deconv.py), parsed; torch's threads set and the machine named on the first line."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a --jobs worker has one per core)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per repetition")
    ap.add_argument("--repeats", type=int, default=3, help=f"repetitions, {alternating} alternating")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"AVX512_BF16 {torch.cpu._is_avx512_bf16_supported()}, {args.threads} thread(s), batch {args.batch}")
    return args


def main() -> None:
    args = step_arguments(__doc__, "the two losses")
    precisions = sorted({"fp32", resolve_precision("auto", torch.device("cpu"))})
    print("| latent | base | precision | torch's BCE, ms/step | vae_loss's, ms/step | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for latent, base in ARCHITECTURES:
        config = ModelConfig(latent_dim=latent, base_channels=base)
        for precision in precisions:
            times: dict[str, list[float]] = {"torch": [], "ours": []}
            for _ in range(args.repeats):
                times["torch"].append(step_ms(torch_loss, config, precision == "bf16", args.batch, args.steps))
                times["ours"].append(step_ms(OURS, config, precision == "bf16", args.batch, args.steps))
            theirs, ours = statistics.median(times["torch"]), statistics.median(times["ours"])
            rows.append({"latent": latent, "base": base, "precision": precision, "torch_ms": round(theirs, 2),
                         "ours_ms": round(ours, 2), "speedup": round(theirs / ours, 3)})
            print(f"| {latent} | {base} | {precision} | {theirs:.1f} | {ours:.1f} | {theirs / ours:.2f}x |", flush=True)
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                      "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()

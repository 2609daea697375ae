"""What the decoder's own bias gradient saves: a whole bf16 training step with
nn.ConvTranspose2d against the same step with vae_search.model.ConvTranspose2d, in one run.

    python benchmarks/deconv_bias.py                 # one torch thread, as a --jobs worker; about 2 minutes
    python benchmarks/deconv_bias.py --threads 2

oneDNN's bf16 deconvolution computes the bias gradient inside its weight-gradient primitive,
slowly; vae_search's ConvTranspose2d leaves that to a plain sum (the forward and the other
gradients are torch's own calls, so training takes the same steps: tests/test_model.py). Only
bf16 on CPUs changes, so the benchmark needs a CPU with native bf16 (AVX512_BF16 or AMX) and
says so otherwise. The step is loss_kernel.py's (vae_search.train's, eager, random uint8
images) for the B.1 grid's architectures and the search space's smallest base; the two
alternate over `--repeats` repetitions of `--steps` steps after a warm-up, and the median is
taken. The last line is one JSON object: ms per step of each and the speed-up.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loss_kernel import ARCHITECTURES, OURS, step_arguments, step_ms  # noqa: E402

from vae_search.model import ConvTranspose2d, ModelConfig  # noqa: E402
from vae_search.train import resolve_precision  # noqa: E402

VARIANTS = {"torch": nn.ConvTranspose2d.forward, "ours": ConvTranspose2d.forward}


def timed(variant: str, config: ModelConfig, batch: int, steps: int) -> float:
    ConvTranspose2d.forward = VARIANTS[variant]
    try:
        return step_ms(OURS, config, True, batch, steps)
    finally:
        ConvTranspose2d.forward = VARIANTS["ours"]


def main() -> None:
    args = step_arguments(__doc__, "the two")
    capability, native = torch.backends.cpu.get_cpu_capability(), resolve_precision("auto", torch.device("cpu")) == "bf16"
    if not native:
        print("this CPU emulates bf16, so vae-search trains in fp32 here, where nothing changed: nothing to measure")
        print(json.dumps({"capability": capability, "native_bf16": False, "rows": []}))
        return
    print("| latent | base | nn.ConvTranspose2d, ms/step | vae_search's, ms/step | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for latent, base in ARCHITECTURES:
        config = ModelConfig(latent_dim=latent, base_channels=base)
        times: dict[str, list[float]] = {"torch": [], "ours": []}
        for _ in range(args.repeats):
            for variant in times:
                times[variant].append(timed(variant, config, args.batch, args.steps))
        theirs, ours = statistics.median(times["torch"]), statistics.median(times["ours"])
        rows.append({"latent": latent, "base": base, "torch_ms": round(theirs, 2), "ours_ms": round(ours, 2),
                     "speedup": round(theirs / ours, 3)})
        print(f"| {latent} | {base} | {theirs:.1f} | {ours:.1f} | {theirs / ours:.2f}x |", flush=True)
    print(json.dumps({"capability": capability, "native_bf16": True, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()

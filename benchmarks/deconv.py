"""What the decoder's own transposed convolutions save in bf16 on CPUs: a whole training step
with nn.ConvTranspose2d, with vae_search's bias gradient alone, and with vae_search.model's
ConvTranspose2d as it is (that bias gradient and the image layer's sub-pixel forward), in one run.

    python benchmarks/deconv.py                 # one torch thread, as a --jobs worker; about 3 minutes
    python benchmarks/deconv.py --threads 2

oneDNN's bf16 deconvolution computes the bias gradient inside its weight-gradient primitive,
slowly, and runs the image layer's forward (3 output channels) at a third of a 3x3
convolution's speed; vae_search's ConvTranspose2d leaves the first to a plain sum and computes
the second as one 3x3 convolution and a pixel_shuffle (the same products in another order;
tests/test_model.py). Only bf16 on CPUs changes, so the benchmark needs a CPU with native bf16
(AVX512_BF16 or AMX) and says so otherwise. The step is loss_kernel.py's (vae_search.train's,
eager, random uint8 images) for the B.1 grid's architectures and the search space's smallest
base; the variants alternate over `--repeats` repetitions of `--steps` steps after a warm-up,
and the median is taken. The last line is one JSON object: ms per step of each and the speed-ups.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loss_kernel import ARCHITECTURES, OURS, step_arguments, step_ms  # noqa: E402

import vae_search.model as model_module  # noqa: E402
from vae_search.model import ConvTranspose2d, ModelConfig  # noqa: E402
from vae_search.train import resolve_precision  # noqa: E402

SUBPIXEL = model_module.subpixel_conv_transpose2d


def _torch_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What subpixel_conv_transpose2d computes, as oneDNN's transposed convolution."""
    return F.conv_transpose2d(x, weight, bias, stride=2, padding=1)


# variant -> (ConvTranspose2d.forward, the image layer's forward within it)
VARIANTS = {
    "torch": (nn.ConvTranspose2d.forward, SUBPIXEL),
    "bias": (ConvTranspose2d.forward, _torch_forward),
    "ours": (ConvTranspose2d.forward, SUBPIXEL),
}


def timed(variant: str, config: ModelConfig, batch: int, steps: int) -> float:
    ConvTranspose2d.forward, model_module.subpixel_conv_transpose2d = VARIANTS[variant]
    try:
        return step_ms(OURS, config, True, batch, steps)
    finally:
        ConvTranspose2d.forward, model_module.subpixel_conv_transpose2d = VARIANTS["ours"]


def main() -> None:
    args = step_arguments(__doc__, "the three")
    capability = torch.backends.cpu.get_cpu_capability()
    native = resolve_precision("auto", torch.device("cpu")) == "bf16"
    if not native:
        print("this CPU emulates bf16, so vae-search trains in fp32 here, where nothing changed: nothing to measure")
        print(json.dumps({"capability": capability, "native_bf16": False, "rows": []}))
        return
    print("| latent | base | nn.ConvTranspose2d, ms/step | own bias gradient | and sub-pixel image layer | "
          "speed-up, all | of the sub-pixel forward |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for latent, base in ARCHITECTURES:
        config = ModelConfig(latent_dim=latent, base_channels=base)
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(args.repeats):
            for variant in times:
                times[variant].append(timed(variant, config, args.batch, args.steps))
        ms = {variant: statistics.median(t) for variant, t in times.items()}
        rows.append({"latent": latent, "base": base, "torch_ms": round(ms["torch"], 2), "bias_ms": round(ms["bias"], 2),
                     "ours_ms": round(ms["ours"], 2), "speedup": round(ms["torch"] / ms["ours"], 3),
                     "subpixel_speedup": round(ms["bias"] / ms["ours"], 3)})
        print(f"| {latent} | {base} | {ms['torch']:.1f} | {ms['bias']:.1f} | {ms['ours']:.1f} | "
              f"{ms['torch'] / ms['ours']:.2f}x | {ms['bias'] / ms['ours']:.2f}x |", flush=True)
    print(json.dumps({"capability": capability, "native_bf16": True, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()

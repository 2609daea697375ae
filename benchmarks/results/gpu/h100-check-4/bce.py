"""The diagnostic that found why compiled trainings on the GPU learned nothing (commit 5c83e36,
torch 2.11): one step's loss and gradient and a 3-epoch training, with vae_loss's own BCE
(`custom`: whatever vae_loss does at this commit) and with torch's (`plain`), eager and
compiled, against the CPU's eager fp32. Run from the repository root:

    python3 benchmarks/results/gpu/h100-check-4/bce.py cuda     # writes $OUT/bce.json where OUT is set

`cos` and `rel` compare a gradient (all parameters) with the CPU's: cosine and relative distance.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vae_search import model as M  # noqa: E402
from vae_search import train as T  # noqa: E402
from vae_search.data import Cifar10  # noqa: E402

DEVICE = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
START = time.time()
CUSTOM = M._BCEWithLogits


class Plain:
    """torch's own BCE, in _BCEWithLogits' place."""

    @staticmethod
    def apply(logits, x):
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def say(*parts) -> None:
    print(f"[{time.time() - START:6.1f}s]", *parts, flush=True)


def images(n: int, seed: int) -> torch.Tensor:
    """Smooth random images (4x4 noise, upsampled): something a VAE learns in a few epochs."""
    low = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(low, size=32, mode="bilinear") * 255).round().to(torch.uint8)


data = Cifar10(images(4096, 0), images(512, 1), "synthetic")
config = M.ModelConfig(8, 16)
torch.manual_seed(0)
reference = M.VAE(config).to(memory_format=torch.channels_last)
xb, eps, beta = data.train[:128], torch.randn(128, 8), torch.tensor(1.0)


def gradient(step, device: torch.device, bf16: bool) -> tuple[float, torch.Tensor]:
    model = M.VAE(config).to(device).to(memory_format=torch.channels_last)
    model.load_state_dict(reference.state_dict())
    loss = step(model, xb.to(device), eps.to(device), beta.to(device), bf16)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten().float().cpu() for p in model.parameters()])


def short_training(device: torch.device, compile: bool, precision: str) -> T.TrainResult:
    return T.train(config, T.TrainConfig(epochs=3, batch_size=128, lr=3e-3), data, device=device, compile=compile,
                   precision=precision)


out: dict = {}
ref_loss, ref_grad = gradient(T._step_loss, torch.device("cpu"), False)
say("cpu eager fp32 loss", ref_loss)


def against_cpu(name: str, loss: float, grad: torch.Tensor) -> None:
    out[name] = {"loss": loss, "cos": round(F.cosine_similarity(grad, ref_grad, dim=0).item(), 6),
                 "rel": round(((grad - ref_grad).norm() / ref_grad.norm()).item(), 6)}
    say(name, out[name])


def losses(name: str, result: T.TrainResult) -> None:
    out[name] = {k: round(result.metrics[k], 2) for k in ("val_loss", "recon_loss", "kl")} | {"compiled": result.compiled}
    say(name, out[name])


for variant, cls in (("custom", CUSTOM), ("plain", Plain)):
    M._BCEWithLogits = cls
    for bf16 in (False, True):
        against_cpu(f"grad {variant} eager bf16={bf16}", *gradient(T._step_loss, DEVICE, bf16))
    torch._dynamo.reset()
    T._compiled_step = None
    losses(f"train {variant} compiled bf16", short_training(DEVICE, True, "bf16"))
    against_cpu(f"grad {variant} compiled bf16", *gradient(T._get_step(True), DEVICE, True))
    losses(f"train {variant} eager bf16", short_training(DEVICE, False, "bf16"))
M._BCEWithLogits = CUSTOM
losses("train cpu eager fp32", short_training(torch.device("cpu"), False, "fp32"))
print(json.dumps(out))
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "bce.json"), "w") as f:
        f.write(json.dumps(out, indent=1))

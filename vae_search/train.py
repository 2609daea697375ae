"""One trial's training: a VAE, Adam, a fixed number of epochs, validation after each.

Knows nothing of Optuna: `train()` takes configs and data, calls `on_epoch(metrics)` after
each epoch (the study glue reports to the trial there and may raise to stop), and returns
the metrics, the per-epoch history and the weights.

Speed (see benchmarks/throughput.py for the measurements): the whole dataset sits in one
uint8 tensor on the device and batches are slices of a seeded permutation; the model runs
channels_last; the step (uint8 -> float, forward, loss) is compiled with `torch.compile`
once per architecture and process (inductor caches the code on disk for the next process);
Adam is fused; there is no host synchronisation in the loop (the running loss stays a
tensor); validation runs in large chunks under `torch.inference_mode()`. On CUDA the
forward runs in bf16 autocast with the loss in fp32.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vae_search.data import Cifar10
from vae_search.errors import UsageError
from vae_search.model import VAE, ModelConfig, count_parameters, vae_loss

# Compiling costs ~20 s per architecture on 2 CPU cores; below this many training images
# (epochs x images) it cannot pay for itself, so `compile="auto"` stays eager.
COMPILE_MIN_IMAGES = 200_000
VAL_CHUNK = 2500  # images per validation forward pass
PROGRESS_EVERY = 10  # batches between progress callbacks


@dataclass
class TrainConfig:
    """How one VAE is trained. lr and beta are Optuna trial parameters under these names."""

    epochs: int = 10  # full passes over the training images
    batch_size: int = 128  # images per Adam step
    lr: float = 3e-3  # Adam learning rate
    beta: float = 1.0  # weight of the KL term in the training loss
    seed: int = 0  # seeds weights, batch order and the reparameterisation noise


@dataclass
class TrainResult:
    metrics: dict[str, float]  # the last epoch's: val_loss, recon_loss, kl, neg_elbo, train_loss, time_s
    history: list[dict[str, float]]  # one dict like `metrics` per epoch
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    params: int = 0
    compiled: bool = False


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot go on."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: no Apple MPS device is available here; use auto or cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: unknown device; use auto, cpu, cuda or mps")
    return torch.device(name)


def _step_loss(
    model: VAE, x_u8: torch.Tensor, eps: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of recon + beta*KL. x_u8 is (B, 3, 32, 32) uint8."""
    x = x_u8.float().div_(255).contiguous(memory_format=torch.channels_last)
    with _autocast(x.device):
        logits, mu, logvar = model(x, eps)
    recon, kl = vae_loss(logits, x, mu, logvar)
    return (recon + beta * kl).mean()


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


_compiled_step: Callable | None = None


def _get_step(use_compile: bool) -> Callable:
    """One compiled step function per process: dynamo treats the module's parameters as
    inputs, so a new model of an architecture it has seen reuses the compiled code."""
    global _compiled_step
    if not use_compile:
        return _step_loss
    if _compiled_step is None:
        import os

        import torch._dynamo

        from vae_search.data import default_cache_dir

        # Inductor keeps compiled code on disk; beside our data cache it outlives /tmp
        # clean-ups, so a new process reuses it instead of compiling again.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir() / "inductor"))

        torch._dynamo.config.cache_size_limit = 64  # one entry per architecture seen
        _compiled_step = torch.compile(_step_loss)
    return _compiled_step


def _should_compile(compile: bool | str, device: torch.device, images: int) -> bool:
    if compile == "auto":
        return device.type != "mps" and images >= COMPILE_MIN_IMAGES
    return bool(compile) and device.type != "mps"


@torch.inference_mode()
def evaluate(
    model: VAE, images: torch.Tensor, beta: float, seed: int, device: torch.device
) -> dict[str, float]:
    """Per-image means over `images` (uint8, on `device`) of recon, KL, recon + beta*KL and
    recon + KL. z is sampled, with noise seeded by `seed`, so evaluations are repeatable."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    recon_sum = torch.zeros((), device=device, dtype=acc)
    kl_sum = torch.zeros((), device=device, dtype=acc)
    for chunk in images.split(VAL_CHUNK):
        x = chunk.float().div_(255).contiguous(memory_format=torch.channels_last)
        eps = torch.randn(len(x), model.config.latent_dim, generator=gen, device=device)
        with _autocast(device):
            logits, mu, logvar = model(x, eps)
        recon, kl = vae_loss(logits, x, mu, logvar)
        recon_sum += recon.sum(dtype=acc)
        kl_sum += kl.sum(dtype=acc)
    model.train()
    n = len(images)
    recon, kl = recon_sum.item() / n, kl_sum.item() / n
    return {"val_loss": recon + beta * kl, "recon_loss": recon, "kl": kl, "neg_elbo": recon + kl}


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    data: Cifar10,
    *,
    device: torch.device | str = "cpu",
    compile: bool | str = "auto",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_batch: Callable[[int, int, int, torch.Tensor], None] | None = None,
) -> TrainResult:
    """Train one VAE. `on_epoch(metrics)` runs after each epoch's validation and may raise to
    stop; `on_batch(epoch, batch, n_batches, loss)` runs every PROGRESS_EVERY batches (loss is
    a tensor: reading it synchronises, which the caller may choose to do).

    Raises NonFiniteLoss when the training loss of an epoch is NaN or infinite.
    """
    start = time.perf_counter()
    device = torch.device(device) if isinstance(device, str) else device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    model = VAE(model_config).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, **_adam_kwargs(device))

    train_images = data.train.to(device)  # uint8: a quarter of the bytes of float
    val_images = data.test.to(device)
    n, bs = len(train_images), config.batch_size
    n_batches = math.ceil(n / bs)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    perm_gen = torch.Generator().manual_seed(config.seed)  # batch order, identical on any device
    beta = torch.tensor(config.beta, device=device)
    use_compile = _should_compile(compile, device, n * config.epochs)
    step = _get_step(use_compile)

    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=perm_gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(n_batches):
            idx = perm[i * bs : (i + 1) * bs]
            eps = torch.randn(len(idx), model_config.latent_dim, generator=gen, device=device)
            try:
                loss = step(model, train_images[idx], eps, beta)
            except Exception as e:  # inductor needs a C++ compiler; without one, run eager
                if step is _step_loss:
                    raise
                warnings.warn(f"torch.compile failed ({type(e).__name__}); training eager", stacklevel=2)
                step, use_compile = _step_loss, False
                loss = step(model, train_images[idx], eps, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            if on_batch is not None and (i % PROGRESS_EVERY == 0 or i == n_batches - 1):
                on_batch(epoch, i + 1, n_batches, loss.detach())
        train_loss = loss_sum.item() / n  # the one synchronisation per epoch
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch}")
        metrics = evaluate(model, val_images, config.beta, config.seed + 1, device)
        metrics.update(epoch=epoch, train_loss=train_loss, time_s=time.perf_counter() - start)
        if not math.isfinite(metrics["val_loss"]):
            raise NonFiniteLoss(f"validation loss became {metrics['val_loss']} in epoch {epoch}")
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)

    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return TrainResult(
        metrics=dict(history[-1]),
        history=history,
        state_dict=state,
        params=count_parameters(model),
        compiled=use_compile,
    )


def _adam_kwargs(device: torch.device) -> dict:
    # fused Adam is one kernel for all parameters on CPU and CUDA; MPS takes foreach.
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


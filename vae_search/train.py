"""One trial's training: a VAE, Adam, a fixed number of epochs, validation after each.

Knows nothing of Optuna: `train()` takes configs and data, calls `on_epoch(metrics)` after
each epoch (the study glue reports to the trial there and may raise to stop), and returns
the metrics, the per-epoch history and the weights.

Speed (see benchmarks/throughput.py for the measurements): the whole dataset sits in one
uint8 tensor on the device and batches are slices of a seeded permutation; the model runs
channels_last; where that pays (`compile_pays`: CUDA), the step (uint8 -> float, forward, loss) is
compiled with `torch.compile` once per architecture and process (inductor caches the code on
disk for the next process);
Adam is fused; there is no host synchronisation in the loop (the running loss stays a
tensor); validation runs in large chunks under `torch.inference_mode()`.

Precision: "bf16" autocasts the model's convolutions and linears to bfloat16; the
reparameterisation, the loss (BCE with logits, KL) and its reduction stay fp32, and so do
the weights and Adam's states. "auto" picks bf16 only where the device does it natively
(CUDA with bf16 support; CPUs with AVX512_BF16 or AMX, by torch's own checks): elsewhere
bf16 is emulated and many times slower than fp32.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vae_search.data import Cifar10, fixed_subset
from vae_search.errors import UsageError
from vae_search.model import VAE, ModelConfig, count_parameters, vae_loss

# Compiling costs ~20 s per architecture on 2 CPU cores; below this many training images
# (epochs x images) it cannot pay for itself, so `compile="auto"` stays eager.
COMPILE_MIN_IMAGES = 200_000
VAL_CHUNK = 2500  # images per validation forward pass
PROGRESS_EVERY = 10  # batches between progress callbacks
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine", "onecycle")


@dataclass
class TrainConfig:
    """How one VAE is trained. lr and beta are Optuna trial parameters under these names."""

    epochs: int = 10  # full passes over the training images
    batch_size: int = 128  # images per Adam step
    lr: float = 3e-3  # Adam learning rate
    beta: float = 1.0  # weight of the KL term in the training loss
    seed: int = 0  # seeds weights, batch order and the reparameterisation noise
    lr_schedule: str = "constant"  # constant | cosine (from lr to 0) | onecycle (peak lr), per step


@dataclass
class TrainResult:
    metrics: dict[str, float]  # the last epoch's: val_loss, recon_loss, kl, neg_elbo, train_loss, time_s,
    # and train_eval_loss: the final model's val_loss on training images (see train)
    history: list[dict[str, float]]  # one dict like `metrics` per epoch
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    params: int = 0
    compiled: bool = False
    precision: str = "fp32"


# An untrained decoder predicts about 0.5 for every pixel: 3072 * ln 2 = 2129 nats of BCE
# per image. A validation neg_elbo ten times that (an average pixel's logit some 70 off the
# wrong way) is not a bad configuration learning slowly, nor the spike of a first epoch of a
# few steps (2.6 times, seen on tiny data), but a training that diverged: learning rates of
# 100 gave finite losses of 1e38, which would otherwise complete and become "best".
UNTRAINED_NATS = 3 * 32 * 32 * math.log(2)
DIVERGED_NATS = 10 * UNTRAINED_NATS


class Diverged(RuntimeError):
    """The training diverged (a non-finite loss, or a loss far above an untrained model's);
    the trial cannot go on and its numbers mean nothing."""


class NonFiniteLoss(Diverged):
    """The training loss became NaN or infinite."""


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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware, by torch's own checks."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False  # MPS: bf16 autocast exists, but we have not measured it


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32 or bf16 for `name` in PRECISIONS on `device`."""
    if name not in PRECISIONS:
        raise UsageError(f"--precision {name}: unknown precision; use {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _step_loss(
    model: VAE, x_u8: torch.Tensor, eps: torch.Tensor, beta: torch.Tensor, bf16: bool = False
) -> torch.Tensor:
    """Mean over the batch of recon + beta*KL. x_u8 is (B, 3, 32, 32) uint8. The forward
    may run in bf16 autocast; the loss is computed in fp32 (vae_loss casts up)."""
    x = x_u8.float().div_(255).contiguous(memory_format=torch.channels_last)
    with _autocast(x.device, bf16):
        logits, mu, logvar = model(x, eps)
    recon, kl = vae_loss(logits, x, mu, logvar)
    return (recon + beta * kl).mean()


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
        # Inductor's C++ toolchain looks for CUDA too; where a CUDA toolkit is installed without
        # a GPU, torch logs "No CUDA runtime is found" once per process (every --jobs worker
        # printed it). It only fires without a GPU, so it never concerns this step.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        _compiled_step = torch.compile(_step_loss)
    return _compiled_step


def compile_pays(device: torch.device) -> bool:
    """Where compiling the step pays for itself: CUDA, where it fuses the loss and the
    elementwise work. On CPUs it was measured not to (docs/performance.md): 2-3% slower per
    step on AVX2 cores; on AVX-512 cores 4-12% faster per step in fp32 and 0-4% in bf16, but
    end to end the B.1 grid's trials (two one-thread workers, a worker's first compile about
    30 s) took 1,293 s compiled against 1,273 s eager in fp32, 976 s against 914 s in bf16 (903 s
    with warm compile caches). Eager fp32 there also gives the AVX2 cores' losses to the digit."""
    return device.type == "cuda"


def should_compile(compile: bool | str, device: torch.device, images: int) -> bool:
    """Whether a run of `images` training images (epochs x images) compiles."""
    if compile == "auto":
        return compile_pays(device) and images >= COMPILE_MIN_IMAGES
    return bool(compile) and device.type != "mps"


_device_copies: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def on_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`images` on `device`, copied once per process: every trial of a worker trains on the
    same data, so the second trial on a GPU finds it there instead of copying 150 MB again.
    Keyed by the tensor's storage, shape and the device (the source is held with its copy,
    so its address cannot be reused by other data); one copy per shape and device is kept."""
    if images.device == device or device.type == "cpu":
        return images
    key = (images.untyped_storage().data_ptr(), images.storage_offset(), tuple(images.shape), str(device))
    if key not in _device_copies:
        for k in [k for k in _device_copies if k[2:] == key[2:]]:  # another subset of this shape replaces it
            del _device_copies[k]
        _device_copies[key] = (images, images.to(device))
    return _device_copies[key][1]


@torch.inference_mode()
def evaluate(
    model: VAE, images: torch.Tensor, beta: float, seed: int, device: torch.device, precision: str = "fp32"
) -> dict[str, float]:
    """Per-image means over `images` (uint8, on `device`) of recon, KL, recon + beta*KL and
    recon + KL. z is sampled, with noise seeded by `seed`, so evaluations are repeatable.
    The forward runs in the training's precision; the sums are fp64 (fp32 on MPS)."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    recon_sum = torch.zeros((), device=device, dtype=acc)
    kl_sum = torch.zeros((), device=device, dtype=acc)
    for chunk in images.split(VAL_CHUNK):
        x = chunk.float().div_(255).contiguous(memory_format=torch.channels_last)
        eps = torch.randn(len(x), model.config.latent_dim, generator=gen, device=device)
        with _autocast(device, precision == "bf16"):
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
    precision: str = "fp32",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_batch: Callable[[int, int, int, torch.Tensor], None] | None = None,
) -> TrainResult:
    """Train one VAE. `on_epoch(metrics)` runs after each epoch's validation and may raise to
    stop; `on_batch(epoch, batch, n_batches, loss)` runs every PROGRESS_EVERY batches (loss is
    a tensor: reading it synchronises, which the caller may choose to do).

    `precision` is "fp32" or "bf16" (resolve "auto" with `resolve_precision` first).
    Raises NonFiniteLoss when the training loss of an epoch is NaN or infinite, Diverged when
    the validation neg_elbo is above DIVERGED_NATS.
    """
    start = time.perf_counter()
    device = torch.device(device) if isinstance(device, str) else device
    bf16 = resolve_precision(precision, device) == "bf16"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    model = VAE(model_config).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, **_adam_kwargs(device))

    train_images = on_device(data.train, device)  # uint8: a quarter of the bytes of float
    val_images = on_device(data.test, device)
    n, bs = len(train_images), config.batch_size
    n_batches = math.ceil(n / bs)
    scheduler = _scheduler(opt, config, config.epochs * n_batches)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    perm_gen = torch.Generator().manual_seed(config.seed)  # batch order, identical on any device
    beta = torch.tensor(config.beta, device=device)
    use_compile = should_compile(compile, device, n * config.epochs)
    step = _get_step(use_compile)

    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=perm_gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(n_batches):
            idx = perm[i * bs : (i + 1) * bs]
            eps = torch.randn(len(idx), model_config.latent_dim, generator=gen, device=device)
            try:
                loss = step(model, train_images[idx], eps, beta, bf16)
            except Exception as e:  # inductor needs a C++ compiler; without one, run eager
                if step is _step_loss:
                    raise
                warnings.warn(f"torch.compile failed ({type(e).__name__}); training eager", stacklevel=2)
                step, use_compile = _step_loss, False
                loss = step(model, train_images[idx], eps, beta, bf16)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(idx)
            if on_batch is not None and (i % PROGRESS_EVERY == 0 or i == n_batches - 1):
                on_batch(epoch, i + 1, n_batches, loss.detach())
        train_loss = loss_sum.item() / n  # the one synchronisation per epoch
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch}")
        metrics = evaluate(model, val_images, config.beta, config.seed + 1, device, "bf16" if bf16 else "fp32")
        metrics.update(epoch=epoch, train_loss=train_loss, time_s=time.perf_counter() - start)
        if not math.isfinite(metrics["val_loss"]):
            raise NonFiniteLoss(f"validation loss became {metrics['val_loss']} in epoch {epoch}")
        if metrics["neg_elbo"] > DIVERGED_NATS:
            raise Diverged(f"training diverged: validation neg_elbo {metrics['neg_elbo']:.4g} in epoch {epoch}, more than "
                           f"ten times an untrained model's ({UNTRAINED_NATS:.0f}); is the learning rate too high?")
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)

    # The over-fitting gap needs the final model on training images, evaluated as the validation
    # is: `train_loss` is an epoch's running mean over weights that kept changing, which lags the
    # final model. As many images as it validates on (one more validation's time, after the last
    # epoch only), the same fixed subset for every trial; not the first ones: ImageFolder's order
    # is sorted by class, and airplanes and automobiles reconstruct some 40 nats better.
    fit_images = fixed_subset(train_images, len(val_images))
    fit = evaluate(model, fit_images, config.beta, config.seed + 1, device, "bf16" if bf16 else "fp32")
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return TrainResult(
        metrics={**history[-1], "train_eval_loss": fit["val_loss"]},
        history=history,
        state_dict=state,
        params=count_parameters(model),
        compiled=use_compile,
        precision="bf16" if bf16 else "fp32",
    )


def _scheduler(opt: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """The learning-rate schedule, stepped once per batch (None: constant)."""
    if config.lr_schedule == "constant":
        return None
    if config.lr_schedule == "cosine":  # from lr down to 0 at the last step
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if config.lr_schedule == "onecycle":  # warm up to lr over 30% of the steps, then anneal
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps)
    raise UsageError(f"unknown lr_schedule {config.lr_schedule!r}; use {', '.join(LR_SCHEDULES)}")


def _adam_kwargs(device: torch.device) -> dict:
    # fused Adam is one kernel for all parameters on CPU and CUDA; MPS takes foreach.
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


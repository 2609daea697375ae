"""Training throughput: the textbook PyTorch loop against vae-search's own training path.

    python benchmarks/throughput.py --data-dir data/cifar10-jpeg      # about 5 minutes
    python benchmarks/throughput.py --quick                           # smoke run, generated data

In one process, on the same images and the same architecture, alternates timed repetitions of
  (a) the textbook loop: a Dataset holding decoded uint8 images that returns
      ToTensor()(PIL image) per item (as torchvision's CIFAR10 does), DataLoader(batch_size=128,
      shuffle=True, num_workers=2), the eager model, Adam,
      BCE on sigmoid outputs, loss.item() every step;
  (b) vae_search.train.train(), exactly as `grid` and `optimize` run it.
Throughput is measured after a warm-up (compilation for (b), worker start-up for (a)). Then
one full epoch of each from the same initial weights, evaluated with the same function, and
the peak memory of a trial of (b) in a fresh process. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vae_search.data import Cifar10, load_cifar10  # noqa: E402
from vae_search.model import VAE, ModelConfig  # noqa: E402
from vae_search.train import TrainConfig, evaluate, train  # noqa: E402

BATCH = 128


# ---------------------------------------------------------------- (a) the textbook loop


class InMemoryCifar(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 array -> PIL -> transform."""

    def __init__(self, images_u8: torch.Tensor) -> None:
        self.data = images_u8.permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3), as CIFAR10.data
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.fromarray(self.data[i]))


def textbook_step(model: VAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    mu, logvar = model.encode(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    recon = model.decode(z)  # sigmoid output, as course code writes it
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    loss = (bce + kld) / x.shape[0]
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def textbook_images_per_s(model, opt, loader, warmup: int, batches: int) -> float:
    it = iter(loader)
    for _ in range(warmup):
        textbook_step(model, opt, next(it))
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        x = next(it)
        textbook_step(model, opt, x)
        n += len(x)
    return n / (time.perf_counter() - start)


def textbook_epoch(model_config: ModelConfig, data: Cifar10, seed: int) -> float:
    torch.manual_seed(seed)
    model = VAE(model_config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(InMemoryCifar(data.train), batch_size=BATCH, shuffle=True, num_workers=2)
    for x in loader:
        textbook_step(model, opt, x)
    return evaluate(model, data.test, 1.0, seed + 1, torch.device("cpu"))["neg_elbo"]


# ---------------------------------------------------------------- (b) vae-search's path


def vae_search_images_per_s(model_config: ModelConfig, data: Cifar10, warmup: int, batches: int) -> float:
    """Times the batches of train() itself between two progress callbacks (which train()
    makes every PROGRESS_EVERY batches); validation and compilation fall outside."""
    from vae_search import train as train_module

    n_images = (warmup + batches + 1) * BATCH
    subset = Cifar10(data.train[:n_images], data.test[:BATCH], data.source)
    stamps: dict[int, float] = {}

    def on_batch(epoch, batch, n_batches, loss):
        stamps[batch] = time.perf_counter()

    every = train_module.PROGRESS_EVERY
    train_module.PROGRESS_EVERY = 1
    try:
        train(model_config, TrainConfig(epochs=1), subset, compile=True, on_batch=on_batch)
    finally:
        train_module.PROGRESS_EVERY = every
    first, last = warmup + 1, warmup + batches + 1
    return batches * BATCH / (stamps[last] - stamps[first])


def _one_trial_epoch(model_config: ModelConfig, data_dir: str | None, quick_n: int | None, seed: int, queue) -> None:
    """One epoch of train() in a fresh process: its loss and the process's peak memory."""
    data = _data(data_dir, quick_n)
    start = time.perf_counter()
    result = train(model_config, TrainConfig(epochs=1, seed=seed), data, compile=True)
    queue.put({
        "neg_elbo": result.metrics["neg_elbo"],
        "time_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


# ---------------------------------------------------------------- the machine's yardsticks


def flops_per_image(model_config: ModelConfig) -> float:
    model = VAE(model_config)
    x = torch.rand(BATCH, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        logits, mu, logvar = model(x, torch.randn(BATCH, model_config.latent_dim))
        loss = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + (mu.pow(2) + logvar.exp()).sum()
        loss.backward()
    return counter.get_total_flops() / BATCH


def gemm_flops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def _data(data_dir: str | None, quick_n: int | None) -> Cifar10:
    if data_dir:
        data = load_cifar10(Path(data_dir))
        return data.limit(quick_n, quick_n) if quick_n else data
    # generated images with some structure, the size of CIFAR-10 (or quick_n)
    n_train, n_test = (quick_n, quick_n // 4) if quick_n else (50_000, 10_000)
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(0, 255, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    def make(n):
        noise = torch.randint(0, 64, (n, 3, 32, 32), generator=g)
        return (base * torch.rand(n, 3, 1, 1, generator=g) + noise).clamp(0, 255).to(torch.uint8)
    return Cifar10(make(n_train), make(n_test), "generated")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="CIFAR-10 folder (ImageFolder or cifar-10-batches-py); generated images otherwise")
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions of each loop, alternated")
    ap.add_argument("--batches", type=int, default=60, help="timed batches per repetition")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,048 images, 1 repetition of 10 batches")
    args = ap.parse_args()
    quick_n = 2048 if args.quick else None
    repeats, batches, warmup = (1, 10, 3) if args.quick else (args.repeats, args.batches, 10)

    model_config = ModelConfig(latent_dim=args.latent_dim, base_channels=args.base_channels)
    data = _data(args.data_dir, quick_n)
    print(f"data: {len(data.train)} train / {len(data.test)} val images ({data.source}); model latent "
          f"{model_config.latent_dim} base {model_config.base_channels}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)

    # (a)'s model and loader persist across repetitions, like one long training run
    torch.manual_seed(0)
    tb_model = VAE(model_config)
    tb_opt = torch.optim.Adam(tb_model.parameters(), lr=3e-3)
    loader = DataLoader(InMemoryCifar(data.train), batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True)
    tb_rates, vs_rates = [], []
    for rep in range(repeats):
        tb_rates.append(textbook_images_per_s(tb_model, tb_opt, loader, warmup if rep == 0 else 2, batches))
        vs_rates.append(vae_search_images_per_s(model_config, data, warmup, batches))
        print(f"repetition {rep + 1}: textbook {tb_rates[-1]:.0f} img/s, vae-search {vs_rates[-1]:.0f} img/s", flush=True)
    baseline, ours = statistics.median(tb_rates), statistics.median(vs_rates)

    flops = flops_per_image(model_config)
    peak = gemm_flops()
    fraction = ours * flops / peak
    print(f"training FLOPs per image {flops / 1e6:.1f} MFLOP; vae-search {ours * flops / 1e9:.1f} GFLOP/s; "
          f"fp32 GEMM {peak / 1e9:.1f} GFLOP/s; fraction {fraction:.3f}", flush=True)

    print("one epoch of each from the same seed ...", flush=True)
    start = time.perf_counter()
    loss_tb = textbook_epoch(model_config, data, seed=0)
    tb_epoch_s = time.perf_counter() - start
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_one_trial_epoch, args=(model_config, args.data_dir, quick_n, 0, queue))
    child.start()
    trial = queue.get()
    child.join()
    print(f"val neg_elbo after one epoch: textbook {loss_tb:.2f} ({tb_epoch_s:.0f} s), vae-search "
          f"{trial['neg_elbo']:.2f} ({trial['time_s']:.0f} s incl. compilation and validation); "
          f"difference {100 * (trial['neg_elbo'] - loss_tb) / loss_tb:+.2f}%", flush=True)
    print(f"peak memory: vae-search trial process {trial['peak_rss_mb']:.0f} MB; this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)
    print(f"speedup {ours / baseline:.2f}x (median of {repeats}: textbook {baseline:.0f} img/s, vae-search {ours:.0f} img/s)")
    print(json.dumps({
        "baseline_img_s": round(baseline, 1),
        "vae_search_img_s": round(ours, 1),
        "speedup": round(ours / baseline, 3),
        "gemm_fraction": round(fraction, 4),
        "loss_baseline": round(loss_tb, 3),
        "loss_vae_search": round(trial["neg_elbo"], 3),
        "peak_rss_mb_trial": round(trial["peak_rss_mb"], 1),
    }))


if __name__ == "__main__":
    main()

"""Training throughput: the textbook PyTorch loop against vae-search's own training path,
one process and a whole local study.

    python benchmarks/throughput.py --data-dir data/cifar10-jpeg      # 15-30 minutes on 2 cores
    python benchmarks/throughput.py --quick                           # smoke run, generated data

In one run, on the same images and the same architecture:
  (a) the textbook loop: a Dataset holding decoded uint8 images that returns
      ToTensor()(PIL image) per item (as torchvision's CIFAR10 does), DataLoader(batch_size=128,
      shuffle=True, num_workers=2), the eager model, Adam, BCE on sigmoid outputs,
      loss.item() every step; one process with all cores (the baseline);
  (b) vae_search.train.train() in one process with all cores, exactly as a trial runs it,
      in fp32 and in the default precision (`--precision auto`: bf16 where the CPU has
      AVX512_BF16 or AMX, else fp32, when the two are the same it is measured once), each
      both as `--compile auto` runs a full-data trial here and the other way (compiled or
      eager), so the run says what compiling pays in each precision;
  (c) the study: the default number of local workers (`--jobs`, one process per core with one
      torch thread each), each running train() for a fixed number of steps after its
      warm-up; every worker's images over the wall time from the common start to the last
      worker's end.
(a) and (b) alternate over repetitions; throughput is measured after a warm-up (compilation
for (b) and (c), DataLoader start-up for (a)). Then one full epoch of (a) and of (b) in each
precision from the same seed, evaluated with the same function (the losses must agree within
noise), and the peak memory of a full-data trial process. The last line is one JSON object.

Every process of the benchmark has the memory settings of a vae-search process
(vae_search/allocator.py; `VAE_SEARCH_ALLOCATOR=system` for none), the textbook loop's too,
so `speedup` and `study_speedup` leave the allocator out (benchmarks/allocator.py measures
it). The figures in docs/performance.md before commit afa64ed were measured without them.
(a) also runs as its author runs it, in a process of its own with the system's allocator,
alternating with the others: `baseline_system_img_s`, and the ratios against it,
`speedup_vs_system_baseline` and `study_speedup_vs_system_baseline`, what a user gains by
training with vae-search rather than the textbook loop. That is the fair baseline: with the
system's allocator, (a) in a process shared with (b)'s trainings ran 17% slower than in its own
(3,108 against 3,740 img/s on AVX512_BF16 cores, one run), which inflated the ratios measured
before this measurement existed (docs/performance.md); with vae-search's settings the two agree.
"""

from __future__ import annotations

# ruff: noqa: E402 -- the allocator is set before torch is imported
import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vae_search import allocator

# As the console script does, before torch loads (spawned workers run this again on import).
# The whole process has it, the textbook loop too: the baseline gets the same memory (and
# start_system_textbook measures it once more without).
_THP_BEFORE = os.environ.get("THP_MEM_ALLOC_ENABLE")  # the user's, before tune() sets it for the processes we start
ALLOCATOR = allocator.tune()

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from vae_search.data import Cifar10, load_cifar10
from vae_search.model import VAE, ModelConfig
from vae_search.train import TrainConfig, evaluate, resolve_precision, should_compile, train
from vae_search.workers import default_jobs, threads_per_worker

BATCH = 128
# What `--compile auto` does for a full-data trial (10 epochs of 50,000 images) on this machine.
FULL_TRIAL_COMPILES = should_compile("auto", torch.device("cpu"), 500_000)


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


class TextbookLoop:
    """(a)'s model, optimiser and loader, persisting across repetitions like one long run."""

    def __init__(self, model_config: ModelConfig, data: Cifar10) -> None:
        torch.manual_seed(0)
        self.model = VAE(model_config)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)
        self.loader = DataLoader(InMemoryCifar(data.train), batch_size=BATCH, shuffle=True, num_workers=2,
                                 persistent_workers=True)

    def images_per_s(self, warmup: int, batches: int) -> float:
        return textbook_images_per_s(self.model, self.opt, self.loader, warmup, batches)


def _system_textbook(model_config: ModelConfig, data_dir: str | None, quick_n: int | None, conn) -> None:
    """(a) in a process of its own, as its author runs it: no vae-search memory settings (the
    parent started it with VAE_SEARCH_ALLOCATOR=system, so this module's import left glibc and
    torch as they come). Measures a repetition per (warmup, batches) received; None ends it."""
    loop = TextbookLoop(model_config, _data(data_dir, quick_n))
    conn.send(ALLOCATOR)
    try:
        while (job := conn.recv()) is not None:
            conn.send(loop.images_per_s(*job))
    except EOFError:  # the parent is gone
        pass


def start_system_textbook(model_config: ModelConfig, data_dir: str | None, quick_n: int | None):
    """The process of _system_textbook and our end of its pipe. Also where this process has the
    system's allocator: (a) then shares a process with (b)'s trainings, its author's does not."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: glibc's settings are not inherited
    ours, theirs = ctx.Pipe()
    # not a daemon: its DataLoader starts workers; if we die, its pipe closes and it ends
    proc = ctx.Process(target=_system_textbook, args=(model_config, data_dir, quick_n, theirs))
    with mock.patch.dict(os.environ, {allocator.ENV: "system"}):  # the environment it starts with, ours restored
        if _THP_BEFORE is None:
            os.environ.pop("THP_MEM_ALLOC_ENABLE", None)  # what tune() set; a user's own stays
        proc.start()
    state = ours.recv()
    print(f"textbook loop, as its author runs it: a process of its own, memory: {state}", flush=True)
    return proc, ours


def textbook_epoch(model_config: ModelConfig, data: Cifar10, seed: int) -> float:
    torch.manual_seed(seed)
    model = VAE(model_config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(InMemoryCifar(data.train), batch_size=BATCH, shuffle=True, num_workers=2)
    for x in loader:
        textbook_step(model, opt, x)
    return evaluate(model, data.test, 1.0, seed + 1, torch.device("cpu"))["neg_elbo"]


# ---------------------------------------------------------------- (b) vae-search's path


def _timed_train(model_config: ModelConfig, data: Cifar10, warmup: int, batches: int, precision: str,
                 start_barrier=None, compile: bool = FULL_TRIAL_COMPILES) -> tuple[float, float, float]:
    """train() itself for warmup + batches steps, stamped by its progress callback (made
    every batch here); returns (images/s, start, end) of the timed batches. With a barrier,
    every worker starts its timed batches at the same moment."""
    from vae_search import train as train_module

    n_images = (warmup + batches + 1) * BATCH
    subset = Cifar10(data.train[:n_images], data.test[:BATCH], data.source)
    stamps: dict[int, float] = {}

    def on_batch(epoch, batch, n_batches, loss):
        if batch == warmup + 1 and start_barrier is not None:
            loss.item()  # the warm-up's work is done before the common start
            start_barrier.wait()
        stamps[batch] = time.perf_counter()

    every = train_module.PROGRESS_EVERY
    train_module.PROGRESS_EVERY = 1
    try:
        train(model_config, TrainConfig(epochs=1), subset, compile=compile, precision=precision, on_batch=on_batch)
    finally:
        train_module.PROGRESS_EVERY = every
    first, last = warmup + 1, warmup + batches + 1
    return batches * BATCH / (stamps[last] - stamps[first]), stamps[first], stamps[last]


def vae_search_images_per_s(model_config: ModelConfig, data: Cifar10, warmup: int, batches: int,
                            precision: str = "fp32", compile: bool = FULL_TRIAL_COMPILES) -> float:
    """Times the batches of train() itself; validation and compilation fall outside."""
    return _timed_train(model_config, data, warmup, batches, precision, compile=compile)[0]


def _study_worker(model_config, data_dir, quick_n, threads, warmup, batches, precision, barrier, queue) -> None:
    torch.set_num_threads(threads)
    rate, start, end = _timed_train(model_config, _data(data_dir, quick_n), warmup, batches, precision, barrier)
    queue.put((rate, start, end))


def study_images_per_s(model_config, data_dir, quick_n, jobs, warmup, batches, precision) -> tuple[float, list[float]]:
    """(c): `jobs` worker processes as `--jobs` starts them, one torch thread each where the
    cores allow; all workers' timed images over the wall time from their common start to
    the last one's end."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(jobs), ctx.Queue()
    threads = threads_per_worker(jobs)
    procs = [ctx.Process(target=_study_worker, args=(model_config, data_dir, quick_n, threads, warmup, batches, precision,
                                                     barrier, queue)) for _ in range(jobs)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    start, end = min(r[1] for r in results), max(r[2] for r in results)
    return jobs * batches * BATCH / (end - start), [r[0] for r in results]


def _one_trial_epoch(model_config: ModelConfig, data_dir: str | None, quick_n: int | None, seed: int, precision: str,
                     queue) -> None:
    """One epoch of train() in a fresh process: its loss and the process's peak memory."""
    data = _data(data_dir, quick_n)
    start = time.perf_counter()
    result = train(model_config, TrainConfig(epochs=1, seed=seed), data, compile=FULL_TRIAL_COMPILES, precision=precision)
    queue.put({
        "neg_elbo": result.metrics["neg_elbo"],
        "time_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


def trial_epoch(model_config: ModelConfig, data_dir: str | None, quick_n: int | None, precision: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_one_trial_epoch, args=(model_config, data_dir, quick_n, 0, precision, queue))
    child.start()
    out = queue.get()
    child.join()
    return out


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
    ap.add_argument("--data-dir", help="CIFAR-10 folder or archive (ImageFolder or cifar-10-batches-py); generated images otherwise")
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions of (a) and (b), alternated")
    ap.add_argument("--batches", type=int, default=60, help="timed batches per repetition (and per study worker)")
    ap.add_argument("--jobs", type=int, help="study workers for (c) (default: what --jobs defaults to here)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,048 images, 1 repetition of 10 batches, the one-epoch comparison on 512")
    args = ap.parse_args()
    quick_n = 2048 if args.quick else None
    # The one-epoch comparison of a smoke run needs no more than its code path run: a quarter
    # of the images (bf16 where it is emulated trains about ten times slower than fp32)
    epoch_n = quick_n // 4 if quick_n else None
    repeats, batches, warmup = (1, 10, 3) if args.quick else (args.repeats, args.batches, 10)

    model_config = ModelConfig(latent_dim=args.latent_dim, base_channels=args.base_channels)
    data = _data(args.data_dir, quick_n)
    cpu = torch.device("cpu")
    default = resolve_precision("auto", cpu)
    precisions = ["fp32"] if default == "fp32" else ["fp32", default]
    # (precision, compiled) of each (b) variant: what a trial does, then the other way, so that
    # one run measures what compiling pays here
    variants = [(p, c) for p in precisions for c in (FULL_TRIAL_COMPILES, not FULL_TRIAL_COMPILES)]
    jobs = args.jobs or default_jobs(cpu)
    print(f"data: {len(data.train)} train / {len(data.test)} val images ({data.source}); model latent "
          f"{model_config.latent_dim} base {model_config.base_channels}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; default "
          f"precision {default}; default jobs {jobs}; compiled {FULL_TRIAL_COMPILES}; memory: {ALLOCATOR}", flush=True)

    textbook = TextbookLoop(model_config, data)
    system_proc, system_conn = start_system_textbook(model_config, args.data_dir, quick_n)
    tb_rates: list[float] = []
    system_rates: list[float] = []
    vs_rates: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    for rep in range(repeats):
        tb_warmup = warmup if rep == 0 else 2  # the loaders persist: the first repetition starts them
        tb_rates.append(textbook.images_per_s(tb_warmup, batches))
        system_conn.send((tb_warmup, batches))
        system_rates.append(system_conn.recv())
        for p, compiled in variants:
            vs_rates[p, compiled].append(vae_search_images_per_s(model_config, data, warmup, batches, p, compiled))
        print(f"repetition {rep + 1}: textbook {tb_rates[-1]:.0f} img/s"
              + f" ({system_rates[-1]:.0f} as its author runs it), vae-search "
              + ", ".join(f"{p}{' compiled' if c else ' eager'} {vs_rates[p, c][-1]:.0f}"
                          for p, c in variants) + " img/s", flush=True)
    system_conn.send(None)
    system_proc.join()
    del textbook
    baseline = statistics.median(tb_rates)
    baseline_system = statistics.median(system_rates)
    ours = {p: statistics.median(vs_rates[p, FULL_TRIAL_COMPILES]) for p in precisions}
    compile_speedup = {}
    for p in precisions:
        compiled, eager = statistics.median(vs_rates[p, True]), statistics.median(vs_rates[p, False])
        compile_speedup[p] = round(compiled / eager, 3)
        print(f"compiled against eager, {p}: {compiled / eager:.2f}x ({compiled:.0f} against {eager:.0f} img/s; "
              f"a trial here runs {'compiled' if FULL_TRIAL_COMPILES else 'eager'})", flush=True)

    print(f"study: {jobs} worker process(es), {threads_per_worker(jobs)} thread(s) each, {batches} timed batches each, "
          f"{default} ...", flush=True)
    study_rate, per_worker = study_images_per_s(model_config, args.data_dir, quick_n, jobs, warmup, batches, default)
    print(f"study: {study_rate:.0f} img/s in all (workers {', '.join(f'{r:.0f}' for r in per_worker)} img/s)", flush=True)

    flops = flops_per_image(model_config)
    peak = gemm_flops()
    fraction = ours["fp32"] * flops / peak
    print(f"training FLOPs per image {flops / 1e6:.1f} MFLOP; vae-search fp32 {ours['fp32'] * flops / 1e9:.1f} GFLOP/s; "
          f"study {study_rate * flops / 1e9:.1f} GFLOP/s; fp32 GEMM {peak / 1e9:.1f} GFLOP/s (all threads)", flush=True)

    print("one epoch of each from the same seed ...", flush=True)
    start = time.perf_counter()
    loss_tb = textbook_epoch(model_config, _data(args.data_dir, epoch_n), seed=0)
    tb_epoch_s = time.perf_counter() - start
    epochs = {p: trial_epoch(model_config, args.data_dir, epoch_n, p) for p in dict.fromkeys(["fp32", "bf16"])}
    for p, r in epochs.items():
        print(f"val neg_elbo after one epoch: vae-search {p} {r['neg_elbo']:.2f} ({r['time_s']:.0f} s incl. compilation "
              f"and validation), {100 * (r['neg_elbo'] - loss_tb) / loss_tb:+.2f}% against the textbook's {loss_tb:.2f} "
              f"({tb_epoch_s:.0f} s)", flush=True)
    peak_rss = max(r["peak_rss_mb"] for r in epochs.values())
    print(f"peak memory of a trial process: {peak_rss:.0f} MB", flush=True)
    print(f"speedup {ours[default] / baseline:.2f}x in one process, study {study_rate / baseline:.2f}x "
          f"(textbook {baseline:.0f} img/s); against the textbook loop as its author runs it ({baseline_system:.0f} "
          f"img/s): {ours[default] / baseline_system:.2f}x and {study_rate / baseline_system:.2f}x")
    print(json.dumps({
        "baseline_img_s": round(baseline, 1),
        "vae_search_img_s": round(ours[default], 1),
        "speedup": round(ours[default] / baseline, 3),
        "gemm_fraction": round(fraction, 4),
        "loss_baseline": round(loss_tb, 3),
        "loss_vae_search": round(epochs[default]["neg_elbo"], 3),
        "peak_rss_mb_trial": round(peak_rss, 1),
        "vae_search_fp32_img_s": round(ours["fp32"], 1),
        "vae_search_default_img_s": round(ours[default], 1),
        "precision": default,
        "jobs": jobs,
        "study_img_s": round(study_rate, 1),
        "study_speedup": round(study_rate / baseline, 3),
        "loss_fp32": round(epochs["fp32"]["neg_elbo"], 3),
        "loss_bf16": round(epochs["bf16"]["neg_elbo"], 3),
        "compiled": FULL_TRIAL_COMPILES,
        "compile_speedup": compile_speedup,
        "allocator": ALLOCATOR,
        "baseline_system_img_s": round(baseline_system, 1),
        "speedup_vs_system_baseline": round(ours[default] / baseline_system, 3),
        "study_speedup_vs_system_baseline": round(study_rate / baseline_system, 3),
    }))


if __name__ == "__main__":
    main()

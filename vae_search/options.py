"""The options the `vae-search` commands share, as Typer annotations: one place for their
names, defaults, environment variables and help."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vae_search import samplers
from vae_search import study as st_defaults
from vae_search.storages import STORAGE_HELP


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Compile(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


# ---------------------------------------------------------------- shared options

Epochs = Annotated[Optional[int], typer.Option(min=1, help="Epochs per trial (default: an existing study's, else the preset's, or 10).")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, help="Images per Adam step (default: an existing study's, else the preset's, or 128; a search space that sets batch_size overrides it).")]
# numpy's seed streams take no negative seed and torch's generator none of 2**63 or more (a traceback, or every trial
# failed); and (seed, trial) becomes 32-bit words, so seed 2**32 drew trial 0 from seed 0's stream for trial 1.
Seed = Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seeds weights, batch order and noise; same seed + device = "
                                   "same numbers on CPU.")]
DeviceOpt = Annotated[Device, typer.Option(case_sensitive=False, help="Where to train; auto picks cuda, then mps, then cpu.")]
DataDir = Annotated[
    Optional[Path],
    typer.Option(
        envvar="VAE_SEARCH_DATA",
        help="CIFAR-10 as a cifar-10-batches-py folder, an ImageFolder (`train/CLASS/*.jpg`, `test/CLASS/*.jpg`), or a "
        ".tar.gz of either (the official cifar-10-python.tar.gz, ../shared/data/cifar10-jpeg.tar.gz), unpacked once "
        "into the cache. Default: torchvision's download into the cache folder.",
    ),
]
LimitTrain = Annotated[Optional[int], typer.Option(min=1, help="Use a fixed subset of N training images (quick runs; default: an existing study's subset, else all).")]
LimitVal = Annotated[Optional[int], typer.Option(min=1, help="Use a fixed subset of N test images for validation (default: an existing study's subset, else all).")]
StorageOpt = Annotated[str, typer.Option(envvar="VAE_SEARCH_STORAGE", help=f"Optuna storage URL: {STORAGE_HELP}.")]
VERSION_HELP = ("Print the versions, what `auto` means on this machine (device, precision, compile, jobs) and the memory "
                "settings of its processes (VAE_SEARCH_ALLOCATOR=system turns them off), and exit.")
GridPreset = Annotated[Optional[str], typer.Option(
    help="A grid study's preset, a packaged name or a .toml file: needed where the grid was run from a file of your "
    "own (a study names its preset, and only packaged ones are looked up by that name). Default: the study's.")]
StudyName = Annotated[Optional[str], typer.Option(help="Study name (default: the study most recently written).")]
ArtifactDir = Annotated[Path, typer.Option(envvar="VAE_SEARCH_ARTIFACTS", help="Folder of the artifact store (weights, images).")]
CompileOpt = Annotated[
    Compile,
    typer.Option(case_sensitive=False, help="torch.compile the training step; auto = on with CUDA for a run long enough to pay "
                 "for it, off on CPUs (measured not to pay there; on compiles on a CPU too)."),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(case_sensitive=False, help="fp32, or bf16 autocast of the convolutions and linears (loss, weights "
                 "and Adam stay fp32); auto = the study's own precision when it exists (a study does not mix precisions, "
                 "so a search resumes on any machine), else bf16 where the device does it natively (CUDA with bf16, "
                 "CPUs with AVX512_BF16 or AMX) and fp32 elsewhere."),
]
Jobs = Annotated[
    Optional[int],
    typer.Option(min=1, envvar="VAE_SEARCH_JOBS", help="Worker processes on this machine, all on the same study "
                 "(default: one per CPU core, each with one torch thread, as memory allows; with CUDA, up to 12 per GPU on "
                 "three quarters of the cores, as memory allows; more than the free memory holds is said at the "
                 "start). --jobs 1 trains in this process."),
]
Heartbeat = Annotated[
    Optional[int],
    typer.Option(min=0, help="Seconds between heartbeats of a running trial (RDB storages); a worker silent for 3 beats is "
                 "failed and its trial re-queued. 0 turns heartbeats off. The interval belongs to the study: its first "
                 "run records it (default 30) and later runs use it."),
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the same numbers as one JSON object, for scripts.")]

SamplerName = StrEnum("SamplerName", {n: n for n in samplers.SAMPLERS})
DEFAULT_STORAGE = st_defaults.DEFAULT_STORAGE
DEFAULT_ARTIFACTS = st_defaults.DEFAULT_ARTIFACT_DIR
GRID_PRECISION_WHY = (
    "grid defaults to auto like the other training commands: the full-data B.1 grid in bf16 on AVX512_BF16 cores kept "
    "every val and recon loss within 0.06% of fp32 (the rule: 0.3%; docs/results.md)"
)

STICKY = ("A resumed study (or a worker joining it) keeps the sampler and pruner its last run chose unless this "
          "option names another (the switch is said).")
SamplerOpt = Annotated[Optional[SamplerName], typer.Option(
        case_sensitive=False, show_default=False, help="Sampler (default tpe). Trial n draws from its own stream, seeded "
        "with (--seed, n): workers, restarts and other machines never propose the same points, and one worker from an "
        "empty study repeats exactly. In a finite space (every parameter categorical or stepped) every sampler proposes only "
        "configurations no trial has: random search draws without replacement. " + STICKY)]
PrunerOpt = Annotated[Optional[str], typer.Option(
        show_default=False,
        help="Pruner on the per-epoch val neg_elbo, NAME or NAME:KEY=VALUE:...: percentile (the default: a trial goes "
        "on while it is in the best fifth of earlier trials at epochs 1 to 3, once 2 trials have finished; "
        "percentile:p=25 for a quarter), cohort (the same against every trial that reached the epoch, pruned ones too), "
        "sha (successive halving, rungs at epochs 1 and 3), hyperband, median, "
        "patient (median after an epoch without progress), none. None of them prunes after epoch 3 (key until): a late "
        "rung costs most of a trial before it saves anything; but every one but none stops, at any epoch, a trial whose "
        "val neg_elbo rises more than 5% above its own best (a collapsed posterior or a blown-up training; the trial "
        "records pruned_because). The default is what benchmarks/pruning.py --replay "
        "measured best on recorded curves; cohort found better configurations live for about a third more epochs "
        "(docs/performance.md). " + STICKY)]
IncludePreset = Annotated[Optional[str], typer.Option(help="Enqueue this preset's points first (b1: start from the "
                                                       "report's grid).")]
Objectives = Annotated[str, typer.Option(help="neg_elbo, or neg_elbo,params for a two-objective study (loss against "
                                         "size) whose best is a Pareto front; pruning does not apply to two objectives.")]

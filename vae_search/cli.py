"""The `vae-search` command. Each command parses, calls the package, prints.

Bad input ends in one line on stderr and exit code 2 (see `main`); Ctrl-C or SIGTERM ends
the running trial as FAIL "interrupted", keeps every finished trial, and exits 130.
"""

from __future__ import annotations

import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vae_search.errors import UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Search the hyperparameters of a convolutional VAE on CIFAR-10 with Optuna.",
)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Compile(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


# ---------------------------------------------------------------- shared options

Epochs = Annotated[Optional[int], typer.Option(min=1, help="Epochs per trial (default: the preset's, or 10).")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, help="Images per Adam step (default 128).")]
Seed = Annotated[int, typer.Option(help="Seeds weights, batch order and noise; same seed + device = same numbers on CPU.")]
DeviceOpt = Annotated[Device, typer.Option(case_sensitive=False, help="Where to train; auto picks cuda, then mps, then cpu.")]
DataDir = Annotated[
    Optional[Path],
    typer.Option(
        envvar="VAE_SEARCH_DATA",
        help="CIFAR-10 as a cifar-10-batches-py folder or an ImageFolder (train/<class>/*, test/<class>/*). "
        "Default: torchvision's download into the cache folder.",
    ),
]
LimitTrain = Annotated[Optional[int], typer.Option(min=1, help="Use a fixed subset of N training images (quick runs).")]
LimitVal = Annotated[Optional[int], typer.Option(min=1, help="Use a fixed subset of N test images for validation.")]
StorageOpt = Annotated[str, typer.Option(help="Optuna storage URL: sqlite:///FILE, postgresql+psycopg://..., journal:///FILE.log.")]
StudyName = Annotated[Optional[str], typer.Option(help="Study name.")]
ArtifactDir = Annotated[Path, typer.Option(help="Folder of the artifact store (weights, images).")]
CompileOpt = Annotated[
    Compile,
    typer.Option(case_sensitive=False, help="torch.compile the training step; auto = on when a run is long enough to pay for it."),
]
Heartbeat = Annotated[
    int,
    typer.Option(min=0, help="Seconds between heartbeats of a running trial (RDB storages); a worker silent for 3 beats is "
                 "failed and its trial re-queued. 0 turns heartbeats off."),
]


def _storage_default() -> str:
    from vae_search.study import DEFAULT_STORAGE

    return os.environ.get("VAE_SEARCH_STORAGE", DEFAULT_STORAGE)


DEFAULT_STORAGE = _storage_default()
DEFAULT_ARTIFACTS = Path(os.environ.get("VAE_SEARCH_ARTIFACTS", "studies/artifacts"))


def _settings(
    *, epochs: int, batch_size: int, seed: int, device: Device, data_dir: Optional[Path],
    limit_train: Optional[int], limit_val: Optional[int], artifact_dir: Path, compile: Compile,
    objectives: tuple[str, ...] = ("neg_elbo",),
):
    from vae_search.artifacts import artifact_store
    from vae_search.data import load_cifar10
    from vae_search.objective import RunSettings
    from vae_search.train import pick_device
    from vae_search.ui import err

    dev = pick_device(device.value)
    store = artifact_store(artifact_dir)
    with err.status("loading CIFAR-10"):
        data = load_cifar10(data_dir).limit(limit_train, limit_val)
    err.print(f"data: {len(data.train)} train / {len(data.test)} val images from {data.source}; device {dev}")
    return RunSettings(
        data=data, epochs=epochs, batch_size=batch_size, seed=seed, device=dev, store=store,
        compile={"auto": "auto", "on": True, "off": False}[compile.value], objectives=objectives,
    )


# ---------------------------------------------------------------- grid / show


@app.command()
def grid(
    preset: Annotated[str, typer.Option(help="Grid preset: a name in studies/ (b1) or a .toml path.")] = "b1",
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    study_name: Annotated[Optional[str], typer.Option(help="Study name (default: the preset's name).")] = None,
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    compile: CompileOpt = Compile.auto,
    heartbeat: Heartbeat = 30,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV.")] = None,
) -> None:
    """Run a preset grid (the report's B.1 by default) as one Optuna study.

    Each point runs exactly once: running the command again completes only the missing
    points, and several workers may run it at once on one storage. Each trial's objective
    is the validation neg_elbo; time_s is its wall time for training plus validation
    (compilation included). Ends with the table beside the report's figures.
    """
    from vae_search import definitions, study as st
    from vae_search.objective import make_objective
    from vae_search.ui import TrainingProgress, err, trial_line

    p = definitions.load_preset(preset)
    storage_obj = st.open_storage(storage, heartbeat=heartbeat)
    settings = _settings(
        epochs=epochs or p.epochs, batch_size=batch_size or p.batch_size, seed=seed, device=device,
        data_dir=data_dir, limit_train=limit_train, limit_val=limit_val, artifact_dir=artifact_dir, compile=compile,
    )
    study = st.create_or_load(storage_obj, study_name or p.name, sampler=None)
    study.set_user_attr("preset", str(p.path) if p.path else p.name)
    study.set_user_attr("kind", "grid")
    with TrainingProgress() as progress:
        settings.on_batch_factory = progress.factory
        ran = st.run_grid(study, p, make_objective(settings, p.distributions()), on_trial_end=lambda t: err.print(trial_line(t)))
    err.print(f"study {study.study_name!r}: this run trained {ran} trial(s)")
    _print_grid_table(study, p, csv)


@app.command()
def show(
    study_name: Annotated[str, typer.Option(help="A grid study.")] = "b1",
    preset: Annotated[Optional[str], typer.Option(help="Preset to compare with (default: the study's).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV.")] = None,
) -> None:
    """Print a grid study's table beside the report's figures, with differences in percent."""
    from vae_search import definitions, study as st

    study = st.load_study(st.open_storage(storage, must_exist=True, heartbeat=None), study_name)
    p = definitions.load_preset(preset or study.user_attrs.get("preset", "b1"))
    _print_grid_table(study, p, csv)


def _print_grid_table(study, preset, csv: Optional[Path]) -> None:
    from rich.console import Console

    from vae_search.report import grid_rich_table, grid_table, write_csv

    df = grid_table(study, preset)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or pipe: no reason to wrap at 80 columns
    console.print(grid_rich_table(df, f"{preset.title} — study {study.study_name!r}"))
    if csv is not None:
        _writable_parent(csv)
        write_csv(df, csv)


def _writable_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write to {parent}: permission denied")


# ---------------------------------------------------------------- entry point


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI: usage errors as one line and exit 2, interrupts as exit 130."""
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends a trial like Ctrl-C does
    args = sys.argv[1:] if argv is None else list(argv)
    command = typer.main.get_command(app)
    try:
        # standalone_mode=False hands errors to us instead of Typer's multi-line panels.
        rc = command.main(args=args or ["--help"], prog_name="vae-search", standalone_mode=False)
    except UsageError as e:
        print(f"vae-search: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.TyperException as e:  # Typer's own: bad option values, unknown options
        print(f"vae-search: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        rc = 130
    if rc == 130:
        print(
            "vae-search: interrupted; finished trials are saved and a running one is marked FAIL "
            "(interrupted). Run the same command again to resume.",
            file=sys.stderr,
        )
    sys.exit(rc if isinstance(rc, int) else 0)

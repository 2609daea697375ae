"""The `vae-search` command. Each command parses, calls the package, prints.

Bad input ends in one line on stderr and exit code 2 (see `main`); Ctrl-C or SIGTERM ends
the running trial as FAIL "interrupted", keeps every finished trial, and exits 130.
"""

from __future__ import annotations

import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vae_search import study as st_defaults
from vae_search.errors import UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Search the hyperparameters of a convolutional VAE on CIFAR-10 with Optuna.",
)


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Compile(StrEnum):
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


DEFAULT_STORAGE = os.environ.get("VAE_SEARCH_STORAGE", st_defaults.DEFAULT_STORAGE)
DEFAULT_ARTIFACTS = Path(os.environ.get("VAE_SEARCH_ARTIFACTS", st_defaults.DEFAULT_ARTIFACT_DIR))


def _stdout():
    """A console for tables: a file or pipe gets 200 columns, not rich's default 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


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
    from vae_search import definitions
    from vae_search import study as st
    from vae_search.objective import make_objective
    from vae_search.ui import TrainingProgress, err, trial_line

    p = definitions.load_preset(preset)
    if csv is not None:  # found out now, not after the training
        _writable_parent(csv)
    storage_obj = st.open_storage(storage, heartbeat=heartbeat)
    epochs, batch_size, name = epochs or p.epochs, batch_size or p.batch_size, study_name or p.name
    st.check_budget(st.existing_study(storage_obj, name), {"epochs": epochs, "batch_size": batch_size}, record=False)
    settings = _settings(
        epochs=epochs, batch_size=batch_size, seed=seed, device=device,
        data_dir=data_dir, limit_train=limit_train, limit_val=limit_val, artifact_dir=artifact_dir, compile=compile,
    )
    study = st.create_or_load(storage_obj, name, sampler=None)
    st.check_budget(study, {"epochs": epochs, "batch_size": batch_size, "data_fingerprint": settings.data.fingerprint})
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
    from vae_search import definitions
    from vae_search import study as st

    study = st.load_study(st.open_storage(storage, must_exist=True, heartbeat=None), study_name)
    p = definitions.load_preset(preset or study.user_attrs.get("preset", "b1"))
    _print_grid_table(study, p, csv)


def _print_grid_table(study, preset, csv: Optional[Path]) -> None:
    from vae_search.report import grid_rich_table, grid_table, write_csv

    df = grid_table(study, preset)
    _stdout().print(grid_rich_table(df, f"{preset.title} — study {study.study_name!r}"))
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


# ---------------------------------------------------------------- optimize


SamplerName = StrEnum("SamplerName", {n: n for n in st_defaults.SAMPLERS})
PrunerName = StrEnum("PrunerName", {n: n for n in st_defaults.PRUNERS})


@app.command()
def optimize(
    trials: Annotated[int, typer.Option(min=1, help="Finished trials (complete or pruned) the study should reach, counting "
                                        "earlier runs and every worker on the storage: a restart continues, workers stop together.")] = 50,
    timeout: Annotated[Optional[float], typer.Option(min=0, help="Stop starting trials after this many seconds.")] = None,
    space: Annotated[Optional[Path], typer.Option(help="Search-space TOML (default studies/search.toml).")] = None,
    sampler: Annotated[SamplerName, typer.Option(case_sensitive=False, help="Sampler, seeded with --seed.")] = SamplerName.tpe,
    pruner: Annotated[PrunerName, typer.Option(case_sensitive=False, help="Pruner on the per-epoch val neg_elbo.")] = PrunerName.median,
    include_preset: Annotated[Optional[str], typer.Option(help="Enqueue this preset's points first (b1: start from the report's grid).")] = None,
    objectives: Annotated[str, typer.Option(help="neg_elbo, or neg_elbo,params for a two-objective study (loss against size) whose "
                                            "best is a Pareto front; pruning does not apply to two objectives.")] = "neg_elbo",
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    study_name: Annotated[str, typer.Option(help="Study name.")] = "search",
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    compile: CompileOpt = Compile.auto,
    heartbeat: Heartbeat = 30,
) -> None:
    """Search latent_dim, base_channels, beta and lr on a fixed budget.

    The objective is the validation neg_elbo per image (recon + KL), so trials with
    different beta compare on one scale. Every trial has the same budget (10 epochs unless
    --epochs says otherwise); time_s is each trial's wall time for training plus validation
    (compilation included). Failed trials (NaN loss, errors) are recorded with their
    reason and do not count towards --trials.
    """
    from vae_search import definitions
    from vae_search import study as st
    from vae_search.objective import OBJECTIVES, make_objective
    from vae_search.ui import TrainingProgress, err, trial_line

    objs = tuple(o.strip() for o in objectives.split(",") if o.strip())
    if not objs or objs[0] != "neg_elbo" or len(objs) > 2 or any(o not in OBJECTIVES for o in objs) or len(set(objs)) != len(objs):
        raise UsageError(f"--objectives {objectives!r}: use neg_elbo or neg_elbo,params")
    distributions = definitions.load_space(space)
    preset = definitions.load_preset(include_preset) if include_preset else None
    storage_obj = st.open_storage(storage, heartbeat=heartbeat)
    epochs = epochs or 10
    batch_size = batch_size or 128
    smp = st.make_sampler(sampler.value, seed, len(objs))
    prn = st.make_pruner(pruner.value, epochs, len(objs))
    st.check_budget(st.existing_study(storage_obj, study_name), {"epochs": epochs, "batch_size": batch_size}, record=False)
    settings = _settings(
        epochs=epochs, batch_size=batch_size, seed=seed, device=device, data_dir=data_dir, limit_train=limit_train,
        limit_val=limit_val, artifact_dir=artifact_dir, compile=compile, objectives=objs,
    )
    study = st.create_or_load(storage_obj, study_name, directions=["minimize"] * len(objs), sampler=smp, pruner=prn)
    st.check_budget(study, {"epochs": epochs, "batch_size": batch_size, "data_fingerprint": settings.data.fingerprint})
    study.set_user_attr("kind", "search")
    study.set_user_attr("objectives", list(objs))
    if preset is not None:
        st.enqueue_missing_points(study, preset)
    already = st.finished_count(study)
    err.print(f"study {study.study_name!r}: {already} of {trials} trials finished; sampler {sampler.value}, pruner "
              f"{'none' if len(objs) > 1 else pruner.value}")
    with TrainingProgress() as progress:
        settings.on_batch_factory = progress.factory
        ran = st.run_optimize(study, make_objective(settings, distributions), n_trials=trials, timeout=timeout,
                              on_trial_end=lambda t: err.print(trial_line(t)))
    err.print(f"study {study.study_name!r}: this run trained {ran} trial(s); {st.finished_count(study)} finished in all")
    try:
        _print_best(study, storage_obj)
    except UsageError as e:  # nothing complete yet (all pruned or failed): not an error of this run
        err.print(str(e))


# ---------------------------------------------------------------- best / interpolate / report / dashboard


def _load(storage: str, study_name: Optional[str]):
    from vae_search import study as st

    storage_obj = st.open_storage(storage, must_exist=True, heartbeat=None)
    study = st.load_study(storage_obj, study_name)
    if study_name is None:  # said once the command has succeeded, so an error stays one line
        _notes.append(f"(study {study.study_name!r}: the most recently written; pass --study-name for another)")
    return storage_obj, study


def _print_best(study, storage_obj) -> None:
    from optuna.trial import TrialState

    from vae_search.report import markdown
    from vae_search.selection import pareto_front, select_best

    out = _stdout()
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    if len(study.directions) > 1:
        front = pareto_front(study)
        out.print(f"Pareto front of study {study.study_name!r} (neg_elbo against parameters), {len(front)} trials:")
        out.print(markdown(front))
        return
    sel = select_best(study, storage_obj)
    out.print(f"best trial of study {study.study_name!r}: trial {sel.trial.number}")
    for reason in sel.reasons:
        out.print(f"  - {reason}")
    if sel.others is not None:
        out.print("other top trials:")
        out.print(markdown(sel.others))


@app.command()
def best(
    study_name: StudyName = None,
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """Print the best trial and the reasons, in numbers (the report's B.2, computed).

    Quality (val neg_elbo, recon loss) against the other top trials and the B.1 baseline
    (latent 8, base 32) when that study exists; parameters and overhead; time; KL;
    train-val gap; compression ratio. A two-objective study prints its Pareto front.
    Without --study-name: the study most recently written.
    """
    storage_obj, study = _load(storage, study_name)
    _print_best(study, storage_obj)


class Mode(StrEnum):
    random = "random"
    images = "images"


@app.command()
def interpolate(
    trial: Annotated[str, typer.Option(help="'best' or a trial number.")] = "best",
    study_name: StudyName = None,
    steps: Annotated[int, typer.Option(min=2, help="Images per interpolation line.")] = 10,
    rows: Annotated[int, typer.Option(min=1, help="Interpolation lines.")] = 8,
    mode: Annotated[Mode, typer.Option(case_sensitive=False, help="random: between z ~ N(0, I) pairs (the report's B.3); "
                                       "images: between the encodings of test images.")] = Mode.random,
    seed: Seed = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default studies/interpolations).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    data_dir: DataDir = None,
) -> None:
    """Draw a trial's latent interpolation from its stored weights: a PNG grid and an
    interactive plotly HTML, both also attached to the study (optuna-dashboard lists them).

    Each complete trial already carries its own random-mode interpolation PNG, made when it
    finished: Optuna does not let a finished trial take new artifacts.
    """
    from optuna.trial import TrialState

    from vae_search.artifacts import artifact_store, load_model, trials_with_weights
    from vae_search.interpolation import write_interpolation
    from vae_search.ui import err

    storage_obj, study = _load(storage, study_name)
    store = artifact_store(artifact_dir)
    have = trials_with_weights(study)
    listing = ", ".join(str(t.number) for t in have) or "none"
    if trial == "best":
        if not have:
            raise UsageError(f"study {study.study_name!r} has no trial with weights yet")
        chosen = min(have, key=lambda t: t.user_attrs["neg_elbo"]) if len(study.directions) > 1 else study.best_trial
    else:
        try:
            number = int(trial)
        except ValueError:
            raise UsageError(f"--trial {trial!r}: give 'best' or a trial number; trials with weights: {listing}") from None
        found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not found:
            raise UsageError(f"study {study.study_name!r} has no trial {number}; trials with weights: {listing}")
        chosen = found[0]
        if chosen.state != TrialState.COMPLETE or chosen not in have:
            raise UsageError(f"trial {number} has no weights (it is {chosen.state.name}); trials with weights: {listing}")
    model = load_model(store, chosen)
    images = None
    if mode == Mode.images:
        from vae_search.data import load_cifar10

        images = load_cifar10(data_dir).test
    out_dir = out or Path("studies/interpolations")
    _writable_parent(out_dir / "x")
    paths = write_interpolation(study, chosen, model, store, out_dir=out_dir, rows=rows, steps=steps, mode=mode.value,
                                seed=seed, images=images)
    err.print(f"trial {chosen.number} of study {study.study_name!r}:")
    for p in paths:
        print(p)


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("studies/reports"),
    study_name: StudyName = None,
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """Write a study's trials as CSV and markdown, and plotly HTML: optimisation history,
    parameter importances, parallel coordinates, neg_elbo against parameters, and the
    learning curves of all trials."""
    from vae_search.report import write_report

    _, study = _load(storage, study_name)
    _writable_parent(out / "x")
    for p in write_report(study, out / study.study_name):
        print(p)


@app.command()
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Start optuna-dashboard on the same storage and artifact folder (Ctrl-C stops it)."""
    import optuna_dashboard

    from vae_search import study as st
    from vae_search.artifacts import artifact_store
    from vae_search.ui import err

    storage_obj = st.open_storage(storage, must_exist=True, heartbeat=None)
    store = artifact_store(artifact_dir)
    err.print(f"optuna-dashboard on http://{host}:{port}/ (storage {st._redact(storage)}, artifacts {artifact_dir})")
    try:
        optuna_dashboard.run_server(storage_obj, host=host, port=port, artifact_store=store)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


# ---------------------------------------------------------------- entry point


_notes: list[str] = []  # printed on stderr after a command succeeds


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI: usage errors as one line and exit 2, interrupts as exit 130."""
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends a trial like Ctrl-C does
    args = sys.argv[1:] if argv is None else list(argv)
    _notes.clear()
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
    if rc in (0, None):
        for note in _notes:
            print(note, file=sys.stderr)
    if rc == 130:
        print(
            "vae-search: interrupted; finished trials are saved and a running one is marked FAIL "
            "(interrupted). Run the same command again to resume.",
            file=sys.stderr,
        )
    sys.exit(rc if isinstance(rc, int) else 0)

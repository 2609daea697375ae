"""The `vae-search` command. Each command parses, calls the package, prints.

Bad input ends in one line on stderr and exit code 2, a run that cannot go on (a full
artifact disk, a database that stays down, a worker that died) in one line and exit code 1
(see `main`); Ctrl-C or SIGTERM ends the running trials as FAIL "interrupted", keeps every
finished trial, and exits 130.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vae_search import samplers
from vae_search import study as st_defaults
from vae_search.errors import RunError, UsageError

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


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


# ---------------------------------------------------------------- shared options

Epochs = Annotated[Optional[int], typer.Option(min=1, help="Epochs per trial (default: the preset's, or 10).")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, help="Images per Adam step (default 128).")]
Seed = Annotated[int, typer.Option(help="Seeds weights, batch order and noise; same seed + device = same numbers on CPU.")]
DeviceOpt = Annotated[Device, typer.Option(case_sensitive=False, help="Where to train; auto picks cuda, then mps, then cpu.")]
DataDir = Annotated[
    Optional[Path],
    typer.Option(
        envvar="VAE_SEARCH_DATA",
        help="CIFAR-10 as a cifar-10-batches-py folder, an ImageFolder (train/CLASS/*.jpg, test/CLASS/*.jpg), or a "
        ".tar.gz of either (the official cifar-10-python.tar.gz, ../shared/data/cifar10-jpeg.tar.gz), unpacked once "
        "into the cache. Default: torchvision's download into the cache folder.",
    ),
]
LimitTrain = Annotated[Optional[int], typer.Option(min=1, help="Use a fixed subset of N training images (quick runs).")]
LimitVal = Annotated[Optional[int], typer.Option(min=1, help="Use a fixed subset of N test images for validation.")]
StorageOpt = Annotated[str, typer.Option(envvar="VAE_SEARCH_STORAGE", help=f"Optuna storage URL: {st_defaults.STORAGE_HELP}.")]
StudyName = Annotated[Optional[str], typer.Option(help="Study name (default: the study most recently written).")]
ArtifactDir = Annotated[Path, typer.Option(envvar="VAE_SEARCH_ARTIFACTS", help="Folder of the artifact store (weights, images).")]
CompileOpt = Annotated[
    Compile,
    typer.Option(case_sensitive=False, help="torch.compile the training step; auto = on when a run is long enough to pay for it."),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(case_sensitive=False, help="fp32, or bf16 autocast of the convolutions and linears (loss, weights "
                 "and Adam stay fp32); auto = bf16 where the device does it natively (CUDA with bf16, CPUs with "
                 "AVX512_BF16 or AMX), fp32 elsewhere. A study does not mix precisions."),
]
Jobs = Annotated[
    Optional[int],
    typer.Option(min=1, envvar="VAE_SEARCH_JOBS", help="Worker processes on this machine, all on the same study "
                 "(default: one per CPU core, each with one torch thread, as memory allows; one per GPU). "
                 "--jobs 1 trains in this process."),
]
Heartbeat = Annotated[
    Optional[int],
    typer.Option(min=0, help="Seconds between heartbeats of a running trial (RDB storages); a worker silent for 3 beats is "
                 "failed and its trial re-queued. 0 turns heartbeats off. The interval belongs to the study: its first "
                 "run records it (default 30) and later runs use it."),
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the same numbers as one JSON object, for scripts.")]

DEFAULT_STORAGE = st_defaults.DEFAULT_STORAGE
DEFAULT_ARTIFACTS = st_defaults.DEFAULT_ARTIFACT_DIR
GRID_PRECISION_WHY = (
    "grid defaults to auto like the other training commands: the full-data B.1 grid in bf16 on AVX512_BF16 cores kept "
    "every val and recon loss within 0.06% of fp32 (the rule: 0.3%; docs/results.md)"
)


def _stdout():
    """A console for tables: a file or pipe gets 200 columns, not rich's default 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _device(device: Device, precision: Precision | str):
    """The torch device and the resolved precision (fp32 or bf16), known before any data."""
    from vae_search.train import pick_device, resolve_precision

    dev = pick_device(device.value)
    return dev, resolve_precision(str(precision), dev)


def _settings(
    *, epochs: int, batch_size: int, seed: int, device, prec: str, data_dir: Optional[Path],
    limit_train: Optional[int], limit_val: Optional[int], artifact_dir: Path, compile: Compile,
    objectives: tuple[str, ...] = ("neg_elbo",),
):
    from vae_search.artifacts import artifact_store
    from vae_search.data import load_cifar10
    from vae_search.objective import RunSettings
    from vae_search.ui import err
    from vae_search.workers import apply_worker_threads, worker_identity

    apply_worker_threads()
    store = artifact_store(artifact_dir)
    if worker_identity() is None:
        with err.status("loading CIFAR-10"):
            data = load_cifar10(data_dir).limit(limit_train, limit_val)
    else:
        data = load_cifar10(data_dir).limit(limit_train, limit_val)  # from the cache the parent filled
    return RunSettings(
        data=data, epochs=epochs, batch_size=batch_size, seed=seed, device=device, store=store,
        compile={"auto": "auto", "on": True, "off": False}[compile.value], precision=prec, objectives=objectives,
        jobs=(worker_identity() or (1, 1))[1],
    )


_FAIL_STALE_HINT = ("nothing checks them on this storage (no heartbeats: a journal or gRPC storage, or --heartbeat 0); "
                    "if their workers are gone, `vae-search fail-stale --older-than 2h` (longer than any trial takes) "
                    "fails and re-queues them")


def _announce(settings, study) -> None:
    """What the run trains on, said once its options have passed every check (so that an
    error stays one line), and which trials nothing can check."""
    from vae_search import study as st
    from vae_search.train import native_bf16
    from vae_search.ui import err

    if _is_worker():
        return
    d, dev, prec = settings.data, settings.device, settings.precision
    err.print(f"data: {len(d.train)} train / {len(d.test)} val images from {d.source}; device {dev}, {prec}")
    if prec == "bf16" and not native_bf16(dev):
        err.print(f"note: {dev} has no native bf16 (no AVX512_BF16 or AMX); bf16 is emulated and many times slower than fp32")
    held = st.unchecked_running(study)
    if held:
        err.print(f"note: trial(s) {', '.join(map(str, held))} of study {study.study_name!r} are RUNNING and "
                  f"{_FAIL_STALE_HINT}")


def _run_trials(
    study: Any, settings: Any, loop: Callable[..., int], *, jobs: Optional[int], total: int, done: int,
    counts: Callable[[str], bool], title: str,
) -> int:
    """Run `loop(objective_settings, on_trial_end=, on_wait=)` here, in a worker of a parent
    command, or as `jobs` worker processes; returns how many trials this process trained."""
    from vae_search import workers
    from vae_search.storages import fail_and_retry
    from vae_search.ui import TrainingProgress, err, trial_line

    if workers.worker_identity() is not None:  # a worker: report to the parent, print nothing
        with workers.reporter() as rep:
            settings.on_batch_factory = rep.factory
            return loop(on_trial_end=lambda t: rep.trial_end(t.state.name, t.number, trial_line(t)), on_wait=rep.waiting)
    n = min(jobs or workers.default_jobs(settings.device), max(1, total - done))
    if n <= 1:
        with TrainingProgress() as progress:
            settings.on_batch_factory = progress.factory
            return loop(on_trial_end=lambda t: err.print(trial_line(t)), on_wait=progress.waiting)

    err.print(f"{n} workers, {workers.threads_per_worker(n)} torch thread(s) each")
    started = datetime.datetime.now()
    rc = workers.run_workers(_argv, n, device=settings.device, console=err, total=total, done=done, counts=counts,
                             title=title, on_death=lambda trial_id, reason, retry: fail_and_retry(study, trial_id, reason, retry))
    if rc == 130:
        raise KeyboardInterrupt
    if rc != 0:
        raise RunError(f"a worker failed (exit code {rc}; its messages are above); finished trials are saved: run the "
                       "same command again to complete the study")
    # what the workers trained: the trials that ended during this run
    return sum(1 for t in study.get_trials(deepcopy=False) if t.datetime_complete and t.datetime_complete >= started
               and "duplicate of trial" not in t.user_attrs.get("fail_reason", ""))


def _is_worker() -> bool:
    from vae_search.workers import worker_identity

    return worker_identity() is not None


# ---------------------------------------------------------------- grid / show


@app.command()
def grid(
    preset: Annotated[str, typer.Option(help="Grid preset: a packaged name (b1) or the path of a .toml file of your own "
                                        "(./studies/mine.toml); the command says which file it used.")] = "b1",
    seeds: Annotated[int, typer.Option(min=1, help="Run every point with seeds --seed, --seed+1, ..., so that seed noise "
                                       "can be told from real differences; each (point, seed) runs once.")] = 1,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    precision: Annotated[Precision, typer.Option(case_sensitive=False, help=f"fp32, bf16 or auto (see optimize). "
                                                 f"{GRID_PRECISION_WHY}.")] = Precision.auto,
    jobs: Jobs = None,
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    study_name: Annotated[Optional[str], typer.Option(help="Study name (default: the preset's name).")] = None,
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    compile: CompileOpt = Compile.auto,
    heartbeat: Heartbeat = None,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV.")] = None,
) -> None:
    """Run a preset grid (the report's B.1 by default) as one Optuna study.

    Each (point, seed) runs exactly once: running the command again completes only the
    missing ones, and several workers (--jobs, or commands on other machines) may run it at
    once on one storage. Each trial's objective is the validation neg_elbo; time_s is its
    wall time for training plus validation (compilation included; read it with the trial's
    jobs and threads). Ends with the table beside the report's figures (mean +- sd over seeds).
    """
    from vae_search import definitions
    from vae_search import study as st
    from vae_search.ui import err

    p = definitions.load_preset(preset)
    if csv is not None:  # found out now, not after the training
        _writable_parent(csv)
    storage_obj = st.open_storage(storage, heartbeat=heartbeat)
    epochs, batch_size, name = epochs or p.epochs, batch_size or p.batch_size, study_name or p.name
    dev, prec = _device(device, precision)
    existing = st.existing_study(storage_obj, name)
    beat = st.settle_heartbeat(storage_obj, existing, heartbeat)
    st.check_budget(existing, {"epochs": epochs, "batch_size": batch_size, "precision": prec}, record=False)
    settings = _settings(
        epochs=epochs, batch_size=batch_size, seed=seed, device=dev, prec=prec, data_dir=data_dir, limit_train=limit_train,
        limit_val=limit_val, artifact_dir=artifact_dir, compile=compile,
    )
    study = st.create_or_load(storage_obj, name, pruner=st.NO_PRUNING)  # every point runs its full budget
    st.check_budget(study, {"epochs": epochs, "batch_size": batch_size, "data_fingerprint": settings.data.fingerprint,
                            "precision": settings.precision})
    st.record_heartbeat(study, beat)
    _announce(settings, study)
    if not _is_worker():
        err.print(f"preset {p.name!r}: {p.path}")
    study.set_user_attr("preset", p.name)  # a name: a study never makes a command read a file of its choosing
    study.set_user_attr("kind", "grid")
    points = st.grid_points(p, st.seeds_from(seed, seeds))
    _run_points(study, settings, points, p.distributions(), seed, jobs, f"study {name!r}: points complete")
    if not _is_worker():
        _print_grid_table(study, p, csv)


def _run_points(study, settings, points, distributions, seed: int, jobs: Optional[int], title: str) -> None:
    from vae_search import study as st
    from vae_search.objective import make_objective
    from vae_search.ui import err

    st.enqueue_missing_points(study, points, seed)
    done = sum(1 for pt in points if any(st._is_point(t, pt, seed) for t in study.get_trials(
        deepcopy=False, states=(st.TrialState.COMPLETE,))))
    objective = make_objective(settings, distributions)
    ran = _run_trials(study, settings, lambda **kw: st.run_points(study, points, objective, default_seed=seed, **kw),
                      jobs=jobs, total=len(points), done=done, counts=lambda s: s == "COMPLETE", title=title)
    if not _is_worker():
        err.print(f"study {study.study_name!r}: this run trained {ran} trial(s); {_points_complete(study, points, seed)} of "
                  f"{len(points)} points complete")


def _points_complete(study, points, seed: int) -> int:
    from vae_search import study as st

    complete = study.get_trials(deepcopy=False, states=(st.TrialState.COMPLETE,))
    return sum(1 for pt in points if any(st._is_point(t, pt, seed) for t in complete))


@app.command()
def show(
    study_name: Annotated[str, typer.Option(help="A grid study.")] = "b1",
    preset: Annotated[Optional[str], typer.Option(help="Preset to compare with (default: the study's).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print a grid study's table beside the report's figures: mean +- sd over seeds (and n),
    differences in percent, and the report's B.2 statements as verdicts against seed noise."""
    from vae_search import definitions
    from vae_search import study as st

    study = st.load_study(st.open_storage(storage, must_exist=True, heartbeat=None), study_name)
    st.require_kind(study, "grid")
    p = definitions.load_preset(preset) if preset else definitions.preset_of(study.user_attrs)
    _print_grid_table(study, p, csv, as_json=json_out)


def _print_grid_table(study, preset, csv: Optional[Path], as_json: bool = False) -> None:
    from vae_search.selection import grid_verdicts
    from vae_search.tables import grid_rich_table, grid_table, write_csv

    df = grid_table(study, preset)
    if as_json:
        _print_json({"study": study.study_name, "preset": preset.name, "rows": _records(df),
                     "verdicts": grid_verdicts(study, preset)})
        if csv is not None:
            _writable_parent(csv)
            write_csv(df, csv)
        return
    out = _stdout()
    out.print(grid_rich_table(df, f"{preset.title} — study {study.study_name!r}"))
    verdicts = grid_verdicts(study, preset)
    if verdicts:
        out.print("B.2, computed (Welch's t-test at 5% over seeds):")
        for line in verdicts:
            out.print(f"  - {line}", markup=False, highlight=False)
    if csv is not None:
        _writable_parent(csv)
        write_csv(df, csv)


def _records(df) -> list[dict]:
    """A table's rows with NaN as null (JSON has no NaN)."""
    import json

    return json.loads(df.to_json(orient="records")) if df is not None and len(df) else []


def _print_json(obj: dict) -> None:
    import json

    print(json.dumps(obj, default=str))


def _writable_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write to {parent}: permission denied")


# ---------------------------------------------------------------- optimize / confirm


SamplerName = StrEnum("SamplerName", {n: n for n in samplers.SAMPLERS})


@app.command()
def optimize(
    trials: Annotated[int, typer.Option(min=1, help="Finished trials (complete or pruned) the study should reach, counting "
                                        "earlier runs and every worker on the storage: a restart continues, workers stop together.")] = 50,
    timeout: Annotated[Optional[float], typer.Option(min=0, help="Stop starting trials after this many seconds.")] = None,
    space: Annotated[Optional[str], typer.Option(help="Search space: a packaged name (search, the default; search-wide, "
                                                 "wider, also searching batch_size and lr_schedule) or the path of a .toml "
                                                 "file of your own; the command says which file it used.")] = None,
    sampler: Annotated[SamplerName, typer.Option(
        case_sensitive=False, help="Sampler. Trial n draws from its own stream, seeded with (--seed, n): workers, restarts "
        "and other machines never propose the same points, and one worker from an empty study repeats exactly.")
    ] = SamplerName.tpe,
    pruner: Annotated[str, typer.Option(
        help="Pruner on the per-epoch val neg_elbo, NAME or NAME:KEY=VALUE:...: percentile (the default: a trial goes "
        "on while it is in the best fifth of earlier trials at epochs 1 to 3, once 2 trials have finished; "
        "percentile:p=25 for a quarter), sha (successive halving, rungs at epochs 1 and 3), hyperband, median, "
        "patient (median after an epoch without progress), none. None of them prunes after epoch `until` (3): a late "
        "rung costs most of a trial before it saves anything. The default is what benchmarks/pruning.py --replay "
        "measured best on recorded curves (docs/performance.md).")
    ] = samplers.DEFAULT_PRUNER,
    include_preset: Annotated[Optional[str], typer.Option(help="Enqueue this preset's points first (b1: start from the report's grid).")] = None,
    objectives: Annotated[str, typer.Option(help="neg_elbo, or neg_elbo,params for a two-objective study (loss against size) whose "
                                            "best is a Pareto front; pruning does not apply to two objectives.")] = "neg_elbo",
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    jobs: Jobs = None,
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    study_name: Annotated[str, typer.Option(help="Study name.")] = "search",
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    compile: CompileOpt = Compile.auto,
    heartbeat: Heartbeat = None,
) -> None:
    """Search latent_dim, base_channels, beta and lr on a fixed budget.

    The objective is the validation neg_elbo per image (recon + KL), so trials with
    different beta compare on one scale. Every trial has the same budget (10 epochs unless
    --epochs says otherwise); time_s is each trial's wall time for training plus validation
    (compilation included). Failed trials (NaN loss, errors) are recorded with their
    reason and do not count towards --trials. `vae-search confirm` then retrains the best
    trials with more seeds.
    """
    from vae_search import definitions
    from vae_search import study as st
    from vae_search.objective import OBJECTIVES, make_objective
    from vae_search.ui import err

    objs = tuple(o.strip() for o in objectives.split(",") if o.strip())
    if not objs or objs[0] != "neg_elbo" or len(objs) > 2 or any(o not in OBJECTIVES for o in objs) or len(set(objs)) != len(objs):
        raise UsageError(f"--objectives {objectives!r}: use neg_elbo or neg_elbo,params")
    distributions = definitions.load_space(space)
    preset = definitions.load_preset(include_preset) if include_preset else None
    storage_obj = st.open_storage(storage, heartbeat=heartbeat)
    epochs = epochs or 10
    batch_size = batch_size or 128
    smp = samplers.make_sampler(sampler.value, seed, len(objs))
    prn = samplers.make_pruner(pruner, epochs, len(objs))
    size = samplers.space_size(distributions)
    if size is not None and size < trials:
        raise UsageError(f"the search space holds {size} configurations, fewer than --trials {trials}; every trial "
                         f"trains a configuration of its own: ask for at most {size} or widen the space")
    dev, prec = _device(device, precision)
    existing = st.existing_study(storage_obj, study_name)
    beat = st.settle_heartbeat(storage_obj, existing, heartbeat)
    st.check_budget(existing, {"epochs": epochs, "batch_size": batch_size, "precision": prec}, record=False)
    settings = _settings(
        epochs=epochs, batch_size=batch_size, seed=seed, device=dev, prec=prec, data_dir=data_dir, limit_train=limit_train,
        limit_val=limit_val, artifact_dir=artifact_dir, compile=compile, objectives=objs,
    )
    study = st.create_or_load(storage_obj, study_name, directions=["minimize"] * len(objs), sampler=smp, pruner=prn)
    st.check_budget(study, {"epochs": epochs, "batch_size": batch_size, "data_fingerprint": settings.data.fingerprint,
                            "precision": settings.precision})
    st.record_heartbeat(study, beat)
    _announce(settings, study)
    if not _is_worker():
        err.print(f"search space: {definitions.space_path(space)}"
                  + (f"; preset {preset.name!r} first: {preset.path}" if preset is not None else ""))
    study.set_user_attr("kind", "search")
    study.set_user_attr("objectives", list(objs))
    if preset is not None:
        st.enqueue_missing_points(study, st.grid_points(preset, [seed]), seed)
    already = st.finished_count(study)
    if not _is_worker():
        err.print(f"study {study.study_name!r}: {already} of {trials} trials finished; sampler {sampler.value}, pruner "
                  f"{'none' if len(objs) > 1 else pruner}")
    objective = make_objective(settings, distributions)
    ran = _run_trials(
        study, settings, lambda **kw: st.run_optimize(study, objective, n_trials=trials, space=distributions, timeout=timeout, **kw),
        jobs=jobs, total=trials, done=already, counts=lambda s: s in ("COMPLETE", "PRUNED"),
        title=f"study {study_name!r}: finished trials",
    )
    if _is_worker():
        return
    finished = st.finished_count(study)
    err.print(f"study {study.study_name!r}: this run trained {ran} trial(s); {finished} finished in all")
    held = st.unchecked_running(study)
    if finished < trials and timeout is None and held:
        err.print(f"study {study.study_name!r} has {finished} of {trials} finished trials: trial(s) "
                  f"{', '.join(map(str, held))} still hold the other slots as RUNNING; {_FAIL_STALE_HINT}")
    try:
        _print_best(study, storage_obj)
    except UsageError as e:  # nothing complete yet (all pruned or failed): not an error of this run
        err.print(str(e))


@app.command()
def confirm(
    top: Annotated[int, typer.Option(min=1, help="How many of the search's best trials to retrain.")] = 3,
    seeds: Annotated[int, typer.Option(min=2, help="Runs each of them should have in all, the search's own included: "
                                       "seeds s+1 ... s+seeds-1 after the trial's seed s.")] = 3,
    study_name: StudyName = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Default and only choice: the search's.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Default and only choice: the search's.")] = None,
    device: DeviceOpt = Device.auto,
    precision: Annotated[Optional[Precision], typer.Option(case_sensitive=False, help="Default: the search's.")] = None,
    jobs: Jobs = None,
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    compile: CompileOpt = Compile.auto,
    heartbeat: Heartbeat = None,
) -> None:
    """Retrain the best trials of a search with further seeds, so `best` can tell a real
    margin from seed noise.

    The runs live in the companion study NAME-confirm (same budget: epochs, batch size,
    data, precision): the search's sampler never sees them and they never count towards
    its --trials. Each (trial, seed) runs once; a rerun resumes, and several workers may
    run it at once. Give the same --data-dir and --limit-* as the search.
    """
    from vae_search import study as st
    from vae_search.ui import err

    storage_obj = st.open_storage(storage, heartbeat=heartbeat, must_exist=True)
    search = st.load_study(storage_obj, study_name)
    beat = st.settle_heartbeat(storage_obj, st.existing_study(storage_obj, st.confirm_study_name(search.study_name)),
                               heartbeat)
    if study_name is None:
        _notes.append(f"(study {search.study_name!r}: the most recently written; pass --study-name for another)")
    if search.study_name.endswith(st.CONFIRM_SUFFIX) or search.user_attrs.get("kind") == "confirm":
        raise UsageError(f"study {search.study_name!r} holds confirmation runs; pass the search's --study-name")
    st.require_kind(search, "search")
    if len(search.directions) > 1:
        raise UsageError(f"study {search.study_name!r} has two objectives; confirm ranks single-objective searches")
    budget = search.user_attrs.get("budget") or {}
    best = st.top_trials(search, top)
    if not best:
        raise UsageError(f"study {search.study_name!r} has no complete trial yet")
    dev, prec = _device(device, precision or budget.get("precision") or best[0].user_attrs.get("precision") or "fp32")
    given = {"epochs": epochs, "batch_size": batch_size, "precision": prec}
    st.check_budget(search, {k: v for k, v in given.items() if v is not None}, record=False)  # same budget, or refused
    settings = _settings(
        epochs=int(budget.get("epochs") or best[0].user_attrs["epochs"]),
        batch_size=int(budget.get("batch_size") or best[0].user_attrs["batch_size"]), seed=0, device=dev, prec=prec,
        data_dir=data_dir, limit_train=limit_train, limit_val=limit_val, artifact_dir=artifact_dir, compile=compile,
    )
    if budget.get("data_fingerprint") and budget["data_fingerprint"] != settings.data.fingerprint:
        raise UsageError(f"these data differ from study {search.study_name!r}'s (fingerprint {settings.data.fingerprint}, "
                         f"the search had {budget['data_fingerprint']}); pass the search's --data-dir and --limit-*")
    name = st.confirm_study_name(search.study_name)
    companion = st.create_or_load(storage_obj, name, pruner=st.NO_PRUNING)
    st.check_budget(companion, {**budget, "data_fingerprint": settings.data.fingerprint, "precision": settings.precision})
    st.record_heartbeat(companion, beat)
    _announce(settings, companion)
    companion.set_user_attr("kind", "confirm")
    companion.set_user_attr("confirms", search.study_name)
    points = st.confirm_points(best, seeds)
    distributions = {k: v for t in best for k, v in t.distributions.items()}
    if not _is_worker():
        err.print(f"study {name!r}: confirming trials {', '.join(str(t.number) for t in best)} of study "
                  f"{search.study_name!r} with {seeds} seeds each ({len(points)} runs)")
    _run_points(companion, settings, points, distributions, 0, jobs, f"study {name!r}: runs complete")
    if not _is_worker():
        _print_best(search, storage_obj)


# ---------------------------------------------------------------- best / interpolate / report / dashboard


def _load(storage: str, study_name: Optional[str]):
    from vae_search import study as st

    storage_obj = st.open_storage(storage, must_exist=True, heartbeat=None)
    study = st.load_study(storage_obj, study_name)
    if study_name is None:  # said once the command has succeeded, so an error stays one line
        _notes.append(f"(study {study.study_name!r}: the most recently written; pass --study-name for another)")
    return storage_obj, study


def _print_best(study, storage_obj, as_json: bool = False) -> None:
    from optuna.trial import TrialState

    from vae_search.definitions import preset_of
    from vae_search.selection import grid_verdicts, pareto_front, save_selection_notes, select_best
    from vae_search.tables import markdown

    out = _stdout()
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    if len(study.directions) > 1:
        front = pareto_front(study)
        if as_json:
            _print_json({"study": study.study_name, "pareto_front": _records(front)})
            return
        out.print(f"Pareto front of study {study.study_name!r} (neg_elbo against parameters), {len(front)} trials:")
        out.print(markdown(front))
        return
    preset = preset_of(study.user_attrs) if study.user_attrs.get("kind") == "grid" else None
    sel = select_best(study, storage_obj, preset=preset)
    verdicts = grid_verdicts(study, preset) if preset else []
    save_selection_notes(study, sel, verdicts)
    if as_json:
        c = sel.candidate
        _print_json({
            "study": study.study_name, "best": c.label, "trial": sel.trial.number, "params": c.params, "n": c.n,
            "seeds": sorted(int(r.user_attrs.get("seed", 0)) for r in c.runs),
            **{key: {"mean": c.mean(key), "sd": None if c.n < 2 else c.sd(key)}
               for key in ("neg_elbo", "val_loss", "recon_loss", "kl", "time_s")},
            "params_count": int(sel.trial.user_attrs["params"]), "reasons": sel.reasons, "verdicts": verdicts,
            "others": _records(sel.others)})
        return
    out.print(sel.headline, markup=False, highlight=False)
    for reason in sel.reasons:
        out.print(f"  - {reason}", markup=False, highlight=False)
    if verdicts:
        out.print("B.2, computed (Welch's t-test at 5% over seeds):")
        for line in verdicts:
            out.print(f"  - {line}", markup=False, highlight=False)
    if sel.others is not None:
        out.print("other top configurations:")
        out.print(markdown(sel.others), markup=False, highlight=False)


@app.command()
def best(
    study_name: StudyName = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    json_out: JsonOpt = False,
) -> None:
    """Print the best trial and the reasons, in numbers (the report's B.2, computed), and
    write them as a note on the study and the trial (optuna-dashboard shows it).

    Ranks by the mean val neg_elbo over seeds where there are several (a grid run with
    --seeds, a search after `confirm`) and says whether the winner's margin over the
    runner-up is beyond seed noise (Welch's t-test at 5%). Then quality against the B.1
    baseline (latent 8, base 32), parameters, time, KL, train-val gap, compression. A
    two-objective study prints its Pareto front.
    """
    storage_obj, study = _load(storage, study_name)
    st_defaults.require_kind(study, "grid", "search", "confirm")
    _print_best(study, storage_obj, as_json=json_out)


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
    """Draw a trial's latent interpolation from its stored weights: a PNG grid (written to
    --out and attached to the study) and an interactive figure in optuna-dashboard's study
    page (`save_plotly_graph_object`; a rerun replaces it).

    Each complete trial already carries its own random-mode interpolation PNG, made when it
    finished: Optuna does not let a finished trial take new artifacts.
    """
    from vae_search.artifacts import artifact_store, load_model
    from vae_search.interpolation import write_interpolation
    from vae_search.selection import choose_trial
    from vae_search.ui import err

    if mode == Mode.images and data_dir is None:  # never the study's recorded data_source: it is not trusted
        raise UsageError("--mode images needs the test images: pass --data-dir (or set VAE_SEARCH_DATA)")
    storage_obj, study = _load(storage, study_name)
    chosen = choose_trial(study, trial)
    store = artifact_store(artifact_dir, create=False)
    model = load_model(store, chosen)
    images = None
    if mode == Mode.images:
        from vae_search.data import load_cifar10

        images = load_cifar10(data_dir).test
    out_dir = out or Path("studies/interpolations")
    _writable_parent(out_dir / "x")
    png = write_interpolation(study, chosen, model, store, out_dir=out_dir, rows=rows, steps=steps, mode=mode.value,
                              seed=seed, images=images)
    err.print(f"trial {chosen.number} of study {study.study_name!r} (the interactive figure is on the study's dashboard page):")
    print(png)


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Output folder (the report goes to OUT/STUDY/, the study's name made a safe "
                                      "folder name).")] = Path("studies/reports"),
    study_name: StudyName = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifact_dir: ArtifactDir = DEFAULT_ARTIFACTS,
    data_dir: DataDir = None,
) -> None:
    """Write a study's report: report.html (one file that opens offline: images embedded,
    plotly loaded once) and report.md with its PNGs beside it, reproducing the seed
    document's B.1 table, B.2 selection and B.3 interpolation; for a search also the history
    with best-so-far, parameter importances, neg_elbo against parameters, learning curves
    and time to quality. Also the trials as CSV and markdown.

    --data-dir adds the B.3 interpolation between test images (random pairs need no data).
    """
    from vae_search.names import file_name, inside
    from vae_search.report import write_report

    storage_obj, study = _load(storage, study_name)
    st_defaults.require_kind(study, "grid", "search", "confirm")
    _writable_parent(out / "x")
    images = None
    if data_dir is not None:
        from vae_search.data import load_cifar10

        images = load_cifar10(data_dir).test
    for p in write_report(study, storage_obj, artifact_dir, inside(out, file_name(study.study_name)), images=images):
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
    try:
        store = artifact_store(artifact_dir, create=False)
    except UsageError as e:  # the studies are still worth a look; their files are not there
        err.print(f"note: {e}; trials' images and weights will not show")
        store = None
    if not _loopback(host):
        err.print(f"warning: listening on {host}: optuna-dashboard has no authentication, and anyone who can reach "
                  f"this port can read every study and delete studies, trials' notes and artifacts; keep it on a "
                  "trusted network (or use the default 127.0.0.1 with an SSH tunnel)")
    err.print(f"optuna-dashboard on http://{host}:{port}/ (storage {st.redact(storage)}, artifacts {artifact_dir})")
    try:
        optuna_dashboard.run_server(storage_obj, host=host, port=port, artifact_store=store)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """"90s", "30m", "2h", "1d" -> seconds."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        value = float(number) * _DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise UsageError(f"--older-than {text!r}: give a number and a unit, as in 90s, 30m, 2h or 1d") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--older-than {text!r}: must be a positive duration")
    return value


@app.command(name="fail-stale")
def fail_stale(
    older_than: Annotated[str, typer.Option(help="Fail trials RUNNING for longer than this (90s, 30m, 2h, 1d): more than "
                                            "any live trial takes, since a live one would be failed too.")],
    study_name: StudyName = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list the trials it would fail.")] = False,
) -> None:
    """Fail and re-queue the RUNNING trials of workers that are gone, where nothing else can.

    With an RDB storage and heartbeats on, every training command does this by itself (a
    trial silent for three heartbeats). Through a journal file or the gRPC storage proxy, or
    with --heartbeat 0, a killed worker's trial stays RUNNING and holds its --trials slot or
    grid point: this command fails each trial that has been RUNNING for longer than
    --older-than, with the reason, and queues its parameters again (as the heartbeat check does).
    """
    from vae_search import study as st

    seconds = _duration(older_than)
    storage_obj, study = _load(storage, study_name)
    done = st.fail_running_older_than(study, seconds, dry_run=dry_run)
    if not done:
        print(f"study {study.study_name!r}: no trial has been RUNNING for more than {older_than}")
    for number, fate in done:
        print(f"study {study.study_name!r}: trial {number} {fate if dry_run else 'failed; ' + fate}")


@app.command(name="storage-proxy")
def storage_proxy(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for other machines (no TLS, no auth: "
                                      "keep it on a trusted network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 13000,
) -> None:
    """Serve the storage through Optuna's gRPC storage proxy, so that many workers share one
    database without a connection each: workers pass `--storage grpc://HOST:PORT`.

    Through the proxy there are no heartbeats (a killed worker's trial stays RUNNING until a
    command with a direct database URL fails it), and the artifact folder must still be shared.
    """
    import optuna

    from vae_search import study as st
    from vae_search.ui import err

    if storage.lower().startswith("grpc:"):
        raise UsageError("--storage of storage-proxy is the database it serves, not another proxy")
    if storage.lower().startswith("journal:"):
        raise UsageError("Optuna's storage proxy serves a database (sqlite, postgresql, mysql), not a journal file")
    # A heartbeat-free storage: nobody beats through the proxy, so the proxy itself must not fail trials as stale.
    backend = optuna.storages.get_storage(st.open_storage(storage, heartbeat=None))
    if not _loopback(host):
        err.print(f"warning: listening on {host}: the storage proxy has no TLS and no authentication, and anyone who "
                  "can reach this port can read, change and delete every study; keep it on a trusted network")
    err.print(f"Optuna gRPC storage proxy on {host}:{port} for {st.redact(storage)} (Ctrl-C stops it)")
    try:
        optuna.storages.run_grpc_proxy_server(backend, host=host, port=port)
    except RuntimeError as e:  # grpc: "Failed to bind"
        raise UsageError(f"cannot listen on {host}:{port}: {e}") from None


# ---------------------------------------------------------------- entry point


_notes: list[str] = []  # printed on stderr after a command succeeds
_argv: list[str] = []  # the command's arguments, for its --jobs workers
_interrupted = False


def _raise_interrupt(signum: int, frame: object) -> None:
    """The first Ctrl-C or SIGTERM interrupts; later ones are ignored, so that the
    interrupted trial's FAIL reaches the storage (a parent forwards SIGTERM after the
    terminal's SIGINT: both arrive)."""
    global _interrupted
    if _interrupted:
        return
    _interrupted = True
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI: bad input as one line and exit 2, a failed run as one line and exit 1,
    interrupts as exit 130."""
    global _argv, _interrupted
    _interrupted = False
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends a trial like Ctrl-C does
    signal.signal(signal.SIGINT, _raise_interrupt)
    args = sys.argv[1:] if argv is None else list(argv)
    _argv = args
    _notes.clear()
    command = typer.main.get_command(app)
    try:
        # standalone_mode=False hands errors to us instead of Typer's multi-line panels.
        rc = command.main(args=args or ["--help"], prog_name="vae-search", standalone_mode=False)
    except UsageError as e:
        print(f"vae-search: error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunError as e:
        print(f"vae-search: error: {e}", file=sys.stderr)
        sys.exit(1)
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
            "vae-search: interrupted; finished trials are saved and running ones are marked FAIL "
            "(interrupted). Run the same command again to resume.",
            file=sys.stderr,
        )
    sys.exit(rc if isinstance(rc, int) else 0)


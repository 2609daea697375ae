"""The `vae-search` command. Each command parses, calls the package, prints.

Bad input ends in one line on stderr and exit code 2, a run that cannot go on (a full
artifact disk, a database that stays down, a worker that died) in one line and exit code 1
(see `main`); Ctrl-C or SIGTERM ends the running trials as FAIL "interrupted", keeps every
finished trial, and exits 130.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Optional

import optuna
import typer

from vae_search import allocator, interrupts
from vae_search import options as o
from vae_search import study as st_defaults
from vae_search.errors import INTERRUPTED, RunError, UsageError, system_reason
from vae_search.names import printable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Search the hyperparameters of a convolutional VAE on CIFAR-10 with Optuna.",
)


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help=o.VERSION_HELP)] = False) -> None:
    if version:
        from vae_search.run import about

        print("\n".join(about()))
        raise typer.Exit()


def _stdout():
    from vae_search.ui import table_console

    return table_console()


def _training(ctx: typer.Context, given: dict[str, Any]):
    from vae_search.run import Training

    return Training.pick(ctx.obj["argv"], _notes, given)


# ---------------------------------------------------------------- grid / show


@app.command()
def grid(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="Grid preset: a packaged name (b1) or the path of a .toml file of your own "
                                        "(./studies/mine.toml); the command says which file it used.")] = "b1",
    # bounded: every (point, seed) is queued at once; a slip would flood a shared study
    seeds: Annotated[int, typer.Option(min=1, max=100, help="Run every point with seeds --seed, --seed+1, ... (up to "
                                       "100), so that seed noise can be told from real differences; each (point, seed) "
                                       "runs once.")] = 1,
    epochs: o.Epochs = None,
    batch_size: o.BatchSize = None,
    seed: o.Seed = 0,
    device: o.DeviceOpt = o.Device.auto,
    precision: Annotated[o.Precision, typer.Option(case_sensitive=False, help=f"fp32, bf16 or auto (see optimize). "
                                                 f"{o.GRID_PRECISION_WHY}.")] = o.Precision.auto,
    jobs: o.Jobs = None,
    data_dir: o.DataDir = None,
    limit_train: o.LimitTrain = None,
    limit_val: o.LimitVal = None,
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    study_name: Annotated[Optional[str], typer.Option(help="Study name (default: the preset's name).")] = None,
    artifact_dir: o.ArtifactDir = o.DEFAULT_ARTIFACTS,
    compile: o.CompileOpt = o.Compile.auto,
    heartbeat: o.Heartbeat = None,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV: a file, replaced whole (never half-written), or a stream such as /dev/stdout.")] = None,
) -> None:
    """Run a preset grid (the report's B.1 by default) as one Optuna study.

    Each (point, seed) runs exactly once: running the command again completes only the
    missing ones, and several workers (--jobs, or commands on other machines) may run it at
    once on one storage. Each trial's objective is the validation neg_elbo; time_s is its
    wall time for training plus validation (compilation included; read it with the trial's
    jobs and threads). Ends with the table beside the report's figures (mean +- sd over seeds).
    """
    from vae_search import reading, run

    if csv is not None:  # found out now, not after the training
        reading.csv_target(csv)
    opts = _training(ctx, locals())
    study, p = run.grid(opts, preset, seeds, study_name)
    if not run.is_worker():
        _print_grid_table(reading.grid_summary(study, p), csv, reading.Runnable(storage, data_dir, artifact_dir))


@app.command()
def show(
    study_name: Annotated[Optional[str], typer.Option(help="A grid study (default: the --preset's study, else b1).")] = None,
    preset: o.GridPreset = None,
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    artifact_dir: o.ArtifactDir = o.DEFAULT_ARTIFACTS,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV: a file, replaced whole (never half-written), or a stream such as /dev/stdout.")] = None,
    json_out: o.JsonOpt = False,
) -> None:
    """Print a grid study's table beside the report's figures: mean +- sd over seeds (and n),
    differences in percent, and the report's B.2 statements as verdicts against seed noise."""
    from vae_search import reading

    _print_grid_table(reading.show(storage, study_name, preset, _notes), csv,
                      reading.Runnable(storage, artifact_dir=artifact_dir), as_json=json_out)


def _print_grid_table(summary, csv: Optional[Path], commands: Callable[[list[str]], list[str]], as_json: bool = False) -> None:
    from vae_search import reading
    from vae_search.tables import grid_rich_table

    if csv is not None:
        reading.save_csv(summary.table, csv)
    if as_json:
        print(json.dumps(summary.to_dict(), default=str))
        return
    out = _stdout()
    out.print(grid_rich_table(summary.table, f"{summary.preset.title} — study {summary.study.study_name!r}"))
    _print_verdicts(out, commands(summary.verdicts))


# ---------------------------------------------------------------- optimize / confirm


@app.command()
def optimize(
    ctx: typer.Context,
    trials: Annotated[int, typer.Option(min=1, help="Finished trials (complete or pruned) the study should reach, counting "
                                        "earlier runs and every worker on the storage: a restart continues, workers stop together.")] = 50,
    timeout: Annotated[Optional[float], typer.Option(min=0, help="Stop starting trials after this many seconds.")] = None,
    space: Annotated[Optional[str], typer.Option(help="Search space: a packaged name (search, the default; search-wide, "
                                                 "wider, also searching batch_size and lr_schedule) or the path of a .toml "
                                                 "file of your own; the command says which file it used.")] = None,
    sampler: o.SamplerOpt = None,
    pruner: o.PrunerOpt = None,
    include_preset: o.IncludePreset = None,
    objectives: o.Objectives = "neg_elbo",
    epochs: o.Epochs = None,
    batch_size: o.BatchSize = None,
    seed: o.Seed = 0,
    device: o.DeviceOpt = o.Device.auto,
    precision: o.PrecisionOpt = o.Precision.auto,
    jobs: o.Jobs = None,
    data_dir: o.DataDir = None,
    limit_train: o.LimitTrain = None,
    limit_val: o.LimitVal = None,
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    study_name: Annotated[str, typer.Option(help="Study name.")] = "search",
    artifact_dir: o.ArtifactDir = o.DEFAULT_ARTIFACTS,
    compile: o.CompileOpt = o.Compile.auto,
    heartbeat: o.Heartbeat = None,
) -> None:
    """Search latent_dim, base_channels, beta and lr on a fixed budget.

    The objective is the validation neg_elbo per image (recon + KL), so trials with
    different beta compare on one scale. Every trial has the same budget (10 epochs unless
    --epochs says otherwise); time_s is each trial's wall time for training plus validation
    (compilation included). Failed trials (NaN loss, errors) are recorded with their
    reason and do not count towards --trials. `vae-search confirm` then retrains the best
    trials with more seeds.
    """
    from vae_search import reading, run
    from vae_search.ui import err

    opts = _training(ctx, locals())
    study, storage_obj = run.optimize(opts, trials=trials, timeout=timeout, space=space,
                                      sampler=sampler.value if sampler else None, pruner=pruner,
                                      include_preset=include_preset, objectives=objectives, study_name=study_name)
    if run.is_worker():
        return
    try:
        _print_best(reading.choose_best(study, storage_obj), reading.Runnable(storage, data_dir, artifact_dir))
    except UsageError as e:  # nothing complete yet (all pruned or failed): not an error of this run
        err.print(str(e))


@app.command()
def confirm(
    ctx: typer.Context,
    top: Annotated[Optional[int], typer.Option(min=1, help="How many of the search's best trials to retrain "
                                               "(default 3).")] = None,
    trial: Annotated[Optional[list[int]], typer.Option(help="A search trial to retrain, instead of --top (repeat for "
                                                       "more): the tied pair `best` names, for example.")] = None,
    seeds: Annotated[int, typer.Option(min=2, max=100, help="Runs each of them should have in all (up to 100), the "
                                       "search's own included: seeds s+1 ... s+seeds-1 after the trial's seed s.")] = 3,
    study_name: o.StudyName = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Default and only choice: the search's.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Default and only choice: the search's.")] = None,
    device: o.DeviceOpt = o.Device.auto,
    precision: Annotated[Optional[o.Precision], typer.Option(case_sensitive=False, help="Default: the search's.")] = None,
    jobs: o.Jobs = None,
    data_dir: o.DataDir = None,
    limit_train: o.LimitTrain = None,
    limit_val: o.LimitVal = None,
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    artifact_dir: o.ArtifactDir = o.DEFAULT_ARTIFACTS,
    compile: o.CompileOpt = o.Compile.auto,
    heartbeat: o.Heartbeat = None,
) -> None:
    """Retrain the best trials of a search with further seeds, so `best` can tell a real
    margin from seed noise.

    The runs live in the companion study NAME-confirm (same budget: epochs, batch size,
    data, precision): the search's sampler never sees them and they never count towards
    its --trials. Each (trial, seed) runs once; a rerun resumes, and several workers may
    run it at once. Give the same --data-dir as the search; --limit-* default to its.
    """
    from vae_search import reading, run

    opts = _training(ctx, {**locals(), "seed": 0})
    search, storage_obj = run.confirm(opts, top=top, trials=trial or (), seeds=seeds, study_name=study_name)
    if not run.is_worker():
        _print_best(reading.choose_best(search, storage_obj), reading.Runnable(storage, data_dir, artifact_dir))


# ---------------------------------------------------------------- best / interpolate / report / dashboard


def _print_verdicts(out, verdicts: list[str]) -> None:
    if verdicts:
        out.print("B.2, computed (Welch's t-test at 5% over seeds):")
        for line in verdicts:
            out.print(f"  - {line}", highlight=False)


def _print_best(choice, commands: Callable[[list[str]], list[str]], as_json: bool = False) -> None:
    """`best`'s choice as text (its commands made runnable by `commands`), or as JSON with the same numbers."""
    from vae_search.tables import markdown

    if as_json:
        print(json.dumps(choice.to_dict(), default=str))
        return
    out, sel = _stdout(), choice.selection
    if choice.front is not None:
        out.print(f"Pareto front of study {choice.study.study_name!r} (neg_elbo against parameters), "
                  f"{len(choice.front)} trials:")
        out.print(markdown(choice.front))
        return
    out.print(sel.headline, highlight=False)
    for reason in commands(sel.reasons):
        out.print(f"  - {reason}", highlight=False)
    _print_verdicts(out, commands(choice.verdicts))
    if sel.others is not None:
        out.print("other top configurations:")
        out.print(markdown(sel.others), highlight=False)


@app.command()
def best(
    study_name: o.StudyName = None,
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    artifact_dir: o.ArtifactDir = o.DEFAULT_ARTIFACTS,
    preset: o.GridPreset = None,
    json_out: o.JsonOpt = False,
) -> None:
    """Print the best trial and the reasons, in numbers (the report's B.2, computed), and
    write them as a note on the study and the trial (optuna-dashboard shows it).

    Ranks by the mean val neg_elbo over seeds where there are several (a grid run with
    --seeds, a search after `confirm`) and says whether the winner's margin over the
    runner-up is beyond seed noise (Welch's t-test at 5%). Then quality against the B.1
    baseline (latent 8, base 32), parameters, time, KL, train-val gap, compression. A
    two-objective study prints its Pareto front.
    """
    from vae_search.reading import Runnable, choose_best, load_for_reading

    storage_obj, study = load_for_reading(storage, study_name, _notes)
    st_defaults.require_kind(study, "grid", "search", "confirm")
    _print_best(choose_best(study, storage_obj, preset, _notes), Runnable(storage, artifact_dir=artifact_dir), as_json=json_out)


class Mode(StrEnum):
    random = "random"
    images = "images"


@app.command()
def interpolate(
    trial: Annotated[str, typer.Option(help="'best' (what `vae-search best` chooses; with two objectives the lowest "
                                       "neg_elbo of the Pareto front) or a trial number.")] = "best",
    study_name: o.StudyName = None,
    # bounded: one figure of rows x steps images (--steps 100000 ran out of memory)
    steps: Annotated[int, typer.Option(min=2, max=64, help="Images per interpolation line (2 to 64).")] = 10,
    rows: Annotated[int, typer.Option(min=1, max=64, help="Interpolation lines (1 to 64).")] = 8,
    mode: Annotated[Mode, typer.Option(case_sensitive=False, help="random: between z ~ N(0, I) pairs (the report's B.3); "
                                       "images: between the encodings of test images.")] = Mode.random,
    seed: o.Seed = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default studies/interpolations).")] = None,
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    artifact_dir: o.ArtifactDir = o.DEFAULT_ARTIFACTS,
    data_dir: o.DataDir = None,
) -> None:
    """Draw a trial's latent interpolation from its stored weights: a PNG grid (written to
    --out and attached to the study) and an interactive figure in optuna-dashboard's study
    page (`save_plotly_graph_object`; a rerun replaces it).

    Each complete trial already carries its own random-mode interpolation PNG, made when it
    finished: Optuna does not let a finished trial take new artifacts.
    """
    from vae_search import reading
    from vae_search.ui import err

    study, chosen, png = reading.interpolate(storage, study_name, _notes, trial=trial, artifact_dir=artifact_dir,
                                             out_dir=out or Path("studies/interpolations"), rows=rows, steps=steps,
                                             mode=mode.value, seed=seed, data_dir=data_dir)
    which = " (the lowest neg_elbo of the Pareto front)" if trial == "best" and len(study.directions) > 1 else ""
    err.print(f"trial {chosen.number}{which} of study {study.study_name!r} (the interactive figure is on the study's dashboard page):")
    print(png)


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Output folder (the report goes to OUT/STUDY/, the study's name made a safe "
                                      "folder name).")] = Path("studies/reports"),
    study_name: o.StudyName = None,
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    artifact_dir: o.ArtifactDir = o.DEFAULT_ARTIFACTS,
    data_dir: o.DataDir = None,
    preset: o.GridPreset = None,
) -> None:
    """Write a study's report: report.html (one file that opens offline: images embedded,
    plotly loaded once) and report.md with its PNGs beside it, reproducing the seed
    document's B.1 table, B.2 selection and B.3 interpolation; for a search also the history
    with best-so-far, parameter importances, neg_elbo against parameters, learning curves
    and time to quality. Also the trials as CSV and markdown.

    --data-dir adds the B.3 interpolation between test images (random pairs need no data).
    """
    from vae_search import reading

    for p in reading.report(storage, study_name, _notes, artifact_dir=artifact_dir, out=out, data_dir=data_dir,
                            preset=preset):
        print(p)


@app.command()
def dashboard(
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    artifact_dir: o.ArtifactDir = o.DEFAULT_ARTIFACTS,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Start optuna-dashboard on the same storage and artifact folder (Ctrl-C stops it)."""
    from vae_search import serve

    serve.dashboard(storage, artifact_dir, host, port)


@app.command(name="fail-stale")
def fail_stale(
    older_than: Annotated[str, typer.Option(help="Fail trials RUNNING for longer than this (90s, 30m, 2h, 1d): more than "
                                            "any live trial takes, since a live one would be failed too.")],
    study_name: o.StudyName = None,
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list the trials it would fail.")] = False,
) -> None:
    """Fail and re-queue the RUNNING trials of workers that are gone, where nothing else can.

    With an RDB storage and heartbeats on, every training command does this by itself (a
    trial silent for three heartbeats). Through a journal file or the gRPC storage proxy, or
    with --heartbeat 0, a killed worker's trial stays RUNNING and holds its --trials slot or
    grid point: this command fails each trial that has been RUNNING for longer than
    --older-than, with the reason, and queues its parameters again (as the heartbeat check does).
    """
    from vae_search import run

    study, done = run.fail_stale(storage, study_name, _notes, older_than, dry_run)
    if not done:
        print(f"study {study.study_name!r}: no trial has been RUNNING for more than {older_than}")
    for number, fate in done:
        print(f"study {study.study_name!r}: trial {number} {fate if dry_run else 'failed; ' + fate}")


@app.command(name="storage-proxy")
def storage_proxy(
    storage: o.StorageOpt = o.DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for other machines (no TLS, no auth: "
                                      "keep it on a trusted network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 13000,
) -> None:
    """Serve the storage through Optuna's gRPC storage proxy, so that many workers share one
    database without a connection each: workers pass `--storage grpc://HOST:PORT`.

    Through the proxy there are no heartbeats (a killed worker's trial stays RUNNING until a
    command with a direct database URL fails it), and the artifact folder must still be shared.
    """
    from vae_search import serve

    serve.storage_proxy(storage, host, port)


# ---------------------------------------------------------------- entry point


_notes: list[str] = []  # printed on stderr after a command succeeds


def _error(message: str, rc: int) -> None:
    """One line, whatever the message quotes: a library's own message may span several
    (tarfile lists every compression it tried), and a script reads the first line only; what
    it quotes from a study or a file is shown, never obeyed by the terminal."""
    print("vae-search: error: " + printable(" ".join(message.split())), file=sys.stderr)
    sys.exit(rc)


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI: bad input as one line and exit 2, a failed run as one line and exit 1,
    interrupts as exit 130."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the commands print their own progress
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # metric names, notes
    interrupts.install()  # Ctrl-C and SIGTERM end the running trial, never inside a storage call
    args = sys.argv[1:] if argv is None else list(argv)
    _notes.clear()
    command = typer.main.get_command(app)
    try:
        allocator.tune()  # before a command imports torch, which reads its huge-page switch once (allocator.py)
        # standalone_mode=False hands errors to us instead of Typer's multi-line panels.
        # The arguments travel in the context: a training command's --jobs workers rerun them.
        rc = command.main(args=args or ["--help"], prog_name="vae-search", standalone_mode=False, obj={"argv": args})
    except UsageError as e:
        _error(str(e), 2)
    except RunError as e:
        _error(str(e), 1)
    except OSError as e:  # what the commands do not word themselves: the system's reason and file
        _error(system_reason(e), 1)
    except typer.TyperException as e:  # Typer's own: bad option values, unknown options
        _error(e.format_message(), e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        rc = 130
    if rc in (0, None):
        for note in _notes:
            print(printable(note), file=sys.stderr)
    if rc == 130:  # a training command says what became of its trials; a server only stopped
        trains = bool(args) and args[0] in ("grid", "optimize", "confirm")
        print(INTERRUPTED if trains else "vae-search: stopped", file=sys.stderr)
    sys.exit(rc if isinstance(rc, int) else 0)


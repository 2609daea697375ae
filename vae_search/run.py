"""The run layer under the CLI: what a training command does between parsing its options and
printing its table, `fail-stale` and `--version` (the reading commands are reading.py's, the
servers serve.py's).

A training command (`grid`, `optimize`, `confirm`) opens the storage, settles the study's
heartbeat, resolves device and precision, checks the study's budget cheaply (before any
data), loads the data, creates or loads the study, checks the budget against the data,
announces what it trains on, and runs its trials: in this process, in a worker of a parent
command (reporting to it), or as `--jobs` worker processes started with the command's own
arguments (passed in explicitly, as `argv`). Progress and announcements go to stderr here;
tables are the CLI's.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from vae_search import definitions, samplers, storages
from vae_search import study as st
from vae_search import trial_loop as loop
from vae_search.errors import RunError, UsageError
from vae_search.names import check_new_study_name, shell_word
from vae_search.reading import Runnable, load_for_reading
from vae_search.trial_attrs import readable
from vae_search.ui import err

if TYPE_CHECKING:  # torch and the objective load when a command trains: `best` and `show` start in a second or two
    import torch

    from vae_search.model import ModelConfig
    from vae_search.objective import RunSettings



def fail_stale_hint(storage_url: str, study: optuna.Study) -> str:
    """What to do about RUNNING trials that nothing checks, with a command that runs as printed."""
    command = f"`vae-search fail-stale --study-name {shell_word(study.study_name)} --older-than 2h`"
    command = Runnable(storage_url)([command])[0]
    return ("nothing checks them on this storage (no heartbeats: a journal or gRPC storage, or --heartbeat 0); if their "
            f"workers are gone, {command} (longer than any trial takes) fails and re-queues them")


@dataclass
class Training:
    """The options every training command shares, as given (None: the study's or the default)."""

    argv: Sequence[str]  # the command's own arguments, for its --jobs workers
    storage: str
    artifact_dir: Path
    data_dir: Path | None = None
    limit_train: int | None = None
    limit_val: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str | None = "auto"
    jobs: int | None = None
    compile: str = "auto"  # auto | on | off
    heartbeat: int | None = None
    notes: list[str] = field(default_factory=list)  # said after the command succeeds

    @classmethod
    def pick(cls, argv: Sequence[str], notes: list[str], given: dict[str, Any]) -> Training:
        """The training options among a command's arguments (enums as their values)."""
        from dataclasses import fields
        from enum import Enum

        keys = {f.name for f in fields(cls)} - {"argv", "notes"}
        options = {k: v.value if isinstance(v, Enum) else v for k, v in given.items() if k in keys}
        return cls(argv=list(argv), notes=notes, **options)


@dataclass
class Prepared:
    storage: BaseStorage
    study: optuna.Study
    settings: RunSettings
    model_bytes: int | None = None  # what the largest model the study can propose needs to train


def is_worker() -> bool:
    from vae_search.workers import worker_identity

    return worker_identity() is not None


def say(message: str) -> None:
    """A line on stderr, from the command a user started (a worker's parent speaks for it)."""
    if not is_worker():
        err.print(message)


def device_and_precision(device: str, precision: str):
    """The torch device and the resolved precision (fp32 or bf16), known before any data."""
    from vae_search.train import pick_device, resolve_precision

    dev = pick_device(device)
    return dev, resolve_precision(precision, dev)


def _settings(opts: Training, *, epochs: int, batch_size: int, seed: int, device, precision: str,
              objectives: tuple[str, ...] = ("neg_elbo",), kept: Sequence[str] = (),
              notes: list[str] | None = None) -> RunSettings:
    """The run's settings with its data loaded; `kept` names the subset options taken from the
    study, and what they cut is added to `notes` (said once every check has passed)."""
    from vae_search.artifacts import artifact_store
    from vae_search.data import load_cifar10
    from vae_search.objective import RunSettings
    from vae_search.workers import apply_worker_threads, worker_identity

    apply_worker_threads()
    # a folder that is there is checked for writing now, before the data loads; one that is not
    # is made after, so that images that fail to decode leave no empty folder behind
    store = artifact_store(opts.artifact_dir) if Path(opts.artifact_dir).is_dir() else None
    if worker_identity() is None:
        with err.status("loading CIFAR-10"):
            full = load_cifar10(opts.data_dir)
    else:
        full = load_cifar10(opts.data_dir)  # from the cache the parent filled
    if full.uncached and notes is not None:
        notes.append(f"note: the decoded images could not be kept in the data cache ({full.uncached}); every run "
                     "decodes them again: set VAE_SEARCH_CACHE to a folder this user can write")
    data = full.limit(opts.limit_train, opts.limit_val)
    cut = [f"{len(part)} of {len(whole)} {what} images" for option, part, whole, what in (
        ("limit_train", data.train, full.train, "training"), ("limit_val", data.test, full.test, "validation"))
        if option in kept and len(part) < len(whole)]
    if cut and notes is not None:
        notes.append(f"note: the study keeps the subset its trials record: {' and '.join(cut)}")
    store = store or artifact_store(opts.artifact_dir)
    return RunSettings(
        data=data, epochs=epochs, batch_size=batch_size, seed=seed, device=device, store=store,
        compile={"auto": "auto", "on": True, "off": False}[opts.compile], precision=precision, objectives=objectives,
        jobs=(worker_identity() or (1, 1))[1],
    )


def _announce(settings: RunSettings, study: optuna.Study, storage_url: str) -> None:
    """What the run trains on, said once its options have passed every check (so that an
    error stays one line), and which trials nothing can check."""
    from vae_search.train import native_bf16

    d, dev, prec = settings.data, settings.device, settings.precision
    say(f"data: {len(d.train)} train / {len(d.test)} val images from {d.source}; device {dev}, {prec}")
    if prec == "bf16" and not native_bf16(dev):
        say(f"note: {dev} has no native bf16 (no AVX512_BF16 or AMX); bf16 is emulated and many times slower than fp32")
    held = loop.unchecked_running(study)
    if held:
        say(f"note: trial(s) {', '.join(map(str, held))} of study {study.study_name!r} are RUNNING and "
            f"{fail_stale_hint(storage_url, study)}")


def _against(storage: BaseStorage, name: str, kind: str, distributions: dict[str, BaseDistribution] | None,
             heartbeat: int | None) -> tuple[optuna.Study | None, int]:
    """The study `name` where it exists, refused where this run cannot add to it, and the
    heartbeat interval this run uses on `storage`."""
    existing = st.existing_study(storage, name)
    st.require_compatible(existing, kind, distributions)
    return existing, st.settle_heartbeat(storage, existing, heartbeat)


def prepare(opts: Training, name: str, *, epochs: int, batch_size: int, precision: str, seed: int | None = None,
            storage: BaseStorage | None = None, directions: Sequence[str] = ("minimize",),
            sampler: optuna.samplers.BaseSampler | None = None, pruner: optuna.pruners.BasePruner | None = None,
            objectives: tuple[str, ...] = ("neg_elbo",), budget: dict[str, Any] | None = None,
            check_data: Callable[[RunSettings], None] | None = None, kind: str,
            distributions: dict[str, BaseDistribution] | None = None) -> Prepared:
    """The shared setup of a training command, in the order that keeps errors cheap: the
    storage, the heartbeat and the budget are checked before the data is loaded; a --data-dir
    that is no data is refused before the storage is opened, so the mistake writes nothing.
    `epochs` and `batch_size` are the command's defaults: an existing study keeps its own."""
    from vae_search.data import check_data_dir

    if opts.data_dir is not None:
        check_data_dir(opts.data_dir)
    # a SQLite file not there yet holds no study to check against: it is made once the data has
    # loaded, so that images that fail to decode leave no empty database behind
    later = storage is None and storages.new_sqlite_file(opts.storage)
    existing = None
    if not later:
        storage = storage or storages.open_storage(opts.storage, heartbeat=opts.heartbeat)
        existing, beat = _against(storage, name, kind, distributions, opts.heartbeat)
    if existing is None:
        check_new_study_name(name)
    notes: list[str] = []  # said once every check has passed: an error stays one line
    recorded = (st.recorded(existing, "budget") or {}).get("precision") if existing is not None else None
    if precision == "auto" and recorded in ("fp32", "bf16"):
        # a study does not mix precisions: auto keeps the study's, so that a search started on
        # an AVX512_BF16 machine resumes on an AVX2 one (and back) instead of being refused
        machine = device_and_precision(opts.device, "auto")[1]
        if machine != recorded:
            notes.append(f"note: study {name!r} runs in {recorded} (its budget); --precision auto keeps it (this "
                         f"machine alone would use {machine})")
        precision = recorded
    epochs, batch_size, kept = _kept_budget(opts, existing, epochs, batch_size, notes)
    dev, prec = device_and_precision(opts.device, precision)
    st.check_budget(existing, {"epochs": epochs, "batch_size": batch_size, "precision": prec}, record=False)
    model_bytes = _fits(distributions, batch_size, dev, opts.limit_train) if distributions else None
    settings = _settings(opts, epochs=epochs, batch_size=batch_size, seed=opts.seed if seed is None else seed,
                         device=dev, precision=prec, objectives=objectives, kept=kept, notes=notes)
    if check_data is not None:  # before the study is created, so a refusal leaves nothing behind
        check_data(settings)
    if later:  # another command may have made the file (and the study) meanwhile: the same checks
        storage = storages.open_storage(opts.storage, heartbeat=opts.heartbeat)
        existing, beat = _against(storage, name, kind, distributions, opts.heartbeat)
    study = st.create_or_load(storage, name, directions=directions, sampler=sampler, pruner=pruner)
    st.check_budget(study, {**(budget or {}), "epochs": epochs, "batch_size": batch_size,
                            "data_fingerprint": settings.data.fingerprint, "precision": settings.precision})
    st.record_heartbeat(study, beat)
    study.set_user_attr("kind", kind)
    for line in notes:
        say(line)
    _announce(settings, study, opts.storage)
    return Prepared(storage, study, settings, model_bytes)


def _kept_budget(opts: Training, study: optuna.Study | None, epochs: int, batch_size: int,
                 notes: list[str]) -> tuple[int, int, list[str]]:
    """The epochs and batch size a run trains with, and the subset options it took from the
    study. As given; else, where the study exists, the study's: it keeps one budget, so a resume,
    `grid --seeds 6` or a command that `show` or `best` suggests need not repeat --epochs,
    --batch-size, --limit-train or --limit-val (a subset is read from the counts its trials
    record; the data's fingerprint still checks that they are its images); else the command's
    default (`epochs`, `batch_size`). Kept figures that are not the defaults go to `notes`."""
    budget = (st.recorded(study, "budget") or {}) if study is not None else {}
    chosen = {"epochs": opts.epochs or budget.get("epochs") or epochs,
              "batch_size": opts.batch_size or budget.get("batch_size") or batch_size}
    differ = [f"{key.replace('_', ' ')} {chosen[key]}" for key, default in (("epochs", epochs), ("batch_size", batch_size))
              if getattr(opts, key) is None and chosen[key] != default]
    if differ:
        notes.append(f"note: study {study.study_name!r} keeps its budget: {', '.join(differ)} (as its first run "
                     "recorded)")
    counts = next((t.user_attrs for t in readable(study.get_trials(deepcopy=False)) if "n_train" in t.user_attrs),
                  {}) if study is not None else {}
    return chosen["epochs"], chosen["batch_size"], _keep_subset(opts, counts)


def _keep_subset(opts: Training, counts: dict[str, Any]) -> list[str]:
    """--limit-train and --limit-val, where not given, set to the image counts a trial recorded
    (`n_train`, `n_val`; a count at least the data's size takes all of it): the options set."""
    kept = []
    for option, key in (("limit_train", "n_train"), ("limit_val", "n_val")):
        if getattr(opts, option) is None and counts.get(key):
            setattr(opts, option, int(counts[key]))
            kept.append(option)
    return kept


def _fits(distributions: dict[str, BaseDistribution], batch_size: int, device: torch.device,
          limit_train: int | None) -> int:
    """The memory the largest model the study can propose needs to train; refused here, before
    the data loads, where the device cannot hold even one (a trial would fail on it, or the
    kernel kill a worker for memory, only once the search had reached it)."""
    from vae_search.model import ModelConfig

    def highest(name: str, default: int) -> int:
        dist = distributions.get(name)
        if dist is None:
            return default
        return max(int(c) for c in dist.choices) if isinstance(dist, CategoricalDistribution) else int(dist.high)

    largest = ModelConfig(latent_dim=highest("latent_dim", 16), base_channels=highest("base_channels", 32))
    return _held(largest, highest("batch_size", batch_size), device, limit_train, "the largest model this study can "
                 "propose", "lower the largest base_channels or latent_dim of the search space (or preset)")


def _held(config: ModelConfig, batch: int, device: torch.device, limit_train: int | None, what: str, remedy: str) -> int:
    """The memory training `config` at `batch` needs; a UsageError naming `what` and `remedy`
    where `device` has less free."""
    from vae_search.model import parameter_count, training_bytes
    from vae_search.workers import device_memory

    if limit_train:  # no batch holds more images than the data
        batch = min(batch, limit_train)
    need, free = training_bytes(config, batch), device_memory(device)
    if free is not None and need > free:
        raise UsageError(
            f"{what} (latent_dim {config.latent_dim}, base_channels {config.base_channels}, batch {batch}: "
            f"{parameter_count(config):,} parameters) needs about {need / 2**30:,.1f} GiB to train, and {device} has "
            f"{free / 2**30:,.1f} GiB free: {remedy}")
    return need


def run_trials(p: Prepared, opts: Training, trials: Callable[..., int], *, total: int, done: int,
               counts: Callable[[str], bool], title: str) -> int:
    """Run `trials(on_trial_end=, on_wait=)` (a trial loop) here, in a worker of a parent command, or as
    `opts.jobs` worker processes; returns how many trials this process (or its workers) trained."""
    from vae_search import workers
    from vae_search.ui import TrainingProgress, trial_line

    if workers.worker_identity() is not None:  # a worker: report to the parent, print nothing
        with workers.reporter() as rep:
            p.settings.on_batch_factory = rep.factory
            return trials(on_trial_end=lambda t: rep.trial_end(t.state.name, t.number, trial_line(t)), on_wait=rep.waiting)
    n = min(opts.jobs or workers.default_jobs(p.settings.device, p.model_bytes), max(1, total - done))
    if opts.jobs and n > 1 and (note := workers.jobs_note(n, p.settings.device, p.model_bytes)):
        say(note)
    if n <= 1:
        with TrainingProgress() as progress:
            p.settings.on_batch_factory = progress.factory
            return trials(on_trial_end=lambda t: err.print(trial_line(t)), on_wait=progress.waiting)

    err.print(f"{n} workers, {workers.threads_per_worker(n)} torch thread(s) each")
    trained: list[int] = []  # as the workers report them: trials they started and did not skip
    rc = workers.run_workers(opts.argv, n, device=p.settings.device, console=err, total=total, done=done,
                             counts=counts, title=title,
                             on_death=lambda trial_id, reason, retry: loop.fail_and_retry(p.study, trial_id, reason, retry),
                             on_end=trained.append)
    if rc == 130:
        raise KeyboardInterrupt
    if rc != 0:
        raise RunError(f"a worker failed (exit code {rc}; its messages are above); finished trials are saved: run the "
                       "same command again to complete the study")
    return len(trained)


def _run_points(p: Prepared, opts: Training, points: list[loop.Point], distributions: dict, seed: int,
                title: str) -> None:
    from vae_search.objective import make_objective

    loop.enqueue_missing_points(p.study, points, seed)
    objective = make_objective(p.settings, distributions)
    ran = run_trials(p, opts, lambda **kw: loop.run_points(p.study, points, objective, default_seed=seed, **kw),
                     total=len(points), done=loop.points_complete(p.study, points, seed),
                     counts=lambda s: s == "COMPLETE", title=title)
    say(f"study {p.study.study_name!r}: this run trained {ran} trial(s); {loop.points_complete(p.study, points, seed)} of "
        f"{len(points)} points complete")


# ---------------------------------------------------------------- the training commands


def grid(opts: Training, preset_name: str, seeds: int, study_name: str | None) -> tuple[optuna.Study, definitions.Preset]:
    """Every (point, seed) of a preset, each trained exactly once across all workers."""
    preset = definitions.load_preset(preset_name)
    name = study_name if study_name is not None else preset.name  # --study-name "" is refused, not the default
    p = prepare(opts, name, epochs=preset.epochs, batch_size=preset.batch_size,
                precision=opts.precision or "auto", pruner=st.NO_PRUNING, kind="grid",  # every point runs its full budget
                distributions=preset.distributions())
    say(f"preset {preset.name!r}: {preset.path}")
    p.study.set_user_attr("preset", preset.name)  # a name: a study never makes a command read a file of its choosing
    points = loop.grid_points(preset, loop.seeds_from(opts.seed, seeds))
    _run_points(p, opts, points, preset.distributions(), opts.seed, f"study {name!r}: points complete")
    return p.study, preset


def parse_objectives(text: str) -> tuple[str, ...]:
    from vae_search.objective import OBJECTIVES

    objs = tuple(o.strip() for o in text.split(",") if o.strip())
    if not objs or objs[0] != "neg_elbo" or len(objs) > 2 or any(o not in OBJECTIVES for o in objs) or len(set(objs)) != len(objs):
        raise UsageError(f"--objectives {text!r}: use neg_elbo or neg_elbo,params")
    return objs


def optimize(opts: Training, *, trials: int, timeout: float | None, space: str | None, sampler: str | None,
             pruner: str | None, include_preset: str | None, objectives: str,
             study_name: str) -> tuple[optuna.Study, BaseStorage]:
    """The search: trials until the study has `trials` finished ones, counting every worker's.
    `sampler` and `pruner` None: the study's own (st.settle_strategy), else the defaults."""
    from vae_search.objective import make_objective

    if timeout is not None and not timeout > 0:  # 0 would open the study, train nothing and say so; nan never stops
        raise UsageError(f"--timeout {timeout:g}: give the seconds after which no trial starts, more than 0")
    objs = parse_objectives(objectives)
    distributions = definitions.load_space(space)
    preset = definitions.load_preset(include_preset) if include_preset else None
    # A misspelt --sampler or --pruner is refused before the storage is opened (which creates
    # a new SQLite file); which ones the study runs with is known once it is open.
    if sampler is not None:
        samplers.make_sampler(sampler, opts.seed, len(objs), distributions)
    if pruner is not None:
        samplers.parse_pruner(pruner)
    size = samplers.space_size(distributions)
    if size is not None and size < trials:
        raise UsageError(f"the search space holds {size} configurations, fewer than --trials {trials}; every trial "
                         f"trains a configuration of its own: ask for at most {size} or widen the space")
    p = prepare(opts, study_name, epochs=10, batch_size=128, precision=opts.precision or "auto",
                directions=["minimize"] * len(objs), objectives=objs, kind="search", distributions=distributions)
    study = p.study
    sampler, pruner, switches = st.settle_strategy(study, sampler, pruner, samplers.DEFAULT_PRUNER)
    study.sampler = samplers.make_sampler(sampler, opts.seed, len(objs), distributions)
    study.pruner = samplers.make_pruner(pruner, p.settings.epochs, len(objs))
    for line in switches:
        say(line)
    st.record_strategy(study, sampler, pruner)
    say(f"search space: {definitions.space_path(space)}"
        + (f" ({size:,} configurations{', none proposed twice' if samplers.proposes_untried(distributions) else ''})"
           if size is not None else "")
        + (f"; preset {preset.name!r} first: {preset.path}" if preset is not None else ""))
    if opts.batch_size is not None and "batch_size" in distributions:
        say(f"note: --batch-size {opts.batch_size} is not used: the space sets batch_size, every trial takes its own")
    study.set_user_attr("objectives", list(objs))
    if preset is not None:
        loop.enqueue_missing_points(study, loop.grid_points(preset, [opts.seed]), opts.seed)
    already = st.finished_count(study)
    say(f"study {study.study_name!r}: {already} of {trials} trials finished; sampler {sampler}, pruner "
        f"{'none' if len(objs) > 1 else pruner}")
    objective = make_objective(p.settings, distributions)
    started = datetime.datetime.now()  # Optuna's timestamps are local times too
    ran = run_trials(
        p, opts, lambda **kw: loop.run_optimize(study, objective, n_trials=trials, space=distributions, timeout=timeout, **kw),
        total=trials, done=already, counts=lambda s: s in ("COMPLETE", "PRUNED"), title=f"study {study_name!r}: finished trials",
    )
    finished = st.finished_count(study)
    say(f"study {study.study_name!r}: this run trained {ran} trial(s); {finished} finished in all"
        + (f"; {_pruning_saved(study, p.settings.epochs)}" if len(objs) == 1 else ""))
    skipped = loop.not_trained_since(study, started)
    if skipped:
        say(f"study {study.study_name!r}: {skipped} proposal(s) since this run started were not trained (they repeated "
            "a trained configuration, or came after the last slot was taken); they stay as FAIL with that reason")
    held = loop.unchecked_running(study)
    if finished < trials and timeout is None and held:
        say(f"study {study.study_name!r} has {finished} of {trials} finished trials: trial(s) "
            f"{', '.join(map(str, held))} still hold the other slots as RUNNING; "
            f"{fail_stale_hint(opts.storage, study)}")
    return study, p.storage


def _pruning_saved(study: optuna.Study, epochs: int) -> str:
    """What pruning saved: the epochs the finished trials trained against a full run each."""
    finished = study.get_trials(deepcopy=False, states=st.FINISHED)
    pruned = sum(t.state == TrialState.PRUNED for t in finished)
    trained = sum(min(len(t.intermediate_values), epochs) for t in finished)
    full = epochs * len(finished)
    return f"{pruned} pruned, {trained} of {full} epochs trained ({trained / full:.0%})" if full else "none pruned"


CONFIRM_TOP = 3  # confirm's default --top


def plan_confirm(search: optuna.Study, top: int | None, numbers: Sequence[int] = ()) -> list:
    """The search trials `confirm` retrains: the ones numbered (`--trial`), else its `top` best
    complete ones. A study of another kind, with two objectives, with nothing complete, or a
    numbered trial that is not a complete one of the search, is one line."""
    if search.study_name.endswith(st.CONFIRM_SUFFIX) or search.user_attrs.get("kind") == "confirm":
        raise UsageError(f"study {search.study_name!r} holds confirmation runs; pass the search's --study-name")
    st.require_kind(search, "search")
    if len(search.directions) > 1:
        raise UsageError(f"study {search.study_name!r} has two objectives; confirm ranks single-objective searches")
    if numbers and top is not None:
        raise UsageError("give --top or --trial, not both")
    if not numbers:
        best = st.top_trials(search, CONFIRM_TOP if top is None else top)
        if not best:
            raise UsageError(f"study {search.study_name!r} has no complete trial yet")
        return best
    complete = {t.number: t for t in st.complete_trials(search)}
    missing = [n for n in numbers if n not in complete]
    if missing:
        raise UsageError(f"--trial {missing[0]}: study {search.study_name!r} has no complete trial {missing[0]}; its "
                         f"complete trials: {', '.join(map(str, sorted(complete))) or 'none'}")
    return [complete[n] for n in dict.fromkeys(numbers)]


def _confirm_fits(t: FrozenTrial, batch_size: int | None, device: torch.device, limit_train: int | None) -> int:
    """What retraining trial `t` needs, refused before the data loads where the device cannot
    hold it: its parameters are the study's word, and a crafted study can ask for any model."""
    from vae_search.model import ModelConfig

    p = t.params
    config = ModelConfig(latent_dim=int(p.get("latent_dim", 16)), base_channels=int(p.get("base_channels", 32)))
    batch = int(p.get("batch_size") or batch_size or t.user_attrs.get("batch_size") or 128)
    return _held(config, batch, device, limit_train, f"trial {t.number} of the search",
                 "confirm other trials (--trial N)")


def _pinned_for_workers(argv: Sequence[str], study_name: str, numbers: Sequence[int]) -> list[str]:
    """confirm's arguments with the plan made here spelt out: its workers start seconds later
    and would otherwise choose again, another study as the most recent one or, while the search
    goes on elsewhere, another top."""
    from vae_search.workers import drop_options

    kept = drop_options(argv, {"--study-name", "--top", "--trial"})
    return [*kept, "--study-name", study_name, *(a for n in numbers for a in ("--trial", str(n)))]


def confirm(opts: Training, *, top: int | None, trials: Sequence[int], seeds: int,
            study_name: str | None) -> tuple[optuna.Study, BaseStorage]:
    """The search's best (or the numbered) trials again with further seeds, in the companion
    study NAME-confirm."""
    storage = storages.open_storage(opts.storage, heartbeat=opts.heartbeat, must_exist=True)
    search = st.load_study(storage, study_name)
    if study_name is None:
        opts.notes.append(f"(study {search.study_name!r}: the most recently written; pass --study-name for another)")
    best = plan_confirm(search, top, trials)
    # A search on a subset (--limit-*) is confirmed on the same subset unless told otherwise: the
    # counts its trials record (read checked, trial_attrs.py), and the data's fingerprint below
    # still checks that they are its images.
    _keep_subset(opts, best[0].user_attrs)
    opts.argv = _pinned_for_workers(opts.argv, search.study_name, [t.number for t in best])
    budget = st.recorded(search, "budget") or {}
    precision = opts.precision or budget.get("precision") or best[0].user_attrs.get("precision") or "fp32"
    dev, prec = device_and_precision(opts.device, precision)
    given = {"epochs": opts.epochs, "batch_size": opts.batch_size, "precision": prec}
    st.check_budget(search, {k: v for k, v in given.items() if v is not None}, record=False)  # same budget, or refused
    need = max(_confirm_fits(t, opts.batch_size or budget.get("batch_size"), dev, opts.limit_train) for t in best)
    name = st.confirm_study_name(search.study_name)

    def same_data(settings: RunSettings) -> None:
        if budget.get("data_fingerprint") and budget["data_fingerprint"] != settings.data.fingerprint:
            had = best[0].user_attrs
            raise UsageError(f"these data differ from those study {search.study_name!r} trained on (fingerprint "
                             f"{settings.data.fingerprint}, the search had {budget['data_fingerprint']}: "
                             f"{had.get('n_train', '?')} training and {had.get('n_val', '?')} validation images, "
                             f"here {len(settings.data.train)} and {len(settings.data.test)}); pass the search's "
                             "--data-dir (and its --limit-train/--limit-val, or none to take the search's)")

    p = prepare(opts, name, epochs=int(budget.get("epochs") or best[0].user_attrs["epochs"]),
                batch_size=int(budget.get("batch_size") or best[0].user_attrs["batch_size"]), precision=precision,
                seed=0, storage=storage, pruner=st.NO_PRUNING, budget=budget, check_data=same_data, kind="confirm")
    p.model_bytes = need  # how many workers the host holds
    p.study.set_user_attr("confirms", search.study_name)
    points = loop.confirm_points(best, seeds)
    distributions = {k: v for t in best for k, v in t.distributions.items()}
    say(f"study {name!r}: confirming trial{'s' if len(best) > 1 else ''} {', '.join(str(t.number) for t in best)} of "
        f"study {search.study_name!r} with {seeds} seeds each ({len(points)} run{'s' if len(points) > 1 else ''})")
    _run_points(p, opts, points, distributions, 0, f"study {name!r}: runs complete")
    return search, storage


# ---------------------------------------------------------------- --version and fail-stale


def about() -> list[str]:
    """What `--version` says: the versions a bug report needs, and what `auto` means on this
    machine (device, precision, compile, workers), by the same rules the commands use."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from vae_search import __version__, allocator
    from vae_search.train import compile_pays, native_bf16
    from vae_search.workers import cores, default_jobs

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} not installed"

    dev, prec = device_and_precision("auto", "auto")
    cpu = torch.backends.cpu.get_cpu_capability()
    libraries = ", ".join(installed(n) for n in ("optuna", "optuna-dashboard", "torch", "torchvision"))
    return [
        f"vae-search {__version__}",
        f"{libraries}, Python {platform.python_version()}",
        f"CPU: {cores()} cores, {cpu}, native bf16 {'yes' if native_bf16(torch.device('cpu')) else 'no'}; "
        f"CUDA GPUs: {torch.cuda.device_count() if torch.cuda.is_available() else 'none'}",
        f"auto here: --device {dev.type}, --precision {prec}, --compile "
        f"{'on (runs long enough to pay for it)' if compile_pays(dev) else 'off'}, --jobs {default_jobs(dev)}",
        f"memory: {allocator.state()}",
    ]


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """"90s", "30m", "2h", "1d" -> seconds."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        value = float(number) * _DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise UsageError(f"--older-than {text!r}: give a number and a unit, as in 90s, 30m, 2h or 1d") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--older-than {text!r}: must be a positive duration")
    return value


def fail_stale(storage_url: str, study_name: str | None, notes: list[str], older_than: str,
               dry_run: bool) -> tuple[optuna.Study, list[tuple[int, str]]]:
    seconds = duration(older_than)
    _, study = load_for_reading(storage_url, study_name, notes)
    return study, loop.fail_running_older_than(study, seconds, dry_run=dry_run)

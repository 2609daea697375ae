"""`--jobs N`: N local worker processes on one study, shown in one progress display.

Each worker is the same command run again (`python -m vae_search <the same options> --jobs 1`)
on the same storage, so the exactly-once grid and the N-finished-trials logic of trial_loop.py
hold as they do for workers on many machines. Processes, not threads (Optuna's own advice,
and measured here: on 2 cores two one-thread processes train 20-50% more images per second
than one two-thread process, README "Performance"). On CPU each worker gets its share of the
cores as torch threads; with GPUs, worker i sees GPU i mod n through CUDA_VISIBLE_DEVICES.

The parent only supervises: it reads each worker's progress events (JSON lines on a pipe),
forwards their messages, and
  - on Ctrl-C or SIGTERM stops every worker (each fails its running trial as "interrupted");
  - when a worker dies (killed, out of memory), fails the trial it was running with the
    reason and re-queues it; the other workers go on, and the exit code says one died;
  - gives its own exit code: 0 when every worker succeeded, 130 when interrupted, else the
    first failure's (1 or 2).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vae_search.errors import INTERRUPTED, UsageError

WORKER_ENV = "VAE_SEARCH_WORKER"  # "i/N" in a worker process
PROGRESS_FD_ENV = "VAE_SEARCH_PROGRESS_FD"  # where a worker writes its progress events
THREADS_ENV = "VAE_SEARCH_THREADS"  # torch threads of a worker
WORKER_MEMORY = 2 * 1024**3  # bytes a full-data worker may take (README: a trial process peaks near 1.5 GB)
# ... of which the data, the decoded batches and torch itself, whatever the model: a search
# space of larger models adds its largest model's training memory (model.training_bytes) to it
WORKER_BASE_MEMORY = 1024**3
# Workers sharing one GPU by default: these models are too small to fill a GPU from one
# process (kernel launches bound it), so each worker adds the work of the core it launches
# from. On an H100 with 16 cores (benchmarks/results/gpu/h100-workers.json) 4, 8, 12 and 16
# workers trained 3.7x, 5.9x, 7.8x and 7.0x the images/s of one: 12 per GPU at most, and a
# quarter of the cores left to the parent, the data and the system.
GPU_WORKERS = 12
STOP_GRACE_S = 60.0  # after asking workers to stop, how long before they are killed


# ---------------------------------------------------------------- how many, with what


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _available_memory() -> int | None:
    """Bytes a new process may use: Linux's MemAvailable (free memory plus reclaimable cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device: torch.device) -> int | None:
    """Bytes free where the model trains: the host's on CPU, the GPU's with CUDA; None where
    it cannot be asked (MPS shares the host's memory with the system)."""
    if device.type == "cpu":
        return _available_memory()
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


def worker_memory(device: torch.device, model_bytes: int | None = None) -> int:
    """Host memory one worker may take: WORKER_MEMORY, more where a CPU worker trains a model
    larger than the default space's (on a GPU the model's memory is the GPU's)."""
    if model_bytes is None or torch.device(device).type != "cpu":
        return WORKER_MEMORY
    return max(WORKER_MEMORY, WORKER_BASE_MEMORY + model_bytes)


def cores_for_gpu_workers(n_cores: int) -> int:
    return max(1, n_cores - n_cores // 4)  # 16 -> 12 (measured best), 4 -> 3, 2 -> 2


def default_jobs(device: torch.device, model_bytes: int | None = None) -> int:
    """On CPU one worker per core (each with one thread), as many as the free memory holds;
    with CUDA, GPU_WORKERS per GPU on three quarters of the cores (each feeds its GPU from
    a core) as the host's and the GPU's memory allow, at least one per GPU; on Apple MPS one.
    `model_bytes`: what the largest model the study can propose needs to train."""
    if device.type == "mps":
        return 1
    memory = _available_memory()
    by_memory = max(1, memory // worker_memory(device, model_bytes)) if memory else cores()
    if device.type == "cuda":
        gpus = max(1, torch.cuda.device_count())
        if model_bytes:  # workers on one GPU share its memory: as many as hold the largest model
            by_memory = min(by_memory, gpus * max(1, (device_memory(device) or 0) // model_bytes))
        return max(gpus, min(GPU_WORKERS * gpus, cores_for_gpu_workers(cores()), by_memory))
    return max(1, min(cores(), by_memory))


def jobs_note(jobs: int, device: torch.device = torch.device("cpu"), model_bytes: int | None = None) -> str | None:
    """What an explicit --jobs above this machine's memory risks, said rather than refused
    (the user may know their workers are smaller): past it the kernel kills workers for
    memory, and their trials are failed and retried instead of finished."""
    memory, each = _available_memory(), worker_memory(device, model_bytes)
    if memory is None or jobs * each <= memory:
        return None
    return (f"note: --jobs {jobs} is more workers than the free memory holds ({memory / 2**30:.1f} GiB free holds "
            f"about {max(1, memory // each)} of up to {each / 2**30:.1f} GiB each on the full data); "
            "a worker killed for memory loses its trial's work (the trial is retried)")


def threads_per_worker(jobs: int) -> int:
    return max(1, cores() // jobs)


def worker_identity() -> tuple[int, int] | None:
    """(i, N) in worker i of N (1-based), None in a command run directly."""
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    i, _, n = value.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):  # a parent writes "i/N"; not that is a stray one
        raise UsageError(f"{WORKER_ENV}={value!r} is set in this shell: vae-search sets it for its own workers; unset it")
    return int(i), int(n)


def apply_worker_threads() -> None:
    """In a worker: take the torch threads the parent planned for it."""
    threads = os.environ.get(THREADS_ENV, "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:  # a parent writes a count; anything else is a hand-set typo
            raise UsageError(f"{THREADS_ENV}={threads!r}: give the torch threads of a worker, 1 or more")
        torch.set_num_threads(int(threads))


# ---------------------------------------------------------------- in a worker: report to the parent


class PipeReporter:
    """What TrainingProgress is in a command run directly, for a worker: the same `factory`
    for trials, but the events go to the parent as JSON lines."""

    def __init__(self, fd: int) -> None:
        self.out = os.fdopen(fd, "w", buffering=1)
        self.lock = threading.Lock()

    def send(self, event: str, **data: Any) -> None:
        with self.lock, contextlib.suppress(OSError):  # a parent that is gone is no reason to crash
            self.out.write(json.dumps({"e": event, **data}) + "\n")

    def __enter__(self) -> PipeReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.out.close()

    def factory(self, trial: Any, model: Any, config: Any) -> Callable:
        from vae_search.storages import trial_id_of

        label = f"trial {trial.number} L={model.latent_dim} b={model.base_channels}"
        self.send("start", trial=trial.number, trial_id=trial_id_of(trial), label=label)

        def on_batch(epoch: int, batch: int, n_batches: int, loss: torch.Tensor) -> None:
            self.send("batch", label=f"{label} epoch {epoch}/{config.epochs}", batch=batch, n=n_batches,
                      loss=f"{loss.item():.1f}")

        return on_batch

    def trial_end(self, state: str, number: int, line: str) -> None:
        self.send("end", trial=number, state=state, line=line)

    def waiting(self, running: list[int]) -> None:
        self.send("wait", running=running)


def reporter() -> PipeReporter:
    """The worker's line to its parent (nowhere, for a worker started by hand)."""
    fd = os.environ.get(PROGRESS_FD_ENV)
    return PipeReporter(int(fd) if fd else os.open(os.devnull, os.O_WRONLY))


# ---------------------------------------------------------------- in the parent: start, watch, stop


@dataclass
class Worker:
    index: int  # 1-based
    proc: subprocess.Popen
    progress_r: int
    task: Any = None
    trial: tuple[int, int] | None = None  # (number, trial_id) of the trial it is running
    label: str = ""  # the trial and epoch it last reported
    readers: list[threading.Thread] = field(default_factory=list)


def _die_with_parent() -> None:
    """In the child before exec: on Linux, receive SIGTERM when the parent dies (even by
    SIGKILL), so no worker trains on unsupervised; the SIGTERM fails its trial cleanly."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# Options whose values travel to workers in their environment, not on their command line:
# /proc/PID/cmdline (what `ps` shows) is readable by every user of the machine, and a
# storage URL may hold a password. Each is an option with an environment variable.
BY_ENVIRONMENT = {"--storage": "VAE_SEARCH_STORAGE"}


def drop_options(argv: Sequence[str], names: set[str], taken: dict[str, str] | None = None) -> list[str]:
    """`argv` without the options `names` (each with a value: `--name value` or `--name=value`);
    the values dropped go into `taken` by name, the last one where an option repeats."""
    out: list[str] = []
    args = iter(argv)
    for a in args:
        name, eq, value = a.partition("=")
        if name in names:
            value = value if eq else next(args, "")
            if taken is not None:
                taken[name] = value
            continue
        out.append(a)
    return out


def worker_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command's own arguments for a worker, with --jobs replaced by --jobs 1, and the
    environment that carries the options of BY_ENVIRONMENT."""
    taken: dict[str, str] = {}
    out = drop_options(argv, {"--jobs", *BY_ENVIRONMENT}, taken)
    env = {BY_ENVIRONMENT[name]: value for name, value in taken.items() if name in BY_ENVIRONMENT}
    return [*out, "--jobs", "1"], env


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_workers(
    argv: Sequence[str],
    jobs: int,
    *,
    device: torch.device,
    console: Any,
    total: int,
    done: int,
    counts: Callable[[str], bool],
    title: str,
    on_death: Callable[[int, str, bool], str | None],
    on_end: Callable[[int], None] | None = None,
) -> int:
    """Run `jobs` workers of the command `argv` and return the command's exit code.

    `total`/`done`: the study's target and what it has already (grid points, finished
    trials); `counts(state)` says whether a trial that ended in `state` counts towards it;
    `on_death(trial_id, reason, retry)` fails a dead worker's trial (and re-queues it if
    `retry`) and returns what became of it, for the message; `on_end(number)` hears of every
    trial a worker trained."""
    from vae_search.names import printable
    from vae_search.ui import progress_bar

    threads = threads_per_worker(jobs)
    gpus = _visible_gpus() if device.type == "cuda" else []
    progress = progress_bar("{task.fields[info]}", console)
    overall = progress.add_task(printable(title), total=total, completed=done, info="")
    workers: list[Worker] = []
    stopping = threading.Event()
    lock = threading.Lock()

    def stop_all(signum: int, frame: object) -> None:
        if not stopping.is_set():
            console.print("stopping the workers (each fails its running trial as 'interrupted') ...")
        stopping.set()
        for w in workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)

    def read_progress(w: Worker) -> None:
        with os.fdopen(w.progress_r, "r") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                with lock:
                    _event(w, ev)

    def _event(w: Worker, ev: dict) -> None:
        kind = ev.get("e")
        if kind == "start":
            w.trial = (ev["trial"], ev["trial_id"])
            progress.update(w.task, description=f"worker {w.index}: {ev['label']}", completed=0, total=None, info="")
        elif kind == "batch":
            if not console.is_terminal and ev["label"] != w.label:  # a log file gets one line per epoch
                console.print(f"[worker {w.index}] {ev['label']}", highlight=False)
            w.label = ev["label"]
            progress.update(w.task, description=f"worker {w.index}: {ev['label']}", completed=ev["batch"],
                            total=ev["n"], info=f"loss {ev['loss']}")
        elif kind == "end":
            if on_end is not None:
                on_end(ev["trial"])
            if w.trial and w.trial[0] == ev["trial"]:
                w.trial = None
            console.print(f"[worker {w.index}] {ev['line']}", highlight=False)
            if counts(ev["state"]):
                progress.advance(overall)
            progress.update(w.task, description=f"worker {w.index}: between trials", completed=0, total=None, info="")
        elif kind == "wait":
            running = ", ".join(map(str, ev["running"]))
            progress.update(w.task, description=f"worker {w.index}: waiting for trial(s) {running} of other workers",
                            completed=0, total=None, info="")

    def read_stderr(w: Worker) -> None:
        assert w.proc.stderr is not None
        for line in w.proc.stderr:
            line = line.rstrip()
            if line and not (stopping.is_set() and line == INTERRUPTED):  # said once, by this parent
                console.print(f"[worker {w.index}] {line}", highlight=False)

    old = {s: signal.signal(s, stop_all) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Children first, threads (Rich's refresh, the readers) after: no fork beside threads.
        for i in range(jobs):
            r, wfd = os.pipe()
            args, secret_env = worker_argv(argv)
            env = {**os.environ, **secret_env, WORKER_ENV: f"{i + 1}/{jobs}", PROGRESS_FD_ENV: str(wfd),
                   THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            proc = subprocess.Popen(
                [sys.executable, "-m", "vae_search", *args], env=env, pass_fds=(wfd,),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            os.close(wfd)
            workers.append(Worker(i + 1, proc, r))
        with progress:
            for w in workers:
                w.task = progress.add_task(f"worker {w.index}: starting", total=None, info="")
                w.readers = [threading.Thread(target=read_progress, args=(w,), daemon=True),
                             threading.Thread(target=read_stderr, args=(w,), daemon=True)]
                for t in w.readers:
                    t.start()
            return _supervise(workers, stopping, console, on_death, lock)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _supervise(workers: list[Worker], stopping: threading.Event, console: Any,
               on_death: Callable[[int, str, bool], str | None], lock: threading.Lock) -> int:
    codes: dict[int, int] = {}
    stop_deadline: float | None = None
    killed: set[int] = set()
    while len(codes) < len(workers):
        for w in workers:
            if w.index in codes or w.proc.poll() is None:
                continue
            for t in w.readers:  # every event the worker sent is read before it is judged
                t.join(timeout=5)
            rc = codes[w.index] = w.proc.returncode
            with lock:
                trial = w.trial
            if w.index in killed and trial is not None:  # it did not stop when asked: its trial is ours to fail
                on_death(trial[1], "interrupted", False)
            elif rc < 0 and not stopping.is_set():
                name = signal_name(-rc)
                said = f"worker {w.index} died ({name})"
                if trial is not None:
                    fate = on_death(trial[1], said, True)
                    said += f" while running trial {trial[0]}" + (f"; {fate}" if fate else "")
                console.print(f"vae-search: {said}; the other workers go on", highlight=False)
        if stopping.is_set():
            stop_deadline = stop_deadline or time.monotonic() + STOP_GRACE_S
            if time.monotonic() > stop_deadline:
                for w in workers:
                    if w.proc.poll() is None:
                        killed.add(w.index)
                        w.proc.kill()
        time.sleep(0.1)
    if stopping.is_set():
        return 130
    bad = [rc for i, rc in sorted(codes.items()) if rc != 0]
    if not bad:
        return 0
    return 1 if any(rc < 0 for rc in bad) else bad[0]


def signal_name(number: int) -> str:
    """SIGKILL for 9; "signal 64" for a number with no name here."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

"""Terminal output: a Rich progress bar for training (on stderr, so tables on stdout stay
clean), and one line per finished trial."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vae_search.names import printable

if TYPE_CHECKING:  # torch only where a command trains: reading commands start without it
    import torch

    from vae_search.model import ModelConfig
    from vae_search.train import TrainConfig

# Off a terminal (a log file, a pipe) a line stays one line: wrapped at 80 columns, paths
# and messages would be cut where a reader or a grep looks for them. No console reads rich
# markup: the lines quote study names and reasons, and "a[/b]" is a name, not a tag.
err = Console(stderr=True, markup=False)
if not err.is_terminal:
    err = Console(stderr=True, soft_wrap=True, markup=False)


def seconds(s: float) -> str:
    """A duration as one reads it: "577 s" for a real trial, "0.2 s" (not "0 s") for a tiny one."""
    return f"{s:.1f} s" if s < 9.95 else f"{s:.0f} s"


def progress_bar(field: str, console: Console = err) -> Progress:
    """A live bar (a terminal only): what it does, the bar, done of total, `field`, the time.
    Its text is shown as it is, like the consoles': a description quotes a study's name, and
    "a[/b]" there ended the run in rich's MarkupError."""
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TextColumn(field, markup=False), TimeElapsedColumn(), console=console, transient=True)


class TrainingProgress:
    """`with TrainingProgress() as p: settings.on_batch_factory = p.factory`."""

    def __init__(self) -> None:
        self.progress = progress_bar("loss {task.fields[loss]}")
        self.task: int | None = None

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def factory(self, trial: optuna.Trial, model: ModelConfig, config: TrainConfig) -> Callable:
        if self.task is not None:
            self.progress.remove_task(self.task)
        label = f"trial {trial.number} L={model.latent_dim} b={model.base_channels}"
        self.task = self.progress.add_task(label, total=None, loss="-")

        def on_batch(epoch: int, batch: int, n_batches: int, loss: torch.Tensor) -> None:
            if not err.is_terminal and batch == 1:  # no live bar in a log file: one line per epoch
                err.print(f"{label} epoch {epoch}/{config.epochs}", highlight=False)
            self.progress.update(
                self.task,
                description=f"{label} epoch {epoch}/{config.epochs}",
                completed=batch,
                total=n_batches,
                loss=f"{loss.item():.1f}",  # a sync every few batches; the loop itself never waits
            )

        return on_batch

    def waiting(self, running: list[int]) -> None:
        """Nothing left to start here; other workers' trials are still running."""
        if self.task is not None:
            self.progress.remove_task(self.task)
        label = f"waiting for trial(s) {', '.join(map(str, running))} of other workers"
        self.task = self.progress.add_task(label, total=None, loss="-")


def trial_line(t: FrozenTrial) -> str:
    """A finished trial in one line; what it quotes from the study (another worker's reason
    for a failure, a categorical value) is shown, never obeyed by the terminal."""
    p = t.params
    cfg = f"L={p.get('latent_dim')} b={p.get('base_channels')} beta={p.get('beta', 0):.3g} lr={p.get('lr', 0):.3g}"
    extra = {k: p[k] for k in ("batch_size", "lr_schedule") if k in p}
    cfg += "".join(f" {k}={v}" for k, v in extra.items())
    a = t.user_attrs
    if "seed" in a:
        cfg += f" seed={a['seed']}"
    if t.state == TrialState.COMPLETE:
        line = f"trial {t.number} {cfg}: neg_elbo {a['neg_elbo']:.2f} recon {a['recon_loss']:.2f} ({seconds(a['time_s'])})"
    elif t.state == TrialState.PRUNED:
        line = f"trial {t.number} {cfg}: pruned after epoch {a.get('pruned_at_epoch', '?')}"
        if "pruned_because" in a:  # the one pruning with a reason of its own (samplers.regressed)
            line += f" ({a['pruned_because']})"
    else:
        line = f"trial {t.number} {cfg}: {t.state.name} ({a.get('fail_reason', 'no reason recorded')})"
    return printable(line)


def table_console() -> Console:
    """A console for tables on stdout: a file or pipe gets 200 columns, not rich's default 80."""
    console = Console(markup=False)
    return console if console.is_terminal else Console(width=200, markup=False)

"""The Optuna objective: trial parameters -> configs -> train() -> attributes, artifacts,
objective values. The one place where training meets a trial."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from vae_search.artifacts import save_trial_artifacts
from vae_search.data import Cifar10
from vae_search.model import VAE, ModelConfig, count_parameters
from vae_search.samplers import regressed
from vae_search.train import Diverged, TrainConfig, should_compile, train

OBJECTIVES = ("neg_elbo", "params")  # what --objectives may name
METRICS = ("val_loss", "recon_loss", "kl", "neg_elbo", "train_loss", "time_s")

OnBatchFactory = Callable[[optuna.Trial, ModelConfig, TrainConfig], Callable | None]


@dataclass
class RunSettings:
    """What every trial of one command shares."""

    data: Cifar10
    epochs: int
    batch_size: int
    seed: int
    device: torch.device
    store: FileSystemArtifactStore
    compile: bool | str = "auto"
    precision: str = "fp32"  # resolved: fp32 or bf16
    objectives: tuple[str, ...] = ("neg_elbo",)
    on_batch_factory: OnBatchFactory | None = None
    jobs: int = 1  # worker processes of the command that runs the trials (time_s is read with it)
    threads: int = field(default_factory=torch.get_num_threads)  # torch threads of this worker

    def provenance(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "jobs": self.jobs,
            "threads": self.threads,
            "device": str(self.device),
            "device_name": _device_name(self.device),
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "python": platform.python_version(),
            # which machine and process trained it: a dead worker's trial is found by its pid
            "worker": f"{platform.node()}:{os.getpid()}",
            "data_fingerprint": self.data.fingerprint,
            "data_source": self.data.source,
            "n_train": len(self.data.train),
            "n_val": len(self.data.test),
        }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"unsupported distribution {dist!r}")


def make_objective(
    settings: RunSettings, distributions: dict[str, BaseDistribution]
) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    provenance = settings.provenance()  # hashing the data once, not once per trial
    single = len(settings.objectives) == 1

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        params = {name: suggest(trial, name, dist) for name, dist in distributions.items()}
        model_config = ModelConfig(latent_dim=int(params["latent_dim"]), base_channels=int(params["base_channels"]))
        # A grid point or a confirmation run carries its own seed; a search trial takes --seed.
        seed = int(trial.user_attrs.get("seed", settings.seed))
        train_config = TrainConfig(
            epochs=settings.epochs,
            batch_size=int(params.get("batch_size", settings.batch_size)),  # searched where the space has it
            lr=float(params["lr"]),
            beta=float(params["beta"]),
            seed=seed,
            lr_schedule=str(params.get("lr_schedule", "constant")),
        )
        for key, value in provenance.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("batch_size", train_config.batch_size)
        # known before training, so pruned and failed trials carry them too (a trial's time_s
        # is read with "compiled"; training records the truth if compiling fails and falls back)
        trial.set_user_attr("params", count_parameters(VAE(model_config)))
        trial.set_user_attr("compiled", should_compile(settings.compile, settings.device, len(settings.data.train) * train_config.epochs))
        history: list[dict[str, float]] = []

        def on_epoch(metrics: dict[str, float]) -> None:
            history.append(metrics)
            trial.set_user_attr("history", history)
            if single:  # Optuna's pruners (and report) are single-objective only
                trial.report(metrics["neg_elbo"], step=int(metrics["epoch"]))
                # after the last epoch the trial has cost all it will: pruning it then saves nothing
                if int(metrics["epoch"]) < train_config.epochs and trial.should_prune():
                    _set_metrics(trial, metrics)
                    trial.set_user_attr("pruned_at_epoch", int(metrics["epoch"]))
                    why = regressed([h["neg_elbo"] for h in history])
                    if why is not None:  # pruned past the pruner's last epoch, or early for this reason
                        trial.set_user_attr("pruned_because", why)
                    raise optuna.TrialPruned(f"pruned after epoch {int(metrics['epoch'])}")

        on_batch = settings.on_batch_factory(trial, model_config, train_config) if settings.on_batch_factory else None
        try:
            result = train(
                model_config,
                train_config,
                settings.data,
                device=settings.device,
                compile=settings.compile,
                precision=settings.precision,
                on_epoch=on_epoch,
                on_batch=on_batch,
            )
        except Diverged as e:
            trial.set_user_attr("fail_reason", str(e) if "diverged" in str(e) else f"non-finite loss: {e}")
            raise
        except torch.OutOfMemoryError as e:
            # The trial fails with the reason and the loop goes on to the next, which may be
            # smaller; what this one held is given back to the device first.
            trial.set_user_attr("fail_reason", f"out of memory on {settings.device}: {str(e).splitlines()[0]}")
            raise
        except RuntimeError as e:
            if "can't allocate memory" in str(e):  # the CPU allocator's refusal: a RuntimeError, not an OutOfMemoryError
                trial.set_user_attr("fail_reason", f"out of memory on {settings.device}: {str(e).split('DefaultCPUAllocator: ')[-1]}")
            raise
        finally:
            if settings.device.type == "cuda":
                import gc

                gc.collect()
                torch.cuda.empty_cache()
        _set_metrics(trial, result.metrics)
        trial.set_user_attr("train_eval_loss", float(result.metrics["train_eval_loss"]))  # complete trials only
        trial.set_user_attr("compiled", result.compiled)
        save_trial_artifacts(trial, settings.store, model_config, train_config, result, settings.data.showcase())
        values = {"neg_elbo": result.metrics["neg_elbo"], "params": float(result.params)}
        out = tuple(values[name] for name in settings.objectives)
        return out[0] if single else out

    return objective


def _set_metrics(trial: optuna.Trial, metrics: dict[str, float]) -> None:
    for key in METRICS:
        trial.set_user_attr(key, float(metrics[key]))
    trial.set_user_attr("epochs_run", int(metrics["epoch"]))

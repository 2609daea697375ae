"""A trial's files in Optuna's artifact store: weights (checkpoint), reconstructions and
prior samples as PNG. Their artifact ids are kept in the trial's user attributes, so the
dashboard shows them and `interpolate` finds the weights.

A file lands in the store whole or not at all (written beside its place, then renamed), and
the weights' id is recorded only once the file is there: a disk that fills up or a folder
that vanishes mid-trial fails the trial with the reason, never leaves a checkpoint that
`interpolate` would trust.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.trial import FrozenTrial, TrialState

from vae_search.atomic import atomic_write
from vae_search.errors import RunError, UsageError
from vae_search.storages import artifact_folder

if TYPE_CHECKING:  # torch and torchvision load where weights are saved or read, not for `best` or `show`
    import torch

    from vae_search.model import VAE, ModelConfig
    from vae_search.train import TrainConfig, TrainResult

CHECKPOINT_FORMAT = "vae-search-checkpoint/1"
WEIGHTS_ATTR = "weights_artifact_id"
INTERP_ROWS, INTERP_STEPS = 8, 10  # the interpolation figure stored with each trial


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, but a write is a temporary file renamed into place."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        atomic_write(self._get_filepath(artifact_id), lambda f: shutil.copyfileobj(content_body, f))


class ArtifactWriteError(RunError):
    """A trial's files could not be written (full disk, missing folder): the trial fails."""


def artifact_store(path: Path, *, create: bool = True) -> FileSystemArtifactStore:
    """The artifact folder as Optuna's store. Commands that train create it (and find out now
    whether it can be written); commands that only read (`create=False`) never create a
    folder: one that is not there is an error they may turn into "weights not kept"."""
    path = Path(path)
    if not create:
        if not path.is_dir():
            raise UsageError(f"artifact folder {path} does not exist; pass the --artifact-dir the study was run with")
        return AtomicFileSystemArtifactStore(base_path=str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-")
        probe.close()
    except OSError as e:
        raise UsageError(f"artifact folder {path} cannot be written: {e.strerror}; pass --artifact-dir") from None
    return AtomicFileSystemArtifactStore(base_path=str(path))


def save_trial_artifacts(
    trial: optuna.Trial,
    store: FileSystemArtifactStore,
    model_config: ModelConfig,
    train_config: TrainConfig,
    result: TrainResult,
    test_images: torch.Tensor,
) -> dict[str, str]:
    """Upload weights, a reconstruction PNG and a prior-samples PNG; return their ids. A file
    that cannot be written raises ArtifactWriteError (the trial fails, the worker stops)."""
    try:
        return _save(trial, store, model_config, train_config, result, test_images)
    except OSError as e:
        where = e.filename or artifact_folder(store)
        raise ArtifactWriteError(
            f"cannot save the files of trial {trial.number} ({where}: {e.strerror or e}); finished trials are saved: "
            "free space or fix --artifact-dir, then run the same command again"
        ) from None


def _save(
    trial: optuna.Trial,
    store: FileSystemArtifactStore,
    model_config: ModelConfig,
    train_config: TrainConfig,
    result: TrainResult,
    test_images: torch.Tensor,
) -> dict[str, str]:
    import torch

    from vae_search.images import interpolation_frames, prior_samples, reconstructions, save_png
    from vae_search.model import VAE

    model = VAE(model_config)
    model.load_state_dict(result.state_dict)
    ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / f"trial-{trial.number}-weights.pt"
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model_config": asdict(model_config),
            "train_config": asdict(train_config),
            "metrics": result.metrics,
            "state_dict": result.state_dict,
        }
        blob = io.BytesIO()  # serialised in memory: a full disk is then a plain OSError from write(),
        torch.save(payload, blob)  # not the RuntimeError torch's zip writer makes of it
        atomic_write(ckpt, lambda f: f.write(blob.getbuffer()))
        recon = save_png(reconstructions(model, test_images.cpu()), Path(tmp) / f"trial-{trial.number}-reconstructions.png")
        samples = save_png(prior_samples(model, seed=train_config.seed), Path(tmp) / f"trial-{trial.number}-samples.png")
        # The B.3 figure, made now because Optuna does not let a finished trial take artifacts.
        frames = interpolation_frames(model, rows=INTERP_ROWS, steps=INTERP_STEPS, mode="random", seed=train_config.seed)
        interp = save_png(frames.flatten(0, 1), Path(tmp) / f"trial-{trial.number}-interpolation.png", nrow=INTERP_STEPS)
        for attr, path, mime in (
            (WEIGHTS_ATTR, ckpt, "application/octet-stream"),
            ("reconstructions_artifact_id", recon, "image/png"),
            ("samples_artifact_id", samples, "image/png"),
            ("interpolation_artifact_id", interp, "image/png"),
        ):
            ids[attr] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype=mime)
            trial.set_user_attr(attr, ids[attr])
    return ids


def trials_with_weights(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if WEIGHTS_ATTR in t.user_attrs]


def load_checkpoint(store: FileSystemArtifactStore, trial: FrozenTrial) -> dict[str, Any]:
    import torch

    artifact_id = trial.user_attrs.get(WEIGHTS_ATTR)
    if artifact_id is None:
        raise UsageError(f"trial {trial.number} has no weights")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        try:
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
        except Exception:
            raise UsageError(
                f"the weights of trial {trial.number} (artifact {artifact_id}) are missing from "
                f"{artifact_folder(store)}; pass the --artifact-dir the study was run with"
            ) from None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a vae-search checkpoint")
        except Exception as e:
            raise UsageError(f"the weights of trial {trial.number} (artifact {artifact_id}) are corrupt: {e}") from None
    return ckpt


def load_model(store: FileSystemArtifactStore, trial: FrozenTrial) -> VAE:
    from vae_search.model import VAE, ModelConfig

    ckpt = load_checkpoint(store, trial)
    model = VAE(ModelConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise UsageError(f"the weights of trial {trial.number} do not fit its architecture: {e}") from None
    return model.eval()

"""`vae-search interpolate`: a trial's latent interpolation as a PNG (written to a folder and
attached to the study) and an interactive plotly figure on the study's dashboard page."""

from __future__ import annotations

from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from vae_search.images import interpolation_frames, save_png
from vae_search.model import VAE
from vae_search.names import file_name, inside


def figure(frames: torch.Tensor, title: str):
    """An interactive figure: one image per (row, step), zoomable, with hover."""
    import plotly.express as px

    rows, steps = frames.shape[:2]
    # (rows, steps, 3, 32, 32) -> one (rows*32, steps*32, 3) picture
    img = frames.permute(0, 3, 1, 4, 2).reshape(rows * 32, steps * 32, 3).mul(255).round().byte().numpy()
    # binary_string: the pixels travel as one PNG inside the figure (tens of kB, not megabytes)
    fig = px.imshow(img, title=title, binary_string=True)
    fig.update_xaxes(tickvals=[16 + 32 * i for i in range(steps)], ticktext=[f"t={i / (steps - 1):.2f}" for i in range(steps)])
    fig.update_yaxes(tickvals=[16 + 32 * i for i in range(rows)], ticktext=[f"pair {i + 1}" for i in range(rows)])
    return fig


def publish_interpolation(
    study: optuna.Study,
    trial: FrozenTrial,
    model: VAE,
    store: FileSystemArtifactStore,
    *,
    out_dir: Path,
    rows: int,
    steps: int,
    mode: str,
    seed: int,
    images: torch.Tensor | None = None,
) -> Path:
    """The PNG (returned, and attached to the study) and the dashboard figure, which a rerun
    for the same trial and mode replaces."""
    from optuna_dashboard import save_plotly_graph_object

    frames = interpolation_frames(model, rows=rows, steps=steps, mode=mode, seed=seed, images_u8=images)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{file_name(study.study_name)}-trial-{trial.number}-interpolation-{mode}"
    png = save_png(frames.flatten(0, 1), inside(out_dir, f"{stem}.png"), nrow=steps)
    title = f"trial {trial.number}: {mode} interpolation, latent {model.config.latent_dim}, base {model.config.base_channels}"
    upload_artifact(artifact_store=store, file_path=str(png), study_or_trial=study)
    save_plotly_graph_object(study, figure(frames, title), graph_object_id=f"trial-{trial.number}-interpolation-{mode}")
    return png

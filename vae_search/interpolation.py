"""`vae-search interpolate`: a trial's latent interpolation as a PNG (written to a folder and
attached to the study) and an interactive plotly figure on the study's dashboard page."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from vae_search.images import interpolation_frames, save_png
from vae_search.model import VAE
from vae_search.names import file_name, inside
from vae_search.storages import study_artifact_ids

PUBLISHED_ATTR = "interpolations_published"  # {figure id: {"sha256", "artifact_id"}}


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
    """The PNG (returned, and attached to the study) and the dashboard figure. A rerun that
    draws the same picture writes nothing to the study (a committed or shared database stays
    byte for byte the same, and the artifact folder gains no copy); one that draws another
    (other rows, steps, seed or weights) attaches the new PNG and replaces the figure."""
    from optuna_dashboard import save_plotly_graph_object

    frames = interpolation_frames(model, rows=rows, steps=steps, mode=mode, seed=seed, images_u8=images)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{file_name(study.study_name)}-trial-{trial.number}-interpolation-{mode}"
    png = save_png(frames.flatten(0, 1), inside(out_dir, f"{stem}.png"), nrow=steps)
    title = f"trial {trial.number}: {mode} interpolation, latent {model.config.latent_dim}, base {model.config.base_channels}"
    fig = figure(frames, title)
    graph_id = f"trial-{trial.number}-interpolation-{mode}"
    digest = hashlib.sha256(png.read_bytes() + fig.to_json().encode()).hexdigest()
    # What was published last, per figure, in one study attribute. Read from a shared study, so
    # it is only compared, and the artifact it names must still be attached.
    published = study.user_attrs.get(PUBLISHED_ATTR)
    published = dict(published) if isinstance(published, dict) else {}
    last = published.get(graph_id)
    attached = study_artifact_ids(study)
    if isinstance(last, dict) and last.get("sha256") == digest and last.get("artifact_id") in attached:
        return png
    artifact_id = upload_artifact(artifact_store=store, file_path=str(png), study_or_trial=study)
    save_plotly_graph_object(study, fig, graph_object_id=graph_id)
    published[graph_id] = {"sha256": digest, "artifact_id": artifact_id}
    study.set_user_attr(PUBLISHED_ATTR, published)
    return png

"""Pictures of a trained VAE: reconstructions, prior samples, latent interpolations.
All return image tensors in [0, 1]; torchvision's make_grid/save_image do the layout."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from vae_search.atomic import atomic_write
from vae_search.model import VAE


@torch.inference_mode()
def reconstructions(model: VAE, images_u8: torch.Tensor, n: int = 8) -> torch.Tensor:
    """A (3, H, W) grid: n test images in the top row, their reconstructions (decoded from
    the posterior mean) below."""
    model.eval()
    x = images_u8[:n].float().div(255)
    mu, _ = model.encode(x)
    return make_grid(torch.cat([x, model.decode(mu)]), nrow=n, padding=2)


@torch.inference_mode()
def prior_samples(model: VAE, n: int = 16, seed: int = 0) -> torch.Tensor:
    model.eval()
    z = torch.randn(n, model.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    return make_grid(model.decode(z), nrow=8, padding=2)


def interpolation_latents(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """(rows, steps, L): for each row, points evenly spaced on the line from z0 to z1."""
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    return z0.unsqueeze(1) * (1 - t) + z1.unsqueeze(1) * t


@torch.inference_mode()
def interpolation_frames(
    model: VAE,
    *,
    rows: int,
    steps: int,
    mode: str,
    seed: int,
    images_u8: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoded interpolations, (rows, steps, 3, 32, 32) in [0, 1].

    mode "random": between pairs of z ~ N(0, I) (the report's B.3);
    mode "images": between the posterior means of pairs of test images, chosen with `seed`.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    if mode == "random":
        z = torch.randn(2, rows, model.config.latent_dim, generator=gen)
    else:
        assert images_u8 is not None
        pick = torch.randperm(len(images_u8), generator=gen)[: 2 * rows]
        mu, _ = model.encode(images_u8[pick].float().div(255))
        z = mu.view(2, rows, -1)
    zs = interpolation_latents(z[0], z[1], steps)  # (rows, steps, L)
    out = model.decode(zs.flatten(0, 1))
    return out.view(rows, steps, *out.shape[1:])


def save_png(grid_or_images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Write a PNG atomically (a crash never leaves a truncated picture)."""
    return atomic_write(Path(path), lambda f: save_image(grid_or_images, f, format="png", nrow=nrow, padding=2))

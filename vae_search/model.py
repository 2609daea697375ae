"""The convolutional VAE of the B.1 report and its loss.

The architecture is pinned: with base channels b and latent size L it has exactly the
report's parameter counts (285,355 / 309,939 / 359,107 / 1,131,859 for
(L, b) = (4, 32), (8, 32), (16, 32), (8, 64)); tests/test_model.py asserts them.

    encoder: 3x32x32 -> conv s2 -> b x16x16 -> conv s2 -> 2b x8x8 -> conv s2 -> 4b x4x4
             -> flatten (64b) -> Linear heads mu, logvar (L each)
    decoder: L -> Linear -> 4b x4x4 -> convT s2 -> 2b x8x8 -> convT s2 -> b x16x16
             -> convT s2 -> 3x32x32 logits (sigmoid gives the image)

The decoder's transposed convolutions are computed as sub-pixel convolutions (see
`SubPixelConvTranspose2d`): the same parameters, state_dict and outputs as
`nn.ConvTranspose2d`, but faster on CPU because a forward convolution and its backward are
better optimised than the transposed one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (3, 32, 32)
IMAGE_VALUES = 3 * 32 * 32  # per-image sum of the reconstruction loss runs over these


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one VAE. Field names equal the Optuna trial parameter names."""

    latent_dim: int = 16  # L, size of z
    base_channels: int = 32  # b, channels of the first conv; deeper layers use 2b and 4b

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(latent_dim=int(d["latent_dim"]), base_channels=int(d["base_channels"]))


class SubPixelConvTranspose2d(nn.ConvTranspose2d):
    """`ConvTranspose2d(k=4, s=2, p=1)` computed as one 3x3 convolution and a pixel shuffle.

    Output pixel (2i+a, 2j+c) of a k4/s2/p1 transposed convolution only sees inputs
    i-1..i+1 (rows) and j-1..j+1 (columns), through four kernel taps per phase (a, c). So
    the four output phases are one 3x3 convolution of the input with 4*Cout channels whose
    kernel is the transposed kernel rearranged (and zero where a phase does not see an
    input), followed by `pixel_shuffle(2)`. Parameters stay those of ConvTranspose2d, so the
    state_dict and parameter count are unchanged; the 3x3 kernel is rebuilt from them on each
    call (a gather, differentiable).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        # For output phase a (row parity) and 3x3 tap r (input row i-1+r): the 4x4 kernel row
        # that connects them, or -1 where none does. Phase 0 (even rows) uses taps r=0,1 via
        # kernel rows 3,1; phase 1 (odd rows) uses r=1,2 via kernel rows 2,0.
        tap = torch.tensor([[3, 1, -1], [-1, 2, 0]])
        idx = torch.full((2, 2, 3, 3), 16, dtype=torch.long)  # 16 selects an appended zero
        for a in range(2):
            for c in range(2):
                for r in range(3):
                    for s in range(3):
                        if tap[a, r] >= 0 and tap[c, s] >= 0:
                            idx[a, c, r, s] = tap[a, r] * 4 + tap[c, s]
        self.register_buffer("_gather", idx.flatten(), persistent=False)

    def subpixel_weight(self) -> torch.Tensor:
        cin, cout = self.in_channels, self.out_channels
        w = self.weight.reshape(cin, cout, 16)  # (Cin, Cout, 4*4)
        w = torch.cat([w, w.new_zeros(cin, cout, 1)], dim=2)
        w = w[:, :, self._gather].reshape(cin, cout, 4, 3, 3)  # (Cin, Cout, phase, 3, 3)
        # Conv2d wants (out, in, kh, kw) with out ordered (Cout, phase) for pixel_shuffle.
        return w.permute(1, 2, 0, 3, 4).reshape(cout * 4, cin, 3, 3)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        bias = self.bias.repeat_interleave(4) if self.bias is not None else None
        y = F.conv2d(x, self.subpixel_weight(), bias, padding=1)  # (B, 4*Cout, H, W)
        return F.pixel_shuffle(y, 2)  # (B, Cout, 2H, 2W)


class VAE(nn.Module):
    def __init__(self, config: ModelConfig, subpixel: bool = True) -> None:
        super().__init__()
        self.config = config
        b, latent = config.base_channels, config.latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, b, 3, stride=2, padding=1), nn.ReLU(),  # (B, b, 16, 16)
            nn.Conv2d(b, 2 * b, 3, stride=2, padding=1), nn.ReLU(),  # (B, 2b, 8, 8)
            nn.Conv2d(2 * b, 4 * b, 3, stride=2, padding=1), nn.ReLU(),  # (B, 4b, 4, 4)
            nn.Flatten(),  # (B, 64b)
        )
        self.fc_mu = nn.Linear(4 * b * 4 * 4, latent)
        self.fc_logvar = nn.Linear(4 * b * 4 * 4, latent)
        self.decoder_input = nn.Linear(latent, 4 * b * 4 * 4)  # no activation after it
        up = SubPixelConvTranspose2d if subpixel else (
            lambda i, o: nn.ConvTranspose2d(i, o, 4, stride=2, padding=1)
        )
        self.decoder = nn.Sequential(
            up(4 * b, 2 * b), nn.ReLU(),  # (B, 2b, 8, 8)
            up(2 * b, b), nn.ReLU(),  # (B, b, 16, 16)
            up(b, 3),  # (B, 3, 32, 32) logits
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        b = self.config.base_channels
        h = self.decoder_input(z).view(-1, 4 * b, 4, 4)
        # Keep the decoder in the input's memory format (channels_last is faster on CPU).
        if self.encoder[0].weight.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        return self.decoder(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, 32, 32)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x in [0, 1] (B, 3, 32, 32); eps ~ N(0, I) (B, L), passed in so that the random
        stream is the caller's (seeded, and identical between eager and compiled code)."""
        mu, logvar = self.encode(x)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode_logits(z), mu, logvar


def vae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction and KL terms, each (B,), in fp32.

    recon = BCE(sigmoid(logits), x) summed over the 3x32x32 values (computed from the
    logits, which is stable); kl = KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims.
    """
    recon = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    recon = recon.flatten(1).sum(1)
    mu, logvar = mu.float(), logvar.float()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return recon, kl


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""The convolutional VAE of the B.1 report and its loss.

The architecture is pinned: with base channels b and latent size L it has exactly the
report's parameter counts (285,355 / 309,939 / 359,107 / 1,131,859 for
(L, b) = (4, 32), (8, 32), (16, 32), (8, 64)); tests/test_model.py asserts them.

    encoder: 3x32x32 -> conv s2 -> b x16x16 -> conv s2 -> 2b x8x8 -> conv s2 -> 4b x4x4
             -> flatten (64b) -> Linear heads mu, logvar (L each)
    decoder: L -> Linear -> 4b x4x4 -> convT s2 -> 2b x8x8 -> convT s2 -> b x16x16
             -> convT s2 -> 3x32x32 logits (sigmoid gives the image)

The transposed convolutions are oneDNN's (an exactly equivalent sub-pixel reformulation, one
3x3 convolution + pixel_shuffle per layer, was measured 25-30% slower per training step on
this project's 2-core CPU), with exceptions in bf16 on CPUs: `ConvTranspose2d` below.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


def _own_kernels(t: torch.Tensor) -> bool:
    """Where this module's autograd.Functions replace torch's ops: eager steps on CPUs, where
    they were measured to pay. Compiled (CUDA's default), inductor fuses torch's ops with the
    rest, and torch 2.11 compiled _BCEWithLogits (its forward works in place) into a step whose
    gradient left the reconstruction out (pytorch/pytorch#180642): every compiled trial on a
    GPU learned from the KL alone (docs/performance.md, "A fourth GPU check")."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


class _BF16TransposedConv(torch.autograd.Function):
    """A bf16 transposed convolution on CPUs whose bias gradient is a plain sum, and whose
    forward in the image layer (`conv.subpixel`) is `subpixel_conv_transpose2d`'s.

    oneDNN's bf16 deconvolution computes the bias gradient inside its weight-gradient
    primitive, and that costs more than the weight gradient itself (5.0 against 3.1 ms for
    the 64 -> 32 layer of base 32, batch 128, one thread; a sum over batch and pixels takes
    0.04 ms). Its forward with 3 output channels fills a fraction of a vector: 3.1 ms for the
    image layer of base 32, against 1.2 ms for the same products as a 3x3 convolution with 12.
    The input and weight gradients, and the other layers' forwards, are torch's own calls, to
    the bit. The bias gradient and the image layer's forward are the same fp32 sums in
    another order, rounded once to bf16 as torch's are, and now and then round to the other
    neighbour (1 bias value in 77,418 over two epochs; 5 to 7 logits in 100,000), so a 10-epoch
    bf16 training ends up to 0.07% from where nn.ConvTranspose2d's would, within seed noise
    over three seeds (docs/performance.md). benchmarks/deconv.py measures the step;
    tests/test_model.py holds the values and gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: ConvTranspose2d):
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        if conv.subpixel:
            return subpixel_conv_transpose2d(x, weight, bias)
        return F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                  conv.dilation)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        wants_x, wants_w, wants_b = ctx.needs_input_grad[:3]
        c = ctx.conv
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, c.stride, c.padding, c.dilation, True, c.output_padding, c.groups,
            [wants_x, wants_w, False])
        # torch sums bf16 in fp32 and rounds once; asking for an fp32 result would first copy the whole gradient
        grad_b = grad.sum((0, 2, 3)) if wants_b else None
        return grad_x, grad_w, grad_b, None


# kernel row (or column) of a 4x4, stride-2, padding-1 transposed convolution that output
# phase a (row 2m + a) takes from input row m - 1 + r, r = 0, 1, 2 of a 3x3 window (4: none)
_PHASE_TAPS = torch.tensor([[3, 1, 4], [4, 2, 0]])


def subpixel_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv_transpose2d(x, weight, bias, stride=2, padding=1) for a 4x4 kernel, computed as
    one 3x3 convolution with four output channels per channel (one per output phase) and a
    pixel_shuffle: the same products, summed in another order."""
    c_in, c_out = weight.shape[:2]
    # (ci, co, a, r, b, s): the tap of output phase (a, b) at position (r, s) of the 3x3 window
    taps = F.pad(weight, (0, 1, 0, 1))[:, :, _PHASE_TAPS[:, :, None, None], _PHASE_TAPS[None, None]]
    w3 = taps.permute(1, 2, 4, 0, 3, 5).reshape(4 * c_out, c_in, 3, 3)
    b3 = None if bias is None else bias.repeat_interleave(4)
    return F.pixel_shuffle(F.conv2d(x, w3, b3, padding=1), 2)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters, same state_dict) that takes _BF16TransposedConv
    where it pays: eager bf16 autocast on CPUs. In fp32 it would change the rounding too, so
    fp32 (whose losses this project reproduces to the digit) and compiled steps (inductor's,
    and torch 2.11 miscompiled our other autograd.Function, vae_loss below) stay torch's.
    `subpixel` layers (a 4x4 kernel, stride 2, padding 1) take subpixel_conv_transpose2d's
    forward there."""

    def __init__(self, *args, subpixel: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if subpixel and (self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation,
                         self.groups) != ((4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1):
            raise ValueError("subpixel is for a 4x4 kernel, stride 2, padding 1 (and nothing else)")
        self.subpixel = subpixel

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if (output_size is None and _own_kernels(x) and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            bf16 = torch.bfloat16  # what autocast would cast conv_transpose2d's arguments to
            bias = None if self.bias is None else self.bias.to(bf16)
            return _BF16TransposedConv.apply(x.to(bf16), self.weight.to(bf16), bias, self)
        return super().forward(x, output_size)


class VAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
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
        self.decoder = nn.Sequential(
            ConvTranspose2d(4 * b, 2 * b, 4, stride=2, padding=1), nn.ReLU(),  # (B, 2b, 8, 8)
            ConvTranspose2d(2 * b, b, 4, stride=2, padding=1), nn.ReLU(),  # (B, b, 16, 16)
            ConvTranspose2d(b, 3, 4, stride=2, padding=1, subpixel=True),  # (B, 3, 32, 32) logits
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
        stream is the caller's (seeded, and identical between eager and compiled code).

        Under bf16 autocast the convolutions and linears run in bfloat16, but the
        reparameterisation stays fp32: mu and logvar are cast up before exp and the sum (the
        decoder's first linear casts z down again)."""
        mu, logvar = self.encode(x)
        mu, logvar = mu.float(), logvar.float()  # no-ops in fp32
        z = mu + eps.float() * torch.exp(0.5 * logvar)
        return self.decode_logits(z), mu, logvar


class _BCEWithLogits(torch.autograd.Function):
    """F.binary_cross_entropy_with_logits(reduction="none") with the same gradient to the bit,
    sigmoid(logits) - x, and a forward that costs a seventh: on CPUs torch computes it through
    log_sigmoid, whose log1p is not vectorised (4.4 of a 43 ms bf16 step at latent 16 / base 32,
    batch 128, one thread; docs/performance.md). Here the same quantity,
    max(l, 0) - l*x + log1p(exp(-|l|)) with log1p(exp(-|l|)) = -log(sigmoid(|l|)), comes from
    vectorised kernels; the values agree with torch's to 2e-7 per image (fp32 rounding)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        return logits.clamp_min(0).sub_(logits * x).sub_(torch.sigmoid(logits.abs()).log_())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, x = ctx.saved_tensors
        return (logits.sigmoid() - x).mul_(grad), None  # what torch's own backward computes


def vae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction and KL terms, each (B,), in fp32.

    recon = BCE(sigmoid(logits), x) summed over the 3x32x32 values (computed from the
    logits, which is stable); kl = KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims.
    """
    logits, x = logits.float(), x.float()
    if _own_kernels(logits):
        recon = _BCEWithLogits.apply(logits, x)
    else:
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    recon = recon.flatten(1).sum(1)
    mu, logvar = mu.float(), logvar.float()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return recon, kl


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(config: ModelConfig) -> int:
    """VAE(config)'s parameters from the architecture alone, without building it: what the
    largest model of a search space needs is known before anything is allocated
    (tests/test_model.py holds it equal to count_parameters)."""
    b, latent = config.base_channels, config.latent_dim
    flat = 4 * b * 4 * 4
    encoder = (3 * b * 9 + b) + (b * 2 * b * 9 + 2 * b) + (2 * b * 4 * b * 9 + 4 * b)
    heads = 2 * (flat * latent + latent)
    decoder = (latent * flat + flat) + (4 * b * 2 * b * 16 + 2 * b) + (2 * b * b * 16 + b) + (b * 3 * 16 + 3)
    return encoder + heads + decoder


# Measured on CPU in fp32 (peak RSS of a process over two Adam steps, channels_last, one
# thread): beyond 16 bytes per parameter, 520-1,900 KiB per image for base 32-256, about
# 6-8 KiB per image per base channel at batch 512, plus a fixed ~50 MiB. The estimate takes
# the upper end, so that it refuses only what cannot fit.
ACTIVATION_BYTES_PER_CHANNEL = 8 * 1024
FIXED_TRAINING_BYTES = 64 * 2**20


def training_bytes(config: ModelConfig, batch_size: int) -> int:
    """About the memory one training process needs for the model: fp32 weights, gradients
    and Adam's two moments (16 bytes per parameter), and the activations a batch keeps for
    the backward pass. The data comes on top."""
    return (16 * parameter_count(config) + ACTIVATION_BYTES_PER_CHANNEL * config.base_channels * batch_size
            + FIXED_TRAINING_BYTES)

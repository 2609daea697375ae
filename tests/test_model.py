import math

import pytest
import torch
from torch import nn

from vae_search.model import (
    VAE,
    ConvTranspose2d,
    ModelConfig,
    count_parameters,
    parameter_count,
    training_bytes,
    vae_loss,
)


class TestArchitecture:
    @pytest.mark.parametrize(
        "latent, base, expected",
        [(4, 32, 285_355), (8, 32, 309_939), (16, 32, 359_107), (8, 64, 1_131_859)],
    )
    def test_report_parameter_counts(self, latent, base, expected):
        assert count_parameters(VAE(ModelConfig(latent_dim=latent, base_channels=base))) == expected

    @pytest.mark.parametrize("latent", [1, 4, 16, 114, 1000])
    @pytest.mark.parametrize("base", [1, 3, 16, 48, 100])
    def test_parameter_count_without_building_the_model(self, latent, base):
        config = ModelConfig(latent_dim=latent, base_channels=base)
        assert parameter_count(config) == count_parameters(VAE(config))

    def test_training_memory_grows_with_the_model_and_the_batch(self):
        small, wide = ModelConfig(16, 32), ModelConfig(16, 256)
        assert training_bytes(wide, 128) > training_bytes(small, 128) > 16 * parameter_count(small)
        assert training_bytes(small, 512) > training_bytes(small, 128)

    def test_shapes(self):
        model = VAE(ModelConfig(latent_dim=8, base_channels=16))
        x = torch.rand(5, 3, 32, 32)
        logits, mu, logvar = model(x, torch.randn(5, 8))
        assert logits.shape == (5, 3, 32, 32)
        assert mu.shape == logvar.shape == (5, 8)
        assert model.decode(mu).min() >= 0 and model.decode(mu).max() <= 1

    def test_no_normalisation_layers(self):
        model = VAE(ModelConfig())
        assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) for m in model.modules())


class TestLoss:
    def test_against_hand_computation(self):
        # One image whose logits are all 0 (sigmoid 0.5) and pixels all 1: BCE per value is
        # -log(0.5) = log 2, summed over 3*32*32 values. mu = (1, 0), logvar = (0, log 2):
        # KL = -0.5 * [(1 + 0 - 1 - 1) + (1 + log 2 - 0 - 2)] = 1 - 0.5 log 2.
        logits = torch.zeros(1, 3, 32, 32)
        x = torch.ones(1, 3, 32, 32)
        mu = torch.tensor([[1.0, 0.0]])
        logvar = torch.tensor([[0.0, math.log(2.0)]])
        recon, kl = vae_loss(logits, x, mu, logvar)
        assert recon.item() == pytest.approx(3 * 32 * 32 * math.log(2.0), rel=1e-6)
        assert kl.item() == pytest.approx(1 - 0.5 * math.log(2.0), rel=1e-6)

    def test_matches_bce_on_sigmoid_per_image(self):
        torch.manual_seed(0)
        logits, x = torch.randn(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
        mu, logvar = torch.randn(3, 4), torch.randn(3, 4)
        recon, _ = vae_loss(logits, x, mu, logvar)
        expected = nn.functional.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
        torch.testing.assert_close(recon, expected, rtol=1e-4, atol=1e-2)

    @pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: logits where sigmoid saturates in fp32
    @pytest.mark.parametrize("channels_last", [False, True])
    def test_same_values_and_gradient_as_torchs_bce(self, scale, channels_last):
        # vae_loss's own BCE (a faster forward on CPUs) must train exactly as torch's did: the
        # gradient equal to the bit, the values to fp32 rounding.
        torch.manual_seed(0)
        logits0 = torch.randn(8, 3, 32, 32) * scale
        if channels_last:
            logits0 = logits0.contiguous(memory_format=torch.channels_last)
        x, weights = torch.rand(8, 3, 32, 32), torch.randn(8)
        mu, logvar = torch.zeros(8, 4), torch.zeros(8, 4)
        ours = logits0.clone().requires_grad_()
        theirs = logits0.clone().requires_grad_()
        recon, _ = vae_loss(ours, x, mu, logvar)
        expected = nn.functional.binary_cross_entropy_with_logits(theirs, x, reduction="none").flatten(1).sum(1)
        (recon * weights).sum().backward()
        (expected * weights).sum().backward()
        assert torch.equal(ours.grad, theirs.grad)
        torch.testing.assert_close(recon, expected.detach(), rtol=1e-6, atol=0)
        assert torch.isfinite(recon).all()


class TestTransposedConvolution:
    """The decoder's ConvTranspose2d takes its own bias gradient in bf16 on CPUs (oneDNN's is
    slow there); training must take the same steps as with nn.ConvTranspose2d."""

    @staticmethod
    def _step(model: VAE, x: torch.Tensor, eps: torch.Tensor, bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, mu, logvar = model(x, eps)
        recon, kl = vae_loss(logits, x, mu, logvar)
        (recon + kl).mean().backward()
        return logits, {name: p.grad.clone() for name, p in model.named_parameters()}

    @pytest.mark.parametrize("base", [8, 32])
    def test_bf16_gradients_are_torchs(self, base, monkeypatch):
        torch.manual_seed(0)
        model = VAE(ModelConfig(latent_dim=8, base_channels=base)).to(memory_format=torch.channels_last)
        x = torch.rand(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        eps = torch.randn(32, 8)
        logits, ours = self._step(model, x, eps, bf16=True)
        assert logits.grad_fn.name() == "_BF16TransposedConvBackward"  # the path under test was taken
        monkeypatch.setattr(ConvTranspose2d, "forward", nn.ConvTranspose2d.forward)
        torch_logits, theirs = self._step(model, x, eps, bf16=True)
        assert torch.equal(logits, torch_logits)
        for name, grad in theirs.items():
            if name.startswith("decoder.") and name.endswith(".bias"):
                # the same fp32 sum in another order, rounded to bf16: at most a unit in its last place apart
                torch.testing.assert_close(ours[name], grad, rtol=2**-7, atol=1e-6 * grad.abs().max().item())
            else:
                assert torch.equal(ours[name], grad), name

    def test_fp32_stays_torchs(self):
        # fp32 losses are reproduced to the digit across machines: its bias gradient stays oneDNN's
        model = VAE(ModelConfig(latent_dim=8, base_channels=8))
        logits, _ = self._step(model, torch.rand(4, 3, 32, 32), torch.randn(4, 8), bf16=False)
        assert logits.grad_fn.name() == "ConvolutionBackward0"

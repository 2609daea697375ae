import math

import pytest
import torch
from torch import nn

import vae_search.model as model_module
from vae_search.model import (
    VAE,
    ConvTranspose2d,
    ModelConfig,
    count_parameters,
    parameter_count,
    subpixel_conv_transpose2d,
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
    """The decoder's ConvTranspose2d in bf16 on CPUs takes its own bias gradient (oneDNN's is
    slow there) and, in the image layer, its own forward (a 3x3 convolution and a
    pixel_shuffle); training must take the steps nn.ConvTranspose2d's would, to bf16 rounding."""

    @staticmethod
    def _step(model: VAE, x: torch.Tensor, eps: torch.Tensor, bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, mu, logvar = model(x, eps)
        recon, kl = vae_loss(logits, x, mu, logvar)
        (recon + kl).mean().backward()
        return logits, {name: p.grad.clone() for name, p in model.named_parameters()}

    @pytest.mark.parametrize("c_in, c_out, size, bias", [(32, 3, 16, True), (5, 7, 3, False), (1, 1, 1, True)])
    def test_subpixel_forward_is_the_transposed_convolution(self, c_in, c_out, size, bias):
        # in float64 the sum's order does not show: the same products, so the same values
        torch.manual_seed(0)
        x = torch.randn(4, c_in, size, size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(c_in, c_out, 4, 4, dtype=torch.float64)
        b = torch.randn(c_out, dtype=torch.float64) if bias else None
        expected = nn.functional.conv_transpose2d(x, weight, b, stride=2, padding=1)
        ours = subpixel_conv_transpose2d(x, weight, b)
        assert ours.shape == expected.shape == (4, c_out, 2 * size, 2 * size)
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)

    def test_only_the_image_layer_takes_the_subpixel_forward(self):
        layers = [m for m in VAE(ModelConfig(8, 16)).modules() if isinstance(m, ConvTranspose2d)]
        assert [(m.out_channels, m.subpixel) for m in layers] == [(32, False), (16, False), (3, True)]

    # torch's native bf16 kernels (oneDNN on AVX512_BF16/AMX) sum in fp32 and round once, as
    # ours do; where bf16 is emulated (AVX2) torch's reference kernels round partial sums too,
    # so "torch's bits" there are another thing, and `auto` never trains in bf16 on such cores.
    NATIVE_BF16 = pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(),
                                     reason="compares with torch's native bf16 kernels; this CPU emulates bf16")

    @NATIVE_BF16
    def test_bf16_image_layer_rounds_as_torchs_does_but_in_rare_ulps(self):
        torch.manual_seed(0)
        x = torch.randn(64, 32, 16, 16).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        weight, b = (torch.randn(32, 3, 4, 4) / 16).to(torch.bfloat16), torch.randn(3).to(torch.bfloat16)
        expected = nn.functional.conv_transpose2d(x, weight, b, stride=2, padding=1).float()
        ours = subpixel_conv_transpose2d(x, weight, b).float()
        # both sum the products in fp32 and round once, in another order: at most a unit in the
        # last place apart (2**-7 relative), and rarely that (measured: 5e-5 of the values)
        torch.testing.assert_close(ours, expected, rtol=2**-7, atol=1e-3)
        assert (ours != expected).float().mean() < 1e-3

    @NATIVE_BF16
    @pytest.mark.parametrize("base", [8, 32])
    def test_bf16_gradients_are_torchs(self, base, monkeypatch):
        torch.manual_seed(0)
        model = VAE(ModelConfig(latent_dim=8, base_channels=base)).to(memory_format=torch.channels_last)
        x = torch.rand(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        eps = torch.randn(32, 8)
        logits, ours = self._step(model, x, eps, bf16=True)
        assert logits.grad_fn.name() == "_BF16TransposedConvBackward"  # the path under test was taken
        # With the image layer's forward as oneDNN's: the same logits, and the same gradients but
        # for the bias gradients, the same fp32 sums in another order rounded to bf16.
        as_onednn = lambda x, w, b: nn.functional.conv_transpose2d(x, w, b, stride=2, padding=1)  # noqa: E731
        monkeypatch.setattr(model_module, "subpixel_conv_transpose2d", as_onednn)
        bias_only_logits, bias_only = self._step(model, x, eps, bf16=True)
        monkeypatch.setattr(ConvTranspose2d, "forward", nn.ConvTranspose2d.forward)
        torch_logits, theirs = self._step(model, x, eps, bf16=True)
        assert torch.equal(bias_only_logits, torch_logits)
        for name, grad in theirs.items():
            if name.startswith("decoder.") and name.endswith(".bias"):
                # at most a unit in the last place apart
                torch.testing.assert_close(bias_only[name], grad, rtol=2**-7, atol=1e-6 * grad.abs().max().item())
            else:
                assert torch.equal(bias_only[name], grad), name
        # The sub-pixel forward rounds a few logits to the other neighbour; no gradient moves by
        # more than a unit in the last place of its largest value.
        torch.testing.assert_close(logits, torch_logits, rtol=2**-7, atol=0)
        for name, grad in theirs.items():
            torch.testing.assert_close(ours[name], grad, rtol=0, atol=2**-7 * grad.abs().max().item())

    def test_fp32_stays_torchs(self):
        # fp32 losses are reproduced to the digit across machines: its bias gradient stays oneDNN's
        model = VAE(ModelConfig(latent_dim=8, base_channels=8))
        logits, _ = self._step(model, torch.rand(4, 3, 32, 32), torch.randn(4, 8), bf16=False)
        assert logits.grad_fn.name() == "ConvolutionBackward0"

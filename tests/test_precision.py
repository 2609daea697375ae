"""bf16 autocast: what runs in bf16, what stays fp32, how auto decides, and the study's budget."""

import optuna
import pytest
import torch

from tests.conftest import SMALL as SMALL_PRESET
from tests.conftest import TINY, one_line_error
from vae_search import train as train_module
from vae_search.data import load_cifar10
from vae_search.errors import UsageError
from vae_search.model import VAE, ModelConfig
from vae_search.train import TrainConfig, native_bf16, resolve_precision, train

SMALL = ModelConfig(latent_dim=4, base_channels=8)


@pytest.fixture(scope="module")
def tiny(batches_dir):
    return load_cifar10(batches_dir).limit(128, 32)


def test_bf16_runs_convolutions_in_bf16_and_the_loss_in_fp32():
    """Hooks record the dtypes the step actually uses."""
    torch.manual_seed(0)
    model = VAE(SMALL).to(memory_format=torch.channels_last)
    seen = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mu_logvar = {}
    real_loss = train_module.vae_loss

    def spy(logits, x, mu, logvar):
        mu_logvar["mu"], mu_logvar["logvar"] = mu.dtype, logvar.dtype
        return real_loss(logits, x, mu, logvar)

    train_module.vae_loss = spy
    try:
        loss = train_module._step_loss(model, x, torch.randn(4, 4), torch.tensor(1.0), True)
    finally:
        train_module.vae_loss = real_loss
    assert set(seen.values()) == {torch.bfloat16}, seen  # every conv and linear
    assert loss.dtype == torch.float32
    assert mu_logvar == {"mu": torch.float32, "logvar": torch.float32}  # reparameterisation in fp32
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


def test_bf16_training_keeps_weights_and_adam_in_fp32_and_the_loss_close(tiny):
    fp32 = train(SMALL, TrainConfig(epochs=2, batch_size=32, seed=1), tiny, compile=False, precision="fp32")
    bf16 = train(SMALL, TrainConfig(epochs=2, batch_size=32, seed=1), tiny, compile=False, precision="bf16")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    assert all(v.dtype == torch.float32 for v in bf16.state_dict.values())
    assert bf16.metrics["val_loss"] == pytest.approx(fp32.metrics["val_loss"], rel=0.02)
    assert bf16.metrics["val_loss"] != fp32.metrics["val_loss"]  # it did run in another precision


def test_auto_follows_torchs_own_check(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UsageError, match="unknown precision"):
        resolve_precision("fp8", cpu)


def test_precision_is_recorded_and_a_study_does_not_mix_them(tmp_path, batches_dir, cli):
    storage = f"sqlite:///{tmp_path}/s.db"
    common = ("--epochs", 1, *SMALL_PRESET, "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir",
              tmp_path / "a")
    rc, _, err = cli("grid", "--precision", "bf16", *common)
    assert rc == 0, err
    study = optuna.load_study(study_name="small", storage=storage)
    assert study.user_attrs["budget"]["precision"] == "bf16"
    assert {t.user_attrs["precision"] for t in study.trials} == {"bf16"}
    rc, _, err = cli("grid", "--precision", "fp32", *common)
    assert rc == 2 and "precision is bf16 there, fp32 here" in one_line_error(err)


def test_grid_help_says_why_it_defaults_to_auto(cli):
    import re

    rc, out, _ = cli("grid", "--help")
    text = re.sub(r"[│\s]+", " ", out)  # the help as prose, without Rich's panel borders
    assert rc == 0 and "grid defaults to auto" in text and "0.06% of fp32" in text


def test_grid_defaults_to_auto(tmp_path, batches_dir, cli, monkeypatch):
    """auto is bf16 where the CPU does it natively, fp32 elsewhere, for the grid too."""
    from vae_search import train

    monkeypatch.setattr(train, "native_bf16", lambda device: True)
    storage = f"sqlite:///{tmp_path}/s.db"
    assert cli("grid", "--epochs", 1, *SMALL_PRESET, "--data-dir", batches_dir, "--limit-train", 64, "--limit-val", 16,
               "--batch-size", 64, "--compile", "off", "--storage", storage, "--artifact-dir", tmp_path / "art")[0] == 0
    import optuna

    trials = optuna.load_study(study_name="small", storage=storage).trials
    assert {t.user_attrs["precision"] for t in trials} == {"bf16"}


def test_auto_keeps_the_studys_precision_on_another_machine(tmp_path, batches_dir, cli, monkeypatch):
    """A search started on AVX2 cores (fp32) resumes on AVX512_BF16 cores with the same
    command: auto takes the study's recorded precision instead of being refused."""
    from vae_search import train

    storage = f"sqlite:///{tmp_path}/s.db"
    common = ("--epochs", 1, *SMALL_PRESET, "--data-dir", batches_dir, *TINY, "--storage", storage, "--artifact-dir",
              tmp_path / "a")
    monkeypatch.setattr(train, "native_bf16", lambda device: False)
    assert cli("grid", *common)[0] == 0  # auto on "AVX2": fp32
    monkeypatch.setattr(train, "native_bf16", lambda device: True)
    rc, _, err = cli("grid", "--seeds", 2, *common)  # auto on "AVX512_BF16" would be bf16
    assert rc == 0, err
    assert "runs in fp32 (its budget); --precision auto keeps it (this machine alone would use bf16)" in err
    trials = optuna.load_study(study_name="small", storage=storage).trials
    assert len(trials) == 8 and {t.user_attrs["precision"] for t in trials} == {"fp32"}
    rc, _, err = cli("grid", "--seeds", 2, "--precision", "bf16", *common)  # asked for explicitly: still refused
    assert rc == 2 and "precision is fp32 there, bf16 here" in one_line_error(err)


@pytest.mark.parametrize("bf16", [True, False], ids=["native-bf16", "no-bf16"])
def test_version_says_what_auto_means_on_this_machine(cli, monkeypatch, bf16):
    """`--version`: the versions a bug report needs, and auto's choices by the commands' own rules."""
    from importlib.metadata import version

    from vae_search import train, workers
    from vae_search.train import pick_device

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(train, "native_bf16", lambda device: bf16)
    monkeypatch.setattr(workers, "cores", lambda: 7)
    rc, out, err = cli("--version")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"vae-search {version('vae-search')}"
    assert f"optuna {version('optuna')}" in lines[1] and f"torch {version('torch')}" in lines[1]
    assert lines[2].startswith(f"CPU: 7 cores, AVX512, native bf16 {'yes' if bf16 else 'no'}")
    dev = pick_device("auto")
    assert f"--device {dev.type}, --precision {'bf16' if bf16 else 'fp32'}" in lines[3]
    assert f"--jobs {workers.default_jobs(dev)}" in lines[3]
    assert ("--compile on" in lines[3]) == (dev.type == "cuda")  # measured to pay there only, AVX-512 (patched above) or not

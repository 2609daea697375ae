"""The GPU path: a step trains there what it trains on the CPU, eager or compiled, and a short
compiled bf16 training lands where the CPU's does; bf16 autocast keeps the loss, KL and Adam in
fp32; the data goes to the GPU once per process; `--compile auto` compiles on CUDA; workers share one GPU or spread over
several; an out-of-memory trial fails with its reason and the study goes on.

Marked `cuda` and skipped without a GPU; `python benchmarks/gpu.py` runs them on a GPU machine
(`pytest -m cuda` collects them anywhere)."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.conftest import TINY

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu.py on one)")]
CUDA = torch.device("cuda")


def _data(n: int = 256):
    from vae_search.data import Cifar10

    x = torch.randint(0, 256, (n + 64, 3, 32, 32), dtype=torch.uint8)
    return Cifar10(x[:n], x[n:], "random")


def test_bf16_keeps_loss_kl_and_adam_in_fp32():
    from vae_search.model import VAE, ModelConfig, vae_loss
    from vae_search.train import _adam_kwargs, _autocast, _step_loss

    model = VAE(ModelConfig(16, 32)).to(CUDA).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **_adam_kwargs(CUDA))
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, device=CUDA)
    eps = torch.randn(32, 16, device=CUDA)
    loss = _step_loss(model, x, eps, torch.tensor(1.0, device=CUDA), bf16=True)
    assert loss.dtype == torch.float32
    with _autocast(CUDA, True):
        logits, mu, logvar = model(x.float() / 255, eps)
    assert logits.dtype == torch.bfloat16  # the convolutions did run in bf16
    recon, kl = vae_loss(logits, x.float() / 255, mu, logvar)
    assert recon.dtype == torch.float32 and kl.dtype == torch.float32
    loss.backward()
    opt.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_a_step_on_cuda_has_the_cpus_gradient(compiled, bf16):
    """The step trains on the GPU what it trains on the CPU (eager fp32, the reference). On commit
    5c83e36 with torch 2.11, the compiled step's gradient was 1.0 away from it (cosine 0.007) and
    every compiled trial learned from the KL alone (benchmarks/results/gpu/h100-check-4/)."""
    from tests.conftest import step_gradient
    from vae_search.model import VAE, ModelConfig

    config = ModelConfig(8, 16)
    torch.manual_seed(0)
    state = VAE(config).state_dict()
    x, eps = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8), torch.randn(128, 8)
    cpu_loss, cpu = step_gradient(state, config, x, eps, "cpu", compiled=False, bf16=False)
    loss, grad = step_gradient(state, config, x, eps, "cuda", compiled=compiled, bf16=bf16)
    assert loss == pytest.approx(cpu_loss, rel=1e-4)
    # the diagnostic's batch on an H100: 0.0034 in bf16, 0.0009 in fp32 (TF32 convolutions); broken: 1.0
    assert ((grad - cpu).norm() / cpu.norm()).item() < (0.02 if bf16 else 0.005)


def test_a_compiled_bf16_training_on_cuda_learns_what_the_cpu_does():
    """End to end, as `grid` and `optimize` train on a GPU (compiled, bf16): the validation loss of a
    short training within issue 9's 0.3% of the CPU's eager fp32 one, and the latent in use."""
    from tests.samples import images
    from vae_search.data import Cifar10
    from vae_search.model import ModelConfig
    from vae_search.train import TrainConfig, train

    def chw(n, seed):
        return torch.from_numpy(images(n, seed)).permute(0, 3, 1, 2).contiguous()

    data, config = Cifar10(chw(2048, 0), chw(512, 1), "synthetic"), TrainConfig(epochs=2, batch_size=128)
    cpu = train(ModelConfig(8, 16), config, data, device="cpu", compile=False, precision="fp32")
    gpu = train(ModelConfig(8, 16), config, data, device=CUDA, compile=True, precision="bf16")
    assert gpu.compiled and gpu.metrics["kl"] > 1
    assert gpu.metrics["val_loss"] == pytest.approx(cpu.metrics["val_loss"], rel=3e-3)


def test_the_data_moves_to_the_gpu_once_per_process():
    from vae_search.model import ModelConfig
    from vae_search.train import TrainConfig, on_device, train

    data = _data()
    first = on_device(data.train, CUDA)
    train(ModelConfig(4, 16), TrainConfig(epochs=1, batch_size=64), data, device=CUDA, compile=False)
    train(ModelConfig(8, 16), TrainConfig(epochs=1, batch_size=64), data, device=CUDA, compile=False)
    assert on_device(data.train, CUDA).data_ptr() == first.data_ptr()  # the same copy, not a new one per trial


def test_compile_auto_compiles_on_cuda(monkeypatch):
    from vae_search import train as tr
    from vae_search.model import ModelConfig

    monkeypatch.setattr(tr, "COMPILE_MIN_IMAGES", 1)
    result = tr.train(ModelConfig(4, 16), tr.TrainConfig(epochs=1, batch_size=64), _data(), device=CUDA, compile="auto")
    assert result.compiled


def test_two_workers_share_one_gpu(tmp_path, batches_dir):
    from tests.conftest import worker

    storage = f"sqlite:///{tmp_path}/s.db"
    proc = worker("grid", "--jobs", 2, "--device", "cuda", "--epochs", 1, "--data-dir", batches_dir, *TINY,
                  "--storage", storage, "--artifact-dir", tmp_path / "art", env={"VAE_SEARCH_CACHE": str(tmp_path / "c")})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    trials = optuna.load_study(study_name="b1", storage=storage).get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4 and {t.user_attrs["device"] for t in trials} == {"cuda"}
    assert {t.user_attrs["jobs"] for t in trials} == {2}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_workers_spread_over_gpus(tmp_path, batches_dir):
    from tests.conftest import worker

    n = torch.cuda.device_count()
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = worker("grid", "--jobs", n, "--device", "cuda", "--epochs", 1, "--data-dir", batches_dir, *TINY,
                  "--storage", storage, "--artifact-dir", tmp_path / "art", env={"VAE_SEARCH_CACHE": str(tmp_path / "c")})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    names = {t.user_attrs["device_name"] for t in optuna.load_study(study_name="b1", storage=storage).trials}
    assert names  # each worker saw one GPU (CUDA_VISIBLE_DEVICES = i mod n); the run completed on all


def test_out_of_memory_fails_the_trial_and_the_study_goes_on(tmp_path, batches_dir, cli):
    # 40 MB, whatever the card's size: a batch of 512 cannot fit
    torch.cuda.set_per_process_memory_fraction(40 * 2**20 / torch.cuda.get_device_properties(0).total_memory)
    try:
        storage = f"sqlite:///{tmp_path}/s.db"
        rc, _, err = cli("optimize", "--trials", 3, "--device", "cuda", "--epochs", 1, "--batch-size", 512,
                         "--data-dir", batches_dir, "--compile", "off", "--storage", storage,
                         "--artifact-dir", tmp_path / "art")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    trials = optuna.load_study(study_name="search", storage=storage).trials
    oom = [t for t in trials if t.state == TrialState.FAIL and "out of memory" in t.user_attrs.get("fail_reason", "")]
    assert len(oom) >= 2, [t.user_attrs.get("fail_reason") for t in trials]  # the loop went on after the first
    assert "Traceback" not in err

import math

import pytest
import torch

from vae_search.data import fixed_subset, load_cifar10
from vae_search.errors import UsageError
from vae_search.model import VAE, ModelConfig
from vae_search.train import NonFiniteLoss, TrainConfig, evaluate, pick_device, train

SMALL = ModelConfig(latent_dim=4, base_channels=8)


@pytest.fixture(scope="module")
def tiny(batches_dir):
    return load_cifar10(batches_dir).limit(128, 32)


def run(data, seed=0, epochs=1, compile=False, **kw):
    return train(SMALL, TrainConfig(epochs=epochs, batch_size=32, seed=seed, **kw), data, compile=compile)


def test_same_seed_same_numbers(tiny):
    a, b = run(tiny, seed=3, epochs=2), run(tiny, seed=3, epochs=2)
    assert a.metrics["val_loss"] == b.metrics["val_loss"]  # to the last digit, on CPU
    assert a.history == [dict(h, time_s=a.history[i]["time_s"]) for i, h in enumerate(b.history)]
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_other_seed_other_numbers(tiny):
    assert run(tiny, seed=0).metrics["val_loss"] != run(tiny, seed=1).metrics["val_loss"]


def test_metrics_and_history(tiny):
    r = run(tiny, epochs=2, beta=2.0)
    assert [h["epoch"] for h in r.history] == [1, 2]
    m = r.metrics
    assert m["val_loss"] == pytest.approx(m["recon_loss"] + 2.0 * m["kl"])
    assert m["neg_elbo"] == pytest.approx(m["recon_loss"] + m["kl"])
    assert m["time_s"] > 0 and math.isfinite(m["train_loss"])
    assert r.params == sum(v.numel() for k, v in r.state_dict.items())


def test_the_final_model_is_measured_on_as_many_training_images_as_it_validates_on(tiny):
    r = run(tiny, epochs=2, beta=2.0)
    model = VAE(SMALL).to(memory_format=torch.channels_last)
    model.load_state_dict(r.state_dict)
    cpu = torch.device("cpu")
    # the fixed seeded subset, not the first images (an ImageFolder's are sorted by class)
    fit = evaluate(model, fixed_subset(tiny.train, len(tiny.test)), 2.0, seed=1, device=cpu)  # seed + 1, as validation
    assert r.metrics["train_eval_loss"] == pytest.approx(fit["val_loss"], rel=1e-6)
    first = evaluate(model, tiny.train[: len(tiny.test)], 2.0, seed=1, device=cpu)
    assert r.metrics["train_eval_loss"] != pytest.approx(first["val_loss"], rel=1e-6)
    assert r.metrics["train_eval_loss"] != r.metrics["val_loss"]
    assert all("train_eval_loss" not in h for h in r.history)  # the final model only, not every epoch


def test_training_lowers_the_loss(tiny):
    one, five = run(tiny, epochs=1), run(tiny, epochs=5)
    assert five.metrics["val_loss"] < one.metrics["val_loss"]


def test_evaluate_changes_nothing(tiny):
    torch.manual_seed(0)
    model = VAE(SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = evaluate(model, tiny.test, 1.0, seed=5, device=torch.device("cpu"))
    b = evaluate(model, tiny.test, 1.0, seed=5, device=torch.device("cpu"))
    assert a == b
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_on_epoch_sees_each_epoch_and_can_stop(tiny):
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(m):
        seen.append(m["epoch"])
        if m["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(SMALL, TrainConfig(epochs=4, batch_size=32), tiny, compile=False, on_epoch=on_epoch)
    assert seen == [1, 2]


def test_non_finite_loss_raises(tiny, monkeypatch):
    import vae_search.train as train_module

    real = train_module._step_loss
    monkeypatch.setattr(train_module, "_step_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(NonFiniteLoss, match="nan"):
        run(tiny)


def test_compiled_step_gives_the_eager_loss(tiny):
    eager = run(tiny, seed=2, compile=False)
    compiled = run(tiny, seed=2, compile=True)
    assert compiled.compiled and not eager.compiled
    assert compiled.metrics["train_loss"] == pytest.approx(eager.metrics["train_loss"], rel=1e-3)
    assert compiled.metrics["val_loss"] == pytest.approx(eager.metrics["val_loss"], rel=1e-3)


def test_compiled_step_gives_the_eager_gradient():
    """What a compiled step trains is what the eager one does. With torch 2.11 (pytorch/pytorch#180642)
    a compiled autograd.Function whose forward works in place sent its gradient to the wrong output:
    our BCE's did, so compiled trainings learned from the KL alone."""
    from tests.conftest import step_gradient

    torch.manual_seed(0)
    state = VAE(SMALL).state_dict()
    x, eps = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8), torch.randn(32, SMALL.latent_dim)
    eager_loss, eager = step_gradient(state, SMALL, x, eps, "cpu", compiled=False, bf16=False)
    compiled_loss, compiled = step_gradient(state, SMALL, x, eps, "cpu", compiled=True, bf16=False)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert ((compiled - eager).norm() / eager.norm()).item() < 1e-3  # the broken one was 1.0 away


@pytest.mark.parametrize("capability", ["AVX512", "AVX2"])
def test_compile_auto_follows_the_measurements(monkeypatch, capability):
    """`--compile auto` compiles where it was measured to pay (docs/performance.md): CUDA, for
    a run long enough; on CPUs, AVX-512 ones too, it did not pay end to end."""
    from vae_search.train import COMPILE_MIN_IMAGES, should_compile

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cpu, cuda, mps, full = torch.device("cpu"), torch.device("cuda"), torch.device("mps"), 500_000
    assert not should_compile("auto", cpu, full) and should_compile("auto", cuda, full)
    assert not should_compile("auto", cuda, COMPILE_MIN_IMAGES - 1)  # too short to pay
    assert should_compile(True, cpu, 1) and not should_compile(False, cuda, full)  # on/off as asked
    assert not should_compile(True, mps, full)


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch warns only where there is no GPU")
def test_compiling_on_a_cpu_with_a_cuda_toolkit_prints_no_cuda_warning(tmp_path, monkeypatch):
    """Inductor looks for CUDA while it builds the CPU step; where a CUDA toolkit is installed
    without a GPU, torch logs "No CUDA runtime is found" once per process, and every `--jobs`
    worker printed it in front of a training that never uses CUDA."""
    import logging

    from torch.utils import cpp_extension

    from vae_search import train as train_module

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.NOTSET)  # as a fresh process has it (setLevel also clears the logger's cache)
    monkeypatch.setattr(train_module, "_compiled_step", None)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))  # a toolkit here (the machines of this project have nvcc)
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    log.addHandler(handler)
    try:
        cpp_extension._find_cuda_home()  # the lookup inductor makes (private torch API; the test's only use)
        assert any("No CUDA runtime" in m for m in said), said  # the set-up reproduces the warning
        said.clear()
        train_module._get_step(True)
        cpp_extension._find_cuda_home()
        assert said == []
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def test_device_choice(monkeypatch):
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(UsageError, match="no CUDA device"):
        pick_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"

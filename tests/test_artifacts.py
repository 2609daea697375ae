"""A trial's checkpoint round-trips: what save_trial_artifacts writes, load_model reads back
as the same network (weights, architecture) giving the same outputs."""

from __future__ import annotations

import optuna
import torch

from vae_search.artifacts import WEIGHTS_ATTR, artifact_store, load_checkpoint, load_model, save_trial_artifacts
from vae_search.data import Cifar10
from vae_search.model import ModelConfig
from vae_search.train import TrainConfig, train


def test_checkpoint_round_trip(tmp_path):
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    data = Cifar10(x[:64], x[64:], "random")
    model_config, train_config = ModelConfig(6, 16), TrainConfig(epochs=1, batch_size=32, lr=1e-3, beta=0.5, seed=3)
    result = train(model_config, train_config, data, compile=False)
    store = artifact_store(tmp_path / "art")
    study = optuna.create_study()
    trial = study.ask()
    ids = save_trial_artifacts(trial, store, model_config, train_config, result, data.showcase())
    frozen = study.tell(trial, result.metrics["neg_elbo"])
    assert frozen.user_attrs[WEIGHTS_ATTR] == ids[WEIGHTS_ATTR]

    ckpt = load_checkpoint(store, frozen)
    assert ckpt["model_config"] == {"latent_dim": 6, "base_channels": 16}
    assert ckpt["train_config"]["beta"] == 0.5 and ckpt["train_config"]["seed"] == 3
    assert ckpt["metrics"]["neg_elbo"] == result.metrics["neg_elbo"]
    model = load_model(store, frozen)
    assert model.config == model_config and not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, result.state_dict[name]), name
    eps = torch.zeros(4, 6)
    with torch.no_grad():
        logits, mu, _ = model(x[:4].float() / 255, eps)
    assert logits.shape == (4, 3, 32, 32) and mu.shape == (4, 6)

"""Tiny CIFAR-10 copies in the real on-disk formats and a synthetic B.1 grid study, made fresh
(no network, no shared data). Free of side effects, unlike conftest.py (which sets
VAE_SEARCH_JOBS=1 for the tests' in-process commands): the benchmarks' smoke modes import
these too, and the commands they start keep the default --jobs that a real run gets."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def images(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8 with some structure (smooth gradients + noise), so a VAE has
    something to learn and reconstructions differ from noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    base = np.stack([xx, yy, 1 - xx], axis=-1)  # (32, 32, 3)
    scale = rng.uniform(0.3, 1.0, size=(n, 1, 1, 3))
    noise = rng.normal(0, 0.08, size=(n, 32, 32, 3))
    return (np.clip(base * scale + noise, 0, 1) * 255).astype(np.uint8)


def make_batches(root: Path, n_train: int = 250, n_test: int = 60) -> Path:
    """A `cifar-10-batches-py` folder in torchvision's pickle format: five training batches,
    a test batch and batches.meta. The originals are Python 2 pickles of dicts with str keys,
    which Python 3 reads (encoding="latin1", as torchvision does) as str keys; protocol 2
    pickles of str keys are read the same way."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = images(n_train, 1)
    test = images(n_test, 2)

    def dump(name: str, rows: np.ndarray) -> None:
        entry = {
            "batch_label": name,
            "labels": [i % 10 for i in range(len(rows))],
            "data": rows.transpose(0, 3, 1, 2).reshape(len(rows), -1),  # (N, 3072), CHW rows
            "filenames": [f"{i}.png" for i in range(len(rows))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    for i, chunk in enumerate(np.array_split(train, 5), start=1):
        dump(f"data_batch_{i}", chunk)
    dump("test_batch", test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072}, f, protocol=2)
    return folder


def make_image_folder(root: Path, n_train: int = 40, n_test: int = 20, fmt: str = "png") -> Path:
    """train/<class>/NNNN.png and test/<class>/NNNN.png, as in the shared JPEG copy."""
    for split, n, seed in (("train", n_train, 3), ("test", n_test, 4)):
        for i, img in enumerate(images(n, seed)):
            d = root / split / CLASSES[i % 10]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.{fmt}")
    return root


def synthetic_grid(storage: str, values: dict[int, list[float]], gaps: dict[int, list[float]] | None = None,
                   first_seed: int = 0):
    """A b1 grid study whose runs have the given val losses per config (one run per value, with
    seeds first_seed, first_seed+1, ...), and where `gaps` gives them, a final model's loss on
    training images that much lower."""
    import optuna

    from vae_search.definitions import load_preset

    preset = load_preset("b1")
    study = optuna.create_study(study_name="b1", storage=storage)
    study.set_user_attr("kind", "grid")
    study.set_user_attr("preset", "b1")
    params_count = {1: 285355, 2: 309939, 3: 359107, 4: 1131859}
    for point in preset.points:
        for seed, v in enumerate(values[point.config]):
            attrs = {"val_loss": v, "neg_elbo": v, "recon_loss": v - 20, "kl": 20.0, "train_loss": v - 1, "time_s": 10.0 + seed,
                     "params": params_count[point.config], "epochs": 10, "batch_size": 128, "seed": first_seed + seed,
                     "config": point.config}
            if gaps is not None:
                attrs["train_eval_loss"] = v - gaps[point.config][seed]
            study.add_trial(optuna.trial.create_trial(params=point.params, distributions=preset.distributions(), value=v,
                                                      user_attrs=attrs))
    return study

"""Run by tests/test_benchmarks.py in a process where the report's packages cannot be imported
(not collected by itself: its name is not test_*.py). As on a bare GPU machine, which is sent
the packages that training and a study need: the CUDA tests' fixtures must set up there, and
the training commands they call must run."""

import importlib.util

import optuna

from tests.conftest import TINY


def test_the_cuda_tests_fixtures_and_a_training_command(tmp_path, batches_dir, cli):
    assert importlib.util.find_spec("plotly") is None  # the process blocked it, as the test means
    storage = f"sqlite:///{tmp_path}/s.db"
    rc, _, err = cli("optimize", "--trials", 1, "--device", "cpu", "--epochs", 1, "--data-dir", batches_dir, *TINY,
                     "--storage", storage, "--artifact-dir", tmp_path / "art")
    assert rc == 0, err
    assert len(optuna.load_study(study_name="search", storage=storage).trials) == 1

"""The tests' set-up (one process per command, a cache of their own, no browser outside its
tier), fixtures of tiny CIFAR-10 copies (tests/samples.py makes them), a CLI runner that
returns (exit code, stdout, stderr), workers and a PostgreSQL server."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest

from tests.samples import make_batches, make_image_folder

# Tests call the CLI in-process (and patch it) and start their own workers: one process per
# command unless a test passes --jobs. Set at import, so module-scoped fixtures see it too.
os.environ["VAE_SEARCH_JOBS"] = "1"
# pytest-xdist runs the tests in one process per core (pyproject's `-n auto`): each process,
# and every command a test starts, takes its share of the cores, since more OpenMP threads than
# cores make every test slower. A command's --jobs workers still get the threads it plans.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


@pytest.fixture(scope="session", autouse=True)
def _no_user_cache(tmp_path_factory):
    """Module- and session-scoped fixtures run the CLI before any test's own `_isolated`: they
    cache in the session's temporary folder too, never in the user's ~/.cache/vae-search."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAE_SEARCH_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        for name in ("VAE_SEARCH_DATA", "VAE_SEARCH_STORAGE", "VAE_SEARCH_ARTIFACTS"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Each test caches decoded data in its own folder (`_no_user_cache` keeps VAE_SEARCH_DATA
    and a study database out of the environment for the whole session), and trains in one
    process unless it asks for --jobs (the tests call the CLI in-process and patch it)."""
    monkeypatch.setenv("VAE_SEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    # torch is imported here, not at the top: a process a test spawns (multiprocessing imports
    # the test module, and so this file) then starts without it
    import torch

    torch.set_num_threads(min(2, THREADS))


@pytest.fixture(autouse=True)
def _chromium_only_in_its_tier(request, monkeypatch):
    """kaleido starts a headless Chromium for the report's PNG figures, seconds per report:
    outside the `chromium` tier, `report` takes the path of a machine without a browser (a
    note; report.html still has every figure), and a test that needs the PNGs is marked."""
    # Without plotly (a bare GPU machine given only what the CUDA tests need) there is no report
    # to keep from the browser, and a string target would fail every test at setup.
    if request.node.get_closest_marker("chromium") is None and importlib.util.find_spec("plotly"):
        def no_browser(*args, **kwargs):
            raise RuntimeError("no Chromium outside the tests' chromium tier")

        monkeypatch.setattr("plotly.io.write_images", no_browser)


@pytest.fixture
def offline(monkeypatch):
    """No internet, anywhere the tests run: the download data._download calls (torchvision's,
    imported there at call time) fails as it would offline."""
    from urllib.error import URLError

    from torchvision.datasets import utils

    def no_route(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(utils, "download_and_extract_archive", no_route)


def step_gradient(state: dict, config, x_u8, eps, device: str, *, compiled: bool, bf16: bool):
    """The training step's loss and gradient (all parameters, flattened, fp32, on the CPU) for a
    VAE holding `state`, as train() computes them: eager or compiled, fp32 or bf16."""
    import torch

    from vae_search.model import VAE
    from vae_search.train import _get_step, _step_loss

    model = VAE(config).to(device).to(memory_format=torch.channels_last)
    model.load_state_dict(state)
    step = _get_step(True) if compiled else _step_loss
    loss = step(model, x_u8.to(device), eps.to(device), torch.tensor(1.0, device=device), bf16)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten().float().cpu() for p in model.parameters()])


@pytest.fixture(scope="session")
def batches_dir(tmp_path_factory) -> Path:
    """The parent of a generated cifar-10-batches-py (what --data-dir takes)."""
    root = tmp_path_factory.mktemp("batches")
    make_batches(root)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagefolder"))


# Tiny training runs: a fixed subset of the generated data, small batches, no compilation.
TINY = ("--limit-train", "128", "--limit-val", "32", "--batch-size", "64", "--compile", "off")
# b1's shape (four points, one wider) at a fraction of its cost, for the tests of workers,
# signals and faults, where b1's parameter counts are not the point: study "small"
SMALL = ("--preset", str(Path(__file__).resolve().parent / "small.toml"))
SMALL_POINTS = {(4, 8), (8, 8), (16, 8), (8, 16)}


def invoke(*args: object) -> int:
    """Run the CLI in this process and return its exit code."""
    from vae_search.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


@pytest.fixture
def cli(capfd):
    """Run the CLI in this process: cli("grid", "--epochs", "1", ...) -> (rc, out, err)."""

    def run(*args: object) -> tuple[int, str, str]:
        capfd.readouterr()
        rc = invoke(*args)
        out, err = capfd.readouterr()
        return rc, out, err

    return run


def one_line_error(err: str) -> str:
    """The error output must be exactly one line, no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- workers and PostgreSQL

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from tests.pgserver import free_port  # noqa: E402,F401  (tests import it from here)


def worker(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    """`python -m vae_search ARGS` as a separate process (a worker, as a user would start one)."""
    return subprocess.Popen(
        [sys.executable, "-m", "vae_search", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **popen,
    )


def wait_for(predicate, timeout: float = 120, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for this test session (tests/pgserver.py), stopped at the
    end. Skips (with the reason) only where the server binaries are not installed; .ci/run
    installs them."""
    from tests.pgserver import PgServer, Unavailable

    try:
        server = PgServer()
    except Unavailable as e:
        pytest.skip(str(e))
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres_url(pg_server):
    return pg_server.create_database("vae")


@pytest.fixture
def fresh_pg_db(pg_server):
    """A new empty database on the session's server for one test."""
    return pg_server.create_database(f"t{int(time.time() * 1e6)}")


def workers_that_reported(err: str) -> set[str]:
    """The numbers N of the `[worker N]` prefixes on trial results a parent relayed."""
    import re

    return set(re.findall(r"^\[worker (\d+)\] trial \d+ .*: neg_elbo", err, re.M))


def sha256_of(path: Path) -> str:
    """A file's digest: "byte for byte the same" in one comparison."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

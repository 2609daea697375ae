"""vae_search.allocator: a vae-search process keeps its training buffers mapped between steps
(glibc's mallopt, torch's huge-page switch), says so in `--version`, and leaves the allocator
alone where the user asks or tunes it themselves. The speed it buys is measured in
benchmarks/allocator.py, not asserted here; the page faults it removes are."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from vae_search import allocator

ROOT = Path(__file__).resolve().parent.parent
GLIBC_LINUX = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
OWN = ("VAE_SEARCH_ALLOCATOR", "THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

# A process as the console script starts one: tune() before torch is imported, then training
# steps of latent 16 / base 32 in fp32 at batch 128; the minor page faults per step, in steady state.
PROBE = """
import json, os, resource
from vae_search import allocator
state = allocator.tune()
import torch
from vae_search.model import VAE, ModelConfig
from vae_search.train import _adam_kwargs, _step_loss
torch.set_num_threads(1)
torch.manual_seed(0)
model = VAE(ModelConfig(16, 32)).to(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters(), lr=3e-3, **_adam_kwargs(torch.device("cpu")))
x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
def step():
    loss = _step_loss(model, x, torch.randn(128, 16), torch.tensor(1.0))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(5):
    step()
# The fewest faults of three windows of three steps: a step that faults its buffers in does
# so in every window, while a busy machine (the other tests' processes) can add faults to one.
windows = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
faults = min(windows)
print(json.dumps({"state": state, "faults": faults, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in OWN}
    return subprocess.run([sys.executable, *args], env={**clean, **env}, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def _probe(**env: str) -> dict:
    proc = _run(["-c", PROBE], **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC_LINUX, reason="the settings are for Linux with glibc")
def test_training_steps_stop_faulting_their_buffers_in():
    system = _probe(VAE_SEARCH_ALLOCATOR="system")
    tuned = _probe()
    assert system["state"] == "the system's allocator (VAE_SEARCH_ALLOCATOR=system)" and system["thp"] is None
    assert tuned["state"].startswith("glibc keeps freed buffers mapped") and tuned["thp"] == "1"
    # glibc's defaults map the step's larger buffers afresh every step (some 5,000 faults here)
    assert system["faults"] > 500, system
    assert tuned["faults"] < system["faults"] / 10, (tuned, system)


@pytest.mark.skipif(not GLIBC_LINUX, reason="the settings are for Linux with glibc")
def test_a_users_own_malloc_settings_are_left_alone():
    mine = _probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert mine["state"] == "the system's allocator, with your MALLOC_TRIM_THRESHOLD_"
    assert mine["thp"] is None  # huge pages only on top of the kept heap


def test_console_script_tunes_before_torch_loads_and_version_says_so():
    """`python -m vae_search` is how `--jobs` starts its workers, so they get the same settings."""
    tuned = _run(["-m", "vae_search", "--version"])
    system = _run(["-m", "vae_search", "--version"], VAE_SEARCH_ALLOCATOR="system")
    assert tuned.returncode == 0 and system.returncode == 0, tuned.stderr + system.stderr
    assert system.stdout.splitlines()[-1] == "memory: the system's allocator (VAE_SEARCH_ALLOCATOR=system)"
    last = tuned.stdout.splitlines()[-1]
    if not GLIBC_LINUX:
        assert last == "memory: the system's allocator (the settings are for Linux with glibc)"
        return
    assert last.startswith("memory: glibc keeps freed buffers mapped")
    # torch read its switch on import: tune() ran before the CLI imported torch
    assert ("huge pages" in last) == allocator._thp_allowed()


def test_elsewhere_nothing_changes(monkeypatch):
    for key in OWN:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(allocator, "_state", allocator._state)  # restored after the test
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.tune() == "the system's allocator (the settings are for Linux with glibc)"
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ and allocator.state() == allocator.tune()


def test_an_unknown_choice_is_one_line_and_exit_2():
    proc = _run(["-m", "vae_search", "--version"], VAE_SEARCH_ALLOCATOR="tcmalloc")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "vae-search: error: VAE_SEARCH_ALLOCATOR=tcmalloc: unknown; use vae-search (the default) or system (the system's "
        "allocator)"]

"""The benchmarks' smoke modes run and end with their JSON line (the figures themselves belong
in the README, measured on full data, never asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _last_json(*args: str) -> dict:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_profile_step_splits_the_step_into_parts():
    result = _last_json("benchmarks/profile_step.py", "--steps", "2", "--base", "16")
    shares = result["shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert {"convolution forward", "convolution backward"} <= set(shares)
    assert result["step_ms"] > 0

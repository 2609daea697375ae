"""The benchmarks' smoke modes run and end with their JSON line (the figures themselves belong
in the README, measured on full data, never asserted here); the GPU check's verdict on the JSON
it printed on GPU machines, and its CUDA tests' set-up where the report's packages are missing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_search.train import resolve_precision
from vae_search.workers import default_jobs

ROOT = Path(__file__).resolve().parent.parent


def _last_json(*args: str, rc: int = 0) -> dict:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_finite_space_compares_the_repeat_check_with_proposals_of_untried_configurations():
    result = _last_json("benchmarks/finite_space.py", "--seeds", "2", "--trials", "12")
    now, before = result["samplers"]["tpe"]["now"], result["samplers"]["tpe"]["before"]
    assert result["space_size"] == 180 and set(result["samplers"]) == {"tpe", "random"}
    assert now["trained"] == 12 and now["repeats"] == 0 and now["stopped"] == 0
    assert before["trained"] <= 12 and before["repeats"] >= 0


def test_profile_step_splits_the_step_into_parts():
    result = _last_json("benchmarks/profile_step.py", "--steps", "2", "--base", "16")
    shares = result["shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert {"convolution forward", "convolution backward"} <= set(shares)
    assert result["step_ms"] > 0


def test_decode_compares_the_two_image_readers_on_the_same_files():
    result = _last_json("benchmarks/decode.py", "--quick", "--rounds", "1")
    assert result["images"] == 30 and result["same_pixels"] is True and result["rounds"] == 1
    assert result["pil_s"] > 0 and result["torchvision_io_s"] > 0


def test_loss_kernel_times_both_losses_for_every_architecture():
    result = _last_json("benchmarks/loss_kernel.py", "--steps", "1", "--repeats", "1", "--batch", "8")
    rows = result["rows"]
    assert {(r["latent"], r["base"]) for r in rows} == {(4, 32), (8, 32), (16, 32), (8, 64), (16, 16)}
    assert "fp32" in {r["precision"] for r in rows} and len(rows) in (5, 10)  # 10 where bf16 is native
    assert all(r["torch_ms"] > 0 and r["ours_ms"] > 0 for r in rows)


def test_deconv_times_the_three_transposed_convolutions_where_bf16_is_native():
    result = _last_json("benchmarks/deconv.py", "--steps", "1", "--repeats", "1", "--batch", "8")
    assert result["native_bf16"] == (resolve_precision("auto", torch.device("cpu")) == "bf16")
    if not result["native_bf16"]:  # fp32 on this CPU, where nothing changed
        assert result["rows"] == []
        return
    rows = result["rows"]
    assert {(r["latent"], r["base"]) for r in rows} == {(4, 32), (8, 32), (16, 32), (8, 64), (16, 16)}
    assert all(r["torch_ms"] > 0 and r["bias_ms"] > 0 and r["ours_ms"] > 0 for r in rows)
    assert all(r["speedup"] == pytest.approx(r["torch_ms"] / r["ours_ms"], rel=0.01) for r in rows)


@pytest.mark.slow
def test_allocator_benchmark_times_both_allocators_in_fresh_processes():
    result = _last_json("benchmarks/allocator.py", "--quick")
    rows = result["rows"]
    assert {(r["latent"], r["base"]) for r in rows} == {(16, 32)} and "fp32" in {r["precision"] for r in rows}
    assert all(r[f"{side}_{k}"] > 0 for r in rows for side in ("system", "tuned") for k in ("epoch_s", "peak_rss_mb"))
    assert result["allocator"] and result["jobs"] >= 1  # what the tuned side had, in words


@pytest.mark.slow
def test_throughput_measures_the_textbook_loop_also_as_its_author_runs_it():
    """(a) with vae-search's memory settings, as the ratios have it, and once more in a process
    of its own with the system's allocator, alternating; both ratios in the JSON line."""
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--quick"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert min(result[k] for k in ("baseline_img_s", "baseline_system_img_s", "vae_search_img_s", "study_img_s")) > 0
    assert result["study_speedup_vs_system_baseline"] == pytest.approx(result["study_img_s"] / result["baseline_system_img_s"],
                                                                      abs=2e-3)  # of the unrounded rates
    assert "as its author runs it: a process of its own, memory: the system's allocator" in proc.stdout
    assert result["baseline_system_img_s"] != result["baseline_img_s"]  # two measurements, not one copied


@pytest.mark.slow
def test_startup_times_every_variant():
    """One command is enough to run every variant (each is a fresh interpreter, some with torch)."""
    result = _last_json("benchmarks/startup.py", "--rounds", "1", "--warmup", "0", "--commands", "best")
    timed = [f"best{v}_s" for v in ("", "_python_exit", "_with_torch", "_with_scipy_stats")]
    assert all(result[k] > 0 for k in timed) and "show_s" not in result


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_cpu():
    """benchmarks/gpu.py's own code, on the CPU and tiny data: every part runs and reports."""
    result = _last_json("benchmarks/gpu.py", "--device", "cpu", "--quick", "--search", "4")
    assert result["cuda_tests"]["rc"] in (0, 5) and result["cuda_tests"].get("failed", 0) == 0
    assert not result["cuda_tests"].get("error") and not result["cuda_tests"].get("errors") and result["problems"] == []
    grid = result["grid"]
    assert grid["rc"] == 0 and sorted(grid["configs"]) == ["1", "2", "3", "4"]
    assert all(c["cpu_fp32"]["val_loss"] > 1800 and c["time_s"] > 0 for c in grid["configs"].values())
    assert sorted(result["throughput"]) == ["1", "2"]  # --quick: 4 workers only on the real run
    assert all(len(r["img_s_each"]) == int(n) and r["img_s_total"] > 0 for n, r in result["throughput"].items())
    search = result["search"]  # the README's search on tiny data: 4 trials, then the best 2 with a second seed
    assert search["rc"] == 0 and search["optimize_wall_s"] > 0 and search["confirm_wall_s"] > 0, search
    assert sum(n for s, n in search["states"].items() if s in ("COMPLETE", "PRUNED")) == 4 == search["distinct"]
    assert 0 < search["epochs_fraction"] <= 1 and search["best"]["n"] in (1, 2)
    assert search["vs_cpu_search"] == {"shared": 0}  # tiny data: nothing to compare with the full-data CPU search
    # the grid and the search ran with vae-search's default --jobs, as on the GPU: in worker processes where this
    # machine has the cores (a dry run whose commands inherited the tests' VAE_SEARCH_JOBS=1 once ran them in one)
    assert grid["jobs"] == min(4, default_jobs(torch.device("cpu"))) and search["jobs"] == default_jobs(torch.device("cpu"))
    for part in ("optimize", "confirm"):  # where each command's wall time went: start-up, trials, finish
        timing = search[f"{part}_timing"]
        assert timing["trials"] >= 2 and min(timing["startup_s"], timing["trials_wall_s"], timing["finish_s"]) >= 0
        assert timing["startup_s"] + timing["trials_wall_s"] + timing["finish_s"] <= search[f"{part}_wall_s"] + 0.5


def test_gpu_check_fails_on_what_kept_a_part_from_passing():
    """gpu.py's verdict on JSON it printed on GPU machines: the CUDA tests' setup errors of the
    third H100 check, its rerun after the fix, the second check's search cut short, and the
    fourth check, where every compiled trial learned nothing and every part ran to its end."""
    from benchmarks.gpu import problems

    runs = ROOT / "benchmarks" / "results" / "gpu"
    errored = json.loads((runs / "h100-search-3" / "gpu.json").read_text())
    assert problems(errored) == ["cuda_tests: 1 skipped, 5 errors in 3.62s"]  # grid, throughput, search all fine
    assert problems(json.loads((runs / "h100-search-3" / "gpu-tests.json").read_text())) == []
    assert problems(json.loads((runs / "h100-search-2" / "gpu.json").read_text())) == ["search: optimize timed out"]
    untrained = problems(json.loads((runs / "h100-check-4" / "gpu.json").read_text()))
    assert untrained[0] == "grid: config 1's val loss 2131.69 is +11.319% from the CPU's fp32 1914.94 (more than 0.3%)"
    assert len(untrained) == 9 and untrained[-1].startswith("search: 5 points shared with the CPU search differ")
    errored["grid"] = {"rc": 2, "error": ["error: no CIFAR-10 at data/x"], "wall_s": 3.0}
    errored["search"] = {"trials": 50, "rc": 1, "failed": "confirm", "error": ["error: study 'search' not found"]}
    assert problems(errored)[1:] == ["grid: rc 2: error: no CIFAR-10 at data/x", "search: error: study 'search' not found"]


def test_gpu_check_names_the_warnings_of_the_cuda_tests(tmp_path):
    """gpu.py keeps which warnings pytest reported (a GPU check once said "1 warning" and no more),
    read from a real pytest run's summary."""
    from benchmarks.gpu import pytest_warnings

    (tmp_path / "test_warns.py").write_text(
        "import warnings\n"
        "def test_a():\n    warnings.warn('TF32 tensor cores available but not enabled', UserWarning)\n"
        "def test_b():\n    warnings.warn('two\\nlines', DeprecationWarning)\n"
        "def test_c():\n    pass\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", "test_warns.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout
    assert pytest_warnings(run.stdout) == ["test_warns.py::test_a: UserWarning: TF32 tensor cores available but not enabled",
                                           "test_warns.py::test_b: DeprecationWarning: two"]
    assert pytest_warnings("1 passed in 0.01s") == []


# What a bare GPU machine lacks: benchmarks/gpu.py's recipe carries the packages that training and
# a study need, not the report's (plotly, kaleido) nor PostgreSQL's driver.
NOT_ON_THE_GPU_MACHINE = ("plotly", "kaleido", "psycopg")


def test_the_cuda_tests_set_up_without_the_report_packages():
    """The CUDA tests' fixtures (tests/conftest.py) and the training commands they call work in a
    process where the report's packages cannot be imported, as on the GPU machine: a conftest
    that patched plotly for every test once turned all five CUDA tests into setup errors there.
    The probe asks for the OOM test's fixtures and runs a tiny optimize on the CPU."""
    code = ("import sys\n"
            f"for name in {NOT_ON_THE_GPU_MACHINE!r}: sys.modules[name] = None  # import fails, as if not installed\n"
            "import pytest\n"
            "sys.exit(pytest.main(['-o', 'addopts=', '-q', '-p', 'no:cacheprovider', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, "tests/probe_without_report_packages.py"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    assert "1 passed" in proc.stdout


@pytest.mark.slow
def test_gpu_benchmark_reports_a_search_cut_short():
    """--search-timeout strikes mid-search: the part is stopped as a Ctrl-C would stop it (its
    running trial FAIL "interrupted", none left RUNNING) and what the study holds is reported."""
    # 40 s: on 2 AVX2 cores with three busy loops beside it, its two workers' first trial starts
    # 18.5 s in and seven have ended by then (in one process, as before 81e8ca5: 11 s and three;
    # at 25 s, none had)
    result = _last_json("benchmarks/gpu.py", "--device", "cpu", "--quick", "--skip-tests", "--skip-grid", "--skip-throughput",
                        "--search", "300", "--search-timeout", "40", rc=1)  # a part cut short: the check did not pass
    assert result["problems"] == ["search: optimize timed out"] and "throughput" not in result
    search = result["search"]
    assert search["timed_out"] == "optimize" and search["rc"] is None and "confirm_wall_s" not in search, search
    assert "RUNNING" not in search["states"] and 0 < search["distinct"] < 300, search
    assert search["optimize_timing"]["finish_s"] is None and search["optimize_timing"]["trials"] > 0


@pytest.mark.slow
def test_pruning_replay_smoke_run():
    """benchmarks/pruning.py --quick: records a tiny unpruned search, replays every candidate."""
    result = _last_json("benchmarks/pruning.py", "--quick")
    assert result["orders"] >= 3 and result["curves"] == 6
    assert 0 < result["epochs_fraction"] <= 1 and result["best_delta_pct"] >= 0
    assert result["pruner"] in result["candidates"]


@pytest.mark.slow
def test_pruning_live_runs_the_pruner_asked_for(tmp_path, image_folder):
    """benchmarks/pruning.py --live --pruner SPEC: a real search with that pruner, in its own study."""
    import optuna
    from optuna.trial import TrialState

    (tmp_path / "curves.json").write_text(json.dumps({"curves": [{"neg_elbo": [2400.0, 2300.0]}]}))  # "recorded"
    result = _last_json("benchmarks/pruning.py", "--live", "--pruner", "sha:rf=2:until=1", "--seed", "3", "--out", str(tmp_path),
                        "--data-dir", str(image_folder), "--trials", "5", "--epochs", "2",
                        "--train-images", "40", "--val-images", "20")
    assert result["resolved"] == "sha:min=1:rf=2:until=1" and result["study"] == "live-sha:min=1:rf=2:until=1-seed3"
    trials = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{tmp_path}/curves-live.db").get_trials()
    assert result["trials"] == len(trials) == 5 and {t.user_attrs["seed"] for t in trials} == {3}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert result["pruned"] == len(pruned) and all(t.user_attrs["epochs_run"] == 1 for t in pruned)  # rung 1 only
    epochs = sum(t.user_attrs["epochs_run"] for t in trials)
    assert result["epochs_fraction"] == round(epochs / 10, 4)
    assert result["best_delta_pct"] == round(100 * (min(t.value for t in trials if t.state == TrialState.COMPLETE) - 2300) / 2300, 4)

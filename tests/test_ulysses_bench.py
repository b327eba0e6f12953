"""benchmarks/bench_ulysses.py runs (CPU, gloo, tiny model) and its 2-rank
rows equal the same plan on one rank: the script the GPU run uses stays
runnable as the pack changes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_smoke(comfy_path: str, out) -> subprocess.CompletedProcess:
    # faulthandler: a rank killed by a signal prints where it was.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", os.path.join(ROOT, "benchmarks", "bench_ulysses.py"),
                           "--comfyui", comfy_path, "--out", str(out), "--smoke"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(out))


def _aborted(run: subprocess.CompletedProcess) -> bool:
    """A rank killed by SIGABRT from C++ ("terminate called without an active
    exception"): seen twice in CI in about ten runs, never locally (gloo's
    threads at teardown; pytorch/pytorch#179291 describes one such abort). A
    Python error in the benchmark exits with 1 instead and is not retried."""
    return "terminate called without an active exception" in run.stderr and "exitcode  : -6" in run.stderr


@pytest.mark.comfyui
def test_bench_ulysses_smoke(comfy, tmp_path):
    run = _run_smoke(comfy.path, tmp_path)
    if run.returncode != 0 and _aborted(run):  # once; the warning keeps the first run's stderr in the log
        warnings.warn("bench_ulysses smoke: a rank aborted in C++, rerun once; its stderr:\n" + run.stderr[-6000:])
        run = _run_smoke(comfy.path, tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + "\n" + run.stderr[-6000:]
    results = json.loads((tmp_path / "ulysses.json").read_text())
    rows = results["configs"]["smoke"]["rows"]
    sparse = [row for label, row in rows.items() if label.startswith("2 GPUs ours d=")]
    assert len(sparse) == 6 and all(row["equal_to_1gpu"] for row in sparse)  # 2 densities x off / on / auto
    assert sorted(row["balance"] for row in sparse) == ["auto", "auto", "off", "off", "on", "on"]
    assert all(len(row["attention_ms"]) == 2 and len(row["all_to_all_ms"]) == 2 for row in sparse)
    assert all(row["measured_imbalance"] >= 1.0 and row["predicted_imbalance"] >= 1.0 for row in sparse)
    layers = results["configs"]["smoke"]["layers"]
    for density in ("0.3", "0.2"):
        permuted = {mode: rows[f"2 GPUs ours d={density}, balancing {mode}"]["layers_permuted"]
                    for mode in ("off", "on", "auto")}
        assert permuted["off"] == 0 and 0 <= permuted["auto"] <= permuted["on"] <= layers
    assert results["configs"]["smoke"]["float32_check"]["equal"]
    markdown = (tmp_path / "ulysses.md").read_text()
    assert markdown.count("| smoke |") == len(rows) + len(sparse)  # the full table, then the balancing table
    assert run.stdout.rstrip().splitlines()[-1].startswith("| smoke | d=0.2 | auto |")  # the balancing table last


def test_bench_ulysses_layout_smoke(tmp_path):
    """benchmarks/bench_ulysses_layout.py runs on the CPU and finds the folded
    permutation equal to the unfolded one."""
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_ulysses_layout.py"), "--smoke",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    row = json.loads((tmp_path / "ulysses_layout.json").read_text())["shapes"]["smoke"]
    assert row["equal"] and all(row[way]["total_ms"] > 0 for way in ("identity", "folded", "unfolded"))
    assert run.stdout.rstrip().splitlines()[-1].startswith("| smoke | 2 | unfolded |")

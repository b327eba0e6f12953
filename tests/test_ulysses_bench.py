"""benchmarks/bench_ulysses.py runs (CPU, gloo, tiny model) and its 2-rank
rows equal the same plan on one rank: the script the GPU run uses stays
runnable as the pack changes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.comfyui
def test_bench_ulysses_smoke(comfy, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", os.path.join(ROOT, "benchmarks", "bench_ulysses.py"),
                          "--comfyui", comfy.path, "--out", str(tmp_path), "--smoke"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "ulysses.json").read_text())
    rows = results["configs"]["smoke"]["rows"]
    sparse = [row for label, row in rows.items() if label.startswith("2 GPUs ours d=")]
    assert len(sparse) == 4 and all(row["equal_to_1gpu"] for row in sparse)
    assert all(len(row["attention_ms"]) == 2 and len(row["all_to_all_ms"]) == 2 for row in sparse)
    assert results["configs"]["smoke"]["float32_check"]["equal"]
    assert (tmp_path / "ulysses.md").read_text().count("| smoke |") == len(rows)

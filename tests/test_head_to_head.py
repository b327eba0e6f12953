"""The head-to-head benchmark script runs end to end on the CPU (tiny
yardstick, reference kernels, no comfy-kitchen): every row is measured and
compared with dense; the report, strips and census picture are written."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.comfyui

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "yardstick"))


def test_head_to_head_smoke_run(comfy, tmp_path):
    out = tmp_path / "h2h"
    import comfy_harness

    env = {**os.environ, "COMFYUI_PATH": comfy_harness.comfyui_path()}
    cmd = [sys.executable, os.path.join(REPO, "yardstick", "head_to_head.py"), "--size", "tiny", "--device", "cpu",
           "--steps", "4", "--seeds", "1", "--prompts", "4", "--targets", "2", "--paper-menu-targets", "2", "--probe-steps", "2",
           "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "head_to_head.json").read_text())
    names = [r["name"] for r in report["results"]]
    assert names[0] == "dense" and "ours 2x" in names and "ours 2x ranges" in names and "ours 2x paper menu" in names
    paper_modes = set(report["plans"]["ours 2x paper menu"]["modes"])
    assert paper_modes <= {"skip", "diagonal", "multi_diagonal", "vertical_stripe", "full"}, paper_modes
    assert any(n.startswith("radial") for n in names) and any(n.startswith("window") for n in names)
    dense, rows = report["results"][0], report["results"][1:]
    assert dense["psnr_mean"] > 150 and dense["attention_speedup"] == 1.0
    floor = rows.pop(0)
    assert floor["name"] == "dense, our kernel" and floor["psnr_mean"] > 60  # rounding only: the noise floor
    for row in rows:
        assert 0 < row["psnr_mean"] < 100 and row["attention_ms_per_step"] > 0 and row["step_ms"] > 0, row
        assert 0 < row["density"] < 1, row
    assert report["dense_warmup_steps"] == 1 and report["census"]["totals"]
    paper_census = report["census_paper_menu"]  # the same calibration, the paper's modes only
    assert sum(paper_census["totals"].values()) == sum(report["census"]["totals"].values())
    assert set(paper_census["totals"]) <= {"dense", "near-zero", "diagonal", "multi-diagonal", "stripe"}
    assert paper_census["full_share"] >= report["census"]["totals"].get("dense", 0) / sum(paper_census["totals"].values())
    assert (out / "head_to_head_strips.png").stat().st_size > 0 and (out / "quality_vs_time.png").stat().st_size > 0
    assert "| ours 2x |" in (out / "head_to_head.md").read_text()
    assert (out / "yardstick_tiny_census.png").stat().st_size > 0
    assert "PSNR" in done.stdout.splitlines()[-len(names) - 1]  # the table is printed last


def test_8_bit_target_without_its_bf16_plan_is_refused_before_work(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, "yardstick", "head_to_head.py"), "--size", "wan480",
                           "--families", "ours,8bit", "--targets", "1.5", "--targets-8bit", "2", "--device", "cuda", "--comfyui",
                           str(tmp_path / "no-comfyui"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--targets-8bit [2.0] not among --targets 1.5" in done.stderr
    assert not (tmp_path / "out").exists()


def test_kernel_time_counts_only_kernels_inside_the_ranges():
    import types

    import h2h_timing as h2h
    from torch.autograd import DeviceType

    def event(name, start, end, device=DeviceType.CUDA):
        return types.SimpleNamespace(name=name, device_type=device, time_range=types.SimpleNamespace(start=start, end=end))

    events = [event("warm", 0, 100), event("k1", 10, 30), event("k2", 40, 90),   # 70 us in "warm"
              event("k3", 120, 150),                                           # outside every range
              event("sparse", 200, 300), event("k4", 200, 210), event("sparse", 400, 500), event("k5", 450, 470),
              event("warm", 0, 100, DeviceType.CPU), event("cpu op", 10, 30, DeviceType.CPU)]
    assert h2h.kernel_time_in_ranges(events, ("warm", "sparse")) == (0.07, 0.03)


def test_head_to_head_at_wan480_recipe_in_parts_and_merged(comfy, tmp_path):
    """The wan480 path at its CPU size: a 4-bit model file, two parts (the
    second reusing the first's calibration, as on a warm machine), merged."""
    import comfy_harness
    import torch
    import ys_model
    from ys_sizes import WAN480_TINY

    model = ys_model.build_model(size=WAN480_TINY, seed=3)
    with torch.no_grad():  # the output head starts at zero: give the smoke model an output
        model.head.head.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(4))
    weights = str(tmp_path / "w.safetensors")
    ys_model.save_weights(model, weights, quant="int4")
    env = {**os.environ, "COMFYUI_PATH": comfy_harness.comfyui_path()}
    base = [sys.executable, os.path.join(REPO, "yardstick", "head_to_head.py"), "--size", "wan480-tiny", "--weights",
            weights, "--device", "cpu", "--steps", "4", "--seeds", "1", "--prompts", "4", "--targets", "2",
            "--probe-steps", "2", "--work", str(tmp_path / "calibration")]

    def run(*extra):
        done = subprocess.run([*base, *extra], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    run("--families", "ours,paper", "--paper-menu-targets", "2", "--out", str(tmp_path / "a"))
    assert "calibration statistics reused" in run("--families", "static", "--reuse-calibration", "--out",
                                                  str(tmp_path / "b"))
    for part in ("a", "b"):
        assert len(os.listdir(tmp_path / part)) <= 7  # with the log, within a call's 8 files
    merged = subprocess.run([sys.executable, os.path.join(REPO, "yardstick", "head_to_head.py"), "--merge",
                             str(tmp_path / "a" / "head_to_head.json"), str(tmp_path / "b" / "head_to_head.json"),
                             "--out", str(tmp_path / "m")], env=env, capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert "solved different plans" not in merged.stdout  # part b solved fewer plans, the same ones
    report = json.loads((tmp_path / "m" / "head_to_head.json").read_text())
    names = [r["name"] for r in report["results"]]
    assert names[:4] == ["dense", "ours 2x", "ours 2x ranges", "ours 2x paper menu"] and names[4] == "dense (part 2)"
    assert set(report["plans"]) == {"ours 2x", "ours 2x ranges", "ours 2x paper menu"}
    assert any(n.startswith("radial") for n in names) and any(n.startswith("window") for n in names)
    assert report["tokens"] == 3 * 8 * 12 and report["families"] == ["ours", "paper", "static"]
    for row in report["results"]:
        if not row["family"].startswith("dense"):
            assert 0 < row["psnr_mean"] < 100 and row["attention_speedup"] > 0, row
    assert "| ours 2x |" in (tmp_path / "m" / "head_to_head.md").read_text()
    assert "PSNR" in merged.stdout.splitlines()[-len(names) - 1]  # the table is printed last

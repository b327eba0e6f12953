"""Training legs end to end on the CPU at wan480's tiny size: a first leg,
landed into a checkout, then a second leg on a cold machine (a fresh work
folder) that resumes from the landed checkpoint with a moved step total; what
a leg leaves for the call to bring back fits the device limits (8 files of
at most 16 MiB, 2 folders down); the legs file, census, curve and log land
in benchmarks/results; a second --first is refused."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEG = os.path.join(REPO, "yardstick", "leg.py")


def leg(*args, ok=True):
    done = subprocess.run([sys.executable, LEG, *args], capture_output=True, text=True, timeout=900)
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.comfyui
def test_two_legs_resume_across_cold_machines_and_land(comfy, tmp_path):
    import comfy_harness

    root = tmp_path / "checkout"
    (root / "yardstick").mkdir(parents=True)
    common = ["--size", "wan480-tiny", "--root", str(root)]
    run = [*common, "--device", "cpu", "--census-steps", "4", "--eval-samples", "1",
           "--comfyui", comfy_harness.comfyui_path()]
    leg("run", "--first", "--out", str(tmp_path / "out1"), "--work", str(tmp_path / "work1"), *run)
    files = [os.path.relpath(os.path.join(d, f), tmp_path / "out1") for d, _, fs in os.walk(tmp_path / "out1")
             for f in fs]
    assert len(files) <= 8 and all(f.count(os.sep) <= 2 for f in files), files
    assert all(os.path.getsize(tmp_path / "out1" / f) <= 16 * 2 ** 20 for f in files)
    assert "checkpoint/index.json" in files and "yardstick_wan480-tiny_census.png" in files
    leg("land", str(tmp_path / "out1"), *common)
    assert "a checkpoint exists" in leg("run", "--first", "--out", str(tmp_path / "x"), "--work",
                                        str(tmp_path / "work2"), *run, ok=False)
    out = leg("run", "--set-total", "6", "--census-menu", "extended-wide", "--out", str(tmp_path / "out2"),
              "--work", str(tmp_path / "work2"), *run)
    assert "resuming from the committed checkpoint at step 4" in out and "resumed at step 4 of 6" in out
    assert "step total moved from 4 to 6" in out
    last = out.strip().splitlines()
    assert last[-1].startswith("leg done") and last[-2].split()[:2] == ["2", "cpu"]  # the table is printed last
    landed = leg("land", str(tmp_path / "out2"), *common)
    assert "landed leg 2" in landed
    results = root / "benchmarks" / "results"
    legs = json.loads((results / "yardstick_wan480-tiny_legs.json").read_text())
    assert [(x["from_step"], x["to_step"]) for x in legs] == [(0, 4), (4, 6)]
    assert all(0 <= x["full_share"] <= 1 and x["census"]["rule"] == {"lambda": 0.5, "epsilon": 1.0,
               "error_unit": "1% of the layer's dense output power"} for x in legs)
    assert "stored_int4" in legs[-1]["eval_v_loss"]
    # the second leg's census had the newer modes too, and gives the paper's shapes alone from the same run
    first, second = legs
    assert "census_menu" not in first or first["census_menu"] == "wide"
    assert second["census_menu"] == "extended-wide" and second["census"]["calibration"]["menu"] == "extended-wide"
    assert second["full_share_paper"] == second["census"]["paper_menu"]["full_share"]
    assert second["full_share_paper"] >= second["full_share"]  # more candidates never keep more heads full
    assert sum(second["census"]["paper_menu"]["totals"].values()) == sum(second["totals"].values())
    assert set(second["census"]["paper_menu"]["totals"]) <= {"dense", "near-zero", "diagonal", "multi-diagonal",
                                                             "stripe"}
    log = (results / "yardstick_wan480-tiny_training_log.txt").read_text()
    assert "=== leg 1: steps 0-4" in log and "=== leg 2: steps 4-6" in log
    for name in ("census.json", "census.png", "census_curve.png"):
        assert (results / f"yardstick_wan480-tiny_{name}").stat().st_size > 0
    assert (root / "yardstick" / "wan480_tiny_yardstick.safetensors").exists()
    assert json.loads((root / "yardstick" / "wan480_tiny_checkpoint" / "index.json").read_text())["info"]["step"] == 6
    # landing an older leg over a newer checkpoint is refused
    assert "is newer than this one" in leg("land", str(tmp_path / "out1"), *common, ok=False)


def test_park_moves_what_a_leg_call_need_not_send_and_unpark_brings_it_back(tmp_path):
    root, parked = tmp_path / "checkout", tmp_path / "parked"
    (root / "yardstick" / "wan480_checkpoint").mkdir(parents=True)
    files = {"yardstick/wan_tiny_yardstick.safetensors": 3000, "yardstick/wan_video_yardstick.safetensors": 2000,
             "yardstick/wan480_yardstick.safetensors": 1000, "yardstick/wan480_checkpoint/index.json": 10,
             "yardstick/leg.py": 5, "benchmarks/results/h2h_X/part1/head_to_head_strips.png": 4000,
             "benchmarks/results/h2h_Y/head_to_head_strips.png": 4000, "benchmarks/results/h2h_Y/table.md": 1}
    for rel, n in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * n)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    out = leg("park", "leg", "--root", str(root), "--parked", str(parked))
    assert sorted(os.listdir(root / "yardstick")) == ["leg.py", "wan480_checkpoint"]
    assert "sends 0.0 MiB" in out  # the checkpoint (10 bytes), leg.py (5) and table.md (1) are all that is left
    assert sorted(os.listdir(root / "benchmarks/results/h2h_Y")) == ["table.md"]  # strips parked for every call
    assert not os.listdir(root / "benchmarks/results/h2h_X/part1")
    leg("unpark", "--root", str(root), "--parked", str(parked))
    for rel, n in files.items():
        assert (root / rel).stat().st_size == n, rel
    leg("park", "h2h", "--root", str(root), "--parked", str(parked))
    assert sorted(os.listdir(root / "yardstick")) == ["leg.py", "wan480_yardstick.safetensors"]
    assert not (root / "benchmarks/results/h2h_Y/head_to_head_strips.png").exists()
    leg("unpark", "--root", str(root), "--parked", str(parked))
    for rel, n in files.items():
        assert (root / rel).stat().st_size == n, rel
    assert not any(files for _, _, files in os.walk(parked))
    # `land` rebuilds the weights while they are parked: unpark keeps that newer file, not the parked one
    leg("park", "leg", "--root", str(root), "--parked", str(parked))
    (root / "yardstick" / "wan480_yardstick.safetensors").write_bytes(b"n" * 7)
    out = leg("unpark", "--root", str(root), "--parked", str(parked))
    assert (root / "yardstick" / "wan480_yardstick.safetensors").read_bytes() == b"n" * 7
    assert "kept the checkout's newer" in out
    assert (root / "yardstick" / "wan_tiny_yardstick.safetensors").stat().st_size == 3000
    assert not any(files for _, _, files in os.walk(parked))

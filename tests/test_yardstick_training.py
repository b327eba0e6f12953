"""Yardstick training resumes exactly: a run stopped at step 2 and resumed
from its sharded checkpoint ends with the weights of the run that was never
stopped (CPU, ComfyUI's WanModel, the empty-prompt dropout on)."""
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.comfyui

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "yardstick", "train.py")
ARGS = ["--size", "tiny", "--steps", "4", "--batch", "1", "--warmup", "2", "--uncond-p", "0.5", "--eval-samples", "1",
        "--device", "cpu"]


def train(comfy_path, out, *extra):
    done = subprocess.run([sys.executable, TRAIN, "--comfyui", comfy_path, "--out", str(out), *ARGS, *extra],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_stopped_and_resumed_run_equals_the_uninterrupted_run(comfy, tmp_path):
    import comfy_harness
    from safetensors.torch import load_file

    path = comfy_harness.comfyui_path()
    train(path, tmp_path / "whole")
    assert "stopped at step 2 of 4" in train(path, tmp_path / "split", "--stop-at-step", "2")
    assert not (tmp_path / "split" / "wan_tiny_yardstick.safetensors").exists()
    shards = [f for f in os.listdir(tmp_path / "split" / "checkpoint") if f.endswith(".safetensors")]
    assert shards and all(os.path.getsize(tmp_path / "split" / "checkpoint" / f) <= 16 * 2 ** 20 + 2 ** 16
                          for f in shards)
    assert "resumed at step 2 of 4" in train(path, tmp_path / "split", "--resume")
    whole = load_file(str(tmp_path / "whole" / "wan_tiny_yardstick.safetensors"))
    split = load_file(str(tmp_path / "split" / "wan_tiny_yardstick.safetensors"))
    assert set(whole) == set(split)
    for key in whole:
        assert torch.equal(whole[key], split[key]), key

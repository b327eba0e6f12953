"""Yardstick training resumes exactly: a run stopped part way and resumed
from its sharded checkpoint ends with the weights of the run that was never
stopped (CPU, ComfyUI's WanModel, the empty-prompt dropout on). Today's
recipe (AdamW + EMA) and wan480's (factored second moments, weights on the
bf16 grid, short clips then the full grid, 4-bit stored model)."""
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "yardstick", "train.py")
sys.path.insert(0, os.path.join(REPO, "yardstick"))
ARGS = ["--size", "tiny", "--steps", "4", "--batch", "1", "--warmup", "2", "--uncond-p", "0.5", "--eval-samples", "1",
        "--device", "cpu"]
# wan480's recipe at its CPU size: the stop at step 2 falls on the switch from short clips to the full grid
WAN480_ARGS = ["--size", "wan480-tiny", "--steps", "4", "--batch", "1", "--short-steps", "2", "--short-batch", "2",
               "--optimizer", "factored", "--ema", "0", "--schedule", "wsd", "--decay-steps", "2", "--warmup", "1",
               "--uncond-p", "0.5", "--eval-samples", "1", "--device", "cpu"]


def train(comfy_path, out, *extra, args=ARGS):
    done = subprocess.run([sys.executable, TRAIN, "--comfyui", comfy_path, "--out", str(out), *args, *extra],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.comfyui
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


@pytest.mark.comfyui
def test_wan480_recipe_resumes_exactly_from_a_small_checkpoint(comfy, tmp_path):
    import comfy_harness
    import ys_checkpoint as ckpt
    import ys_quant
    from safetensors.torch import load_file

    path = comfy_harness.comfyui_path()
    train(path, tmp_path / "whole", args=WAN480_ARGS)
    assert "stopped at step 2 of 4" in train(path, tmp_path / "split", "--stop-at-step", "2", args=WAN480_ARGS)
    tensors, info = ckpt.load_checkpoint(str(tmp_path / "split" / "checkpoint"))
    weights = {k: v for k, v in tensors.items() if k.startswith("net.")}
    params = sum(v.numel() for v in weights.values())
    assert all(v.dtype == torch.bfloat16 for v in weights.values()) and not any(k.startswith("ema.") for k in tensors)
    state_bytes = sum(v.numel() * v.element_size() for v in tensors.values())
    assert state_bytes < 2.05 * params  # the weights in bf16 and a few vectors: no per-weight moments
    # the resumed run takes its settings from the checkpoint, not from its command line (--lr 1 is ignored)
    assert "resumed at step 2 of 4" in train(path, tmp_path / "split", "--resume", "--lr", "1", args=WAN480_ARGS)
    name = "wan480_tiny_yardstick.safetensors"
    assert ys_quant.is_quantized(str(tmp_path / "split" / name))
    whole, split = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "split" / name))
    assert set(whole) == set(split) and any(k.endswith(".int4") for k in whole)
    for key in whole:
        assert torch.equal(whole[key], split[key]), key
    # the model really trained: its stored weights moved from the initialisation
    first = ys_quant.load_dequantized(str(tmp_path / "whole" / name))
    assert first["head.head.weight"].abs().max() > 0  # zero at initialisation


def test_stochastic_rounding_lands_on_the_bf16_grid_without_bias():
    import ys_optim

    x = torch.full((200_000,), 1.0 + 2 ** -9)  # a quarter of the way from 1 to the next bf16 value (1 + 2^-7)
    y = x.clone()
    ys_optim.round_to_bf16_grid(y, torch.Generator().manual_seed(0))
    assert ys_optim.on_bf16_grid(y) and set(y.unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    assert abs(float(y.double().mean()) - (1.0 + 2 ** -9)) < 2e-5
    z = -x.clone()
    ys_optim.round_to_bf16_grid(z, torch.Generator().manual_seed(0))
    assert torch.equal(z, -y)  # symmetric in the sign
    w = torch.tensor([0.0, float("inf"), 3.0])
    ys_optim.round_to_bf16_grid(w, torch.Generator().manual_seed(1))
    assert w.tolist() == [0.0, float("inf"), 3.0]

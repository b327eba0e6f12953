"""CogVideoX on a real ComfyUI (native since 0.21): flat joint self-attention
over [226 text tokens, video], no mask, no block_index (layers counted). A
tiny model from ComfyUI's own classes, patched with a mixed plan, against
the float64 oracle. On a ComfyUI without the model, the test checks it is
really absent there (the pack then has nothing to serve)."""
import dataclasses
import importlib.util

import pytest
import torch

import comfy_harness as H
from plan_oracle import HEADS, LAYERS, mixed_plan, oracle_override, patched_and_oracle

pytestmark = pytest.mark.comfyui

TEXT = 226
HEAD_DIM = 24  # CogVideoX's sin-cos position embedding needs a width divisible by 3
T, R, C = 3, 8, 10  # latent [.., 3, 16, 20], spatial patch 2: 240 video tokens


def tiny_cogvideox():
    config = {"image_model": "cogvideox", "num_attention_heads": HEADS, "attention_head_dim": HEAD_DIM,
              "in_channels": 16, "out_channels": 16, "time_embed_dim": 32, "text_embed_dim": 32,
              "num_layers": LAYERS, "sample_width": 2 * C, "sample_height": 2 * R, "sample_frames": 9,
              "patch_size": 2, "max_text_seq_length": TEXT}
    return H.tiny_model("CogVideoX_T2V", config)


def test_cogvideox_joint_attention_text_first(comfy):
    if importlib.util.find_spec("comfy.ldm.cogvideo") is None:
        assert H.version_tuple() < (0, 21), "this ComfyUI should have native CogVideoX"
        return
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    model = tiny_cogvideox()
    info = describe_model(model)
    assert (info.layers, info.heads, info.head_dim, info.text) == (LAYERS, HEADS, HEAD_DIM, "before")
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, TEXT, 32, generator=g), {}]]
    negative = [[torch.randn(1, TEXT, 32, generator=g), {}]]
    latent = torch.zeros(1, 16, T, 2 * R, 2 * C)
    video = T * R * C
    plan = mixed_plan("cogvideox")
    plan = dataclasses.replace(plan, model=dataclasses.replace(plan.model, head_dim=HEAD_DIM))
    override, state = oracle_override(plan, lambda n: Geometry(T, R, C, prefix=TEXT) if n == TEXT + video else None)
    out, expected, hook = patched_and_oracle(model, positive, negative, plan, override, latent, steps=2)
    calls = 2 * LAYERS  # 2 steps, cond and uncond in one batch
    assert state["n"] == calls and hook.counts.get("sparse") == calls, hook.counts
    assert H.rel_diff(out, H.sample(model, positive, negative, latent, seed=5, steps=2)) > 1e-3
    assert H.rel_diff(out, expected) < 1e-4

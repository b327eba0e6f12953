"""Kandinsky 5 video on a real ComfyUI: [B, H, L, D] self-attention over the
video grid only (text has its own encoder blocks, whose self-attention is not
ours), block_index on the visual blocks. A tiny model from ComfyUI's own
classes against the float64 oracle. On a ComfyUI without the model, the test
checks it is really absent there."""
import importlib.util

import pytest
import torch

import comfy_harness as H
from plan_oracle import HEAD_DIM, HEADS, LAYERS, check_grid_model

pytestmark = pytest.mark.comfyui

T, R, C = 3, 8, 10


def test_kandinsky5_video_self_attention(comfy):
    if importlib.util.find_spec("comfy.ldm.kandinsky5") is None:
        assert H.version_tuple() < (0, 8), "this ComfyUI should have native Kandinsky 5"
        return
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    config = {"image_model": "kandinsky5", "in_visual_dim": 16, "out_visual_dim": 16, "in_text_dim": 32,
              "in_text_dim2": 768, "time_dim": 32, "model_dim": HEADS * HEAD_DIM, "ff_dim": 2 * HEADS * HEAD_DIM,
              "visual_embed_dim": 132, "num_text_blocks": 1, "num_visual_blocks": LAYERS, "axes_dims": (4, 6, 6)}
    model = H.tiny_model("Kandinsky5", config)
    info = describe_model(model)
    assert (info.layers, info.heads, info.head_dim, info.text) == (LAYERS, HEADS, HEAD_DIM, "none")
    g = torch.Generator().manual_seed(1)

    def cond():
        return [[torch.randn(1, 12, 32, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]
    latent = torch.zeros(1, 16, T, 2 * R, 2 * C)
    check_grid_model(model, cond(), cond(), latent, Geometry(T, R, C), "kandinsky5", 2 * LAYERS)

"""Mochi on a real ComfyUI: joint [video, text] attention in [B, H, L, D]
with the text cropped to its length, no block_index, and no diffusion-model
wrapper (the grid is read in ComfyUI's apply_model wrapper). A tiny model
from ComfyUI's own classes, patched with a mixed plan, against an oracle run."""
import pytest
import torch

import comfy_harness as H
from plan_oracle import HEAD_DIM, HEADS, LAYERS, mixed_plan, oracle_override, patched_and_oracle

pytestmark = pytest.mark.comfyui

T, R, C = 3, 8, 10  # latent [.., 3, 16, 20], patch 2: 240 video tokens
TEXT = 7


def test_mochi_joint_attention_by_counting(comfy):
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    config = {"image_model": "mochi_preview", "depth": LAYERS, "patch_size": 2, "num_heads": HEADS,
              "hidden_size_x": HEADS * HEAD_DIM, "hidden_size_y": 32,
              "mlp_ratio_x": 12288 / (HEADS * HEAD_DIM),  # Mochi fixes the x MLP width at 12288
              "mlp_ratio_y": 2.0, "learn_sigma": False, "in_channels": 12, "qk_norm": True, "qkv_bias": False,
              "out_bias": True, "attn_drop": 0.0, "patch_embed_bias": True, "posenc_preserve_area": True,
              "timestep_mlp_bias": True, "attend_to_padding": False, "timestep_scale": 1000.0, "use_t5": True,
              "t5_feat_dim": 32, "t5_token_length": 16, "rope_theta": 10000.0}
    model = H.tiny_model("GenmoMochi", config)
    assert describe_model(model).wrapper == "apply_model"
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 16, dtype=torch.int64)
    mask[:, :TEXT] = 1
    positive = [[torch.randn(1, 16, 32, generator=g), {"attention_mask": mask}]]
    negative = [[torch.randn(1, 16, 32, generator=g), {"attention_mask": mask}]]
    latent = torch.zeros(1, 12, T, 2 * R, 2 * C)
    video, plan = T * R * C, mixed_plan("mochi")
    override, state = oracle_override(plan, lambda n: Geometry(T, R, C, suffix=n - video) if n > video else None)
    out, expected, hook = patched_and_oracle(model, positive, negative, plan, override, latent, steps=2, cfg=1.0)
    assert state["n"] == 2 * LAYERS and hook.counts.get("sparse") == 2 * LAYERS, hook.counts
    assert H.rel_diff(out, H.sample(model, positive, negative, latent, seed=5, steps=2, cfg=1.0)) > 1e-3
    assert H.rel_diff(out, expected) < 1e-4

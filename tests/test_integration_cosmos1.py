"""Cosmos 1 (`GeneralDIT`) on a real ComfyUI: [B, H, L, D] self-attention
(skip_reshape and skip_output_reshape) over (t, h, w) tokens, one
full-attention sub-block per block, no block_index (layers are counted). A
tiny model from ComfyUI's own classes, patched with a mixed plan, against
an oracle run."""
import pytest
import torch

import comfy_harness as H
from plan_oracle import HEAD_DIM, HEADS, LAYERS, check_grid_model, mixed_plan, oracle_override, patched_and_oracle

pytestmark = pytest.mark.comfyui

T, R, C = 3, 8, 10  # latent [.., 3, 16, 20], spatial patch 2: 240 tokens


def cosmos1_config(**extra) -> dict:
    """The unet_config ComfyUI's model detection gives Cosmos 1 7B, shrunk."""
    config = {"image_model": "cosmos", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
              "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": HEADS * HEAD_DIM,
              "block_config": "FA-CA-MLP", "concat_padding_mask": True, "crossattn_emb_channels": 32,
              "pos_emb_cls": "rope3d", "pos_emb_learnable": False, "pos_emb_interpolation": "crop",
              "block_x_format": "THWBD", "affline_emb_norm": True, "use_adaln_lora": True, "adaln_lora_dim": 16,
              "num_blocks": LAYERS, "num_heads": HEADS, "extra_per_block_abs_pos_emb": True,
              "rope_h_extrapolation_ratio": 1.0, "rope_w_extrapolation_ratio": 1.0, "rope_t_extrapolation_ratio": 2.0,
              "extra_per_block_abs_pos_emb_type": "learnable"}
    config.update(extra)
    return config


def conds(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 16, 32, generator=g), {}]], [[torch.randn(1, 16, 32, generator=g), {}]]


def test_cosmos1_layers_by_counting(comfy):
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    model = H.tiny_model("CosmosT2V", cosmos1_config())
    info = describe_model(model)
    assert info.family.startswith("cosmos") and (info.layers, info.heads, info.head_dim) == (LAYERS, HEADS, HEAD_DIM)
    positive, negative = conds()
    latent = torch.zeros(1, 16, T, 2 * R, 2 * C)
    check_grid_model(model, positive, negative, latent, Geometry(T, R, C), "cosmos", 2 * LAYERS)


def test_cosmos1_two_full_attention_sub_blocks_are_two_layers(comfy):
    """A block_config with two self-attention sub-blocks per block: plan
    layers follow the sub-blocks in call order (counted, not per block)."""
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    model = H.tiny_model("CosmosT2V", cosmos1_config(num_blocks=1, block_config="FA-CA-FA-MLP"))
    assert describe_model(model).layers == LAYERS
    positive, negative = conds()
    latent = torch.zeros(1, 16, T, 2 * R, 2 * C)
    geometry, plan = Geometry(T, R, C), mixed_plan("cosmos")
    override, state = oracle_override(plan, lambda n: geometry if n == geometry.seq_len else None)
    out, expected, hook = patched_and_oracle(model, positive, negative, plan, override, latent, steps=1)
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4

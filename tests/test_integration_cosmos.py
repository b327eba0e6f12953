"""Cosmos Predict2 on a real ComfyUI: [B, H, L, D] self-attention over
(t, h, w) tokens, no block_index (layers are counted). A tiny model from
ComfyUI's own classes, patched with a mixed plan, against an oracle run."""
import pytest
import torch

import comfy_harness as H
from plan_oracle import HEAD_DIM, HEADS, LAYERS, check_grid_model

pytestmark = pytest.mark.comfyui

T, R, C = 3, 8, 10  # latent [.., 3, 16, 20], spatial patch 2: 240 tokens


def test_cosmos_predict2_layers_by_counting(comfy):
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    config = {"image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
              "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1,
              "model_channels": HEADS * HEAD_DIM, "concat_padding_mask": True, "crossattn_emb_channels": 32,
              "pos_emb_cls": "rope3d", "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1,
              "max_fps": 30, "use_adaln_lora": True, "adaln_lora_dim": 16, "num_blocks": LAYERS, "num_heads": HEADS,
              "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
              "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0}
    model = H.tiny_model("CosmosT2IPredict2", config)
    assert describe_model(model).family.startswith("cosmos")
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 16, 32, generator=g), {}]]
    negative = [[torch.randn(1, 16, 32, generator=g), {}]]
    latent = torch.zeros(1, 16, T, 2 * R, 2 * C)
    check_grid_model(model, positive, negative, latent, Geometry(T, R, C), "cosmos_predict2", 2 * LAYERS)

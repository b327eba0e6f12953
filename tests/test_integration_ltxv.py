"""LTXV on a real ComfyUI: no block_index (layers are counted), patch size 1,
tokens in (frame, row, col) order. A tiny model from ComfyUI's own classes,
patched with a mixed plan, against an oracle run."""
import pytest
import torch

import comfy_harness as H
from plan_oracle import HEAD_DIM, HEADS, LAYERS, check_grid_model

pytestmark = pytest.mark.comfyui

T, R, C = 3, 8, 10  # latent grid = token grid (patch 1): 240 tokens


def test_ltxv_layers_by_counting(comfy):
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    model = H.tiny_model("LTXV", {"image_model": "ltxv", "num_layers": LAYERS, "attention_head_dim": HEAD_DIM,
                                  "num_attention_heads": HEADS, "cross_attention_dim": HEADS * HEAD_DIM,
                                  "caption_channels": 32})
    assert describe_model(model).family.startswith("ltxv")
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(1, 16, dtype=torch.int64)
    positive = [[torch.randn(1, 16, 32, generator=g), {"attention_mask": mask}]]
    negative = [[torch.randn(1, 16, 32, generator=g), {"attention_mask": mask}]]
    latent = torch.zeros(1, 128, T, R, C)
    check_grid_model(model, positive, negative, latent, Geometry(T, R, C), "ltxv", 2 * LAYERS)

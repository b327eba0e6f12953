"""Cosmos Predict2 on a real ComfyUI: [B, H, L, D] self-attention over
(t, h, w) tokens, no block_index (layers are counted). A tiny model from
ComfyUI's own classes, patched with a mixed plan, against an oracle run."""
import pytest
import torch

import comfy_harness as H
from oracle import layer_oracle

pytestmark = pytest.mark.comfyui

LAYERS, HEADS, HEAD_DIM = 2, 4, 16
T, R, C = 3, 8, 10  # latent [.., 3, 16, 20], spatial patch 2: 240 tokens


def tiny_cosmos(comfy):
    config = {"image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
              "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1,
              "model_channels": HEADS * HEAD_DIM, "concat_padding_mask": True, "crossattn_emb_channels": 32,
              "pos_emb_cls": "rope3d", "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1,
              "max_fps": 30, "use_adaln_lora": True, "adaln_lora_dim": 16, "num_blocks": LAYERS, "num_heads": HEADS,
              "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
              "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0}
    model_config = comfy.supported_models.CosmosT2IPredict2(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=comfy.cpu)
    H.init_weights(model.diffusion_model, seed=0)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.cpu, offload_device=comfy.cpu)


def plan():
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal, Skip, VerticalStripe
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

    return Plan("cosmos mixed", ModelShape("cosmos_predict2", LAYERS, HEADS, HEAD_DIM),
                (LayerPattern((Diagonal(0), Full(), VerticalStripe((0,)), Skip())),
                 LayerPattern((MultiDiagonal(0, frames=1), Diagonal(1), Full(), MultiDiagonal(1)))), DenseSchedule(0.0))


def test_cosmos_predict2_layers_by_counting(comfy):
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    model = tiny_cosmos(comfy)
    assert describe_model(model).family.startswith("cosmos")
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 16, 32, generator=g), {}]]
    negative = [[torch.randn(1, 16, 32, generator=g), {}]]
    latent = torch.zeros(1, 16, T, 2 * R, 2 * C)
    geometry, layers, state = Geometry(T, R, C), plan().layers, {"n": 0}

    def oracle(func, q, k, v, heads, **kwargs):
        if q.shape[2] == k.shape[2] == geometry.seq_len and kwargs.get("skip_reshape"):
            layer = layers[state["n"] % LAYERS]
            state["n"] += 1
            out = layer_oracle(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layer, geometry, 128, 64)
            return out.to(q.dtype).reshape(q.shape[0], q.shape[2], -1)
        return func(q, k, v, heads, **kwargs)

    expected = H.sample(H.install_attention_override(model, oracle), positive, negative, latent, seed=5, steps=2)
    patched = apply_plan(model, plan(), backend="reference")
    out = H.sample(patched, positive, negative, latent, seed=5, steps=2)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    assert state["n"] == 2 * LAYERS and hook.counts.get("sparse") == 2 * LAYERS, hook.counts
    assert H.rel_diff(out, H.sample(model, positive, negative, latent, seed=5, steps=2)) > 1e-3
    assert H.rel_diff(out, expected) < 1e-4

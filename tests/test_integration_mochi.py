"""Mochi on a real ComfyUI: joint [video, text] attention in [B, H, L, D]
with the text cropped to its length, no block_index, and no diffusion-model
wrapper (the grid is read in ComfyUI's apply_model wrapper). A tiny model
from ComfyUI's own classes, patched with a mixed plan, against an oracle run."""
import pytest
import torch

import comfy_harness as H
from oracle import layer_oracle

pytestmark = pytest.mark.comfyui

LAYERS, HEADS, HEAD_DIM = 2, 4, 16
T, R, C = 3, 8, 10  # latent [.., 3, 16, 20], patch 2: 240 video tokens
TEXT = 7


def tiny_mochi(comfy):
    config = {"image_model": "mochi_preview", "depth": LAYERS, "patch_size": 2, "num_heads": HEADS,
              "hidden_size_x": HEADS * HEAD_DIM, "hidden_size_y": 32, "mlp_ratio_x": 12288 / (HEADS * HEAD_DIM), "mlp_ratio_y": 2.0,  # Mochi fixes the x MLP width at 12288
             
              "learn_sigma": False, "in_channels": 12, "qk_norm": True, "qkv_bias": False, "out_bias": True,
              "attn_drop": 0.0, "patch_embed_bias": True, "posenc_preserve_area": True, "timestep_mlp_bias": True,
              "attend_to_padding": False, "timestep_scale": 1000.0, "use_t5": True, "t5_feat_dim": 32,
              "t5_token_length": 16, "rope_theta": 10000.0}
    model_config = comfy.supported_models.GenmoMochi(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=comfy.cpu)
    H.init_weights(model.diffusion_model, seed=0)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.cpu, offload_device=comfy.cpu)


def plan():
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal, Skip, VerticalStripe
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

    return Plan("mochi mixed", ModelShape("mochi", LAYERS, HEADS, HEAD_DIM),
                (LayerPattern((Diagonal(0), Full(), VerticalStripe((0,)), Skip())),
                 LayerPattern((MultiDiagonal(0, frames=1), Diagonal(1), Full(), MultiDiagonal(1)))), DenseSchedule(0.0))


def test_mochi_joint_attention_by_counting(comfy):
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    model = tiny_mochi(comfy)
    assert describe_model(model).wrapper == "apply_model"
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 16, dtype=torch.int64)
    mask[:, :TEXT] = 1
    positive = [[torch.randn(1, 16, 32, generator=g), {"attention_mask": mask}]]
    negative = [[torch.randn(1, 16, 32, generator=g), {"attention_mask": mask}]]
    latent = torch.zeros(1, 12, T, 2 * R, 2 * C)
    layers, state = plan().layers, {"n": 0}

    def oracle(func, q, k, v, heads, **kwargs):
        video = T * R * C
        if q.shape[2] == k.shape[2] > video and kwargs.get("skip_reshape"):
            geometry = Geometry(T, R, C, suffix=q.shape[2] - video)
            layer = layers[state["n"] % LAYERS]
            state["n"] += 1
            out = layer_oracle(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layer, geometry, 128, 64)
            return out.to(q.dtype).reshape(q.shape[0], q.shape[2], -1)
        return func(q, k, v, heads, **kwargs)

    expected = H.sample(H.install_attention_override(model, oracle), positive, negative, latent, seed=5, steps=2, cfg=1.0)
    patched = apply_plan(model, plan(), backend="reference")
    out = H.sample(patched, positive, negative, latent, seed=5, steps=2, cfg=1.0)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    assert state["n"] == 2 * LAYERS and hook.counts.get("sparse") == 2 * LAYERS, hook.counts
    assert H.rel_diff(out, H.sample(model, positive, negative, latent, seed=5, steps=2, cfg=1.0)) > 1e-3
    assert H.rel_diff(out, expected) < 1e-4

"""LTXV on a real ComfyUI: no block_index (layers are counted), patch size 1,
tokens in (frame, row, col) order. A tiny model from ComfyUI's own classes,
patched with a mixed plan, against an oracle run."""
import pytest
import torch

import comfy_harness as H
from oracle import layer_oracle

pytestmark = pytest.mark.comfyui

LAYERS, HEADS, HEAD_DIM = 2, 4, 16
T, R, C = 3, 8, 10  # latent grid = token grid (patch 1): 240 tokens


def tiny_ltxv(comfy):
    config = {"image_model": "ltxv", "num_layers": LAYERS, "attention_head_dim": HEAD_DIM,
              "num_attention_heads": HEADS, "cross_attention_dim": HEADS * HEAD_DIM, "caption_channels": 32}
    model_config = comfy.supported_models.LTXV(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=comfy.cpu)
    H.init_weights(model.diffusion_model, seed=0)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.cpu, offload_device=comfy.cpu)


def plan():
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal, Skip, VerticalStripe
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

    return Plan("ltxv mixed", ModelShape("ltxv", LAYERS, HEADS, HEAD_DIM),
                (LayerPattern((Diagonal(0), Full(), VerticalStripe((0,)), Skip())),
                 LayerPattern((MultiDiagonal(0, frames=1), Diagonal(1), Full(), MultiDiagonal(1)))), DenseSchedule(0.0))


def test_ltxv_layers_by_counting(comfy):
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.integration.model_info import describe_model
    from sparse_vdit.patterns import Geometry

    model = tiny_ltxv(comfy)
    assert describe_model(model).family.startswith("ltxv")
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(1, 16, dtype=torch.int64)
    positive = [[torch.randn(1, 16, 32, generator=g), {"attention_mask": mask}]]
    negative = [[torch.randn(1, 16, 32, generator=g), {"attention_mask": mask}]]
    latent = torch.zeros(1, 128, T, R, C)
    geometry, layers, state = Geometry(T, R, C), plan().layers, {"n": 0}

    def oracle(func, *args, **kwargs):
        q, k, v = args[:3]
        if q.shape[1] == k.shape[1] == geometry.seq_len:
            layer = layers[state["n"] % LAYERS]
            state["n"] += 1
            shape = (q.shape[0], geometry.seq_len, HEADS, HEAD_DIM)
            return layer_oracle(q.view(shape), k.view(shape), v.view(shape), layer, geometry, 128, 64).to(q.dtype).reshape(q.shape)
        return func(*args, **kwargs)

    expected = H.sample(H.install_attention_override(model, oracle), positive, negative, latent, seed=5, steps=2)
    patched = apply_plan(model, plan(), backend="reference")
    out = H.sample(patched, positive, negative, latent, seed=5, steps=2)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    assert state["n"] == 2 * LAYERS and hook.counts.get("sparse") == 2 * LAYERS, hook.counts
    assert H.rel_diff(out, H.sample(model, positive, negative, latent, seed=5, steps=2)) > 1e-3
    assert H.rel_diff(out, expected) < 1e-4

"""Wan variants with extra self-attention tokens or calls, on a real ComfyUI:
Fun-style reference tokens placed first, Phantom-style frames appended
through time_dim_concat, VACE's extra self-attention calls under one block
index. Each is patched with a mixed plan and checked against an oracle run."""
import pytest
import torch

import comfy_harness as H
from oracle import layer_oracle

pytestmark = pytest.mark.comfyui

LAYERS, HEADS, HEAD_DIM = 2, 4, 16
T, R, C = H.DEFAULT_GRID


def mixed_plan():
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal, Skip, VerticalStripe
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

    return Plan("mixed", ModelShape("wan", LAYERS, HEADS, HEAD_DIM),
                (LayerPattern((Diagonal(0), Full(), VerticalStripe((0,)), Skip())),
                 LayerPattern((MultiDiagonal(0, frames=1), Diagonal(1), Full(), MultiDiagonal(1)))), DenseSchedule(0.0))


def oracle_override(geometry, by_block_index: bool):
    """Self-attention as the float64 oracle of the plan; the layer from
    block_index, or from the call number when there is none."""
    plan, state = mixed_plan(), {"n": 0, "calls": 0}

    def override(func, *args, **kwargs):
        q, k, v = args[:3]
        if q.shape[1] == k.shape[1] == geometry.seq_len:
            index = kwargs["transformer_options"]["block_index"] if by_block_index else state["n"] % LAYERS
            state["n"] += 1
            shape = (q.shape[0], geometry.seq_len, HEADS, HEAD_DIM)
            out = layer_oracle(q.view(shape), k.view(shape), v.view(shape), plan.layers[index], geometry, 128, 64)
            return out.to(q.dtype).reshape(q.shape)
        return func(*args, **kwargs)
    return override, state


def run_both(model, positive, negative, geometry, by_block_index=False, steps=1):
    from sparse_vdit.integration.install import apply_plan

    override, state = oracle_override(geometry, by_block_index)
    expected = H.sample(H.install_attention_override(model, override), positive, negative, seed=5, steps=steps)
    patched = apply_plan(model, mixed_plan(), backend="reference")
    out = H.sample(patched, positive, negative, seed=5, steps=steps)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    return out, expected, hook, state


def test_fun_reference_tokens_come_first(comfy):
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0, extra_config={"in_dim_ref_conv": 16})
    positive, negative = H.make_conds(model, seed=1)
    reference = torch.randn(1, 16, 1, 2 * R, 2 * C, generator=torch.Generator().manual_seed(3))
    positive = [[positive[0][0], {"reference_latents": [reference]}]]
    negative = [[negative[0][0], {"reference_latents": [reference]}]]
    geometry = Geometry(T, R, C, prefix=R * C)
    out, expected, hook, state = run_both(model, positive, negative, geometry)
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4


def test_phantom_frames_appended_through_time_dim_concat(comfy):
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    extra = torch.randn(1, 16, 2, 2 * R, 2 * C, generator=torch.Generator().manual_seed(4))
    positive = [[positive[0][0], {"time_dim_concat": extra}]]
    negative = [[negative[0][0], {"time_dim_concat": extra}]]
    geometry = Geometry(T + 2, R, C)
    out, expected, hook, state = run_both(model, positive, negative, geometry)
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4


def test_vace_extra_self_attention_uses_its_block_pattern(comfy):
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0, config_class="WAN21_Vace",
                             extra_config={"model_type": "vace", "vace_layers": 1, "vace_in_dim": 96})
    positive, negative = H.make_conds(model, seed=1)
    geometry = Geometry(T, R, C)
    if not H.has_block_index():  # VACE calls cannot be told from layers: everything runs dense, nothing breaks
        from sparse_vdit.integration.install import apply_plan
        patched = apply_plan(model, mixed_plan(), backend="reference")
        out = H.sample(patched, positive, negative, seed=5, steps=1)
        hook = patched.model_options["transformer_options"]["optimized_attention_override"]
        assert "sparse" not in hook.counts and torch.equal(out, H.sample(model, positive, negative, seed=5, steps=1))
        return
    out, expected, hook, state = run_both(model, positive, negative, geometry, by_block_index=True)
    assert state["n"] == LAYERS + 1 and hook.counts.get("sparse") == LAYERS + 1, hook.counts  # the VACE call too
    assert H.rel_diff(out, expected) < 1e-4


@pytest.mark.parametrize("config_class,extra,channels", [
    ("WAN21_I2V", {"model_type": "i2v", "in_dim": 36}, 16),          # image latent concatenated as channels
    ("WAN22_T2V", {"in_dim": 48, "out_dim": 48}, 48),                # Wan2.2 TI2V 5B layout: 48-channel latent
], ids=["wan2.1-i2v", "wan2.2-ti2v"])
def test_other_wan_models_follow_the_plan(comfy, config_class, extra, channels):
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0, config_class=config_class, extra_config=extra)
    positive, negative = H.make_conds(model, seed=1)
    latent = torch.zeros(1, channels, T, 2 * R, 2 * C)
    from sparse_vdit.integration.install import apply_plan

    override, state = oracle_override(Geometry(T, R, C), by_block_index=False)
    expected = H.sample(H.install_attention_override(model, override), positive, negative, latent, seed=5, steps=1)
    patched = apply_plan(model, mixed_plan(), backend="reference")
    out = H.sample(patched, positive, negative, latent, seed=5, steps=1)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4

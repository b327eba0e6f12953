"""The patch next to what users combine it with: a LoRA-style weight patch
and EasyCache step caching."""
import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui


def mixed_plan():
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

    layer = LayerPattern((Diagonal(0), Full(), MultiDiagonal(1), Diagonal(1)))
    return Plan("mixed", ModelShape("wan", 2, 4, 16), (layer, layer), DenseSchedule(0.0))


def test_lora_weight_patches_apply_under_the_sparse_patch(comfy):
    """A LoRA is a weight patch on the ModelPatcher: the sparse patch leaves
    weights alone, so patching before or after the LoRA gives the same output,
    and the LoRA still changes it."""
    from sparse_vdit.integration.install import apply_plan

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    key = "diffusion_model.blocks.0.self_attn.q.weight"
    delta = torch.randn(model.model.state_dict()[key].shape, generator=torch.Generator().manual_seed(9)) * 0.05

    def with_lora(m):
        m = m.clone()
        m.add_patches({key: (delta,)}, 1.0)
        return m
    plain = H.sample(apply_plan(model, mixed_plan(), backend="reference"), positive, negative, seed=3, steps=2)
    lora_then_patch = H.sample(apply_plan(with_lora(model), mixed_plan(), backend="reference"), positive, negative, seed=3, steps=2)
    patch_then_lora = H.sample(with_lora(apply_plan(model, mixed_plan(), backend="reference")), positive, negative, seed=3, steps=2)
    assert torch.equal(lora_then_patch, patch_then_lora)
    assert H.rel_diff(lora_then_patch, plain) > 1e-4


def test_easycache_on_top_of_the_patch(comfy):
    """EasyCache skips some model calls; the ones that run are still sparse,
    and sampling completes."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    from sparse_vdit.integration.install import apply_plan

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    patched = apply_plan(model, mixed_plan(), backend="reference")
    cached = EasyCacheNode.execute(model=patched, reuse_threshold=3.0, start_percent=0.1, end_percent=0.95,
                                   verbose=False).result[0]
    out = H.sample(cached, positive, negative, seed=3, steps=8, cfg=1.0)
    hook = cached.model_options["transformer_options"]["optimized_attention_override"]
    assert torch.isfinite(out).all() and hook.counts.get("sparse", 0) > 0
    assert hook.counts["sparse"] % 2 == 0  # whole forwards: both layers each time
    assert hook.counts["sparse"] < 2 * 8, "EasyCache should have skipped some steps at this threshold"

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


def test_partial_loading_keeps_the_sparse_patch(comfy, monkeypatch):
    """ComfyUI's lowvram loading: modules that do not fit the memory budget
    stay offloaded and cast their weights per call (comfy_cast_weights; a
    LoRA on them becomes a per-call LowVramPatch). On CPU ComfyUI never
    picks a budget (load and offload device are the same), so the budget
    load_models_gpu would compute on a small GPU is forced into
    LoadedModel.model_load: the rest (partially_load, load, the ops' cast
    path) is ComfyUI's own. The patch must sample as the oracle does on the
    fully loaded model, and survive partially_unload, clone and unpatch."""
    import comfy.ops

    from plan_oracle import LAYERS
    from plan_oracle import mixed_plan as oracle_plan
    from plan_oracle import oracle_override
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    g = torch.Generator().manual_seed(9)
    for key in [k for k in model.model.state_dict() if k.endswith(("self_attn.q.weight", "self_attn.k.weight"))]:
        model.add_patches({key: (torch.randn(model.model.state_dict()[key].shape, generator=g) * 0.05,)}, 1.0)
    geometry, plan = Geometry(*H.DEFAULT_GRID), oracle_plan()
    override, _ = oracle_override(plan, lambda n: geometry if n == geometry.seq_len else None)
    expected = H.sample(H.install_attention_override(model, override), positive, negative, seed=5, steps=1)
    mm = comfy.model_management
    mm.unload_all_models()  # the oracle run loaded the model fully; start from nothing

    loads, casts = [], [0]
    original_load, original_cast = mm.LoadedModel.model_load, comfy.ops.cast_bias_weight

    def small_budget_load(self, lowvram_model_memory=0, force_patch_weights=False):
        # as load_models_gpu does: the extra memory is the budget less what is already loaded
        budget = self.model.model_size() // 4
        out = original_load(self, max(0.1, budget - self.model_loaded_memory()), force_patch_weights)
        modules = [m for m in self.model.model.modules() if hasattr(m, "comfy_cast_weights")]
        lora = sum(any(type(f).__name__ == "LowVramPatch" for f in m.weight_function) for m in modules)
        loads.append((self.model.model.model_lowvram, sum(m.comfy_cast_weights for m in modules), len(modules), lora))
        return out

    def counted_cast(*args, **kwargs):
        casts[0] += 1
        return original_cast(*args, **kwargs)
    monkeypatch.setattr(mm.LoadedModel, "model_load", small_budget_load)
    monkeypatch.setattr(comfy.ops, "cast_bias_weight", counted_cast)

    patched = apply_plan(model, plan, backend="reference")
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]

    def run_and_check(m, runs: int):
        before, loaded = casts[0], len(loads)
        out = H.sample(m, positive, negative, seed=5, steps=1)
        assert len(loads) == loaded + 1
        lowvram, cast, total, lora = loads[-1]
        assert lowvram and 0 < cast < total and lora > 0, loads[-1]  # partial: some modules offloaded, LoRA per call
        assert casts[0] > before, "no weight was cast per call: the model was not partially loaded"
        assert hook.counts.get("sparse") == runs * LAYERS, hook.counts
        assert H.rel_diff(out, expected) < 1e-4

    run_and_check(patched, 1)
    assert patched.partially_unload(patched.offload_device, patched.model_size()) > 0  # offload all it can
    run_and_check(patched, 2)
    clone = patched.clone()
    assert clone.model_options["transformer_options"]["optimized_attention_override"] is hook
    run_and_check(clone, 3)
    mm.unload_all_models()  # unpatch_model: weights restored, lowvram state wiped
    assert not any(getattr(m, "comfy_cast_weights", False) for m in patched.model.modules())
    run_and_check(patched, 4)
    mm.unload_all_models()

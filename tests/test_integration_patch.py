"""The Patch node on a real ComfyUI: a tiny Wan2.1 built from ComfyUI's own
classes, patched through the node's execute, sampled with comfy.sample."""
import copy
from dataclasses import replace

import pytest
import torch

import comfy_harness as H
from oracle import layer_oracle, rel_err
from plan_oracle import HEAD_DIM, HEADS, LAYERS, mixed_plan

pytestmark = pytest.mark.comfyui

GRID = H.DEFAULT_GRID  # 4 x 10 x 11 = 440 tokens per frame-batch


def later_layers():
    """What the ranged plan serves from half-way through the steps."""
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, Skip, VerticalStripe

    return (LayerPattern((Full(), Diagonal(0), Skip(), Diagonal(0))),
            LayerPattern((VerticalStripe((0,)), Full(), Diagonal(1), Full())))


def plans():
    from sparse_vdit.patterns import Full, LayerPattern
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan, StepRange

    shape = ModelShape("wan2.1 tiny", LAYERS, HEADS, HEAD_DIM)
    mixed = mixed_plan("wan2.1 tiny")
    return {
        "mixed": mixed,
        "ranged": replace(mixed, name="ranged", later_ranges=(StepRange(0.5, later_layers()),)),
        "full": Plan("full", shape, (LayerPattern((Full(),) * HEADS),) * LAYERS, DenseSchedule(0.0), {"kind": "static-baseline"}),
        "wrong": Plan("wrong", ModelShape("wan2.1 1.3b", 30, 12, 128), (LayerPattern((Full(),) * 12),) * 30),
    }


@pytest.fixture
def plan_folder(comfy, tmp_path, monkeypatch):
    """The node's plans folder points at a temporary folder holding the test plans."""
    from sparse_vdit.nodes import plan_files
    from sparse_vdit.plans.format import save_plan

    for name, plan in plans().items():
        save_plan(plan, str(tmp_path / f"{name}.json"))
    monkeypatch.setattr(plan_files, "user_plans_dir", lambda: str(tmp_path))
    monkeypatch.delitem(comfy.folder_paths.folder_names_and_paths, plan_files.FOLDER, raising=False)
    return tmp_path


def patch(model, plan_name, **inputs):
    from sparse_vdit.nodes.patch_node import SparseVDiTPatch

    inputs.setdefault("backend", "reference")  # the CPU has no kernel: check the exact path
    return SparseVDiTPatch.execute(model=model, plan=f"{plan_name}.json", **inputs).result[0]


def the_patch(model):
    from sparse_vdit.integration.sparse_patch import SparsePatch

    override = model.model_options["transformer_options"]["optimized_attention_override"]
    assert isinstance(override, SparsePatch)
    return override


@pytest.fixture
def setup(comfy):
    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    return model, positive, negative


@pytest.fixture
def spy(monkeypatch):
    """Every call that reaches the sparse path: inputs, compiled layer, output."""
    from sparse_vdit.integration import sparse_patch

    calls = []
    real = sparse_patch.layer_attention

    def layer_attention(q, k, v, compiled, **kwargs):
        out = real(q, k, v, compiled, **kwargs)
        calls.append(dict(q=q.detach().clone(), k=k.detach().clone(), v=v.detach().clone(), compiled=compiled,
                          out=out.detach().clone(), kwargs=kwargs))
        return out
    monkeypatch.setattr(sparse_patch, "layer_attention", layer_attention)
    return calls


def test_all_full_plan_gives_the_unpatched_output(setup, plan_folder):
    model, positive, negative = setup
    dense = H.sample(model, positive, negative, seed=3)
    patched = patch(model, "full")
    assert torch.equal(H.sample(patched, positive, negative, seed=3), dense)
    assert the_patch(patched).counts.get("sparse", 0) == 0


def test_mixed_plan_computes_the_reference_per_call(setup, plan_folder, spy):
    from sparse_vdit.patterns import Geometry, compile_layer

    model, positive, negative = setup
    plan = plans()["mixed"]
    patched = patch(model, "mixed")
    out = H.sample(patched, positive, negative, seed=3, steps=2, cfg=4.0)
    dense = H.sample(model, positive, negative, seed=3, steps=2, cfg=4.0)
    assert H.rel_diff(out, dense) > 1e-3, "the plan should change the output"

    geometry = Geometry(*GRID)
    expected = [compile_layer(plan.layers[i], geometry, "cpu") for i in range(LAYERS)]
    assert len(spy) == 2 * LAYERS  # 2 steps, cond+uncond batched: one call per layer per step
    for n, call in enumerate(spy):
        index = n % LAYERS
        assert call["compiled"] is expected[index], f"call {n} used the wrong layer's plan"
        assert call["q"].shape == (2, geometry.seq_len, HEADS * HEAD_DIM)  # cond and uncond together
        q, k, v = (x.view(2, geometry.seq_len, HEADS, HEAD_DIM) for x in (call["q"], call["k"], call["v"]))
        ref = layer_oracle(q, k, v, plan.layers[index], geometry, 128, 64)
        assert rel_err(call["out"].view_as(q), ref) < 1e-5
    assert the_patch(patched).counts["sparse"] == len(spy)


def test_mixed_plan_sample_matches_an_oracle_run(setup, plan_folder):
    """End to end: the patched sample equals a sample whose self-attention is
    the float64 oracle of the same plan (layer = call number mod layers)."""
    from sparse_vdit.patterns import Geometry

    model, positive, negative = setup
    plan, geometry = plans()["mixed"], Geometry(*GRID)
    counter = {"n": 0}

    def oracle_override(func, *args, **kwargs):
        q, k, v = args[:3]
        if q.shape[1] == k.shape[1] == geometry.seq_len:
            layer = plan.layers[counter["n"] % LAYERS]
            counter["n"] += 1
            shape = (q.shape[0], geometry.seq_len, HEADS, HEAD_DIM)
            out = layer_oracle(q.view(shape), k.view(shape), v.view(shape), layer, geometry, 128, 64)
            return out.to(q.dtype).reshape(q.shape)
        return func(*args, **kwargs)

    oracle_out = H.sample(H.install_attention_override(model, oracle_override), positive, negative, seed=5, steps=2)
    patched_out = H.sample(patch(model, "mixed"), positive, negative, seed=5, steps=2)
    assert counter["n"] == 2 * LAYERS
    assert H.rel_diff(patched_out, oracle_out) < 1e-4


def test_step_ranges_switch_patterns_at_their_step(setup, plan_folder):
    """A plan read from a file whose patterns change half-way: steps 0-1 of 4
    follow the first range, steps 2-3 the later one, as a float64 oracle
    that knows nothing of step ranges computes them."""
    from sparse_vdit.patterns import Geometry

    model, positive, negative = setup
    first, later, geometry = plans()["mixed"].layers, later_layers(), Geometry(*GRID)
    counter = {"n": 0}

    def oracle_override(func, *args, **kwargs):
        q, k, v = args[:3]
        if q.shape[1] == k.shape[1] == geometry.seq_len:
            step, index = divmod(counter["n"], LAYERS)  # cond and uncond batched: one call per layer and step
            layer = (first if step < 2 else later)[index]
            counter["n"] += 1
            shape = (q.shape[0], geometry.seq_len, HEADS, HEAD_DIM)
            return layer_oracle(*(x.view(shape) for x in (q, k, v)), layer, geometry, 128, 64).to(q.dtype).reshape(q.shape)
        return func(*args, **kwargs)

    oracle_out = H.sample(H.install_attention_override(model, oracle_override), positive, negative, seed=5, steps=4)
    patched = patch(model, "ranged")
    patched_out = H.sample(patched, positive, negative, seed=5, steps=4)
    assert counter["n"] == 4 * LAYERS and the_patch(patched).counts["sparse"] == 4 * LAYERS
    assert H.rel_diff(patched_out, oracle_out) < 1e-4
    # the same plan with its first range everywhere is a different run: the switch mattered
    assert H.rel_diff(patched_out, H.sample(patch(model, "mixed"), positive, negative, seed=5, steps=4)) > 1e-3


def test_cross_attention_never_reaches_the_sparse_path_and_previous_override_is_chained(setup, plan_folder, spy):
    model, positive, negative = setup
    before = H.record_attention_calls(model)  # stands in for a Sage-style patch installed earlier
    patched = patch(before.model, "mixed")
    H.sample(patched, positive, negative, seed=3, steps=2, cfg=4.0)
    tokens = GRID[0] * GRID[1] * GRID[2]
    assert spy and all(c["q"].shape[1] == c["k"].shape[1] == tokens for c in spy)
    cross = before.cross_attention()
    assert len(cross) == 2 * LAYERS and all(c.k_len == H.TEXT_LEN for c in cross)
    # full heads of served calls went to the earlier override too, as one group per layer
    full_groups = [c for c in before.calls if c.k_len == tokens and c.heads != HEADS]
    assert [c.heads for c in full_groups] == [1, 1] * 2
    assert not [c for c in before.calls if c.k_len == tokens and c.heads == HEADS]  # whole calls were served


def test_override_installed_after_the_patch_is_still_called(setup, plan_folder, spy):
    model, positive, negative = setup
    patched = patch(model, "mixed")
    after = H.record_attention_calls(patched)  # a later node replaces the override slot
    H.sample(after.model, positive, negative, seed=3, steps=1, cfg=4.0)
    assert len(spy) == LAYERS, "the patch must stay on top of a later override"
    assert len(after.cross_attention()) == LAYERS


def test_mismatched_plan_raises_before_sampling_and_leaves_model_untouched(setup, plan_folder):
    from sparse_vdit.plans.format import PlanError

    model, _, _ = setup
    options_before = copy.deepcopy(model.model_options)
    wrappers_before = copy.deepcopy(model.wrappers)
    with pytest.raises(PlanError, match=r"30 layers x 12 heads x head_dim 128.*2 layers x 4 heads x head_dim 16"
                                        r".*Plans that fit it: full.json, mixed.json"):
        patch(model, "wrong")
    assert model.model_options == options_before and model.wrappers == wrappers_before
    with pytest.raises(PlanError, match="no plan named"):
        patch(model, "missing")


def test_patch_does_not_change_the_input_model(setup, plan_folder):
    model, positive, negative = setup
    dense = H.sample(model, positive, negative, seed=3, steps=1)
    patch(model, "mixed")
    assert "optimized_attention_override" not in model.model_options.get("transformer_options", {})
    assert torch.equal(H.sample(model, positive, negative, seed=3, steps=1), dense)


def test_runs_without_block_index(setup, plan_folder, spy):
    """Layers found by counting calls when block_index is missing (ComfyUI
    before 0.5.0): strip it with a block-replace patch and expect the same."""
    model, positive, negative = setup
    patched = patch(model, "mixed")
    with_index = H.sample(patched, positive, negative, seed=7, steps=1)
    stripped = patched.clone()

    def without_block_index(args, extra):
        options = dict(args["transformer_options"])
        options.pop("block_index", None)
        return extra["original_block"](dict(args, transformer_options=options))
    for i in range(LAYERS):
        stripped.set_model_patch_replace(without_block_index, "dit", "double_block", i)
    spy.clear()
    assert torch.equal(H.sample(stripped, positive, negative, seed=7, steps=1), with_index)
    assert len(spy) == LAYERS


def test_dense_warmup_and_cfg1(setup, plan_folder, spy):
    model, positive, negative = setup
    all_dense = patch(model, "mixed", dense_warmup=1.0)
    assert torch.equal(H.sample(all_dense, positive, negative, seed=3, steps=2),
                       H.sample(model, positive, negative, seed=3, steps=2))
    assert not spy
    half = patch(model, "mixed", dense_warmup=0.5)
    H.sample(half, positive, negative, seed=3, steps=4, cfg=1.0)  # cfg 1: cond only, B = 1
    assert len(spy) == 2 * LAYERS and all(c["q"].shape[0] == 1 for c in spy)


def test_batch_of_two_latents(setup, plan_folder, spy):
    model, positive, negative = setup
    out = H.sample(patch(model, "mixed"), positive, negative, H.empty_latent(batch=2), seed=3, steps=1, cfg=4.0)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert spy and spy[0]["q"].shape[0] == 4  # 2 latents x (cond, uncond)


def test_disabled_passes_model_through(setup, plan_folder):
    model, _, _ = setup
    assert patch(model, "mixed", enabled=False) is model


def test_auto_backend_on_cpu_runs_dense(setup, plan_folder, spy):
    """No kernel on the CPU: auto must not slow the generation down with the
    reference path; it runs dense, logged once."""
    model, positive, negative = setup
    patched = patch(model, "mixed", backend="auto")
    out = H.sample(patched, positive, negative, seed=3, steps=1)
    assert not spy and torch.equal(out, H.sample(model, positive, negative, seed=3, steps=1))


def test_patched_model_survives_torch_compile(setup, plan_folder, spy):
    """ComfyUI's own torch.compile wrapper around a patched model: no
    graph-break error, the sparse path still runs, same output as eager."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    model, positive, negative = setup
    patched = patch(model, "mixed")
    eager = H.sample(patched, positive, negative, seed=3, steps=1)
    compiled = patched.clone()
    set_torch_compile_wrapper(model=compiled, backend="aot_eager")
    spy.clear()
    out = H.sample(compiled, positive, negative, seed=3, steps=1)
    assert len(spy) == LAYERS
    assert H.rel_diff(out, eager) < 1e-5

"""The patch stacked with what ComfyUI >= 0.32 offers on the same hook:
the ModelAttentionBackend node, and core's sparse attention node (through a
faithful stand-in: see core_sparse_standin.py), each before and after ours.
In every order ours serves the video self-attention of the layers its plan
covers, and everything it declines (cross-attention, full heads, all-full
layers) goes to the other node."""
import pytest
import torch

import comfy_harness as H
from core_sparse_standin import apply_core_sparse_standin, standin_attention
from oracle import layer_oracle
from plan_oracle import HEAD_DIM, mixed_plan

pytestmark = pytest.mark.comfyui


def grid_oracle(plan, full_heads):
    """The override computing what the stack should give: for Wan
    self-attention, the plan's float64 oracle with its full heads computed
    by full_heads([B, h, L, D] q, k, v); every other call as it came."""
    from sparse_vdit.patterns import Full, Geometry

    geometry = Geometry(*H.DEFAULT_GRID)
    state = {"n": 0}

    def override(func, q, k, v, heads=None, **kwargs):
        if q.shape[1] != k.shape[1] or q.shape[1] != geometry.seq_len:
            return func(q, k, v, heads=heads, **kwargs)
        index = kwargs["transformer_options"].get("block_index")  # counted before ComfyUI 0.5.0
        layer = plan.layers[state["n"] % len(plan.layers) if index is None else index]
        state["n"] += 1
        b = q.shape[0]
        q4, k4, v4 = (x.view(b, geometry.seq_len, heads, -1) for x in (q, k, v))
        out = layer_oracle(q4, k4, v4, layer, geometry, 128, 64)
        full = [h for h, mode in enumerate(layer.heads) if isinstance(mode, Full)]
        if full:
            dense = full_heads(*(x[:, :, full].transpose(1, 2) for x in (q4, k4, v4)))
            out[:, :, full] = dense.transpose(1, 2).to(out.dtype)
        return out.to(q.dtype).reshape(b, geometry.seq_len, -1)
    return override, state


def our_hook(override):
    """Our hook: on the hook itself, or the `previous` a core override wraps."""
    if hasattr(override, "counts"):
        return override
    return next(cell.cell_contents for cell in override.__closure__ or () if hasattr(cell.cell_contents, "counts"))


@pytest.mark.parametrize("order", ["core node before ours", "core node after ours"])
def test_core_sparse_node_serves_what_ours_declines(comfy, order):
    from sparse_vdit.integration.install import apply_plan

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    plan = mixed_plan("wan")
    if order == "core node before ours":
        core_patched, core = apply_core_sparse_standin(model, HEAD_DIM)
        stacked = apply_plan(core_patched, plan, backend="reference")
    else:
        core_patched, core = apply_core_sparse_standin(apply_plan(model, plan, backend="reference"), HEAD_DIM)
        stacked = core_patched
    out = H.sample(stacked, positive, negative, seed=3, steps=2)
    override, state = grid_oracle(plan, standin_attention)
    expected = H.sample(H.install_attention_override(model, override), positive, negative, seed=3, steps=2)
    ours = our_hook(stacked.model_options["transformer_options"]["optimized_attention_override"])
    assert ours.counts.get("sparse") == state["n"] > 0, ours.counts
    assert core.served == state["n"], "the core node serves exactly our full heads (one call per layer call)"
    assert H.rel_diff(out, expected) < 1e-4


@pytest.mark.parametrize("order", ["backend before ours", "backend after ours"])
def test_model_attention_backend(comfy, order, monkeypatch):
    """ModelAttentionBackend (ComfyUI >= 0.32) sets the hook through
    set_model_optimized_attention: in either order the plan's sparse heads
    are ours and every other call runs on the chosen backend."""
    import comfy.ldm.modules.attention as attention

    try:
        from comfy_extras.nodes_model_advanced import ModelAttentionBackend
    except ImportError:
        ModelAttentionBackend = None
    if ModelAttentionBackend is None:
        assert H.version_tuple() < (0, 32), "this ComfyUI should have ModelAttentionBackend"
        return
    from sparse_vdit.integration.install import apply_plan

    real = attention.get_attention_function
    calls = {"n": 0}

    def counting(name, default=None):
        function = real(name, default)

        def counted(*args, **kwargs):
            calls["n"] += 1
            return function(*args, **kwargs)
        return counted
    monkeypatch.setattr(attention, "get_attention_function", counting)
    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    plan = mixed_plan("wan")
    node = ModelAttentionBackend()
    if order == "backend before ours":
        stacked = apply_plan(node.patch(model, "pytorch attention")[0], plan, backend="reference")
    else:
        stacked = node.patch(apply_plan(model, plan, backend="reference"), "pytorch attention")[0]
    out = H.sample(stacked, positive, negative, seed=3, steps=2)
    override, state = grid_oracle(plan, lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    expected = H.sample(H.install_attention_override(model, override), positive, negative, seed=3, steps=2)
    # Cross-attention (2 per step: cond and uncond batched, 2 layers) and the
    # full heads of each served call went to the backend.
    assert calls["n"] >= 2 * 2 + state["n"], calls
    assert H.rel_diff(out, expected) < 1e-4

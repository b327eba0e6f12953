"""What the per-model integration tests share: the mixed plan every tiny
model is patched with, an attention override that computes that plan's
float64 oracle instead of attention, and the run comparing the two."""
from __future__ import annotations

import comfy_harness as H
from oracle import layer_oracle

LAYERS, HEADS, HEAD_DIM = 2, 4, 16


def mixed_plan(family: str = "wan"):
    """Two layers, four heads: every mode, full heads not contiguous."""
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal, Skip, VerticalStripe
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

    return Plan(f"{family} mixed", ModelShape(family, LAYERS, HEADS, HEAD_DIM),
                (LayerPattern((Diagonal(0), Full(), VerticalStripe((0,)), Skip())),
                 LayerPattern((MultiDiagonal(0, frames=1), Diagonal(1), Full(), MultiDiagonal(1)))), DenseSchedule(0.0))


def oracle_override(plan, geometry_for, by_block_index: bool = False, double_layers: int = 0):
    """An override computing the plan's float64 oracle for every call that
    geometry_for(q_len) recognises (it returns that call's Geometry, or None
    for any other call, which runs as it came). The layer comes from
    block_index (single blocks after `double_layers`) or from the call number.
    Returns (override, state); state["n"] counts the calls it computed."""
    state = {"n": 0}

    def override(func, *args, **kwargs):
        q, k, v = args[:3]
        heads = kwargs["heads"] if "heads" in kwargs else args[3]
        bhld = bool(kwargs.get("skip_reshape"))
        q_len, k_len = (q.shape[2], k.shape[2]) if bhld else (q.shape[1], k.shape[1])
        geometry = geometry_for(q_len) if q_len == k_len else None
        if geometry is None:
            return func(*args, **kwargs)
        options = kwargs["transformer_options"]
        if by_block_index:
            index = options["block_index"] + (double_layers if options.get("block_type") == "single" else 0)
        else:
            index = state["n"] % len(plan.layers)
        state["n"] += 1
        q4, k4, v4 = (x.transpose(1, 2) if bhld else x.view(x.shape[0], q_len, heads, -1) for x in (q, k, v))
        out = layer_oracle(q4, k4, v4, plan.layers[index], geometry, 128, 64).to(q.dtype)
        if kwargs.get("skip_output_reshape"):
            return out.transpose(1, 2)  # [B, H, L, D], as Cosmos 1 asks
        return out.reshape(q4.shape[0], q_len, -1)  # [B, L, H*D]
    return override, state


def patched_and_oracle(model, positive, negative, plan, override, latent=None, steps: int = 1, cfg: float = 5.0):
    """(patched output, oracle output, the patch's hook), same seed."""
    from sparse_vdit.integration.install import apply_plan

    expected = H.sample(H.install_attention_override(model, override), positive, negative, latent, seed=5,
                        steps=steps, cfg=cfg)
    patched = apply_plan(model, plan, backend="reference")
    out = H.sample(patched, positive, negative, latent, seed=5, steps=steps, cfg=cfg)
    return out, expected, patched.model_options["transformer_options"]["optimized_attention_override"]


def check_grid_model(model, positive, negative, latent, geometry, family: str, calls: int, steps: int = 2) -> None:
    """A model whose self-attention covers exactly the video grid: the patched
    run serves every one of `calls` self-attention calls, differs from dense,
    and equals the oracle."""
    plan = mixed_plan(family)
    override, state = oracle_override(plan, lambda n: geometry if n == geometry.seq_len else None)
    out, expected, hook = patched_and_oracle(model, positive, negative, plan, override, latent, steps=steps)
    assert state["n"] == calls and hook.counts.get("sparse") == calls, hook.counts
    assert H.rel_diff(out, H.sample(model, positive, negative, latent, seed=5, steps=steps)) > 1e-3
    assert H.rel_diff(out, expected) < 1e-4

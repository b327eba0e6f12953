"""What the "Sparse-vDiT → Raylight" node installs on each Raylight worker.

A Raylight worker holds a ComfyUI ModelPatcher and runs ComfyUI's sampler
on it. `patch_worker` puts this pack's patch on it, exactly as the Patch
node does on one GPU (the attention override and forward wrapper: this is
what serves Raylight's CFG-parallel, data-parallel and FSDP modes, where
ComfyUI's own forward runs), plus an ON_LOAD callback that runs after
Raylight's own load-time patches: where Raylight's USP has replaced a Wan
block's self_attn.forward (its `usp_self_attn_forward`, which calls
xfuser's attention and never our override), the callback wraps it with the
Ulysses path of `ulysses.py`. Raylight re-applies its patches on every
load; so does the callback, after it.
"""
from __future__ import annotations

import logging

from ..plans.format import Plan, loads_plan
from . import ulysses
from .balance import balance_mode

KEY = "sparse_vdit_ulysses"
RAYLIGHT_FORWARD = "usp_self_attn_forward"
log = logging.getLogger("sparse_vdit")


def is_raylight_usp_forward(forward) -> bool:
    return getattr(getattr(forward, "__func__", forward), "__name__", "") == RAYLIGHT_FORWARD


def _apply_auto(model_patcher, folder: str, dense_warmup, backend: str):
    try:  # where the adapters refactor put it
        from ..integration.auto_patch import apply_auto
    except ImportError:
        from ..integration.install import apply_auto
    return apply_auto(model_patcher, folder, dense_warmup, backend)


def on_load_callback(balance: str, **settings):
    """settings: UlyssesState fields (sparse_cost, block_m, block_n, cost_model)."""
    def sparse_vdit_ulysses_on_load(model_patcher, *args, **kwargs):
        diffusion_model = model_patcher.model.diffusion_model
        wrapped = ulysses.install(diffusion_model, balance=balance, only=is_raylight_usp_forward, **settings)
        if wrapped:
            log.info("Sparse-vDiT: Ulysses path on %d Wan self-attention layers (head balancing %s).",
                     wrapped, balance)
    return sparse_vdit_ulysses_on_load


def patch_worker(model_patcher, plan: Plan | str, folder: str | None = None, dense_warmup: float | None = None,
                 backend: str = "auto", balance="auto", **settings):
    """A clone of a worker's model with the plan (or "auto", plans in
    `folder`) and the Ulysses callback. `plan` may be a Plan or its JSON;
    settings go to the Ulysses path (see on_load_callback)."""
    import comfy.patcher_extension as extension

    balance = balance_mode(balance)  # a bad setting fails before the model is cloned
    if isinstance(plan, str) and plan != "auto":
        plan = loads_plan(plan, source="plan sent to the worker")
    if plan == "auto":
        patched = _apply_auto(model_patcher, folder, dense_warmup, backend)
    else:
        from ..integration.install import apply_plan
        patched = apply_plan(model_patcher, plan, dense_warmup, backend)
    patched.remove_callbacks_with_key(extension.CallbacksMP.ON_LOAD, KEY)
    patched.add_callback_with_key(extension.CallbacksMP.ON_LOAD, KEY, on_load_callback(balance, **settings))
    return patched

"""Putting a hook on a ComfyUI model: a clone carries it, the model the user
connected is never changed, and nothing is changed at all when the plan
does not fit."""
from __future__ import annotations

import logging

from ..plans.format import DenseSchedule, Plan, PlanError
from .model_info import ModelInfo, describe_model
from .models import ADAPTERS
from .sparse_patch import SparsePatch
from .video_hook import OVERRIDE_KEY, VideoAttentionHook

SUPPORTED = ", ".join(adapter.__name__.removesuffix("Adapter") for adapter in ADAPTERS)

WRAPPER_KEY = "sparse_vdit"
log = logging.getLogger("sparse_vdit")


def check_warmup(dense_warmup: float | None) -> None:
    if dense_warmup is not None and dense_warmup > 1:
        raise ValueError(f"dense_warmup is a fraction of the steps (0 to 1), got {dense_warmup}")


def schedule_for(plan: Plan, dense_warmup: float | None) -> DenseSchedule:
    """The plan's dense steps, or a warm-up fraction the user chose (>= 0)."""
    check_warmup(dense_warmup)
    if dense_warmup is None or dense_warmup < 0:
        return plan.dense
    return DenseSchedule(float(dense_warmup), plan.dense.sigma_above)


def _model_name(model_patcher) -> str:
    return type(getattr(getattr(model_patcher, "model", None), "diffusion_model", None)).__name__


def require_model_info(model_patcher) -> ModelInfo:
    info = describe_model(model_patcher)
    if info is None:
        raise PlanError(f"{_model_name(model_patcher)} is not a model Sparse-vDiT supports yet "
                        f"(supported: {SUPPORTED}; see the README's model support table)")
    return info


def unsupported(model_patcher):
    """A model the pack does not understand: an unpatched clone, one log line."""
    log.warning("Sparse-vDiT: %s is not a model this pack supports yet; it runs dense, unpatched.",
                _model_name(model_patcher))
    return model_patcher.clone()


def install_hook(model_patcher, hook: VideoAttentionHook):
    """A clone of model_patcher with hook as its attention override and
    forward wrapper; the override that was there before is chained (an
    earlier hook of this pack is replaced, not stacked)."""
    import comfy.patcher_extension as extension

    previous = model_patcher.model_options.get("transformer_options", {}).get(OVERRIDE_KEY)
    if isinstance(previous, VideoAttentionHook):
        previous = previous.previous
    hook.previous = previous
    patched = model_patcher.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    for kind in (extension.WrappersMP.DIFFUSION_MODEL, extension.WrappersMP.APPLY_MODEL, extension.WrappersMP.OUTER_SAMPLE):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
    forward = extension.WrappersMP.APPLY_MODEL if hook.model.wrapper == "apply_model" else extension.WrappersMP.DIFFUSION_MODEL
    patched.add_wrapper_with_key(forward, WRAPPER_KEY, hook.wrap_forward)
    options[OVERRIDE_KEY] = hook
    return patched


def apply_plan(model_patcher, plan: Plan, dense_warmup: float | None = None, backend: str = "auto",
               precision: str = "bf16"):
    """Return a clone of model_patcher whose video self-attention follows plan.

    Raises PlanError (before any change) when the plan does not fit the model.
    A model the pack does not understand comes back as an unpatched clone,
    with one log line.
    """
    info = describe_model(model_patcher)
    if info is None:
        return unsupported(model_patcher)
    plan.check_model(info.layers, info.heads, info.head_dim, what=f"the connected model ({info.family})")
    schedule = schedule_for(plan, dense_warmup)
    patched = install_hook(model_patcher, SparsePatch(plan, info, schedule, backend=backend, precision=precision))
    log.info("Sparse-vDiT: plan '%s' on %s; dense steps: first %.0f%%.", plan.name, info.describe(),
             100 * schedule.warmup_fraction)
    return patched

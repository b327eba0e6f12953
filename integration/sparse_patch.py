"""The attention override and diffusion-model wrapper a Patch node installs.

One SparsePatch object per patched model. ComfyUI calls it for every
attention call of the model (`optimized_attention_override`); it serves a
call with the plan only when the call is the video self-attention of a
known layer, outside the dense warm-up, in a shape it supports. Everything
else (cross-attention, text encoders, masked calls, unknown shapes) goes
down the chain: the override that was installed before this one, or the
model's own attention function. A failure inside the sparse path also goes
down the chain, logged once, so a generation never crashes on it.
"""
from __future__ import annotations

import logging
import threading

from ..kernels import triton_backend
from ..kernels.dispatch import as_blhd, layer_attention
from ..patterns.layer import compile_layer
from ..plans.format import DenseSchedule, Plan
from .forward_info import KEY as FORWARD_KEY
from .forward_info import ForwardInfo, step_of, wan_geometry
from .model_info import ModelInfo

OVERRIDE_KEY = "optimized_attention_override"
# auto: the Triton kernel where it can serve the call, dense elsewhere.
# reference: the torch reference path everywhere (exact, slow: for checking).
BACKENDS = ("auto", "triton", "reference")
_ARG_NAMES = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
log = logging.getLogger("sparse_vdit")


def _find_transformer_options(args, kwargs) -> dict | None:
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        return options
    return args[-1] if args and isinstance(args[-1], dict) else None


class SparsePatch:
    def __init__(self, plan: Plan, model: ModelInfo, schedule: DenseSchedule, previous=None, backend: str = "auto"):
        self.plan = plan
        self.model = model
        self.schedule = schedule
        self.previous = previous  # the override installed before ours, or None
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.counts: dict[str, int] = {}  # how calls were served, for logs and tests
        self._logged: set[str] = set()
        self._local = threading.local()

    # ComfyUI deep-copies model_options on every clone: share one patch.
    def __deepcopy__(self, memo):
        return self

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def log_once(self, key: str, message: str, *args, level=logging.INFO) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, "Sparse-vDiT: " + message, *args)

    # ----- the chain -------------------------------------------------------
    def _chain(self, func, args, kwargs, info: ForwardInfo | None):
        """Run a call the way it would have run without this patch."""
        depth = getattr(self._local, "chaining", 0)
        target = self.previous
        # An override installed after ours is called first for this forward
        # (see wrap_forward); if it calls back into us, go straight on.
        if depth == 0 and info is not None and info.outer is not None:
            target = info.outer
        self._local.chaining = depth + 1
        try:
            return func(*args, **kwargs) if target is None else target(func, *args, **kwargs)
        finally:
            self._local.chaining = depth

    # ----- the override ----------------------------------------------------
    def __call__(self, func, *args, **kwargs):
        call = dict(zip(_ARG_NAMES, args))
        call.update(kwargs)
        options = call.get("transformer_options") or {}
        info = options.get(FORWARD_KEY)
        if getattr(self._local, "chaining", 0):
            return self._chain(func, args, kwargs, None)
        layer = self._layer_for(call, info, options)
        if layer is None:
            self._count("dense")
            return self._chain(func, args, kwargs, info)
        try:
            out = self._sparse(func, call, layer, info, kwargs)
        except Exception as error:  # never crash a generation on the sparse path
            self.log_once(f"error:{type(error).__name__}", "sparse attention failed (%s: %s); running dense.",
                          type(error).__name__, error, level=logging.WARNING)
            self._count("dense:error")
            return self._chain(func, args, kwargs, info)
        self._count("sparse")
        return out

    def _layer_for(self, call: dict, info: ForwardInfo | None, options: dict) -> int | None:
        """The plan layer this call belongs to, or None to run it dense."""
        q, k = call.get("q"), call.get("k")
        if info is None or q is None or k is None or call.get("heads") is None:
            return None
        seq_axis = 2 if call.get("skip_reshape") else 1
        q_len, k_len = q.shape[seq_axis], k.shape[seq_axis]
        if q_len != k_len or q_len != info.geometry.seq_len:
            if q_len == k_len and q_len > 1:
                self.log_once(f"len:{q_len}", "self-attention of %d tokens does not match the latent grid %s; it runs dense.",
                              q_len, info.geometry.describe())
            return None  # cross-attention or another module's attention
        # A video self-attention call: count it (models without block_index).
        info.self_attention_calls += 1
        index = options.get("block_index")
        if index is None:
            index = info.self_attention_calls - 1
        heads = int(call["heads"])
        head_dim = q.shape[-1] if call.get("skip_reshape") else q.shape[-1] // heads
        if call.get("mask") is not None:
            self.log_once("mask", "attention masks are not supported yet; masked calls run dense.")
            return None
        if (heads, head_dim) != (self.plan.model.heads, self.plan.model.head_dim):
            self.log_once(f"shape:{heads}x{head_dim}", "a call with %d heads x %d does not fit the plan (%s); it runs dense.",
                          heads, head_dim, self.plan.model.describe())
            return None
        if not 0 <= index < len(self.plan.layers):
            self.log_once(f"index:{index}", "layer %s is beyond the plan's %d layers; it runs dense.", index, len(self.plan.layers))
            return None
        if self.plan.layers[index].is_dense:
            return None  # an all-full layer is exactly the call as it came
        if self.backend == "auto" and not triton_backend.can_serve(as_blhd(q, "bhld" if call.get("skip_reshape") else "flat", heads)):
            # No fast kernel here (CPU, no Triton, odd head size): the reference
            # path would be slower than dense, so dense it is.
            self.log_once(f"no-kernel:{q.device.type}:{head_dim}:{q.dtype}", "no sparse kernel for %s %s head_dim %d; running dense.",
                          q.device.type, str(q.dtype).replace("torch.", ""), head_dim)
            return None
        if info.step is not None and self.schedule.is_dense(info.step, info.total_steps, info.sigma):
            self.log_once("warmup", "dense warm-up: the first %.0f%% of steps run dense.", 100 * self.schedule.warmup_fraction)
            return None
        return index

    def _sparse(self, func, call: dict, index: int, info: ForwardInfo, kwargs: dict):
        layout = "bhld" if call.get("skip_reshape") else "flat"
        out_layout = "bhld" if call.get("skip_output_reshape") else "flat"
        compiled = compile_layer(self.plan.layers[index], info.geometry, str(call["q"].device))
        passed_on = {k: v for k, v in kwargs.items() if k not in _ARG_NAMES}

        def dense(q, k, v):  # full heads: whatever attention the model would have used
            return self._chain(func, (q, k, v), dict(passed_on, heads=q.shape[1], skip_reshape=True,
                                                     skip_output_reshape=True), info)

        if "serving" not in self._logged:
            self.log_once("serving", "plan '%s' serving %s (layer %d density %.2f).", self.plan.name,
                          info.geometry.describe(), index, compiled.density())
        return layer_attention(call["q"], call["k"], call["v"], compiled, heads=int(call["heads"]), layout=layout,
                               out_layout=out_layout, dense_fn=dense,
                               backend="triton" if self.backend == "auto" else self.backend)

    # ----- the diffusion-model wrapper --------------------------------------
    def wrap_forward(self, executor, *args, **kwargs):
        """Record the latent grid and step for this forward, and make sure our
        override is the one ComfyUI calls (a later patch may have replaced it)."""
        options = _find_transformer_options(args, kwargs)
        x = args[0] if args else kwargs.get("x")
        if options is None or x is None or x.ndim != 5:
            self.log_once("no-grid", "could not read the latent grid; this model runs dense.")
            return executor(*args, **kwargs)
        time_dim_concat = args[4] if len(args) > 5 else kwargs.get("time_dim_concat")
        reference = kwargs.get("reference_latent") if getattr(executor.class_obj, "ref_conv", None) is not None else None
        step, total, sigma = step_of(options)
        if step is None:
            self.log_once("no-step", "the sampler gave no step schedule; the dense warm-up cannot apply.")
        info = ForwardInfo(wan_geometry(x, self.model.patch_size, time_dim_concat, reference), step, total, sigma)
        current = options.get(OVERRIDE_KEY)
        info.outer = current if current is not self else None
        options[FORWARD_KEY] = info
        options[OVERRIDE_KEY] = self
        try:
            return executor(*args, **kwargs)
        finally:
            options.pop(FORWARD_KEY, None)
            if current is None:
                options.pop(OVERRIDE_KEY, None)
            else:
                options[OVERRIDE_KEY] = current

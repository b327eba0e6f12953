"""What every attention hook of this pack shares: finding the video
self-attention calls among all the attention calls of a model, and passing
everything else down the chain untouched.

ComfyUI calls the hook for every attention call of the model
(`optimized_attention_override`). A call is the video self-attention of
layer i when its query and key lengths both equal the token count of the
current latent (recorded per forward by `wrap_forward`) and it carries
block_index i, or, without block_index (ComfyUI before 0.5.0), it is the
(i+1)-th such call of the forward. Everything else (cross-attention, text
encoders, masked calls, unknown shapes) goes down the chain: the override
that was installed before, or the model's own attention function.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace

import torch

from ..patterns.geometry import Geometry
from .forward_info import KEY as FORWARD_KEY
from .forward_info import ForwardInfo, hidden_key_run, step_of
from .model_info import ModelInfo

OVERRIDE_KEY = "optimized_attention_override"
ARG_NAMES = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
log = logging.getLogger("sparse_vdit")


def call_layout(call: dict) -> str:
    """ComfyUI's layout of a call's q/k/v: [B, H, L, D] under skip_reshape, else [B, L, H*D]."""
    return "bhld" if call.get("skip_reshape") else "flat"


def _find_transformer_options(args, kwargs) -> dict | None:
    """The forward's transformer_options: a keyword, or the last dict among
    the positional arguments (Wan puts it last, LTXV before keyframe_idxs)."""
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        return options
    return next((a for a in reversed(args) if isinstance(a, dict)), None)


class VideoAttentionHook:
    """Subclasses implement `handle(func, call, layer, info, args, kwargs)` for
    the video self-attention calls; `video_layer` may be extended."""

    def __init__(self, model: ModelInfo, previous=None):
        self.model = model
        self.previous = previous  # the override installed before ours, or None
        self.counts: dict[str, int] = {}  # how calls were served, for logs and tests
        self._logged: set[str] = set()
        self._local = threading.local()

    # ComfyUI deep-copies model_options on every clone: share one hook.
    def __deepcopy__(self, memo):
        return self

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def log_once(self, key: str, message: str, *args, level=logging.INFO) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, "Sparse-vDiT: " + message, *args)

    # ----- the chain -------------------------------------------------------
    def chain(self, func, args, kwargs, info: ForwardInfo | None):
        """Run a call the way it would have run without this hook."""
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

    @staticmethod
    def kept_tokens(call: dict) -> tuple[Geometry, tuple]:
        """The call's geometry and q, k, v without the keys its mask hides
        (padded text: one run inside the text span)."""
        geometry, hidden = call["geometry"], call.get("hidden")
        qkv = (call["q"], call["k"], call["v"])
        if hidden is None:
            return geometry, qkv
        start, end = hidden
        axis = 2 if call.get("skip_reshape") else 1
        if start >= geometry.prefix + geometry.video_tokens:
            kept = replace(geometry, suffix=geometry.suffix - (end - start))
        else:
            kept = replace(geometry, prefix=geometry.prefix - (end - start))
        if end == geometry.seq_len:
            return kept, tuple(x.narrow(axis, 0, start) for x in qkv)
        return kept, tuple(torch.cat([x.narrow(axis, 0, start), x.narrow(axis, end, x.shape[axis] - end)], axis)
                           for x in qkv)

    def dense_heads_fn(self, func, kwargs: dict, info: ForwardInfo):
        """A dense function over [B, h, L, D] for a group of heads of a call,
        through the chain, so full heads use the attention the model would have."""
        passed_on = {k: v for k, v in kwargs.items() if k not in ARG_NAMES}

        def dense(q, k, v):
            return self.chain(func, (q, k, v), dict(passed_on, heads=q.shape[1], skip_reshape=True,
                                                    skip_output_reshape=True), info)
        return dense

    # ----- the override ----------------------------------------------------
    # Under a user's torch.compile the hook runs eagerly (a clean graph break
    # around each attention call): its routing is Python over per-call facts,
    # and the Triton kernel is a custom op either way.
    @torch.compiler.disable
    def __call__(self, func, *args, **kwargs):
        if getattr(self._local, "chaining", 0):
            return self.chain(func, args, kwargs, None)
        call = dict(zip(ARG_NAMES, args))
        call.update(kwargs)
        options = call.get("transformer_options") or {}
        info = options.get(FORWARD_KEY)
        layer = self.video_layer(call, info, options)
        if layer is None:
            self.count("dense")
            return self.chain(func, args, kwargs, info)
        return self.handle(func, call, layer, info, args, kwargs)

    def handle(self, func, call: dict, layer: int, info: ForwardInfo, args, kwargs):
        raise NotImplementedError

    def declined_arguments(self, call: dict) -> str | None:
        """Keyword arguments (ComfyUI >= 0.2x) the sparse path does not
        compute: a call carrying them goes down the chain."""
        scale = call.get("scale")
        if scale is not None:
            head_dim = call["q"].shape[-1] if call.get("skip_reshape") else call["q"].shape[-1] // int(call["heads"])
            if abs(float(scale) - head_dim ** -0.5) > 1e-6 * head_dim ** -0.5:
                return f"scale={float(scale):.4g}"
        if call.get("enable_gqa"):
            return "enable_gqa"
        return None

    def video_layer(self, call: dict, info: ForwardInfo | None, options: dict) -> int | None:
        """The layer of a video self-attention call this hook can take, else
        None. Sets call["geometry"] (the grid plus any extra and text tokens
        of this call) and, for a mask hiding padded text, call["hidden"]: the
        (start, end) run of hidden keys, never empty."""
        q, k = call.get("q"), call.get("k")
        if info is None or not torch.is_tensor(q) or not torch.is_tensor(k) or call.get("heads") is None:
            return None
        seq_axis = 2 if call.get("skip_reshape") else 1
        q_len, k_len = q.shape[seq_axis], k.shape[seq_axis]
        tokens = self.model.place(q_len, info.geometry) if q_len == k_len else None
        if tokens is None:
            if q_len == k_len and q_len > 1 and self.model.text == "none":
                self.log_once(f"len:{q_len}", "self-attention of %d tokens does not match the latent grid %s; it runs dense.",
                              q_len, info.geometry.describe())
            return None  # cross-attention, a text refiner, or another module's attention
        contradiction = self.model.disagreement(tokens, options)
        if contradiction is not None:
            self.log_once(f"contradiction:{contradiction}", "%s; this call runs dense.", contradiction)
            return None
        # A video self-attention call: count it (models without block_index).
        info.self_attention_calls += 1
        index = self.model.layer_of(options, info.self_attention_calls - 1 if info.countable else None)
        if index is None:
            self.log_once("uncountable", "this model makes extra self-attention calls (VACE) and ComfyUI gives no "
                          "block_index (needs ComfyUI >= 0.5.0): it runs dense.")
            return None
        declined = self.declined_arguments(call)
        if declined is not None:
            self.log_once(f"kwarg:{declined}", "a self-attention call with %s is not one the sparse path computes; "
                          "it runs dense.", declined)
            return None
        heads = int(call["heads"])
        head_dim = q.shape[-1] if call.get("skip_reshape") else q.shape[-1] // heads
        if call.get("mask") is not None:
            hidden = hidden_key_run(call["mask"], q_len)
            span = tokens.text_span
            if hidden is not None and hidden[0] < hidden[1]:
                if span is None or not span[0] <= hidden[0] < hidden[1] <= span[1]:
                    hidden = None  # it hides something other than padded text
                else:
                    call["hidden"] = hidden  # only a non-empty run is recorded
            if hidden is None:
                self.log_once("mask", "this attention mask is not one the sparse path supports; masked calls run dense.")
                return None
        if (heads, head_dim) != (self.model.heads, self.model.head_dim):
            self.log_once(f"shape:{heads}x{head_dim}", "a call with %d heads x %d does not fit %s; it runs dense.",
                          heads, head_dim, self.model.describe())
            return None
        if not 0 <= index < self.model.layers:
            self.log_once(f"index:{index}", "layer %s is beyond the model's %d layers; it runs dense.", index, self.model.layers)
            return None
        call["geometry"] = tokens.geometry
        return index

    # ----- the diffusion-model wrapper --------------------------------------
    def wrap_forward(self, executor, *args, **kwargs):
        """Record the latent grid and step for this forward, and make sure our
        override is the one ComfyUI calls (a later patch may have replaced it)."""
        options = _find_transformer_options(args, kwargs)
        x = args[0] if args else kwargs.get("x")
        if options is None or x is None or x.ndim != 5:
            self.log_once("no-grid", "could not read the latent grid; this model runs dense.")
            return executor(*args, **kwargs)
        step, total, sigma = step_of(options)
        if step is None:
            self.log_once("no-step", "the sampler gave no step schedule; step-dependent settings cannot apply.")
        # The diffusion model (the apply_model wrapper's object holds it).
        diffusion_model = getattr(executor.class_obj, "diffusion_model", executor.class_obj)
        info = ForwardInfo(self.model.forward_geometry(diffusion_model, x, args, kwargs), step, total, sigma,
                           countable=self.model.countable(diffusion_model))
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

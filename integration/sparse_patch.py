"""The hook a Patch node installs: video self-attention follows the plan.

It serves a video self-attention call with the plan's patterns unless the
layer is all full, the step is in the dense warm-up, or no kernel can serve
it here (then it runs dense: the reference path would be slower). A failure
inside the sparse path also runs the call dense, logged once, so a
generation never crashes on it.
"""
from __future__ import annotations

import logging

import torch

from ..kernels import triton_backend
from ..kernels.dispatch import PRECISIONS, as_blhd, layer_attention
from ..patterns.layer import compile_layer
from ..plans.format import DenseSchedule, Plan
from .forward_info import ForwardInfo
from .model_info import ModelInfo
from .video_hook import VideoAttentionHook, call_layout

# auto: the Triton kernel where it can serve the call, dense elsewhere.
# reference: the torch reference path everywhere (exact, slow: for checking).
BACKENDS = ("auto", "triton", "reference")


class SparsePatch(VideoAttentionHook):
    def __init__(self, plan: Plan, model: ModelInfo, schedule: DenseSchedule, previous=None, backend: str = "auto",
                 precision: str = "bf16"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        super().__init__(model, previous)
        self.plan = plan
        self.schedule = schedule
        self.backend = backend
        self.precision = precision  # kernels/dispatch.py: bf16, 8-bit or auto

    def layer_pattern(self, layer: int, info: ForwardInfo):
        """This step's pattern of a layer (plans may change with the step)."""
        if self.plan.later_ranges and info.step is None:
            self.log_once("no-step-ranges", "the sampler gave no step schedule: the first step range of plan '%s' "
                          "serves every step.", self.plan.name)
        return self.plan.layers_at(info.step, info.total_steps)[layer]

    def pattern_for(self, layer: int, info: ForwardInfo):
        """This step's pattern of a layer, or None where the call runs as it
        came (an all-full layer, the dense warm-up). The same answer for
        every caller with the same plan, step and layer (every Ulysses rank)."""
        if self.plan is None or not 0 <= layer < len(self.plan.layers):
            return None
        pattern = self.layer_pattern(layer, info)
        if pattern.is_dense:
            return None  # an all-full layer is exactly the call as it came
        if info.step is not None and self.schedule.is_dense(info.step, info.total_steps, info.sigma):
            self.log_once("warmup", "dense warm-up: the first %.0f%% of steps run dense.", 100 * self.schedule.warmup_fraction)
            return None
        return pattern

    def serves(self, call: dict, layer: int, info: ForwardInfo) -> bool:
        if self.pattern_for(layer, info) is None:
            return False
        q = call["q"]
        if self.backend == "auto" and not triton_backend.can_serve(as_blhd(q, call_layout(call), int(call["heads"]))):
            # No fast kernel here (CPU, no Triton, odd head size): the reference
            # path would be slower than dense, so dense it is.
            self.log_once(f"no-kernel:{q.device.type}:{q.shape[-1]}:{q.dtype}", "no sparse kernel for %s %s q of %s; running dense.",
                          q.device.type, str(q.dtype).replace("torch.", ""), tuple(q.shape))
            return False
        return True

    def handle(self, func, call: dict, layer: int, info: ForwardInfo, args, kwargs):
        if not self.serves(call, layer, info):
            self.count("dense")
            return self.chain(func, args, kwargs, info)
        try:
            out = self._sparse(func, call, layer, info, kwargs)
        except Exception as error:  # never crash a generation on the sparse path
            self.log_once(f"error:{type(error).__name__}", "sparse attention failed (%s: %s); running dense.",
                          type(error).__name__, error, level=logging.WARNING)
            self.count("dense:error")
            return self.chain(func, args, kwargs, info)
        self.count("sparse")
        return out

    def call_precision(self, call: dict) -> str:
        """The model may ask for full precision on a call (ComfyUI >= 0.2x:
        low_precision_attention=False): then no 8-bit for it."""
        if call.get("low_precision_attention") is False and self.precision != "bf16":
            self.log_once("low-precision-off", "a call asks for full-precision attention: it runs in bf16.")
            return "bf16"
        return self.precision

    def _sparse(self, func, call: dict, index: int, info: ForwardInfo, kwargs: dict):
        geometry, (q, k, v) = self.kept_tokens(call)
        heads, layout = int(call["heads"]), call_layout(call)
        out_layout = "bhld" if call.get("skip_output_reshape") else "flat"
        compiled = compile_layer(self.layer_pattern(index, info), geometry, str(q.device))
        if "serving" not in self._logged:
            self.log_once("serving", "plan '%s' serving %s (layer %d density %.2f).", self.plan.name,
                          geometry.describe(), index, compiled.density())
        dense = self.dense_heads_fn(func, kwargs, info)
        # 8-bit also serves full heads unless another override is chained before ours (a Sage patch keeps them)
        chained = self.previous is not None or (info is not None and info.outer is not None)
        out = layer_attention(q, k, v, compiled, heads=heads, layout=layout, out_layout=out_layout, dense_fn=dense,
                              backend="triton" if self.backend == "auto" else self.backend,
                              precision=self.call_precision(call), full_heads_8bit=not chained)
        hidden = call.get("hidden")
        if hidden is None:
            return out
        # Queries of padded text tokens: dense over the kept keys, as the mask
        # had it, put back where they were.
        start, end = hidden
        q_pad = as_blhd(call["q"], layout, heads)[:, start:end].transpose(1, 2)
        tail = dense(q_pad, as_blhd(k, layout, heads).transpose(1, 2), as_blhd(v, layout, heads).transpose(1, 2))
        if out_layout == "bhld":
            return torch.cat([out[:, :, :start], tail, out[:, :, start:]], dim=2)
        tail = tail.transpose(1, 2).reshape(tail.shape[0], end - start, -1)
        return torch.cat([out[:, :start], tail, out[:, start:]], dim=1)

"""A stand-in for ComfyUI core's "Model Sparse Attention" node
(comfy_extras/nodes_sparse_attention.py, after 0.33.0; not in any tree we
can import), written from reading its public source: what matters for
composing with it is how it sits on the override hook, not its kernel.

Faithful parts: its override wraps the override that was on the hook
(`previous`, or ComfyUI's function), declines masked calls, calls shorter
than min_tokens, other head sizes and q/k/v of different shapes (cross
attention); it is installed on top at patch time and again from an
ON_PREPARE_STATE callback unless one of its own overrides is already on top.
Replaced part: by default its INT8 Sol-Attn kernel (CUDA only) by a CPU
stand-in, attention at half temperature, so a test can tell which calls it
served; the GPU head-to-head (yardstick/head_to_head.py) passes the real
comfy-kitchen kernel as `kernel`, with the node's sigma window."""
from __future__ import annotations

import torch

CALLBACK_KEY = "core_sparse_standin"


def standin_attention(q, k, v):
    """[B, H, L, D] -> [B, H, L, D]: softmax(q k^T * scale / 2) v, float64."""
    scale = q.shape[-1] ** -0.5 / 2
    weights = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, dim=-1)
    return (weights @ v.double()).to(q.dtype)


class StandinPatch:
    """kernel: [B, H, L, D] q, k, v -> [B, H, L, D]. sigma_start: calls at a
    larger sigma run dense (the node's start_percent, as a sigma)."""

    def __init__(self, head_dim: int, min_tokens: int = 0, kernel=standin_attention, sigma_start: float | None = None):
        self.head_dim, self.min_tokens = head_dim, min_tokens
        self.kernel, self.sigma_start = kernel, sigma_start
        self.installed = set()
        self.served = 0

    def outside_window(self, transformer_options) -> bool:
        sigmas = (transformer_options or {}).get("sigmas")
        return self.sigma_start is not None and sigmas is not None and float(sigmas[0]) > self.sigma_start

    def make_override(self, previous):
        def override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                     skip_output_reshape=False, **kwargs):
            def dense():
                kw = dict(mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                          skip_output_reshape=skip_output_reshape, **kwargs)
                return func(q, k, v, heads, **kw) if previous is None else previous(func, q, k, v, heads, **kw)
            tokens = q.shape[2] if skip_reshape else q.shape[1]
            if (mask is not None or tokens < self.min_tokens or q.shape != k.shape or q.shape != v.shape
                    or self.outside_window(kwargs.get("transformer_options"))):
                return dense()
            if skip_reshape:
                qs, ks, vs = q, k, v
            else:
                b = q.shape[0]
                qs, ks, vs = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
            if qs.shape[-1] != self.head_dim:
                return dense()
            self.served += 1
            out = self.kernel(qs, ks, vs)
            if skip_output_reshape:
                return out
            return out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])
        return override

    def install(self, transformer_options: dict) -> None:
        current = transformer_options.get("optimized_attention_override")
        if current in self.installed:
            return
        override = self.make_override(current)
        self.installed.add(override)
        transformer_options["optimized_attention_override"] = override


def apply_core_sparse_standin(model_patcher, head_dim: int, min_tokens: int = 0, kernel=standin_attention,
                              sigma_start: float | None = None):
    """What the node's execute does to a MODEL: a clone with the override on
    top, re-installed at every ON_PREPARE_STATE."""
    import comfy.patcher_extension as extension

    patch = StandinPatch(head_dim, min_tokens, kernel, sigma_start)
    m = model_patcher.clone()
    patch.install(m.model_options["transformer_options"])

    def on_prepare_state(model_patcher, timestep, model_options=None):
        # ComfyUI before 0.2x passes no model_options (the node needs newer;
        # on older trees this is a generic re-installing node).
        options = model_options if model_options is not None else model_patcher.model_options
        patch.install(options["transformer_options"])
    m.add_callback_with_key(extension.CallbacksMP.ON_PREPARE_STATE, CALLBACK_KEY, on_prepare_state)
    return m, patch

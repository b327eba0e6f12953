"""What the Triton kernels share: the optional Triton import, the
interpreter switch, and the per-block online-softmax step of the 16-bit
kernels (triton_sparse.py one row per program, triton_sparse_rows.py
several). No kernel module imports another's kernels through here."""
from __future__ import annotations

import os

try:  # Triton is optional: without it the dispatcher uses the reference path.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except Exception:  # pragma: no cover - older Triton
    TensorDescriptor = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:

    @triton.jit
    def _attend_block(acc, m_i, l_i, q, k, v, qk_scale, kv_start, seq_len,
                      MASK_KV: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr):
        # Scores in log2 units: exp2(s * scale * log2 e - m) == exp(s * scale - m').
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        if MASK_KV:
            cols = kv_start + tl.arange(0, BLOCK_N)
            s = tl.where((cols < seq_len)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        return acc, m_new, l_i

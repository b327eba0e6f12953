"""Bridge from the dispatcher to the Triton kernel, imported lazily so a
machine without Triton (or without a GPU) still runs the reference path."""
from __future__ import annotations

import torch

from ..patterns.tables import BlockTable

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernel_module():
    try:
        from . import triton_sparse
    except Exception:  # triton missing or broken: the reference path serves
        return None
    return triton_sparse


def can_serve(q: torch.Tensor) -> bool:
    """q: [B, L, H, D]."""
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS or q.dtype not in SUPPORTED_DTYPES:
        return False
    module = _kernel_module()
    return module is not None and module.triton_available(q.device)


def run(q, k, v, out, table: BlockTable, tail=None) -> None:
    _kernel_module().sparse_attention_triton(q, k, v, out, table, tail=tail)


def _kernel8_module():
    try:
        from . import triton_sparse8
    except Exception:  # triton missing or broken
        return None
    return triton_sparse8


def ineligible8(q: torch.Tensor) -> str | None:
    """Why the 8-bit kernel cannot serve a call (None when it can). q: [B, L, H, D]."""
    module = _kernel8_module()
    if module is None:
        return "triton is not available"
    from ..patterns.tables import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N
    return module.ineligible_reason(q, DEFAULT_BLOCK_M, DEFAULT_BLOCK_N)


def run8(q, k, v, out, table: BlockTable) -> None:
    _kernel8_module().sparse_attention8_triton(q, k, v, out, table)

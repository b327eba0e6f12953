"""Dense attention for full heads: the fastest backend torch offers."""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - older torch
    sdpa_kernel = None

# cuDNN beats flash on Hopper at video lengths (DESIGN.md section 2); the
# others are there so unusual shapes still find a backend.
_CUDA_ORDER = None
if sdpa_kernel is not None:
    _CUDA_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                   SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v: [B, H, L, D]. Returns [B, H, L, D]."""
    if q.is_cuda and _CUDA_ORDER is not None:
        try:
            with sdpa_kernel(_CUDA_ORDER, set_priority=True):
                return F.scaled_dot_product_attention(q, k, v)
        except TypeError:  # torch without set_priority: let torch choose
            pass
    return F.scaled_dot_product_attention(q, k, v)

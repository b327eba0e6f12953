"""Video-like synthetic attention inputs for benchmarks: a realistic mix of
planted head shapes (see sparse_vdit.synthetic), in ComfyUI's [B, L, H*D]."""
from __future__ import annotations

import torch

from sparse_vdit.synthetic import planted_layer

# Roughly the mix the method reports: mostly local and same-place heads,
# some global-column heads, a few negligible and a few dense ones.
MIX = ("diagonal", "multi_diagonal", "diagonal", "multi_diagonal", "vertical_stripe", "diagonal", "multi_diagonal",
       "uniform", "diagonal", "multi_diagonal", "negligible", "multi_diagonal", "diagonal", "vertical_stripe",
       "multi_diagonal", "uniform", "diagonal", "multi_diagonal", "diagonal", "multi_diagonal")


def video_like_layer(geometry, heads: int, device, dtype):
    modes = [MIX[h % len(MIX)] for h in range(heads)]
    return planted_layer(modes, geometry, head_dim=128, batch=1, seed=7, dtype=dtype, device=device)

"""Static block masks a user could pick instead of a calibrated plan, drawn
at the density of the plan they are compared with (every head the same):

radial   Radial Attention's energy-decay rule: a query attends keys of
         frame distance d within a flattened spatial distance of
         band = c * F / 2^floor(log2(max(d, 1))) (F tokens per frame), so the
         band halves each time the frame distance doubles, and frames whose
         band is under one token are dropped (a query always keeps itself); c sets
         the density.
window   a sliding 3-D window: |dt| <= a frames, |dh| <= b and |dw| <= b
         latent tokens; (a, b) chosen for the density.

Masks are decided per token pair and rounded out to the kernel's blocks
(128 queries x 64 keys), as any block-sparse kernel must; the density is the
share of block pairs computed, the measure the plans use.
"""
from __future__ import annotations

import torch

from sparse_vdit.patterns import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, table_from_block_mask


def _coords(grid, device):
    t, h, w = grid
    idx = torch.arange(t * h * w, device=device)
    return idx // (h * w), (idx // w) % h, idx % w, idx % (h * w)


def _block_mask(grid, keep, block_m: int, block_n: int, device) -> torch.Tensor:
    """bool [n_q_blocks, n_k_blocks]: a block is kept when any token pair in it is."""
    ft, fh, fw, fs = _coords(grid, device)
    n = ft.numel()
    nq, nk = -(-n // block_m), -(-n // block_n)
    pad_k = nk * block_n - n
    out = torch.zeros(nq, nk, dtype=torch.bool, device=device)
    for qb in range(nq):
        rows = slice(qb * block_m, min(n, (qb + 1) * block_m))
        pairs = keep((ft[rows, None], fh[rows, None], fw[rows, None], fs[rows, None]), (ft, fh, fw, fs))
        any_q = pairs.any(0)
        if pad_k:
            any_q = torch.cat([any_q, any_q.new_zeros(pad_k)])
        out[qb] = any_q.view(nk, block_n).any(1)
    return out


def radial_mask(grid, c: float, block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N,
                device="cpu") -> torch.Tensor:
    per_frame = grid[1] * grid[2]

    def keep(q, k):
        d = (q[0] - k[0]).abs().clamp_min(1)
        band = c * per_frame / torch.exp2(torch.floor(torch.log2(d.float())))
        return ((band >= 1) | (q[0] == k[0])) & ((q[3] - k[3]).abs() <= band)

    return _block_mask(grid, keep, block_m, block_n, device)


def window_mask(grid, frames: int, side: int, block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N,
                device="cpu") -> torch.Tensor:
    def keep(q, k):
        return ((q[0] - k[0]).abs() <= frames) & ((q[1] - k[1]).abs() <= side) & ((q[2] - k[2]).abs() <= side)

    return _block_mask(grid, keep, block_m, block_n, device)


def block_density(mask: torch.Tensor, seq_len: int, block_m: int = DEFAULT_BLOCK_M,
                  block_n: int = DEFAULT_BLOCK_N) -> float:
    """Share of (query, key) token pairs the mask computes (partial tail blocks counted as they are)."""
    table = table_from_block_mask(mask.cpu()[None], (0,), seq_len, block_m, block_n)
    return float(table.computed_pairs()[0]) / seq_len ** 2


def mask_at_density(kind: str, grid, density: float, device="cpu") -> tuple[torch.Tensor, dict]:
    """The mask of `kind` whose density is nearest `density`, and its setting."""
    seq_len = grid[0] * grid[1] * grid[2]
    if kind == "radial":
        lo, hi = 0.0, 1.0
        for _ in range(18):  # density grows with c: bisect
            mid = (lo + hi) / 2
            if block_density(radial_mask(grid, mid, device=device), seq_len) < density:
                lo = mid
            else:
                hi = mid
        candidates = [(radial_mask(grid, c, device=device), {"c": round(c, 5)}) for c in (lo, hi)]
    elif kind == "window":
        candidates = []
        for a in range(grid[0]):  # per frame reach, bisect the side (density grows with it)
            lo, hi = 0, max(grid[1], grid[2]) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if block_density(window_mask(grid, a, mid, device=device), seq_len) < density:
                    lo = mid + 1
                else:
                    hi = mid
            candidates += [(window_mask(grid, a, b, device=device), {"frames": a, "side": b})
                           for b in {max(0, lo - 1), lo}]
    else:
        raise ValueError(f"unknown static mask {kind!r}")
    mask, setting = min(candidates, key=lambda m: abs(block_density(m[0], seq_len) - density))
    return mask, {**setting, "density": round(block_density(mask, seq_len), 4)}

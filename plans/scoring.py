"""Scoring candidates against dense attention, for one layer call.

For a sample of query blocks, the dense attention probabilities P are
computed once per head; every candidate's output follows from them without
another pass over the keys: per key block b, Z_b = P[:, b] V[b] and
r_b = sum P[:, b], and a candidate that lists key blocks K gives
O = sum_{b in K} Z_b / sum_{b in K} r_b -- exactly the kernel's function
(softmax over the listed blocks only), at n_key_blocks * D cost per row
instead of L * D.

Errors are raw mean squared errors; search.py normalises them by the
layer's output power (see ERROR_UNIT there).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from ..patterns import Geometry, Pattern, pattern_block_mask
from ..patterns.tables import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N
from .candidates import Candidate, max_top_frames

THUMB_ROWS, THUMB_COLS = 32, 64
_CHUNK_FLOATS = 1 << 26  # bounds the per-chunk probabilities and block sums


@dataclass
class LayerScores:
    sq_err: torch.Tensor        # float64 [H, C]: mean squared error of each candidate
    power: float                # mean square of the dense output (all heads, sampled rows)
    frame_mass: torch.Tensor    # float32 [H, F]: attention mass per key frame
    stripe_frames: torch.Tensor  # int64 [H, K]: key frames by mass, for stripe candidates
    thumbnails: torch.Tensor    # float16 [H, THUMB_ROWS, THUMB_COLS]: coarse attention maps


def sampled_query_blocks(n_q_blocks: int, fraction: float) -> torch.Tensor:
    """Evenly spread query blocks (deterministic), at least one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"query fraction must be in (0, 1], got {fraction}")
    count = max(1, min(n_q_blocks, round(n_q_blocks * fraction)))
    return torch.linspace(0, n_q_blocks - 1, count).round().long().unique()


@functools.lru_cache(maxsize=256)
def _block_mask(pattern: Pattern, geometry: Geometry, block_m: int, block_n: int) -> torch.Tensor:
    return pattern_block_mask(pattern, geometry, block_m, block_n)


def _bin_sum(x: torch.Tensor, bins: int, dim: int) -> torch.Tensor:
    """Sum x along dim into `bins` nearly equal groups."""
    n = x.shape[dim]
    edges = torch.linspace(0, n, bins + 1).long()
    index = torch.bucketize(torch.arange(n), edges[1:], right=True).clamp(max=bins - 1).to(x.device)
    shape = list(x.shape)
    shape[dim] = bins
    return torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(dim, index, x)


def score_layer(q: torch.Tensor, *args, **kwargs) -> LayerScores:
    """See _score_layer. On CUDA, float32 matmuls run as TF32 here (restored
    after): errors are judged at 1% of the layer's output power, far above
    TF32's rounding."""
    if not q.is_cuda:
        return _score_layer(q, *args, **kwargs)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return _score_layer(q, *args, **kwargs)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _score_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry,
                candidates: Sequence[Candidate], query_blocks: torch.Tensor,
                stripe_frames: torch.Tensor | None = None,
                block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N) -> LayerScores:
    """q, k, v: [B, L, H, D] of one layer call. stripe_frames [H, K]: the key
    frames stripe candidates use; None chooses them here by attention mass."""
    batch, seq_len, heads, head_dim = q.shape
    if seq_len != geometry.seq_len:
        raise ValueError(f"q has {seq_len} tokens, geometry {geometry.seq_len}")
    device = q.device
    n_kb = (seq_len + block_n - 1) // block_n
    blocks = query_blocks.tolist()
    rows = torch.cat([torch.arange(b * block_m, min((b + 1) * block_m, seq_len)) for b in blocks]).to(device)
    block_of_row = torch.cat([torch.full((min((b + 1) * block_m, seq_len) - b * block_m,), i)
                              for i, b in enumerate(blocks)]).to(device)
    n_rows = rows.numel()
    chunk = max(1, _CHUNK_FLOATS // (batch * max(seq_len, n_kb * head_dim)))
    pad = n_kb * block_n - seq_len
    video = slice(geometry.prefix, geometry.prefix + geometry.video_tokens)
    fixed_masks = {c: _block_mask(c.pattern(), geometry, block_m, block_n)[query_blocks].to(device)
                   for c in candidates if c.mode not in ("skip", "vertical_stripe")}
    k_top = max(max_top_frames(candidates), 1)
    skip_columns = [i for i, c in enumerate(candidates) if c.mode == "skip"]
    sparse_columns = [i for i, c in enumerate(candidates) if c.mode != "skip"]

    sq_err = torch.zeros(heads, len(candidates), dtype=torch.float64)
    power = 0.0
    frame_mass = torch.zeros(heads, geometry.frames)
    chosen = torch.zeros(heads, k_top, dtype=torch.int64)
    thumbs = torch.zeros(heads, THUMB_ROWS, THUMB_COLS)
    scale = head_dim ** -0.5

    def probabilities(h: int, part: torch.Tensor) -> torch.Tensor:
        qh = q[:, part, h].float()
        return torch.softmax(torch.matmul(qh, k[:, :, h].float().transpose(1, 2)) * scale, dim=-1)

    for h in range(heads):
        vh = torch.nn.functional.pad(v[:, :, h].float(), (0, 0, 0, pad)).view(batch, n_kb, block_n, head_dim)
        if stripe_frames is None:  # first pass: where does the attention mass go?
            mass = torch.zeros(geometry.frames, device=device)
            for start in range(0, n_rows, chunk):
                p = probabilities(h, rows[start:start + chunk])
                mass += p[:, :, video].reshape(*p.shape[:2], geometry.frames, -1).sum((0, 1, 3))
            frame_mass[h] = (mass / (batch * n_rows)).cpu()
            chosen[h] = torch.argsort(frame_mass[h], descending=True, stable=True)[:k_top].cpu() \
                if geometry.frames >= k_top else torch.arange(k_top) % geometry.frames
        else:
            chosen[h] = stripe_frames[h, :k_top]
        masks = []  # the block mask of every candidate but skip, for this head
        for c in candidates:
            if c.mode == "vertical_stripe":
                pattern = c.pattern(chosen[h].tolist())
                masks.append(_block_mask(pattern, geometry, block_m, block_n)[query_blocks].to(device))
            elif c.mode != "skip":
                masks.append(fixed_masks[c])
        masks = torch.stack(masks).float()                                # [Cs, sampled q blocks, n_kb]
        thumb_rows = torch.zeros(n_rows, THUMB_COLS, device=device)
        for start in range(0, n_rows, chunk):
            part = rows[start:start + chunk]
            p = probabilities(h, part)                                   # [B, n, L]
            thumb_rows[start:start + part.numel()] = _bin_sum(p.mean(0), THUMB_COLS, 1)
            p_blocks = torch.nn.functional.pad(p, (0, pad)).view(batch, -1, n_kb, block_n)
            r = p_blocks.sum(-1)                                          # [B, n, n_kb]
            z = torch.einsum("bnkj,bkjd->bnkd", p_blocks, vh)             # [B, n, n_kb, D]
            dense = z.sum(2)
            power += float(dense.double().pow(2).sum())
            # every candidate at once: one pass over z instead of one per candidate
            m = masks[:, block_of_row[start:start + part.numel()]]        # [Cs, n, n_kb]
            num = torch.einsum("cnk,bnkd->cbnd", m, z)
            den = torch.einsum("cnk,bnk->cbn", m, r).clamp_min(1e-30)
            err = (num / den.unsqueeze(-1) - dense).double().pow(2).sum(dim=(1, 2, 3)).cpu()
            sq_err[h, sparse_columns] += err
            sq_err[h, skip_columns] += float(dense.double().pow(2).sum())
        thumbs[h] = _bin_sum(thumb_rows, THUMB_ROWS, 0).cpu()
    count = batch * n_rows * head_dim
    thumbs = thumbs / thumbs.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    return LayerScores(sq_err / count, power / (count * heads), frame_mass, chosen, thumbs.half())

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


def _block_sum_dtype(device: torch.device) -> torch.dtype:
    """Per-key-block sums Z_b (the largest tensors here, twice the
    probabilities) run in bf16 on the GPU: fp32 accumulation inside the
    matmuls, and their rounding (~0.4% of a head's output, so ~1e-5 of its
    power) is far below the 1% error unit. Dense output and block masses
    stay fp32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _score_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry,
                 candidates: Sequence[Candidate], query_blocks: torch.Tensor,
                 stripe_frames: torch.Tensor | None = None,
                 block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N) -> LayerScores:
    """q, k, v: [B, L, H, D] of one layer call. stripe_frames [H, K]: the key
    frames stripe candidates use; None chooses them here by attention mass
    (and also draws the thumbnails: both are only needed once per layer)."""
    batch, seq_len, heads, head_dim = q.shape
    if seq_len != geometry.seq_len:
        raise ValueError(f"q has {seq_len} tokens, geometry {geometry.seq_len}")
    device = q.device
    n_kb = (seq_len + block_n - 1) // block_n
    padded_len = n_kb * block_n
    # Rows in whole query blocks (candidate masks are per query block); the
    # tail block's rows past the sequence repeat its last row with weight 0.
    rows = (query_blocks[:, None] * block_m + torch.arange(block_m)).to(device)   # [G, bm]
    valid = (rows < seq_len).float()
    rows = rows.clamp(max=seq_len - 1)
    n_groups = rows.shape[0]
    chunk = max(1, _CHUNK_FLOATS // (batch * block_m * padded_len))   # query blocks per chunk
    video = slice(geometry.prefix, geometry.prefix + geometry.video_tokens)
    fixed_masks = {c: _block_mask(c.pattern(), geometry, block_m, block_n)[query_blocks].to(device)
                   for c in candidates if c.mode not in ("skip", "vertical_stripe")}
    k_top = max(max_top_frames(candidates), 1)
    skip_columns = [i for i, c in enumerate(candidates) if c.mode == "skip"]
    sparse_columns = [i for i, c in enumerate(candidates) if c.mode != "skip"]
    first_probe = stripe_frames is None
    z_dtype = _block_sum_dtype(device)

    sq_err = torch.zeros(heads, len(candidates), dtype=torch.float64, device=device)
    skip_err = torch.zeros(heads, dtype=torch.float64, device=device)
    frame_mass = torch.zeros(heads, geometry.frames)
    chosen = torch.zeros(heads, k_top, dtype=torch.int64)
    thumbs = torch.zeros(heads, THUMB_ROWS, THUMB_COLS)
    scale = head_dim ** -0.5

    for h in range(heads):
        # Keys padded to whole blocks; padded columns get -inf before the softmax.
        kh = torch.nn.functional.pad(k[:, :, h].float(), (0, 0, 0, padded_len - seq_len)).transpose(1, 2)
        vh = torch.nn.functional.pad(v[:, :, h].float(), (0, 0, 0, padded_len - seq_len))   # [B, Lp, D]
        qh = q[:, :, h].float() * scale

        def probabilities(groups: slice) -> torch.Tensor:
            """[B, G*bm, Lp] dense attention probabilities of these query blocks."""
            s = torch.matmul(qh[:, rows[groups].reshape(-1)], kh)
            s[..., seq_len:] = float("-inf")
            return torch.softmax(s, dim=-1)

        if first_probe:  # where does the attention mass go? (chooses the stripe frames)
            mass = torch.zeros(geometry.frames, device=device)
            for start in range(0, n_groups, chunk):
                part = slice(start, start + chunk)
                p = probabilities(part) * valid[part].reshape(1, -1, 1)
                mass += p[:, :, video].reshape(*p.shape[:2], geometry.frames, -1).sum((0, 1, 3))
            frame_mass[h] = (mass / (batch * valid.sum())).cpu()
            chosen[h] = torch.argsort(frame_mass[h], descending=True, stable=True)[:k_top] \
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
        masks = torch.stack(masks, dim=1).float()                        # [G, Cs, n_kb]
        masks_z = masks.to(z_dtype)
        vz = vh.to(z_dtype).view(batch, n_kb, block_n, head_dim)
        thumb_rows = torch.zeros(n_groups * block_m, THUMB_COLS, device=device)
        for start in range(0, n_groups, chunk):
            part = slice(start, start + chunk)
            g = rows[part].shape[0]
            weight = valid[part].reshape(1, g, block_m, 1)
            p = probabilities(part)                                       # [B, g*bm, Lp]
            if first_probe:
                thumb_rows[start * block_m:(start + g) * block_m] = _bin_sum(p.mean(0)[:, :seq_len], THUMB_COLS, 1)
            p_blocks = p.view(batch, g * block_m, n_kb, block_n)
            pz_blocks = p_blocks.to(z_dtype)
            r = p_blocks.sum(-1).view(batch, g, block_m, n_kb)            # mass per key block
            dense = torch.matmul(p, vh).view(batch, g, block_m, head_dim)
            # every candidate at once: per key block Z_b = P[:, b] V_b, then
            # per query block the candidate's mask sums them (two matmuls)
            num = torch.empty(batch, g, len(sparse_columns), block_m * head_dim, device=device)
            for b in range(batch):
                z = torch.matmul(pz_blocks[b].transpose(0, 1), vz[b])                 # [n_kb, g*bm, D]
                z = z.view(n_kb, g, block_m * head_dim).transpose(0, 1)                # [g, n_kb, bm*D]
                num[b] = torch.matmul(masks_z[part], z)
            num = num.view(batch, g, -1, block_m, head_dim).transpose(2, 3)  # [B, g, bm, Cs, D]
            den = torch.einsum("gck,bgmk->bgmc", masks[part], r).clamp_min(1e-30)
            diff = num / den.unsqueeze(-1) - dense.unsqueeze(3)
            sq_err[h, sparse_columns] += (diff.pow(2) * weight.unsqueeze(-1)).sum(dim=(0, 1, 2, 4), dtype=torch.float64)
            skip_err[h] += (dense.pow(2) * weight).sum(dtype=torch.float64)
        if first_probe:
            thumbs[h] = _bin_sum(thumb_rows[valid.reshape(-1) > 0], THUMB_ROWS, 0).cpu()
    sq_err[:, skip_columns] = skip_err[:, None]
    count = batch * float(valid.sum()) * head_dim
    thumbs = thumbs / thumbs.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    power = float(skip_err.sum()) / (count * heads)
    return LayerScores(sq_err.cpu() / count, power, frame_mass, chosen, thumbs.half())

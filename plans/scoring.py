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
_CHUNK_FLOATS = 1 << 27  # per-chunk probabilities (fp32): fewer, larger chunks run faster


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


def _bin_index(n: int, bins: int) -> torch.Tensor:
    """Which of `bins` nearly equal groups each of n positions falls in."""
    edges = torch.linspace(0, n, bins + 1).long()
    return torch.bucketize(torch.arange(n), edges[1:], right=True).clamp(max=bins - 1)


def _bin_sum(x: torch.Tensor, bins: int, dim: int) -> torch.Tensor:
    """Sum x along dim into `bins` nearly equal groups."""
    shape = list(x.shape)
    shape[dim] = bins
    index = _bin_index(x.shape[dim], bins).to(x.device)
    return torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(dim, index, x)


def _one_hot_columns(index: torch.Tensor, bins: int, length: int, offset: int, device) -> torch.Tensor:
    """float32 [length, bins]: key position offset + i goes to bin index[i];
    other positions (extra tokens, padding) to none. P @ this sums P into bins
    in one pass over P."""
    out = torch.zeros(length, bins, device=device)
    out[torch.arange(offset, offset + len(index), device=device), index.to(device)] = 1
    return out


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
    """The per-key-block sums Z_b (the largest tensors here) run in bf16 on
    the GPU: fp32 accumulation inside the matmuls, and their rounding (~0.4%
    of a head's output, ~1e-5 of its power) is far below the 1% error unit."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _stripe_masks(stripes, chosen: torch.Tensor, geometry, query_blocks, block_m, block_n) -> torch.Tensor:
    """bool [H, G, S, n_kb]: each head's stripe candidates on its own key frames."""
    n_kb = (geometry.seq_len + block_n - 1) // block_n
    out = torch.zeros(chosen.shape[0], len(query_blocks), len(stripes), n_kb, dtype=torch.bool)
    for h, frames in enumerate(chosen.tolist()):
        for i, c in enumerate(stripes):
            out[h, :, i] = _block_mask(c.pattern(frames), geometry, block_m, block_n)[query_blocks]
    return out


def _routed_masks(routed, q, k, geometry, query_blocks, block_m, block_n) -> torch.Tensor:
    """bool [H, G, R, n_kb] on the CPU: each head's routed candidates as
    routing would choose for this call (kernels/routing.py)."""
    from ..kernels.routing import routed_block_masks
    n_kb = (geometry.seq_len + block_n - 1) // block_n
    masks = [routed_block_masks(q, k, geometry, c.share, block_m, block_n)[:, query_blocks.to(q.device)].cpu()
             for c in routed]
    return torch.stack(masks, 2) if masks else torch.zeros(q.shape[2], len(query_blocks), 0, n_kb, dtype=torch.bool)


def _score_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry,
                 candidates: Sequence[Candidate], query_blocks: torch.Tensor,
                 stripe_frames: torch.Tensor | None = None,
                 block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N) -> LayerScores:
    """q, k, v: [B, L, H, D] of one layer call. stripe_frames [H, K]: the key
    frames stripe candidates use; None chooses them here by attention mass
    (and also draws the thumbnails: both are only needed once per layer).

    Per chunk of sampled query blocks and head: P (fp32 softmax), then
    Z_b = P[:, b] [V_b | 1] for every key block b in one batched matmul (the
    ones column gives the block's mass r_b), then every candidate's numerator
    and denominator at once as its block mask times Z; an all-ones mask row
    gives dense by the same arithmetic."""
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
    k_top = max(max_top_frames(candidates), 1)
    skip_columns = [i for i, c in enumerate(candidates) if c.mode == "skip"]
    fixed = [c for c in candidates if c.mode not in ("skip", "vertical_stripe", "routed")]
    routed = [c for c in candidates if c.mode == "routed"]
    stripes = [c for c in candidates if c.mode == "vertical_stripe"]
    order = fixed + routed + stripes  # mask rows: fixed candidates, routed, stripes, then all-ones (dense)
    columns = [candidates.index(c) for c in order]
    z_dtype = _block_sum_dtype(device)
    width = head_dim + 8  # V, a ones column (block mass), zero padding to a multiple of 8
    scale = head_dim ** -0.5

    def head_qkv(h: int):
        kh = torch.nn.functional.pad(k[:, :, h].float(), (0, 0, 0, padded_len - seq_len)).transpose(1, 2)
        return q[:, :, h].float() * scale, kh

    def probabilities(qh, kh, groups: slice, with_lse: bool = False):
        """[B, g*bm, Lp] dense attention probabilities of these query blocks
        (and, with_lse, their log-normaliser [B, g*bm, 1])."""
        s = torch.matmul(qh[:, rows[groups].reshape(-1)], kh)
        s[..., seq_len:] = float("-inf")  # padded keys
        if not with_lse:
            return torch.softmax(s, dim=-1)
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        return torch.exp(s - lse), lse

    # Routed candidates with the pooled tail: a dropped key block enters as
    # c_b exp(q . mean_b(k) - lse) [mean_b(v) | 1] (the same normaliser as P),
    # i.e. the complement of the candidate's mask times T below.
    tailed = [i for i, c in enumerate(order) if c.mode == "routed" and c.tail]
    count = torch.full((n_kb,), float(block_n), device=device)
    count[-1] = seq_len - (n_kb - 1) * block_n

    def pooled_means(kh, vz):
        """Per key block, of one head: mean key [B, n_kb, D] and [mean v | 1 | 0]
        [B, n_kb, W] (kh [B, D, Lp] and vz [B, n_kb, bn, W] are zero-padded)."""
        k_mean = kh.reshape(batch, head_dim, n_kb, block_n).sum(-1).transpose(1, 2) / count[:, None]
        return k_mean, vz.float().sum(2) / count[:, None]

    def pooled_tail_sums(q_rows, k_mean, v_mean, lse, g: int) -> torch.Tensor:
        """[g, n_kb, bm*W] in z_dtype, one batch element: T_b, each key block's
        pooled contribution to these query rows (q_rows [g*bm, D], lse [g*bm, 1])."""
        t = count * torch.exp(torch.matmul(q_rows, k_mean.transpose(0, 1)) - lse)    # [g*bm, n_kb]
        t = t[..., None] * v_mean[None]                                                # [g*bm, n_kb, W]
        return t.view(g, block_m, n_kb, width).transpose(1, 2).reshape(g, n_kb, -1).to(z_dtype)

    frame_mass = torch.zeros(heads, geometry.frames, device=device)
    if stripe_frames is None:  # where does the attention mass go? (chooses the stripe frames)
        frame_of_key = _one_hot_columns(torch.arange(geometry.video_tokens) // geometry.tokens_per_frame,
                                        geometry.frames, padded_len, geometry.prefix, device)
        thumb_of_key = _one_hot_columns(_bin_index(seq_len, THUMB_COLS), THUMB_COLS, padded_len, 0, device)
        for h in range(heads):
            qh, kh = head_qkv(h)
            for start in range(0, n_groups, chunk):
                part = slice(start, start + chunk)
                per_frame = torch.matmul(probabilities(qh, kh, part), frame_of_key)     # [B, g*bm, F]
                frame_mass[h] += (per_frame * valid[part].reshape(1, -1, 1)).sum((0, 1))
        frame_mass /= batch * valid.sum()
        frame_mass = frame_mass.cpu()
        chosen = torch.argsort(frame_mass, dim=1, descending=True, stable=True)[:, :k_top] \
            if geometry.frames >= k_top else (torch.arange(k_top) % geometry.frames).expand(heads, k_top)
    else:
        frame_mass, chosen = frame_mass.cpu(), stripe_frames[:, :k_top].clone()
    # Every head's masks, built on the CPU and moved once: [H, G, C' + 1, n_kb]
    fixed_masks = torch.stack([_block_mask(c.pattern(), geometry, block_m, block_n)[query_blocks] for c in fixed], 1) \
        if fixed else torch.zeros(len(query_blocks), 0, n_kb, dtype=torch.bool)
    masks = torch.cat([fixed_masks.expand(heads, -1, -1, -1),
                       _routed_masks(routed, q, k, geometry, query_blocks, block_m, block_n),
                       _stripe_masks(stripes, chosen, geometry, query_blocks, block_m, block_n),
                       torch.ones(heads, len(query_blocks), 1, n_kb, dtype=torch.bool)], 2).to(device, z_dtype)

    sq_err = torch.zeros(heads, len(order), dtype=torch.float64, device=device)
    skip_err = torch.zeros(heads, dtype=torch.float64, device=device)
    thumbs = torch.zeros(heads, THUMB_ROWS, THUMB_COLS, device=device)
    for h in range(heads):
        qh, kh = head_qkv(h)
        vz = torch.zeros(batch, padded_len, width, device=device, dtype=z_dtype)
        vz[:, :seq_len, :head_dim] = v[:, :, h]
        vz[:, :, head_dim] = 1
        vz = vz.view(batch, n_kb, block_n, width)
        means = pooled_means(kh, vz) if tailed else None
        thumb_rows = torch.zeros(n_groups * block_m, THUMB_COLS, device=device)
        for start in range(0, n_groups, chunk):
            part = slice(start, start + chunk)
            g = rows[part].shape[0]
            p, lse = probabilities(qh, kh, part, with_lse=True) if tailed else (probabilities(qh, kh, part), None)
            if stripe_frames is None:
                thumb_rows[start * block_m:(start + g) * block_m] = torch.matmul(p, thumb_of_key).mean(0)
            pz = p.to(z_dtype).view(batch, g * block_m, n_kb, block_n)
            del p
            out = torch.empty(batch, g, len(order) + 1, block_m * width, device=device)
            for b in range(batch):
                z = torch.matmul(pz[b].transpose(0, 1), vz[b])                    # [n_kb, g*bm, W]
                z = z.view(n_kb, g, block_m * width).transpose(0, 1)               # [g, n_kb, bm*W]
                out[b] = torch.matmul(masks[h, part], z)                           # [g, C'+1, bm*W]
                if tailed:  # tailed routed candidates: + the blocks they drop, pooled
                    tz = pooled_tail_sums(qh[b, rows[part].reshape(-1)], means[0][b], means[1][b], lse[b], g)
                    out[b, :, tailed] += torch.matmul(1 - masks[h, part][:, tailed], tz).float()
            out = out.view(batch, g, len(order) + 1, block_m, width)
            result = out[..., :head_dim] / out[..., head_dim:head_dim + 1].clamp_min(1e-30)
            dense = result[:, :, -1:]
            weight = valid[part].reshape(1, g, 1, block_m, 1)
            sq_err[h] += ((result[:, :, :-1] - dense).pow(2) * weight).sum(dim=(0, 1, 3, 4), dtype=torch.float64)
            skip_err[h] += (dense.pow(2) * weight).sum(dtype=torch.float64)
        if stripe_frames is None:
            thumbs[h] = _bin_sum(thumb_rows[valid.reshape(-1) > 0], THUMB_ROWS, 0)
    count = batch * float(valid.sum()) * head_dim
    errors = torch.zeros(heads, len(candidates), dtype=torch.float64)
    errors[:, columns] = sq_err.cpu()
    errors[:, skip_columns] = skip_err.cpu()[:, None]
    thumbs = (thumbs / thumbs.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)).cpu()
    power = float(skip_err.sum()) / (count * heads)
    return LayerScores(errors / count, power, frame_mass, chosen, thumbs.half())

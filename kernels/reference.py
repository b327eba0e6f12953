"""The reference sparse attention: plain torch, any device, the oracle.

It computes exactly what the Triton kernel computes: for each query, a
softmax over the keys of the key blocks its table lists, and nothing else,
one head and one chunk of query blocks at a time, so memory stays at
chunk x L instead of L x L. It is also the CPU path.

Precision: float32 (float64 inputs are computed in float64).

Non-finite inputs behave as in dense attention restricted to the listed
keys: a NaN or Inf reaches exactly the outputs whose softmax or weighted
sum includes it (a row whose listed keys hold a NaN score is NaN; a NaN in
v at key j reaches the rows that list j's block, and no other). Nothing is
silently zeroed, except a row whose table lists no key block at all, which
is 0 as in the kernel.
"""
from __future__ import annotations

import torch

from ..patterns.tables import BlockTable

# Scores held at once per chunk (floats): bounds the reference's memory.
_CHUNK_SCORES = 1 << 24


def _weighted_values(probs: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor,
                     nonfinite: torch.Tensor | None) -> torch.Tensor:
    """probs @ v over the allowed keys only. A plain matmul would also add
    0 * v[j] for keys a row does not list, and 0 * NaN is NaN: so the
    non-finite values of v are taken out and put back by IEEE rules, per
    row, over the keys the row lists. probs: [B, r, L]; allowed: [r, L];
    v: [B, L, D]; nonfinite: bool [B, L, D] (None: v is finite)."""
    if nonfinite is None:
        return torch.matmul(probs, v)
    out = torch.matmul(probs, v.masked_fill(nonfinite, 0))
    listed = allowed.to(v.dtype).expand_as(probs)
    positive = (probs > 0).to(v.dtype) * listed  # p * inf = inf for p > 0; 0 * inf = NaN
    nan = torch.matmul(listed, (torch.isnan(v)).to(v.dtype))
    plus = v == float("inf")
    minus = v == float("-inf")
    zero_times_inf = torch.matmul(listed - positive, (plus | minus).to(v.dtype))
    plus_count = torch.matmul(positive, plus.to(v.dtype))
    minus_count = torch.matmul(positive, minus.to(v.dtype))
    out = torch.where(plus_count > 0, torch.full_like(out, float("inf")) + out, out)
    out = torch.where(minus_count > 0, torch.full_like(out, float("-inf")) + out, out)
    invalid = (nan > 0) | (zero_times_inf > 0) | ((plus_count > 0) & (minus_count > 0))
    return out.masked_fill(invalid, float("nan"))


def _pooled_scores(qh, tail, head: int, rows: torch.Tensor, first: int, last: int, bm: int, bn: int,
                   scale: float, seq_len: int, start: int, stop: int):
    """(scores [B, r, n_k] of the pooled keys, -inf where a row has no tail
    or lists the block; their values [B, n_k, D]), or None when no row of
    query blocks first..last has a tail (kernels/routed_tail_reference.py)."""
    trow = tail.rows[rows[first:last]]
    has = trow >= 0
    if not bool(has.any()):
        return None
    dropped = (tail.listed[trow.clamp(min=0).long()] == 0) & has[:, None]          # [nb, n_k]
    dropped = dropped.repeat_interleave(bm, 0)[: stop - start]                     # [r, n_k]
    n_k = dropped.shape[-1]
    count = torch.full((n_k,), float(bn), dtype=qh.dtype, device=qh.device)
    count[-1] = seq_len - (n_k - 1) * bn
    k_mean, v_mean = (x[:, :, head - tail.head0].to(qh.dtype) for x in (tail.k_mean, tail.v_mean))
    scores = torch.matmul(qh[:, start:stop], k_mean.transpose(1, 2)) * scale + count.log()
    return scores.masked_fill(~dropped, float("-inf")), v_mean


def reference_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               table: BlockTable, scale: float | None = None, tail=None) -> torch.Tensor:
    """q, k, v: [B, L, H, D] (any strides). Returns [B, L, len(table.heads), D]
    in q's dtype: the table's heads only, in table order. tail: a
    kernels.routing.PooledTail (its rows also see the key blocks they do not
    list, pooled; finite inputs)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, L, H, D], got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    batch, seq_len, _, head_dim = q.shape
    if seq_len != table.seq_len or k.shape[1] != seq_len or v.shape[1] != seq_len:
        raise ValueError(f"table is for {table.seq_len} tokens, got q {seq_len} / k {k.shape[1]} / v {v.shape[1]}")
    if k.shape[0] != batch or v.shape[0] != batch or k.shape[-1] != head_dim:
        raise ValueError(f"q, k, v disagree: {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    out = torch.empty(batch, seq_len, len(table.heads), v.shape[-1], dtype=q.dtype, device=q.device)
    if out.numel() == 0:  # batch 0 or no channels: nothing to compute, as in dense attention
        return out
    if head_dim == 0:
        raise ValueError("head_dim 0: attention scores are undefined")
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = head_dim ** -0.5 if scale is None else scale
    blocks = table.block_mask().to(q.device)
    bm, bn = table.block_m, table.block_n
    chunk_blocks = max(1, _CHUNK_SCORES // (batch * seq_len * bm))
    table_rows = torch.arange(len(table.heads) * table.n_q_blocks, device=q.device).view(len(table.heads), -1)
    for slot, head in enumerate(table.heads):
        qh, kh, vh = (x[:, :, head].to(compute) for x in (q, k, v))
        nonfinite = ~torch.isfinite(vh)
        nonfinite = nonfinite if bool(nonfinite.any()) else None
        for first in range(0, table.n_q_blocks, chunk_blocks):
            last = min(first + chunk_blocks, table.n_q_blocks)
            start, stop = first * bm, min(last * bm, seq_len)
            allowed = blocks[slot, first:last].repeat_interleave(bm, 0)[: stop - start]
            allowed = allowed.repeat_interleave(bn, 1)[:, :seq_len]
            scores = torch.matmul(qh[:, start:stop], kh.transpose(1, 2)) * scale
            scores.masked_fill_(~allowed, float("-inf"))  # also drops NaN scores of keys not listed
            pooled = None if tail is None else _pooled_scores(qh, tail, head, table_rows[slot], first, last, bm, bn,
                                                              scale, seq_len, start, stop)
            if pooled is not None:  # the pooled keys join the same softmax
                scores = torch.cat([scores, pooled[0]], -1)
            probs = torch.softmax(scores, dim=-1)
            # A row with no listed key is all -inf, whose softmax is NaN: the kernel gives 0.
            probs.masked_fill_(~torch.isfinite(scores).any(-1, keepdim=True) & ~allowed.any(-1)[None, :, None], 0.0)
            result = _weighted_values(probs[..., :seq_len], allowed, vh, nonfinite)
            if pooled is not None:
                result = result + torch.matmul(probs[..., seq_len:], pooled[1])
            out[:, start:stop, slot] = result.to(q.dtype)
    return out

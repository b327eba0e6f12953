"""The reference sparse attention: plain torch, any device, the oracle.

It computes exactly what the Triton kernel computes (softmax over the key
blocks a table lists, nothing else) in float32, one head and one chunk of
query blocks at a time, so memory stays at chunk x L instead of L x L.
It is also the CPU path.
"""
from __future__ import annotations

import torch

from ..patterns.tables import BlockTable

# Scores held at once per chunk (floats): bounds the reference's memory.
_CHUNK_SCORES = 1 << 24


def reference_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               table: BlockTable, scale: float | None = None) -> torch.Tensor:
    """q, k, v: [B, L, H, D] (any strides). Returns [B, L, len(table.heads), D]
    in q's dtype: the table's heads only, in table order."""
    batch, seq_len, _, head_dim = q.shape
    if seq_len != table.seq_len or k.shape[1] != seq_len:
        raise ValueError(f"table is for {table.seq_len} tokens, got q {seq_len} / k {k.shape[1]}")
    scale = head_dim ** -0.5 if scale is None else scale
    blocks = table.block_mask().to(q.device)
    bm, bn = table.block_m, table.block_n
    chunk_blocks = max(1, _CHUNK_SCORES // (batch * seq_len * bm))
    out = torch.empty(batch, seq_len, len(table.heads), head_dim, dtype=q.dtype, device=q.device)
    for slot, head in enumerate(table.heads):
        qh, kh, vh = (x[:, :, head].float() for x in (q, k, v))
        for first in range(0, table.n_q_blocks, chunk_blocks):
            last = min(first + chunk_blocks, table.n_q_blocks)
            start, stop = first * bm, min(last * bm, seq_len)
            allowed = blocks[slot, first:last].repeat_interleave(bm, 0)[: stop - start]
            allowed = allowed.repeat_interleave(bn, 1)[:, :seq_len]
            scores = torch.matmul(qh[:, start:stop], kh.transpose(1, 2)) * scale
            scores.masked_fill_(~allowed, float("-inf"))
            probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a row with no keys gives zeros
            out[:, start:stop, slot] = torch.matmul(probs, vh).to(q.dtype)
    return out

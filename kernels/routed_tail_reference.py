"""Routed heads with a pooled tail, in float64 (issue 23): the definition the
16-bit kernel's tail (triton_sparse.py, HAS_TAIL; routing.pooled_tail) is
checked against (tests/test_routed_tail_kernel.py).

A routed query block lists some key blocks (a row of its block mask).
Without a tail (plans today) its softmax runs over the tokens of those
blocks only. With the pooled tail (as ComfyUI core's Sol-Attn) every key
block the row does NOT list still enters the same softmax as one pooled
key: the block's mean key, carrying the block's mean value, weighted by its
token count c (score q . mean(k) * scale + log c). A dropped block is thus
served as if its keys all equalled their mean: where they do the tail is
exact, and a row that lists every block is dense.

Computed from per-key-block sums against the row's largest exact score m:
    exact_b  = sum over t in b of exp(s_t - m) [v_t | 1]
    pooled_b = c_b exp(q . mean_b(k) * scale - m) [mean_b(v) | 1]
    out      = N[:D] / N[D],  N = sum_{b listed} exact_b + sum_{b dropped} pooled_b
(q . mean(k) is at most the block's largest exact score, so nothing
overflows). Without the tail N holds the listed blocks only; a row listing
nothing is 0, as in the kernel. Finite inputs only.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

_CHUNK_FLOATS = 1 << 25  # float64 block sums held at once per chunk of query blocks


class TailOutputs(NamedTuple):
    tail: torch.Tensor     # float64 [..., B, R, H, D]: listed blocks exact, dropped blocks pooled
    no_tail: torch.Tensor  # float64 [..., B, R, H, D]: listed blocks only (HAS_TAIL off)


def query_rows(query_blocks: torch.Tensor, block_m: int, seq_len: int) -> torch.Tensor:
    """int64 [R]: the token rows of these query blocks, in order (the last block ragged)."""
    rows = (query_blocks[:, None] * block_m + torch.arange(block_m)).flatten()
    return rows[rows < seq_len]


def routed_tail_attention64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_masks: torch.Tensor,
                            block_m: int, block_n: int, query_blocks: torch.Tensor | None = None,
                            scale: float | None = None) -> TailOutputs:
    """q, k, v: [B, L, H, D]; block_masks: bool [..., H, n_q, n_k], leading
    dims for several masks served from one pass over the keys (an all-True
    mask gives dense attention); query_blocks: int64 [G], the query blocks
    to compute (default all). Returns float64 [..., B, R, H, D] with and
    without the tail, R = query_rows(query_blocks)."""
    batch, seq_len, heads, head_dim = q.shape
    n_q, n_k = -(-seq_len // block_m), -(-seq_len // block_n)
    if block_masks.shape[-3:] != (heads, n_q, n_k):
        raise ValueError(f"block_masks end in {tuple(block_masks.shape[-3:])}, want {(heads, n_q, n_k)}")
    query_blocks = torch.arange(n_q) if query_blocks is None else query_blocks.long().cpu()
    lead = block_masks.shape[:-3]
    masks = block_masks.reshape(-1, heads, n_q, n_k).to(torch.float64)  # [M, H, n_q, n_k]
    scale = head_dim ** -0.5 if scale is None else scale
    padded = n_k * block_n
    count = torch.full((n_k,), float(block_n), dtype=torch.float64)
    count[-1] = seq_len - (n_k - 1) * block_n
    rows_of = [query_rows(query_blocks[i:i + 1], block_m, seq_len) for i in range(len(query_blocks))]
    all_rows = torch.cat(rows_of)
    outs = torch.full((2, masks.shape[0], batch, len(all_rows), heads, head_dim), float("nan"), dtype=torch.float64)
    chunk = max(1, _CHUNK_FLOATS // (batch * block_m * n_k * (head_dim + 1)))  # query blocks per chunk
    for h in range(heads):
        qh, kh, vh = (x[:, :, h].to(torch.float64) for x in (q, k, v))
        pad = padded - seq_len
        k_blocks = torch.nn.functional.pad(kh, (0, 0, 0, pad)).view(batch, n_k, block_n, head_dim)
        v1 = torch.cat([vh, torch.ones(batch, seq_len, 1, dtype=torch.float64)], -1)   # [v | 1]
        v_blocks = torch.nn.functional.pad(v1, (0, 0, 0, pad)).view(batch, n_k, block_n, head_dim + 1)
        k_mean = k_blocks.sum(2) / count[:, None]                                      # [B, n_k, D]
        v_mean = v_blocks.sum(2) / count[:, None]                                      # [B, n_k, D+1]
        written = 0
        for first in range(0, len(query_blocks), chunk):
            blocks = query_blocks[first:first + chunk]
            rows = torch.cat(rows_of[first:first + chunk])
            block_of_row = torch.repeat_interleave(blocks, torch.tensor([len(r) for r in rows_of[first:first + chunk]]))
            qr = qh[:, rows]                                                            # [B, r, D]
            s = torch.nn.functional.pad(qr @ kh.transpose(1, 2) * scale, (0, pad), value=float("-inf"))
            m = s.amax(-1, keepdim=True)                                               # [B, r, 1]
            p = torch.exp(s - m).view(batch, len(rows), n_k, block_n)
            exact = torch.einsum("brkn,bknd->brkd", p, v_blocks)                       # [B, r, n_k, D+1]
            pooled = (count * torch.exp(qr @ k_mean.transpose(1, 2) * scale - m))[..., None] * v_mean[:, None]
            listed = masks[:, h, block_of_row]                                         # [M, r, n_k]
            no_tail = torch.einsum("mrk,brkd->mbrd", listed, exact)
            with_tail = no_tail + torch.einsum("mrk,brkd->mbrd", 1 - listed, pooled)
            span = slice(written, written + len(rows))
            for i, n in enumerate((with_tail, no_tail)):
                out = n[..., :head_dim] / n[..., head_dim:]
                outs[i, :, :, span, h] = torch.where(n[..., head_dim:] > 0, out, torch.zeros_like(out))
            written += len(rows)
    shape = (*lead, batch, len(all_rows), heads, head_dim)
    return TailOutputs(outs[0].reshape(shape), outs[1].reshape(shape))

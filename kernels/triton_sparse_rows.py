"""Several table rows per program: the bf16 kernel's variant for short rows.

A diagonal head lists 5-7 key blocks per row; one program per row spends a
large share of its time loading Q, filling the pipeline and writing O, so
such tables run at 0.58-0.71 of cuDNN per computed block on an H200
(benchmarks/NOTES.md). Here a program takes ROWS consecutive rows and walks
their key blocks in one flat loop over the table's entries (the rows'
entries are contiguous in kv_indices), so the loads of a row's first blocks
are issued while the previous row is still computing; when the row changes
the program writes the finished row and loads the next row's queries.
Addresses come from per-entry arrays (the entry's row, its key block), so
the loads do not depend on the branch.

Same semantics as triton_sparse._sparse_attn_fwd: exactly the listed key
blocks, rows with no block written as zeros, nothing past seq_len attended.
The ragged last key block needs no separate path: on Hopper K and V come
through 4-D descriptors (batch, head, token, feature), so the tensor memory
accelerator fills tokens past seq_len with zeros (a 2-D view would read the
next head's tokens there), and elsewhere masked pointer loads do the same;
the scores of those columns are masked. Optional (config rows_per_program)
and off by default: timed on an H100 (benchmarks/NOTES.md, 2026-12-06) it
ran short-row tables at 0.29-0.49 of cuDNN per block against 0.54-0.93
with one row per program.
"""
from __future__ import annotations

import weakref

import torch

from .triton_blocks import TensorDescriptor, tl, triton

if triton is not None:
    from .triton_blocks import _attend_block

# id(kv_offsets) -> (weak reference to it, the row of each entry): a table's
# tensors live as long as its compiled layer, so each table pays once.
# (Not a WeakKeyDictionary: its lookups compare tensors with ==.)
_entry_rows_cache: dict = {}


if triton is not None:

    @triton.jit
    def _row_head(row, n_q_blocks, heads_ptr):
        slot = row // n_q_blocks
        return row - slot * n_q_blocks, tl.load(heads_ptr + slot).to(tl.int64)

    @triton.jit
    def _store_row(O, acc, l_i, row, n_q_blocks, heads_ptr, b64, seq_len, sob, sol, soh,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
        qb, head = _row_head(row, n_q_blocks, heads_ptr)
        offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(O + b64 * sob + head * soh + offs_m[:, None].to(tl.int64) * sol + offs_d[None, :],
                 o.to(O.dtype.element_ty), mask=(offs_m < seq_len)[:, None])

    @triton.jit
    def _load_q(Q, row, n_q_blocks, heads_ptr, b64, seq_len, sqb, sql, sqh,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, UPCAST: tl.constexpr):
        qb, head = _row_head(row, n_q_blocks, heads_ptr)
        offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        q = tl.load(Q + b64 * sqb + head * sqh + offs_m[:, None].to(tl.int64) * sql
                    + tl.arange(0, HEAD_DIM)[None, :], mask=(offs_m < seq_len)[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        return q

    @triton.jit
    def _sparse_attn_rows_fwd(
        Q, K, V, O, k_desc, v_desc,
        kv_offsets, kv_indices, entry_rows, heads_ptr,
        seq_len, n_rows, n_q_blocks, n_k_blocks, qk_scale,
        sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sob, sol, soh,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
        USE_TMA: tl.constexpr, KV_TAIL: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
    ):
        b = tl.program_id(1)
        b64 = b.to(tl.int64)
        r0 = tl.program_id(0) * ROWS
        r1 = tl.minimum(r0 + ROWS, n_rows)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)

        for r in tl.range(r0, r1):  # rows that list no key block: zeros (the flat loop never visits them)
            if tl.load(kv_offsets + r) == tl.load(kv_offsets + r + 1):
                _store_row(O, acc, l_i, r, n_q_blocks, heads_ptr, b64, seq_len, sob, sol, soh, HEAD_DIM, BLOCK_M)

        current = r0 * 0 - 1  # no row started yet
        if UPCAST:
            q = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        else:
            q = tl.zeros([BLOCK_M, HEAD_DIM], Q.dtype.element_ty)
        for j in tl.range(tl.load(kv_offsets + r0), tl.load(kv_offsets + r1)):
            row = tl.load(entry_rows + j)
            kb = tl.load(kv_indices + j)
            _, head = _row_head(row, n_q_blocks, heads_ptr)
            if USE_TMA:  # [1, 1, BLOCK_N, D] boxes; tokens past seq_len arrive as zeros
                at = [b, head.to(tl.int32), kb * BLOCK_N, 0]
                k = k_desc.load(at).reshape(BLOCK_N, HEAD_DIM)
                v = v_desc.load(at).reshape(BLOCK_N, HEAD_DIM)
            else:
                kn = (kb * BLOCK_N + offs_n)[:, None].to(tl.int64)
                ok = (kb * BLOCK_N + offs_n < seq_len)[:, None]
                k = tl.load(K + b64 * skb + head * skh + kn * skl + offs_d[None, :], mask=ok, other=0.0)
                v = tl.load(V + b64 * svb + head * svh + kn * svl + offs_d[None, :], mask=ok, other=0.0)
            if row != current:  # the previous row is complete: write it, start this one
                if current >= 0:
                    _store_row(O, acc, l_i, current, n_q_blocks, heads_ptr, b64, seq_len, sob, sol, soh,
                               HEAD_DIM, BLOCK_M)
                q = _load_q(Q, row, n_q_blocks, heads_ptr, b64, seq_len, sqb, sql, sqh, HEAD_DIM, BLOCK_M, UPCAST)
                acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
                m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
                l_i = tl.zeros([BLOCK_M], tl.float32)
                current = row
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k, v, qk_scale, kb * BLOCK_N, seq_len,
                                          KV_TAIL, BLOCK_N, DOT_PREC)
        if current >= 0:
            _store_row(O, acc, l_i, current, n_q_blocks, heads_ptr, b64, seq_len, sob, sol, soh, HEAD_DIM, BLOCK_M)


def entry_rows(kv_offsets: torch.Tensor, n_entries: int) -> torch.Tensor:
    """The table row of each entry of kv_indices (int32), without a host
    sync; cached per kv_offsets tensor."""
    key = id(kv_offsets)
    entry = _entry_rows_cache.get(key)
    if entry is not None and entry[0]() is kv_offsets and entry[1].numel() == n_entries:
        return entry[1]
    counts = (kv_offsets[1:] - kv_offsets[:-1]).long()
    rows = torch.arange(counts.numel(), dtype=torch.int32, device=kv_offsets.device)
    rows = torch.repeat_interleave(rows, counts, output_size=n_entries)
    _entry_rows_cache[key] = (weakref.ref(kv_offsets, lambda _ref, key=key: _entry_rows_cache.pop(key, None)), rows)
    return rows


def _descriptor4(x: torch.Tensor, block_n: int):
    """A (batch, head, token, feature) descriptor over x [B, L, H, D], or None
    where the tensor memory accelerator cannot take its strides."""
    if TensorDescriptor is None or x.stride(-1) != 1 or x.data_ptr() % 16:
        return None
    batch, seq_len, heads, head_dim = x.shape
    strides = [x.stride(0), x.stride(2), x.stride(1), 1]
    if any((s * x.element_size()) % 16 for s in strides[:3]):
        return None
    return TensorDescriptor(x, [batch, heads, seq_len, head_dim], strides, [1, 1, block_n, head_dim])


def launch_rows(q, k, v, out, kv_offsets, kv_indices, heads_t, seq_len: int, n_q_blocks: int, n_k_blocks: int,
                qk_scale: float, block_m: int, block_n: int, rows: int, use_tma: bool, dot_prec: str, upcast: bool,
                num_warps: int, num_stages: int) -> None:
    """Launch over programs of `rows` table rows. q, k, v, out: [B, L, H, D]
    with unit last stride (triton_sparse._launch checked them)."""
    n_rows = heads_t.numel() * n_q_blocks
    rows_of_entries = entry_rows(kv_offsets, kv_indices.numel())
    k_desc, v_desc = k, v
    if use_tma:
        k_desc, v_desc = _descriptor4(k, block_n), _descriptor4(v, block_n)
        if k_desc is None or v_desc is None:
            use_tma, k_desc, v_desc = False, k, v
    grid = (triton.cdiv(n_rows, rows), q.shape[0])
    _sparse_attn_rows_fwd[grid](
        q, k, v, out, k_desc, v_desc,
        kv_offsets, kv_indices, rows_of_entries, heads_t,
        seq_len, n_rows, n_q_blocks, n_k_blocks, qk_scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        HEAD_DIM=q.shape[-1], BLOCK_M=block_m, BLOCK_N=block_n, ROWS=rows,
        USE_TMA=use_tma, KV_TAIL=(seq_len % block_n != 0), DOT_PREC=dot_prec, UPCAST=upcast,
        num_warps=num_warps, num_stages=num_stages,
    )

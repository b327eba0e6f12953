"""Triton block-sparse attention over a BlockTable: one launch per layer.

Every sparse head of a layer (diagonal, multi-diagonal, vertical-stripe,
mixed freely) is served by one launch over a grid of
(query block, head slot) x batch, the query block fastest, so programs that
run side by side read the same key blocks and share them in L2. Each program
runs an online softmax over exactly the key blocks its row lists, and
nothing else: that is the table's semantics (see patterns/tables.py).

Layout: q, k, v, out are [B, L, H, D] views with any strides whose last
dimension is contiguous (ComfyUI's [B, L, H*D] viewed as [B, L, H, D], or a
[B, H, L, D] tensor passed as .transpose(1, 2)). Strides go to the kernel;
nothing is copied or transposed. Only out[:, :, h] for h in table.heads is
written.

Defaults (swept on an H200, benchmarks/NOTES.md): 128x64 tables, TMA,
4 warps, 2 pipeline stages, natural program order (query block fastest);
other cards' launch parameters: launch_table.py.
"Longest rows first" (order="lpt") was measured and loses 1-10%: sorting
rows by count scatters neighbouring query blocks and so L2 reuse of K/V;
"heads" (head slots by total work, query blocks in order) ties natural.
128x128 tables are supported but slower (~80% vs ~89% of cuDNN dense).

Two load paths, one kernel body:
- Hopper (sm_90): K and V tiles come through the tensor memory accelerator
  from host tensor descriptors laid over a 2-D view of the tensor
  ((batch, head, token) rows x feature columns, or (batch, token) rows x
  (head, feature) columns for the [B, L, H*D] layout), so a head is a row or
  column offset into one descriptor.
- Portable (Ampere, Ada, ROCm, the CPU interpreter): plain pointer loads.
Either way Q is loaded once per program with a row mask and the output is
written with a row mask, so a ragged last query block never touches
another batch's or head's rows. Full key blocks run without any masking;
the ragged last key block (seq_len not a multiple of BLOCK_N) is peeled off
the loop and loaded with masked pointer loads, so the hot loop stays clean
and nothing past seq_len is ever read through a descriptor.

Pooled tail (routed rows, optional, HAS_TAIL): after its listed blocks a
routed row also attends one pooled key per key block it does not list (the
block's mean key and value, + log2 of its token count), read from small
[B, n_k, h, D] tensors that routing.pooled_tail() builds per call, BLOCK_N
pooled keys a step. Without a tail the branch is compiled out.

Misaligned bands: tokens per frame (1,560 at Wan 480p, 3,600 at 720p) are
not multiples of 64 or 128, so a multi-diagonal band lands at a different
offset inside a key block in each frame and the table lists the partial
blocks on both edges of every band. That costs about one extra key block
per band per frame against a block-aligned band of the same width (for a
band of 2*rows+1 grid rows of `cols` tokens, (w + BLOCK_N - 1) / BLOCK_N
blocks become at most (w / BLOCK_N) + 2). We accept it: the partial blocks
are part of the table's semantics (the queries really see those tokens,
which only helps quality), the alternative (a per-head token permutation
that makes bands contiguous) needs a gather of q/k/v and a scatter of out
per head per call, i.e. 4 extra passes over [B, L, h, D] memory, and a
permutation per pattern so it cannot be shared within one launch. At Wan
480p with rows=2 a band is 5*52 = 260 tokens: 5-6 blocks of 64 instead of
4.1, so the waste is bounded and known to the cost model (it is in
table.computed_pairs()).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .triton_blocks import TensorDescriptor, _interpreting, tl, triton  # noqa: F401 (re-exported)

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_BLOCKS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Program order over table rows; see row_order(). Measured on H200
# (benchmarks/NOTES.md): natural (query block fastest) beats longest-first.
DEFAULT_ORDER = "natural"
_LOG2E = 1.4426950408889634


def triton_available(device) -> bool:
    """Whether sparse_attention_triton can run on this device."""
    if triton is None:
        return False
    device = torch.device(device)
    if device.type == "cpu":
        return _interpreting()
    if device.type == "cuda":
        return torch.cuda.is_available()
    return False


# --------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------
if triton is not None:
    from .triton_blocks import _attend_block

    @triton.jit
    def _full_blocks_end(kv_indices, start, end, n_k_blocks, KV_TAIL: tl.constexpr):
        """End of a row's full key blocks: the ragged last key block, if listed,
        is the row's last entry (lists are ascending) and is peeled off so the
        main loop needs no masks."""
        full_end = end
        if KV_TAIL:
            if end > start:
                last = tl.load(kv_indices + end - 1)
                if last == n_k_blocks - 1:
                    full_end = end - 1
        return full_end

    @triton.jit
    def _full_block(acc, m_i, l_i, q, j, kv_indices, k_desc, v_desc, k_base, v_base, skl, svl,
                    k_row0, k_col0, v_row0, v_col0, offs_n, offs_d, qk_scale, seq_len,
                    BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
        kb = tl.load(kv_indices + j)
        if USE_TMA:
            k = k_desc.load([k_row0 + kb * BLOCK_N, k_col0])
            v = v_desc.load([v_row0 + kb * BLOCK_N, v_col0])
        else:
            kn = (kb * BLOCK_N + offs_n)[:, None].to(tl.int64)
            k = tl.load(k_base + kn * skl + offs_d[None, :])
            v = tl.load(v_base + kn * svl + offs_d[None, :])
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        return _attend_block(acc, m_i, l_i, q, k, v, qk_scale, kb * BLOCK_N, seq_len, False, BLOCK_N, DOT_PREC)

    @triton.jit
    def _pooled_tail(acc, m_i, l_i, q, km_base, vm_base, listed_row, skml, svml, offs_n, offs_d, qk_scale,
                     n_k_blocks, full_log2c, last_log2c,
                     BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
        """A routed row's pooled tail: every key block the row does not list,
        as one key (its mean key and value) weighted by its token count c
        (score + log2 c in the kernel's log2 units), BLOCK_N blocks a step."""
        for c0 in tl.range(0, n_k_blocks, BLOCK_N):
            cols = c0 + offs_n
            ok = cols < n_k_blocks
            c64 = cols[:, None].to(tl.int64)
            km = tl.load(km_base + c64 * skml + offs_d[None, :], mask=ok[:, None], other=0.0)
            vm = tl.load(vm_base + c64 * svml + offs_d[None, :], mask=ok[:, None], other=0.0)
            if UPCAST:
                km = km.to(tl.float32)
                vm = vm.to(tl.float32)
            dropped = ok & (tl.load(listed_row + cols, mask=ok, other=1) == 0)
            log2c = tl.where(cols == n_k_blocks - 1, last_log2c, full_log2c)
            s = tl.dot(q, tl.trans(km), input_precision=DOT_PREC) * qk_scale + log2c[None, :]
            s = tl.where(dropped[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: keep zeros, not NaN
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(vm.dtype), vm, acc * alpha[:, None], input_precision=DOT_PREC)
            m_i = m_new
        return acc, m_i, l_i

    @triton.jit
    def _sparse_attn_fwd(
        Q, K, V, O, k_desc, v_desc,
        kv_offsets, kv_indices, heads_ptr, row_order,
        seq_len, n_q_blocks, n_k_blocks, qk_scale,
        sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sob, sol, soh,
        k_rb, k_rh, k_ch, v_rb, v_rh, v_ch,
        KM, VM, tail_rows, tail_listed, skmb, skml, skmh, svmb, svml, svmh, tail_head0, full_log2c, last_log2c,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        USE_TMA: tl.constexpr, USE_ORDER: tl.constexpr, KV_TAIL: tl.constexpr,
        DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, WARP_SPEC: tl.constexpr, TILE_M: tl.constexpr,
        HAS_TAIL: tl.constexpr,
    ):
        SPLIT: tl.constexpr = BLOCK_M // TILE_M  # programs per table row (query tiles of TILE_M)
        pid = tl.program_id(0) // SPLIT
        part = tl.program_id(0) - pid * SPLIT
        b = tl.program_id(1)
        if USE_ORDER:
            row = tl.load(row_order + pid)
        else:
            row = pid
        slot = row // n_q_blocks
        qb = row - slot * n_q_blocks
        head = tl.load(heads_ptr + slot)
        start = tl.load(kv_offsets + row)
        end = tl.load(kv_offsets + row + 1)

        b64 = b.to(tl.int64)
        h64 = head.to(tl.int64)
        offs_m = qb * BLOCK_M + part * TILE_M + tl.arange(0, TILE_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = (offs_m < seq_len)[:, None]

        q = tl.load(Q + b64 * sqb + h64 * sqh + offs_m[:, None].to(tl.int64) * sql + offs_d[None, :],
                    mask=row_ok, other=0.0)
        if UPCAST:  # the interpreter's bf16 dot is wrong: compute in fp32 there
            q = q.to(tl.float32)
        k_base = K + b64 * skb + h64 * skh
        v_base = V + b64 * svb + h64 * svh

        m_i = tl.full([TILE_M], float("-inf"), tl.float32)
        l_i = tl.zeros([TILE_M], tl.float32)
        acc = tl.zeros([TILE_M, HEAD_DIM], tl.float32)

        full_end = _full_blocks_end(kv_indices, start, end, n_k_blocks, KV_TAIL)

        k_row0 = b * k_rb + head * k_rh
        k_col0 = head * k_ch
        v_row0 = b * v_rb + head * v_rh
        v_col0 = head * v_ch
        if WARP_SPEC:  # Triton's warp specialization (a separate branch: older Triton lacks the keyword)
            for j in tl.range(start, full_end, warp_specialize=True):
                acc, m_i, l_i = _full_block(acc, m_i, l_i, q, j, kv_indices, k_desc, v_desc, k_base, v_base,
                                            skl, svl, k_row0, k_col0, v_row0, v_col0, offs_n, offs_d, qk_scale,
                                            seq_len, BLOCK_N, USE_TMA, DOT_PREC, UPCAST)
        else:
            for j in tl.range(start, full_end):
                acc, m_i, l_i = _full_block(acc, m_i, l_i, q, j, kv_indices, k_desc, v_desc, k_base, v_base,
                                            skl, svl, k_row0, k_col0, v_row0, v_col0, offs_n, offs_d, qk_scale,
                                            seq_len, BLOCK_N, USE_TMA, DOT_PREC, UPCAST)

        if KV_TAIL:
            if full_end < end:
                kv_start = (n_k_blocks - 1) * BLOCK_N
                kn = kv_start + offs_n
                kv_ok = (kn < seq_len)[:, None]
                kn64 = kn[:, None].to(tl.int64)
                k = tl.load(k_base + kn64 * skl + offs_d[None, :], mask=kv_ok, other=0.0)
                v = tl.load(v_base + kn64 * svl + offs_d[None, :], mask=kv_ok, other=0.0)
                if UPCAST:
                    k = k.to(tl.float32)
                    v = v.to(tl.float32)
                acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k, v, qk_scale, kv_start, seq_len,
                                              True, BLOCK_N, DOT_PREC)

        if HAS_TAIL:  # compiled out otherwise: tables without routed tails run exactly as before
            trow = tl.load(tail_rows + row)
            if trow >= 0:
                hh = (head - tail_head0).to(tl.int64)
                acc, m_i, l_i = _pooled_tail(acc, m_i, l_i, q, KM + b64 * skmb + hh * skmh,
                                             VM + b64 * svmb + hh * svmh,
                                             tail_listed + trow.to(tl.int64) * n_k_blocks, skml, svml,
                                             offs_n, offs_d, qk_scale, n_k_blocks, full_log2c, last_log2c,
                                             BLOCK_N, DOT_PREC, UPCAST)

        # A row with no listed blocks has acc = 0 and l = 0: write zeros.
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        o = acc / l_safe[:, None]
        tl.store(O + b64 * sob + h64 * soh + offs_m[:, None].to(tl.int64) * sol + offs_d[None, :],
                 o.to(O.dtype.element_ty), mask=row_ok)


# --------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------
def default_config(device: torch.device, dtype: torch.dtype, head_dim: int,
                   block_m: int, block_n: int) -> dict:
    """Launch parameters by capability and shape, from the per-card table
    (launch_table.py; no autotuning: it needs a driver at import and costs
    seconds per new shape)."""
    from .launch_table import INTERPRETER_LAUNCH, launch_for_device
    interpreted = device.type != "cuda" or _interpreting()
    row = INTERPRETER_LAUNCH if interpreted else launch_for_device(device)
    cfg = row.config16(head_dim, block_n)
    cfg["tma"] = cfg["tma"] and TensorDescriptor is not None and dtype != torch.float32
    return cfg


def _tma_view(x: torch.Tensor, batch: int, heads: int, seq_len: int, head_dim: int):
    """(2-D view, rows per batch, rows per head, columns per head) such that
    element (b, l, h, d) of x sits at row b*rb + h*rh + l, column h*ch + d of
    the view, or None if the strides allow no such view."""
    sb, sl, sh, sd = x.stride()
    es = x.element_size()
    if sd != 1 or sl <= 0 or (sl * es) % 16 or x.data_ptr() % 16:
        return None
    if sb % sl and batch > 1:
        return None
    rb = sb // sl if batch > 1 else 0
    if heads == 1 or (sh % sl == 0 and sh >= sl):  # heads are row blocks ([B, H, L, D] memory)
        rh, ch = (sh // sl if heads > 1 else 0), 0
        cols = head_dim
    elif (heads - 1) * sh + head_dim <= sl and sh >= head_dim:  # heads side by side in a row
        rh, ch = 0, sh
        cols = (heads - 1) * sh + head_dim
    else:
        return None
    rows = (batch - 1) * rb + (heads - 1) * rh + seq_len
    if rows >= 2**31:
        return None
    view = x.as_strided((rows, cols), (sl, 1))
    return view, rb, rh, ch


_ORDER_KEYS = {"lpt": "triton_row_order_lpt", "heads": "triton_row_order_heads"}
_HEADS_KEY = "triton_heads"
ORDERS = ("natural", "heads", "lpt")


def row_order(table, mode: str):
    """Program order over the table's rows (None = natural: head-major,
    query block fastest). 'lpt': longest rows first (stable); 'heads': head
    slots by total work, longest first, query blocks in order inside each.
    Cached in table.derived."""
    if mode == "natural":
        return None
    if mode not in _ORDER_KEYS:
        raise ValueError(f"unknown row order {mode!r} (one of {ORDERS})")
    key = _ORDER_KEYS[mode]
    if key not in table.derived:
        counts = (table.kv_offsets[1:] - table.kv_offsets[:-1]).to(torch.int64)
        if mode == "lpt":
            order = torch.argsort(counts, descending=True, stable=True)
        else:
            per_slot = counts.view(len(table.heads), -1)
            slots = torch.argsort(per_slot.sum(1), descending=True, stable=True)
            nq = per_slot.shape[1]
            order = (slots[:, None] * nq + torch.arange(nq, device=counts.device)[None, :]).flatten()
        table.derived[key] = order.to(torch.int32).contiguous()
    return table.derived[key]


def prepare_table(table, order: str | None = None) -> None:
    """Cache the device data the kernel needs in table.derived (head
    indices; the row order if one is used). Call it outside torch.compile'd
    code (e.g. when the layer is compiled); it is also done lazily."""
    if _HEADS_KEY not in table.derived:
        table.derived[_HEADS_KEY] = torch.tensor(table.heads, dtype=torch.int32, device=table.device)
    row_order(table, order or DEFAULT_ORDER)


def _check(q, k, v, out, seq_len, block_m, block_n, n_heads_table):
    for name, x in (("q", q), ("k", k), ("v", v), ("out", out)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, L, H, D], got shape {tuple(x.shape)}")
    if not (q.shape == k.shape == v.shape == out.shape):
        raise ValueError(f"q, k, v, out shapes differ: {tuple(q.shape)} {tuple(k.shape)} {tuple(v.shape)} {tuple(out.shape)}")
    if not (q.dtype == k.dtype == v.dtype == out.dtype):
        raise ValueError("q, k, v, out must share one dtype")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {q.dtype} not supported (fp16, bf16, fp32)")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {q.shape[-1]} not supported by the Triton kernel (64, 128)")
    if block_m not in SUPPORTED_BLOCKS or block_n not in SUPPORTED_BLOCKS:
        raise ValueError(f"table block sizes {block_m}x{block_n} not supported ({SUPPORTED_BLOCKS})")
    if q.shape[1] != seq_len:
        raise ValueError(f"table is for {seq_len} tokens, got {q.shape[1]}")
    if n_heads_table == 0:
        raise ValueError("empty table")


def _tail_args(tail, q, kv_offsets, seq_len: int, block_n: int) -> tuple:
    """The kernel's pooled-tail arguments (kernels/routing.PooledTail), or
    placeholders that HAS_TAIL=False never reads."""
    if tail is None:
        return (q, q, kv_offsets, kv_offsets, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0)
    n_k = -(-seq_len // block_n)
    batch, heads = q.shape[0], q.shape[2]
    k_mean, v_mean = tail.k_mean, tail.v_mean
    for name, x in (("k_mean", k_mean), ("v_mean", v_mean)):
        if x.shape[0] != batch or x.shape[1] != n_k or x.shape[3] != q.shape[3] or x.dtype != q.dtype \
                or x.stride(-1) != 1 or tail.head0 + x.shape[2] > heads:
            raise ValueError(f"tail {name} {tuple(x.shape)} {x.dtype} does not fit q {tuple(q.shape)} {q.dtype}")
    if tail.rows.numel() != kv_offsets.numel() - 1 or tail.rows.dtype != torch.int32 \
            or tail.listed.dtype != torch.uint8 or tail.listed.shape[-1] != n_k or not tail.listed.is_contiguous():
        raise ValueError("tail rows / listed do not fit the table")
    last = seq_len - (n_k - 1) * block_n
    return (k_mean, v_mean, tail.rows, tail.listed, *k_mean.stride()[:3], *v_mean.stride()[:3], tail.head0,
            math.log2(block_n), math.log2(last))


def _launch(q, k, v, out, kv_offsets, kv_indices, heads_t, order, seq_len: int,
            block_m: int, block_n: int, scale: Optional[float] = None, config: Optional[dict] = None,
            tail=None) -> None:
    n_slots = heads_t.numel()
    _check(q, k, v, out, seq_len, block_m, block_n, n_slots)
    batch, _, n_heads, head_dim = q.shape
    scale = head_dim ** -0.5 if scale is None else float(scale)
    cfg = dict(default_config(q.device, q.dtype, head_dim, block_m, block_n))
    if config:
        cfg.update(config)

    # The kernel needs a unit stride on the feature axis (always so in ComfyUI).
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    target = out if out.stride(-1) == 1 else torch.empty_like(out, memory_format=torch.contiguous_format)

    n_q_blocks = triton.cdiv(seq_len, block_m)
    n_k_blocks = triton.cdiv(seq_len, block_n)
    use_order = order is not None
    order_arg = order if use_order else kv_offsets

    # A pooled tail (routed rows) is served by the one-row-per-program kernel only.
    rows = 1 if tail is not None else int(cfg.get("rows_per_program") or 1)
    tail_args = _tail_args(tail, q, kv_offsets, seq_len, block_n)
    want_tma = bool(cfg.get("tma")) and TensorDescriptor is not None
    k_desc, v_desc = k, v
    kg = vg = (0, 0, 0)
    use_tma = want_tma and rows == 1  # the rows-per-program kernel builds its own (4-D) descriptors
    if use_tma:
        kview = _tma_view(k, batch, n_heads, seq_len, head_dim)
        vview = _tma_view(v, batch, n_heads, seq_len, head_dim)
        if kview is None or vview is None:
            use_tma = False
        else:
            k_desc = TensorDescriptor(kview[0], list(kview[0].shape), list(kview[0].stride()), [block_n, head_dim])
            v_desc = TensorDescriptor(vview[0], list(vview[0].shape), list(vview[0].stride()), [block_n, head_dim])
            kg, vg = kview[1:], vview[1:]

    upcast = q.dtype == torch.bfloat16 and _interpreting()
    dot_prec = "ieee" if (q.dtype == torch.float32 or upcast) else "tf32"
    tile_m = int(cfg.get("tile_m") or block_m)
    if tile_m not in (64, 128) or block_m % tile_m:
        raise ValueError(f"tile_m {tile_m} must be 64 or 128 and divide block_m {block_m}")
    if rows > 1:  # several rows per program (triton_sparse_rows.py): natural order, whole rows
        if tile_m != block_m or use_order or cfg.get("ws"):
            raise ValueError("rows_per_program needs tile_m = block_m, the natural order and no ws")
        from .triton_sparse_rows import launch_rows
        launch_rows(q, k, v, target, kv_offsets, kv_indices, heads_t, seq_len, n_q_blocks, n_k_blocks,
                    scale * _LOG2E, block_m, block_n, rows, want_tma, dot_prec, upcast,
                    cfg["num_warps"], cfg["num_stages"])
    else:
        grid = (n_slots * n_q_blocks * (block_m // tile_m), batch)
        _sparse_attn_fwd[grid](
            q, k, v, target, k_desc, v_desc,
            kv_offsets, kv_indices, heads_t, order_arg,
            seq_len, n_q_blocks, n_k_blocks, scale * _LOG2E,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            target.stride(0), target.stride(1), target.stride(2),
            kg[0], kg[1], kg[2], vg[0], vg[1], vg[2],
            *tail_args,
            HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
            USE_TMA=use_tma, USE_ORDER=use_order, KV_TAIL=(seq_len % block_n != 0),
            DOT_PREC=dot_prec, UPCAST=upcast, WARP_SPEC=bool(cfg.get("ws", False)), TILE_M=tile_m,
            HAS_TAIL=tail is not None,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
    if target is not out:
        heads = heads_t.tolist()
        out[:, :, heads] = target[:, :, heads]


# --------------------------------------------------------------------------
# torch custom op: a user's torch.compile sees one opaque op, no graph break.
# --------------------------------------------------------------------------
_OP_NAME = "sparse_vdit::sparse_attention"


def register_out_op(name: str, impl):
    """Register impl (writes its `out` argument, returns None) as the torch
    custom op `name` mutating `out`, with a fake that does nothing, so a
    user's torch.compile sees one opaque op and no graph break. Re-imports
    reuse the registered op."""
    namespace, op_name = name.split("::")
    try:
        return getattr(getattr(torch.ops, namespace), op_name)  # already registered (module re-imported)
    except (AttributeError, RuntimeError):
        pass
    op = torch.library.custom_op(name, mutates_args=("out",))(impl)
    op.register_fake(lambda *args, **kwargs: None)
    return getattr(getattr(torch.ops, namespace), op_name)


def _register_op():
    def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         kv_offsets: torch.Tensor, kv_indices: torch.Tensor, heads: torch.Tensor,
                         order: Optional[torch.Tensor], seq_len: int, block_m: int, block_n: int,
                         scale: float, tail_k: Optional[torch.Tensor] = None, tail_v: Optional[torch.Tensor] = None,
                         tail_rows: Optional[torch.Tensor] = None, tail_listed: Optional[torch.Tensor] = None,
                         tail_head0: int = 0) -> None:
        from .routing import PooledTail
        tail = None if tail_k is None else PooledTail(tail_k, tail_v, tail_head0, tail_rows, tail_listed)
        _launch(q, k, v, out, kv_offsets, kv_indices, heads, order, seq_len, block_m, block_n, scale, tail=tail)

    return register_out_op(_OP_NAME, sparse_attention)


_op = _register_op() if triton is not None else None


def sparse_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                            table, scale: Optional[float] = None, tail=None) -> None:
    """Write out[:, :, h] for every h in table.heads: block-sparse attention
    over the key blocks the table lists. q, k, v, out: [B, L, H, D] views.
    tail: a kernels.routing.PooledTail for this call (routed rows also see
    their dropped key blocks pooled).

    Raises ValueError for shapes the kernel does not serve (head_dim not in
    64/128, other dtypes, block sizes not in 64/128): route those elsewhere.
    Under torch.compile the call is one custom op (sparse_vdit::sparse_attention).
    """
    if triton is None:
        raise RuntimeError("triton is not available")
    _check(q, k, v, out, table.seq_len, table.block_m, table.block_n, len(table.heads))
    if max(table.heads) >= q.shape[2]:
        raise ValueError(f"table names head {max(table.heads)} but the call has {q.shape[2]} heads")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    compiling = torch.compiler.is_compiling()
    if not compiling:
        prepare_table(table)
    heads_t = table.derived.get(_HEADS_KEY)
    if heads_t is None:  # first call inside a compiled region: built per call
        heads_t = torch.tensor(table.heads, dtype=torch.int32, device=q.device)
    order = table.derived.get(_ORDER_KEYS.get(DEFAULT_ORDER, ""))
    if compiling:
        tail_args = () if tail is None else (tail.k_mean, tail.v_mean, tail.rows, tail.listed, tail.head0)
        _op(q, k, v, out, table.kv_offsets, table.kv_indices, heads_t, order,
            table.seq_len, table.block_m, table.block_n, scale, *tail_args)
    else:  # eager: skip the custom-op dispatch overhead
        _launch(q, k, v, out, table.kv_offsets, table.kv_indices, heads_t, order,
                table.seq_len, table.block_m, table.block_n, scale, tail=tail)

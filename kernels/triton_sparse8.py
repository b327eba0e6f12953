"""8-bit variant of the one-launch pattern kernel (SageAttention2's "8+8").

Same block tables, same grid and same semantics as triton_sparse.py; the
operands come from the quantization pre-pass (quant8.py):

- QK^T in INT8 (int32 accumulation), rescaled in fp32 by the per-token Q
  scale times the per-key-block K scale (K smoothed by its token mean);
- P in FP8 e4m3 with a fixed x448 folded into the row max (p = 448 * 2^(s - m):
  448 cancels in acc / l), V in FP8 e4m3 per channel, token-contiguous so
  the tensor-core operand is K-major;
- two-level accumulation: each key block's P.V goes into a fresh fp32
  accumulator that is then added to the running one (`acc = acc * alpha +
  tl.dot(p, v)`), never chained through the MMA's accumulator, because
  Hopper's FP8 MMA accumulates at about 22 bits. (Triton's dot+add combine
  only fires for max_num_imprecise_acc == 0; Hopper FP8 dots get 2**30, so
  the add stays an fp32 add: checked in the TTGIR by benchmarks/bench_kernels8.py.
  Other cards get 0 by default and the add would be folded into the MMA,
  whose FP8 accumulator is also narrower than fp32 on Ada (SageAttention2's
  finding): there the launch passes max_num_imprecise_acc = BLOCK_N, which
  keeps the add apart (launch_table.py, checked per card by
  tests/test_cards_compile.py).)

On GPUs without FP8 tensor cores (before sm_89) P.V runs in the input's
16-bit type on the original V (pv_fp8=False); QK^T stays INT8.

Under the CPU interpreter the 8-bit operands are upcast to fp32 before each
dot (int8 x int8 sums over D <= 128 are exact in fp32; fp8 products too).
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch

from . import quant8
from .triton_sparse import (SUPPORTED_BLOCKS, SUPPORTED_HEAD_DIMS, TensorDescriptor, _interpreting,
                            prepare_table, register_out_op, triton)

if triton is not None:
    from .triton_sparse import _full_blocks_end

if triton is not None:
    import triton.language as tl
else:  # pragma: no cover
    tl = None

log = logging.getLogger("sparse_vdit")
SUPPORTED_DTYPES8 = (torch.float16, torch.bfloat16)
_LOG2_FP8_MAX = math.log2(quant8.FP8_MAX)
_HEADS_KEY = "triton_heads"


if triton is not None:

    @triton.jit
    def _qk8(q8, k8, UPCAST: tl.constexpr):
        """Raw scores of one key block: int32 (fp32 holding integers under the interpreter)."""
        if UPCAST:
            s = tl.dot(q8.to(tl.float32), tl.trans(k8.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q8, tl.trans(k8))
        return s

    @triton.jit
    def _softmax_pv8(acc, m_i, l_i, s_raw, qs, ks, v, kv_start, seq_len,
                     MASK_KV: tl.constexpr, BLOCK_N: tl.constexpr, PV_FP8: tl.constexpr,
                     UPCAST: tl.constexpr, LOG2_PMAX: tl.constexpr, PV_IMPRECISE: tl.constexpr):
        if UPCAST:
            s = s_raw
        else:
            # int32 -> fp32 without I2F: |s| <= 127 * 127 * 128 < 2^22, so the bits
            # of 1.5 * 2^23 + s are 0x4B400000 + s (an integer add and an exact
            # float subtract; measured equal to I2F on H200, kept: no rounding).
            s = (s_raw + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0
        sc = qs * ks  # per row, > 0: log2 units (softmax scale * log2 e is in qs)
        if MASK_KV:
            cols = kv_start + tl.arange(0, BLOCK_N)
            s = tl.where((cols < seq_len)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * sc)  # the row max taken before scaling
        p = tl.math.exp2(s * sc[:, None] - (m_new - LOG2_PMAX)[:, None])  # PMAX * 2^(s - m) in [0, PMAX]
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if PV_FP8:  # v: [D, BLOCK_N] fp8, token-contiguous
            if UPCAST:
                pv = tl.dot(quant8.e4m3_grid(p), tl.trans(v.to(tl.float32)), input_precision="ieee")
            else:
                # PV_IMPRECISE: None on Hopper (Triton's default there already
                # keeps the add apart); elsewhere BLOCK_N, since with 0 Triton
                # folds the add into the MMA's accumulator (module docstring).
                pv = tl.dot(p.to(tl.float8e4nv), tl.trans(v), max_num_imprecise_acc=PV_IMPRECISE)
            acc = acc * alpha[:, None] + pv  # two-level: a fresh accumulator per block
        else:  # v: [BLOCK_N, D] in the input's 16-bit type
            if UPCAST:
                acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc * alpha[:, None],
                             input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, m_new, l_i

    @triton.jit
    def _load_k8(kb, k_desc, k8_base, k_row0, offs_n, offs_d,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr):
        if USE_TMA:
            k8 = k_desc.load([(k_row0 + kb * BLOCK_N).to(tl.int32), 0])
        else:
            k8 = tl.load(k8_base + (kb * BLOCK_N + offs_n)[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :])
        return k8

    @triton.jit
    def _load_v8(kb, v_desc, vt_base, v_base, v_row0, l_pad, svl, seq_len, offs_n, offs_d,
                 BLOCK_N: tl.constexpr, PV_FP8: tl.constexpr, USE_TMA: tl.constexpr, MASK_KV: tl.constexpr):
        # One return at the end: compiled Triton checks every return statement it
        # visits for one type, and the two layouts differ in shape and type.
        if PV_FP8:  # [D, BLOCK_N] from the zero-padded token-contiguous copy
            if USE_TMA:
                v = v_desc.load([v_row0.to(tl.int32), kb * BLOCK_N])
            else:
                v = tl.load(vt_base + offs_d[:, None].to(tl.int64) * l_pad + kb * BLOCK_N + offs_n[None, :])
        else:
            kn = kb * BLOCK_N + offs_n  # [BLOCK_N, D] from the caller's V (not padded)
            if MASK_KV:
                v = tl.load(v_base + kn[:, None].to(tl.int64) * svl + offs_d[None, :],
                            mask=(kn < seq_len)[:, None], other=0.0)
            else:
                v = tl.load(v_base + kn[:, None].to(tl.int64) * svl + offs_d[None, :])
        return v

    @triton.jit
    def _sparse_attn8_fwd(
        Q8, QS, K8, KS, VT8, V, VS, VOFF, O, k_desc, v_desc,
        kv_offsets, kv_indices, heads_ptr,
        seq_len, l_pad, n_slots, n_q_blocks, n_k_blocks,
        svb, svl, svh, sob, sol, soh,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, TILE_M: tl.constexpr, BLOCK_N: tl.constexpr,
        USE_TMA: tl.constexpr, KV_TAIL: tl.constexpr, PV_FP8: tl.constexpr, UPCAST: tl.constexpr,
        LOG2_PMAX: tl.constexpr, PV_IMPRECISE: tl.constexpr,
    ):
        SPLIT: tl.constexpr = BLOCK_M // TILE_M
        pid = tl.program_id(0)
        b = tl.program_id(1)
        row = pid // SPLIT
        part = pid - row * SPLIT
        slot = row // n_q_blocks
        qb = row - slot * n_q_blocks
        head = tl.load(heads_ptr + slot)
        start = tl.load(kv_offsets + row)
        end = tl.load(kv_offsets + row + 1)

        bs64 = (b * n_slots + slot).to(tl.int64)
        offs_m = qb * BLOCK_M + part * TILE_M + tl.arange(0, TILE_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        # The 8-bit buffers are zero-padded to l_pad tokens: no load masks.
        q8 = tl.load(Q8 + (bs64 * l_pad + offs_m[:, None]) * HEAD_DIM + offs_d[None, :])
        qs = tl.load(QS + bs64 * l_pad + offs_m)
        k8_base = K8 + bs64 * l_pad * HEAD_DIM
        ks_base = KS + bs64 * (l_pad // BLOCK_N)
        vt_base = VT8 + bs64 * HEAD_DIM * l_pad
        v_base = V + b.to(tl.int64) * svb + head.to(tl.int64) * svh

        m_i = tl.full([TILE_M], float("-inf"), tl.float32)
        l_i = tl.zeros([TILE_M], tl.float32)
        acc = tl.zeros([TILE_M, HEAD_DIM], tl.float32)

        full_end = _full_blocks_end(kv_indices, start, end, n_k_blocks, KV_TAIL)

        k_row0 = bs64 * l_pad
        v_row0 = bs64 * HEAD_DIM
        for j in tl.range(start, full_end):
            kb = tl.load(kv_indices + j)
            k8 = _load_k8(kb, k_desc, k8_base, k_row0, offs_n, offs_d, HEAD_DIM, BLOCK_N, USE_TMA)
            v = _load_v8(kb, v_desc, vt_base, v_base, v_row0, l_pad, svl, seq_len, offs_n, offs_d,
                         BLOCK_N, PV_FP8, USE_TMA, False)
            acc, m_i, l_i = _softmax_pv8(acc, m_i, l_i, _qk8(q8, k8, UPCAST), qs, tl.load(ks_base + kb), v,
                                         kb * BLOCK_N, seq_len, False, BLOCK_N, PV_FP8, UPCAST, LOG2_PMAX,
                                         PV_IMPRECISE)

        if KV_TAIL:  # the ragged last key block: pointer loads, masked scores
            if full_end < end:
                kb = n_k_blocks - 1
                k8 = _load_k8(kb, k_desc, k8_base, k_row0, offs_n, offs_d, HEAD_DIM, BLOCK_N, False)
                v = _load_v8(kb, v_desc, vt_base, v_base, v_row0, l_pad, svl, seq_len, offs_n, offs_d,
                             BLOCK_N, PV_FP8, False, True)
                acc, m_i, l_i = _softmax_pv8(acc, m_i, l_i, _qk8(q8, k8, UPCAST), qs, tl.load(ks_base + kb), v,
                                             kb * BLOCK_N, seq_len, True, BLOCK_N, PV_FP8, UPCAST, LOG2_PMAX,
                                             PV_IMPRECISE)

        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        vs = tl.load(VS + bs64 * HEAD_DIM + offs_d)
        if PV_FP8:  # V's offsets back: acc / l gains offset / vs (a row with no key keeps l = 0: zeros).
            # Added before the division, not after: an add after it cost the
            # compiled kernel 48 registers (3 -> 2 programs per SM, 16% slower).
            acc += l_i[:, None] * tl.load(VOFF + bs64 * HEAD_DIM + offs_d)[None, :]
        o = acc * (1.0 / l_safe)[:, None] * vs[None, :]
        tl.store(O + b.to(tl.int64) * sob + head.to(tl.int64) * soh + offs_m[:, None].to(tl.int64) * sol
                 + offs_d[None, :], o.to(O.dtype.element_ty), mask=(offs_m < seq_len)[:, None])


# --------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------
def fp8_pv_supported(device) -> bool:
    """Whether P.V runs in FP8 here: the card's recipe in launch_table.py
    (FP8 tensor cores from sm_89; not assumed on a card the table does not
    know); the interpreter emulates them."""
    device = torch.device(device)
    if device.type == "cpu":
        return _interpreting()
    from .launch_table import launch_for_device
    return device.type == "cuda" and launch_for_device(device).pv_fp8


def ineligible_reason(q: torch.Tensor, block_m: int, block_n: int) -> Optional[str]:
    """Why the 8-bit kernel cannot serve a call (None when it can). q: [B, L, H, D]."""
    if triton is None:
        return "triton is not available"
    if q.dtype not in SUPPORTED_DTYPES8:
        return f"dtype {q.dtype} (8-bit serves fp16/bf16 inputs)"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {q.shape[-1]}"
    if block_m not in SUPPORTED_BLOCKS or block_n not in SUPPORTED_BLOCKS:
        return f"blocks {block_m}x{block_n}"
    if q.device.type == "cpu":
        return None if _interpreting() else "CPU without the Triton interpreter"
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device) < (8, 0):
        return "no INT8 tensor cores (needs sm_80 or newer)"
    return None


def default_config8(device: torch.device, head_dim: int, block_m: int, block_n: int) -> dict:
    """Launch parameters from the per-card table (launch_table.py; no
    autotuning). 64-row query tiles (a table row of 128 queries is served by
    two programs): with 128 rows the two fp32 accumulators (running and
    per-block P.V) spill; on an H200 tile 64 / 4 warps / 3 stages beat
    tile 128 / 8 warps by 12-30% (benchmarks/results/kernels8_NVIDIA_H200*.md)."""
    from .launch_table import INTERPRETER_LAUNCH, launch_for_device
    interpreted = device.type != "cuda" or _interpreting()
    cfg = (INTERPRETER_LAUNCH if interpreted else launch_for_device(device)).config8(block_m, block_n)
    cfg["tma"] = cfg["tma"] and TensorDescriptor is not None
    return cfg


def launch8(qz: "quant8.Quantized", v, out, kv_offsets, kv_indices, heads_t, block_m: int, block_n: int,
            config: Optional[dict] = None) -> None:
    """The attention kernel over pre-quantized operands (the pre-pass apart)."""
    batch, seq_len, _, head_dim = out.shape
    n_slots = heads_t.numel()
    cfg = dict(default_config8(out.device, head_dim, block_m, block_n))
    if config:
        cfg.update(config)
    tile_m = int(cfg.get("tile_m", block_m))
    if block_m % tile_m:
        raise ValueError(f"tile_m {tile_m} does not divide block_m {block_m}")
    pv_fp8 = qz.vt8 is not None
    l_pad = quant8.padded_len(seq_len)
    n_q_blocks = triton.cdiv(seq_len, block_m)
    n_k_blocks = triton.cdiv(seq_len, block_n)
    use_tma = bool(cfg.get("tma")) and TensorDescriptor is not None
    k_desc, v_desc = qz.k8, (qz.vt8 if pv_fp8 else qz.k8)
    if use_tma:
        k2 = qz.k8.view(-1, head_dim)
        k_desc = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [block_n, head_dim])
        if pv_fp8:
            v2 = qz.vt8.view(-1, l_pad)
            v_desc = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [head_dim, block_n])
        else:
            v_desc = k_desc
    upcast = _interpreting()
    target = out if out.stride(-1) == 1 else torch.empty_like(out, memory_format=torch.contiguous_format)
    grid = (n_slots * n_q_blocks * (block_m // tile_m), batch)
    _sparse_attn8_fwd[grid](
        qz.q8, qz.qs, qz.k8, qz.ks, qz.vt8 if pv_fp8 else qz.q8, v, qz.vs, qz.voff, target, k_desc, v_desc,
        kv_offsets, kv_indices, heads_t,
        seq_len, l_pad, n_slots, n_q_blocks, n_k_blocks,
        v.stride(0), v.stride(1), v.stride(2), target.stride(0), target.stride(1), target.stride(2),
        HEAD_DIM=head_dim, BLOCK_M=block_m, TILE_M=tile_m, BLOCK_N=block_n,
        USE_TMA=use_tma, KV_TAIL=(seq_len % block_n != 0), PV_FP8=pv_fp8, UPCAST=upcast,
        LOG2_PMAX=_LOG2_FP8_MAX, PV_IMPRECISE=cfg.get("pv_imprecise"),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if target is not out:
        heads = heads_t.tolist()
        out[:, :, heads] = target[:, :, heads]


def _run8(q, k, v, out, kv_offsets, kv_indices, heads_t, seq_len, block_m, block_n, scale, pv_fp8,
          config=None):
    reason = ineligible_reason(q, block_m, block_n)
    if reason is not None:
        raise ValueError(f"8-bit kernel cannot serve this call: {reason}")
    if q.shape[1] != seq_len or not (q.shape == k.shape == v.shape == out.shape):
        raise ValueError(f"table is for {seq_len} tokens; q {tuple(q.shape)} k {tuple(k.shape)} "
                         f"v {tuple(v.shape)} out {tuple(out.shape)}")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    qz = quant8.quantize_triton(q, k, v, heads_t, block_n, scale, pv_fp8)
    launch8(qz, v, out, kv_offsets, kv_indices, heads_t, block_m, block_n, config)


_OP_NAME = "sparse_vdit::sparse_attention8"


def _register_op():
    def sparse_attention8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                          kv_offsets: torch.Tensor, kv_indices: torch.Tensor, heads: torch.Tensor,
                          seq_len: int, block_m: int, block_n: int, scale: float, pv_fp8: bool) -> None:
        _run8(q, k, v, out, kv_offsets, kv_indices, heads, seq_len, block_m, block_n, scale, pv_fp8)

    return register_out_op(_OP_NAME, sparse_attention8)


_op = _register_op() if triton is not None else None


def sparse_attention8_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                             table, scale: Optional[float] = None, pv_fp8: Optional[bool] = None,
                             config: Optional[dict] = None) -> None:
    """8-bit block-sparse attention: writes out[:, :, h] for h in table.heads.
    q, k, v, out: [B, L, H, D] views (fp16/bf16). pv_fp8: FP8 P.V (default:
    where the GPU has FP8 tensor cores). Raises ValueError for calls the
    8-bit path does not serve (see ineligible_reason); route those to bf16."""
    if triton is None:
        raise RuntimeError("triton is not available")
    if max(table.heads) >= q.shape[2]:
        raise ValueError(f"table names head {max(table.heads)} but the call has {q.shape[2]} heads")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    pv_fp8 = fp8_pv_supported(q.device) if pv_fp8 is None else bool(pv_fp8)
    compiling = torch.compiler.is_compiling()
    if not compiling:
        prepare_table(table)
    heads_t = table.derived.get(_HEADS_KEY)
    if heads_t is None:
        heads_t = torch.tensor(table.heads, dtype=torch.int32, device=q.device)
    if compiling:
        _op(q, k, v, out, table.kv_offsets, table.kv_indices, heads_t,
            table.seq_len, table.block_m, table.block_n, scale, pv_fp8)
    else:
        _run8(q, k, v, out, table.kv_offsets, table.kv_indices, heads_t,
              table.seq_len, table.block_m, table.block_n, scale, pv_fp8, config)


def table_with_dense_rows(table, full_heads, seq_len: int, block_m: int | None = None,
                          block_n: int | None = None, q_device=None):
    """A table serving `table`'s heads as listed plus every key block for each
    head in full_heads (the 8-bit path's dense heads, in the same launch).
    table may be None (a layer of full and skip heads only)."""
    from ..patterns.tables import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, BlockTable
    block_m = table.block_m if table is not None else (block_m or DEFAULT_BLOCK_M)
    block_n = table.block_n if table is not None else (block_n or DEFAULT_BLOCK_N)
    device = table.device if table is not None else (q_device or torch.device("cpu"))
    n_q, n_k = -(-seq_len // block_m), -(-seq_len // block_n)
    rows = len(full_heads) * n_q
    dense_idx = torch.arange(n_k, dtype=torch.int32, device=device).repeat(rows)
    dense_off = torch.arange(1, rows + 1, dtype=torch.int64, device=device) * n_k
    if table is None:
        heads, offsets, indices, longest = (), torch.zeros(1, dtype=torch.int64, device=device), dense_idx[:0], 0
    else:
        heads, offsets, indices, longest = table.heads, table.kv_offsets.long(), table.kv_indices, table.max_row_blocks
    offsets = torch.cat([offsets, offsets[-1] + dense_off])
    if offsets[-1] >= 2**31:
        raise ValueError("block table too large for int32 offsets")
    return BlockTable(tuple(heads) + tuple(int(h) for h in full_heads), seq_len, block_m, block_n,
                      offsets.to(torch.int32), torch.cat([indices, dense_idx]), max(longest, n_k))

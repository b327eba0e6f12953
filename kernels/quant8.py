"""8-bit operands for the pattern kernel (SageAttention2's "8+8" recipe).

One pre-pass per layer call turns the bf16/fp16 q, k, v of the heads a table
serves into:

- q8  int8 [B, S, Lp, D]: per-token scale (amax / 127); the scale stored in
  qs [B, S, Lp] has softmax's scale * log2(e) folded in, so the kernel's
  scores come out in log2 units.
- k8  int8 [B, S, Lp, D]: K smoothed first (its per-head mean over all
  tokens subtracted: q.(k - m) = q.k - q.m is constant along a softmax row,
  so this is exact for any key subset), then one scale per key block of
  block_n tokens in ks [B, S, Lp / block_n].
- vt8 fp8 e4m3 [B, S, D, Lp]: V per channel (scale = max |v - offset| /
  448 in vs [B, S, D]), stored token-contiguous because 8-bit tensor-core
  operands must be K-major (the kernel reads a [D, block_n] tile and
  transposes it). offset (vmean [B, S, D]) is the channel's mean over all
  tokens, rounded to bf16, for channels whose mean is large against their
  range (|mean| > range / 32, about 0.25 sigma; near-constant channels
  excepted), else 0; the kernel adds it back (a row's weights sum to one:
  acc gains l * offset / scale before the division, so no register is
  spent on it in the epilogue: an add after the division cost the kernel
  its third resident program per SM on an H200, 16% of its speed). Why only
  there (benchmarks/accuracy8_budget.py): on a real offset smoothing cuts
  the error several-fold (3 sigma: 0.0017 -> 0.0002 relative L1), but
  shifting bf16 values by a small mean biases e4m3's rounding, and on long
  diffuse rows that bias is what remains (random V, 75,584 keys: 0.040 ->
  0.055).

S is the number of head slots (table.heads order), Lp the sequence length
rounded up to 128; padded tokens are zero in every buffer, so the kernel
needs no load masks (only the scores of the ragged last key block are
masked). Memory: B * S * Lp * (3 * D bytes + a few scales): no N x N and no
full-size bf16 temporaries.

Two Triton kernels (stats: K's channel sums and V's channel amax in one read
of K and V; quantize: one read of q, k, v) and a torch emulation of the same
arithmetic (`quantize_torch`) used by the CPU tests and the emulated
reference (`dequantize`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

LOG2E = 1.4426950408889634
INT8_MAX = 127.0
FP8_MAX = 448.0  # e4m3fn
PAD = 128  # token padding of the 8-bit buffers (a multiple of every block size)
_TINY = 1e-30
STATS_CHUNK = 512  # tokens per stats program
STATS_SUB = 64  # tokens per reduction step inside it


@dataclass
class Quantized:
    q8: torch.Tensor   # int8 [B, S, Lp, D]
    qs: torch.Tensor   # fp32 [B, S, Lp] (softmax scale * log2 e folded in)
    k8: torch.Tensor   # int8 [B, S, Lp, D] (smoothed)
    ks: torch.Tensor   # fp32 [B, S, Lp / block_n]
    vt8: torch.Tensor | None  # fp8 e4m3 [B, S, D, Lp], or None when PV runs in 16 bits
    vs: torch.Tensor   # fp32 [B, S, D] (ones when vt8 is None)
    kmean: torch.Tensor  # fp32 [B, S, D]
    vmean: torch.Tensor  # fp32 [B, S, D], V's offsets (bf16 values; zeros when vt8 is None)
    voff: torch.Tensor   # fp32 [B, S, D], vmean / vs: what the kernel adds to acc / l before scaling
    seq_len: int
    block_n: int


def padded_len(seq_len: int) -> int:
    return -(-seq_len // PAD) * PAD


def fp8_dtype():
    return getattr(torch, "float8_e4m3fn", None)


# --------------------------------------------------------------------------
# Triton pre-pass
# --------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _round_half_away(x):
        return tl.where(x >= 0, x + 0.5, x - 0.5)

    @triton.jit
    def e4m3_grid(x):
        """x rounded to the e4m3fn grid (ties to even), kept in fp32.
        Used under the interpreter, whose fp32 -> fp8 conversion drops the
        carry into the next binade (7.9 -> 4.0; Triton 3.9): values already
        on the grid convert exactly."""
        mag = tl.abs(x)
        e = tl.floor(tl.log2(tl.maximum(mag, 1e-30)))
        step = tl.exp2(tl.maximum(e, -6.0) - 3.0)
        y = mag / step  # round half to even, as the hardware conversion does
        f = tl.floor(y)
        d = y - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
        r = tl.minimum(tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f) * step, 448.0)
        return tl.where(x < 0, -r, r)  # keeps the sign of a zero, as the hardware does

    @triton.jit
    def _batch_head(bs, n_slots, heads_ptr):
        """Program axis 1 runs over (batch, head slot): the batch and the model head, as int64."""
        b = bs // n_slots
        head = tl.load(heads_ptr + bs - b * n_slots)
        return b.to(tl.int64), head.to(tl.int64)

    @triton.jit
    def _stats(K, V, heads_ptr, KSUM, VSUM, VMAX, VMIN, seq_len, n_slots, n_chunks,
               skb, skl, skh, svb, svl, svh,
               HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, WANT_V: tl.constexpr):
        """Per (chunk of tokens, batch x slot): per channel, the sum of K and
        the sum, max and min of V."""
        chunk = tl.program_id(0)
        bs = tl.program_id(1)
        b64, h64 = _batch_head(bs, n_slots, heads_ptr)
        offs_d = tl.arange(0, HEAD_DIM)
        ksum = tl.zeros([HEAD_DIM], tl.float32)
        vsum = tl.zeros([HEAD_DIM], tl.float32)
        vmax = tl.full([HEAD_DIM], float("-inf"), tl.float32)
        vmin = tl.full([HEAD_DIM], float("inf"), tl.float32)
        for i in tl.range(0, CHUNK, SUB):
            t = chunk * CHUNK + i + tl.arange(0, SUB)
            ok = (t < seq_len)[:, None]
            t64 = t[:, None].to(tl.int64)
            k = tl.load(K + b64 * skb + h64 * skh + t64 * skl + offs_d[None, :], mask=ok, other=0.0)
            ksum += tl.sum(k.to(tl.float32), 0)
            if WANT_V:
                v = tl.load(V + b64 * svb + h64 * svh + t64 * svl + offs_d[None, :], mask=ok, other=0.0)
                v = v.to(tl.float32)
                vsum += tl.sum(v, 0)
                vmax = tl.maximum(vmax, tl.max(tl.where(ok, v, float("-inf")), 0))
                vmin = tl.minimum(vmin, tl.min(tl.where(ok, v, float("inf")), 0))
        out = (bs.to(tl.int64) * n_chunks + chunk) * HEAD_DIM + offs_d
        tl.store(KSUM + out, ksum)
        if WANT_V:
            tl.store(VSUM + out, vsum)
            tl.store(VMAX + out, vmax)
            tl.store(VMIN + out, vmin)

    @triton.jit
    def _round_bf16(x):
        """fp32 -> nearest bf16 (ties to even), kept in fp32: explicit bits,
        because the interpreter's bf16 cast truncates while the GPU's rounds."""
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _finalize(KSUM, VSUM, VMAX, VMIN, KMEAN, VMEAN, VS, VOFF, seq_len, n_chunks,
                  HEAD_DIM: tl.constexpr, WANT_V: tl.constexpr, SMOOTH_RATIO: tl.constexpr,
                  NEAR_CONSTANT: tl.constexpr, TINY: tl.constexpr, VMAX_FP8: tl.constexpr):
        """Per (batch x slot): the chunks' partials reduced to K's mean and
        V's offsets, scales and offset / scale, in one launch (the rule of
        _v_offsets and _centred_scale; IEEE divisions, as torch's)."""
        bs = tl.program_id(0).to(tl.int64)
        offs_d = tl.arange(0, HEAD_DIM)
        ksum = tl.zeros([HEAD_DIM], tl.float32)
        vsum = tl.zeros([HEAD_DIM], tl.float32)
        vmax = tl.full([HEAD_DIM], float("-inf"), tl.float32)
        vmin = tl.full([HEAD_DIM], float("inf"), tl.float32)
        for c in tl.range(0, n_chunks):
            part = (bs * n_chunks + c) * HEAD_DIM + offs_d
            ksum += tl.load(KSUM + part)
            if WANT_V:
                vsum += tl.load(VSUM + part)
                vmax = tl.maximum(vmax, tl.load(VMAX + part))
                vmin = tl.minimum(vmin, tl.load(VMIN + part))
        out = bs * HEAD_DIM + offs_d
        n = tl.full([HEAD_DIM], seq_len, tl.float32)
        tl.store(KMEAN + out, tl.math.div_rn(ksum, n))
        if WANT_V:
            mean = _round_bf16(tl.math.div_rn(vsum, n))
            spread = vmax - vmin
            smooth = (tl.abs(mean) * SMOOTH_RATIO > spread) & (spread * NEAR_CONSTANT > tl.abs(mean))
            off = tl.where(smooth, mean, 0.0)
            vs = tl.math.div_rn(tl.maximum(tl.maximum(vmax - off, off - vmin), TINY),
                                tl.full([HEAD_DIM], VMAX_FP8, tl.float32))
            tl.store(VMEAN + out, off)
            tl.store(VS + out, vs)
            tl.store(VOFF + out, tl.math.div_rn(off, vs))
        else:
            tl.store(VMEAN + out, tl.zeros([HEAD_DIM], tl.float32))
            tl.store(VS + out, tl.full([HEAD_DIM], 1.0, tl.float32))
            tl.store(VOFF + out, tl.zeros([HEAD_DIM], tl.float32))

    @triton.jit
    def _quantize(Q, K, V, heads_ptr, KMEAN, VMEAN, VS, Q8, QS, K8, KS, VT8,
                  seq_len, l_pad, n_slots, qk_scale,
                  sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
                  HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, PV_FP8: tl.constexpr,
                  EMULATE_FP8: tl.constexpr):
        """One block of BLOCK tokens of one (batch, slot): q, k, v read once."""
        blk = tl.program_id(0)
        bs = tl.program_id(1)
        b64, h64 = _batch_head(bs, n_slots, heads_ptr)
        bs64 = bs.to(tl.int64)
        t = blk * BLOCK + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, HEAD_DIM)
        ok = (t < seq_len)[:, None]
        t64 = t[:, None].to(tl.int64)

        q = tl.load(Q + b64 * sqb + h64 * sqh + t64 * sql + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
        q_amax = tl.max(tl.abs(q), 1)
        # div_rn, never `/ 127.0`: Triton turns a division by a constant into a
        # multiplication by an approximate reciprocal, which the emulation's IEEE
        # division does not reproduce bit for bit
        q_scale = tl.math.div_rn(tl.maximum(q_amax, 1e-30), tl.full([BLOCK], 127.0, tl.float32))
        q8 = _round_half_away(tl.math.div_rn(q, q_scale[:, None])).to(tl.int8)
        dst = (bs64 * l_pad + t64) * HEAD_DIM + offs_d[None, :]
        tl.store(Q8 + dst, q8)
        tl.store(QS + bs64 * l_pad + t, q_scale * qk_scale)

        kmean = tl.load(KMEAN + bs64 * HEAD_DIM + offs_d)
        k = tl.load(K + b64 * skb + h64 * skh + t64 * skl + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
        k = tl.where(ok, k - kmean[None, :], 0.0)
        k_scale = tl.math.div_rn(tl.maximum(tl.max(tl.max(tl.abs(k), 1), 0), 1e-30), 127.0)
        k8 = _round_half_away(tl.math.div_rn(k, k_scale + tl.zeros_like(k))).to(tl.int8)
        tl.store(K8 + dst, k8)
        tl.store(KS + bs64 * (l_pad // BLOCK) + blk, k_scale)

        if PV_FP8:
            vs = tl.load(VS + bs64 * HEAD_DIM + offs_d)
            vmean = tl.load(VMEAN + bs64 * HEAD_DIM + offs_d)
            v = tl.load(V + b64 * svb + h64 * svh + t64 * svl + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
            v = tl.where(ok, v - vmean[None, :], 0.0)
            v8 = tl.math.div_rn(v, vs[None, :] + tl.zeros_like(v))
            if EMULATE_FP8:
                v8 = e4m3_grid(v8)
            v8 = v8.to(tl.float8e4nv)
            # token-contiguous: element (t, d) at [bs, d, t]
            tl.store(VT8 + (bs64 * HEAD_DIM + offs_d[None, :]) * l_pad + t64, v8)


# A channel is smoothed when |mean| exceeds its range over this: about a
# quarter sigma for Gaussian-like values (benchmarks/accuracy8_budget.py).
SMOOTH_RANGE_RATIO = 32.0
# ... and not when it is near-constant (range below |mean| over this): the
# kernel adds offset / scale times the row sum into its fp32 accumulator,
# and this keeps offset / scale below 448 * 2^11, i.e. within 2^11 of the
# accumulator's own range (11 of fp32's 24 bits at worst).
NEAR_CONSTANT_RATIO = 1024.0


def _div(x: torch.Tensor, divisor) -> torch.Tensor:
    """x / divisor, IEEE-rounded on every device, as the kernels' div_rn:
    torch on CUDA multiplies by the reciprocal when the divisor is a Python
    number (not the same bits), so a number becomes a tensor on x's device."""
    if not isinstance(divisor, torch.Tensor):
        divisor = torch.tensor(float(divisor), dtype=x.dtype, device=x.device)
    return x / divisor


def _v_offsets(total: torch.Tensor, vmax: torch.Tensor, vmin: torch.Tensor, seq_len: int) -> torch.Tensor:
    """V's channel mean, rounded to bf16 (kept in fp32; any rounding is exact
    to subtract, and makes the offset the same whatever order the device
    summed in unless the mean lies at a bf16 rounding midpoint), where it is
    large against the channel's range (but the channel is not near-constant),
    else 0."""
    mean = _div(total, seq_len).to(torch.bfloat16).float()
    spread = vmax - vmin
    smooth = (mean.abs() * SMOOTH_RANGE_RATIO > spread) & (spread * NEAR_CONSTANT_RATIO > mean.abs())
    return torch.where(smooth, mean, torch.zeros((), device=mean.device))


def _centred_scale(vmax: torch.Tensor, vmin: torch.Tensor, vmean: torch.Tensor) -> torch.Tensor:
    """e4m3 scale of V minus its mean: max |v - mean| / 448, from max and min."""
    return _div(torch.maximum(vmax - vmean, vmean - vmin).clamp_min(_TINY), FP8_MAX)


def _slot_heads(heads) -> list[int]:
    return [int(h) for h in (heads.tolist() if isinstance(heads, torch.Tensor) else heads)]


def quantize_triton(q, k, v, heads_t: torch.Tensor, block_n: int, scale: float, pv_fp8: bool,
                    num_warps: int = 4) -> Quantized:
    """The pre-pass on the device (Triton; the interpreter on CPU).
    q, k, v: [B, L, H, D] views with unit last stride; heads_t int32 slots."""
    batch, seq_len, _, head_dim = q.shape
    n_slots = heads_t.numel()
    l_pad = padded_len(seq_len)
    dev = q.device
    n_chunks = triton.cdiv(seq_len, STATS_CHUNK)
    ksum = torch.empty(batch * n_slots, n_chunks, head_dim, dtype=torch.float32, device=dev)
    vsum, vmax, vmin = (torch.empty_like(ksum) for _ in range(3)) if pv_fp8 else (ksum, ksum, ksum)
    _stats[(n_chunks, batch * n_slots)](
        k, v, heads_t, ksum, vsum, vmax, vmin, seq_len, n_slots, n_chunks,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        HEAD_DIM=head_dim, CHUNK=STATS_CHUNK, SUB=STATS_SUB, WANT_V=pv_fp8, num_warps=num_warps)
    kmean, vmean, vs, voff = (torch.empty(batch, n_slots, head_dim, dtype=torch.float32, device=dev)
                              for _ in range(4))
    _finalize[(batch * n_slots,)](
        ksum, vsum, vmax, vmin, kmean, vmean, vs, voff, seq_len, n_chunks,
        HEAD_DIM=head_dim, WANT_V=pv_fp8, SMOOTH_RATIO=SMOOTH_RANGE_RATIO, NEAR_CONSTANT=NEAR_CONSTANT_RATIO,
        TINY=_TINY, VMAX_FP8=FP8_MAX, num_warps=1)
    q8 = torch.empty(batch, n_slots, l_pad, head_dim, dtype=torch.int8, device=dev)
    k8 = torch.empty_like(q8)
    qs = torch.empty(batch, n_slots, l_pad, dtype=torch.float32, device=dev)
    ks = torch.empty(batch, n_slots, l_pad // block_n, dtype=torch.float32, device=dev)
    vt8 = (torch.empty(batch, n_slots, head_dim, l_pad, dtype=fp8_dtype(), device=dev) if pv_fp8 else None)
    _quantize[(l_pad // block_n, batch * n_slots)](
        q, k, v, heads_t, kmean, vmean, vs, q8, qs, k8, ks, vt8 if pv_fp8 else q8,
        seq_len, l_pad, n_slots, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        HEAD_DIM=head_dim, BLOCK=block_n, PV_FP8=pv_fp8,
        EMULATE_FP8=os.environ.get("TRITON_INTERPRET", "0") == "1", num_warps=num_warps)
    return Quantized(q8, qs, k8, ks, vt8, vs, kmean, vmean, voff, seq_len, block_n)


# --------------------------------------------------------------------------
# torch emulation of the same arithmetic, and dequantization
# --------------------------------------------------------------------------
def _round_half_away_torch(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x + 0.5, x - 0.5).trunc()


def quantize_torch(q, k, v, heads, block_n: int, scale: float, pv_fp8: bool,
                   means: tuple[torch.Tensor, torch.Tensor] | None = None) -> Quantized:
    """What the Triton pre-pass computes, in plain torch (fp32 math, IEEE
    divisions), for tests and CPU. Same rounding (half away from zero for
    int8, round to nearest even for e4m3, as the hardware conversion does).

    `means`: K's mean and V's offsets [B, S, D] to use instead of computing
    them (e.g. the pre-pass's own). They are sums over all tokens, which the
    device adds in another order than torch, so they can differ in the last
    bits; everything after them is element-wise and must match exactly."""
    batch, seq_len, _, head_dim = q.shape
    heads = _slot_heads(heads)
    l_pad = padded_len(seq_len)
    dev = q.device

    def slots(x):  # [B, S, Lp, D] fp32, zero-padded
        x = x[:, :, heads].float().permute(0, 2, 1, 3)
        return torch.nn.functional.pad(x, (0, 0, 0, l_pad - seq_len))

    qf, kf, vf = slots(q), slots(k), slots(v)
    q_scale = _div(qf.abs().amax(-1).clamp_min(_TINY), INT8_MAX)
    q8 = _round_half_away_torch(qf / q_scale[..., None]).to(torch.int8)
    kmean = _div(kf[:, :, :seq_len].sum(2), seq_len) if means is None else means[0].float()
    valid = (torch.arange(l_pad, device=dev) < seq_len)[None, None, :, None]
    kc = torch.where(valid, kf - kmean[:, :, None], torch.zeros((), device=dev))
    kb = kc.view(batch, len(heads), l_pad // block_n, block_n, head_dim)
    k_scale = _div(kb.abs().amax((-1, -2)).clamp_min(_TINY), INT8_MAX)
    k8 = _round_half_away_torch(kb / k_scale[..., None, None]).to(torch.int8).view_as(kc)
    if pv_fp8:
        real = vf[:, :, :seq_len]
        vmax, vmin = real.amax(2), real.amin(2)
        vmean = _v_offsets(real.sum(2), vmax, vmin, seq_len) if means is None else means[1].float()
        vs = _centred_scale(vmax, vmin, vmean)
        vc = torch.where(valid, vf - vmean[:, :, None], torch.zeros((), device=dev))
        vt8 = (vc / vs[:, :, None]).to(fp8_dtype()).transpose(2, 3).contiguous()
    else:
        vs = torch.ones(batch, len(heads), head_dim, dtype=torch.float32, device=dev)
        vmean = torch.zeros_like(vs)
        vt8 = None
    return Quantized(q8, q_scale * (scale * LOG2E), k8, k_scale, vt8, vs, kmean, vmean, vmean / vs, seq_len,
                     block_n)


def dequantize(qz: Quantized, v_orig: torch.Tensor, heads, scale: float):
    """The exact values the kernel multiplies, back in float64 [B, L, S, D]:
    q (softmax scale taken back out), smoothed k, and v (dequantized fp8 plus
    the mean the kernel adds back, or v itself when PV runs in 16 bits).
    Softmax over q.k_smoothed * scale, times v, is what the kernel computes
    up to its own arithmetic."""
    seq_len = qz.seq_len
    qd = qz.q8.double() * (qz.qs.double() / (scale * LOG2E))[..., None]
    ks = qz.ks.double().repeat_interleave(qz.block_n, -1)
    kd = qz.k8.double() * ks[..., None]
    if qz.vt8 is not None:
        vd = qz.vt8.double().transpose(2, 3) * qz.vs.double()[:, :, None] + qz.vmean.double()[:, :, None]
    else:
        vd = v_orig[:, :, _slot_heads(heads)].double().permute(0, 2, 1, 3)
    return tuple(x[:, :, :seq_len].permute(0, 2, 1, 3) for x in (qd, kd, vd))

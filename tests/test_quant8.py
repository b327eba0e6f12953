"""The 8-bit path: quantization pre-pass, emulated-quantization reference,
the 8-bit kernel and its dispatch.

- CPU, plain torch: the quantizer's per-element error bounds, K smoothing
  (exact under softmax), channel-biased K and V outliers.
- CPU, Triton interpreter (one subprocess, like test_triton_kernel.py): the
  Triton pre-pass equals the torch emulation bit for bit; the kernel equals
  the emulated reference (the float64 oracle fed the kernel's own
  dequantized inputs) tightly and the exact oracle within the quantization
  error, on mixed plans, odd geometries with prefix/suffix tokens, B=3,
  both layouts, poisoned outputs, adversarial inputs, one-block and empty
  rows; the full-table path equals the dense-table call bit for bit; the
  fallback to bf16; torch.compile.
- GPU (marked): the same checks at video sizes, rows > 1,000 blocks, and
  the two-level accumulation in the compiled kernel's TTGIR.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
import compile_cards  # noqa: E402
from compile_cards import fp8_dot_accumulators  # noqa: E402
from test_triton_kernel import (G_MID, G_ODD, G_VID, _compile_sm, _cuda_backend_or_skip, _inputs,  # noqa: E402
                                _make_layer, _triton_importable, interpreter_worker_results, oracle, rel,
                                report_cases, route_layer, start_worker)

# Error of the kernel against the emulated reference (its own arithmetic:
# with FP8 PV that includes P's e4m3 rounding, about 2^-4 relative per
# element) and against the exact float64 oracle (adds the quantization).
TOL_EMU = {True: 0.04, False: 1e-2}  # 16-bit PV: bf16 P (8-bit mantissa) dominates
TOL_EXACT = {True: 0.07, False: 0.03}


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------
def rows_oracle(q, k, v, table, scale, rows=None):
    """float64 masked attention for query rows `rows` (default all) of every
    table head: [B, R, h, D]. Masks come from the table's block mask, one row
    set at a time (no L x L tensor), so rows of a 65k-token table fit."""
    seq_len = q.shape[1]
    rows = torch.arange(seq_len, device=q.device) if rows is None else rows.to(q.device)
    blocks = table.block_mask().to(q.device)
    cols = torch.arange(seq_len, device=q.device) // table.block_n
    outs = []
    for slot, h in enumerate(table.heads):
        allowed = blocks[slot][rows // table.block_m][:, cols]
        s = q[:, rows, h].double() @ k[:, :, h].double().transpose(1, 2) * scale
        s = s.masked_fill(~allowed, float("-inf"))
        outs.append(torch.softmax(s, -1).nan_to_num(0.0) @ v[:, :, h].double())
    return torch.stack(outs, 2)


def emulated_reference(qz, v, table, scale, rows=None):
    """The float64 oracle fed the exact dequantized 8-bit operands."""
    from sparse_vdit.kernels.quant8 import dequantize
    qd, kd, vd = dequantize(qz, v, table.heads, scale)  # [B, L, slots, D]
    slots = type(table)(tuple(range(len(table.heads))), table.seq_len, table.block_m, table.block_n,
                        table.kv_offsets, table.kv_indices, table.max_row_blocks)
    return rows_oracle(qd, kd, vd, slots, scale, rows)


def adversarial(q, k, v, gen, kind):
    """In place: 'kbias' adds a large per-channel bias to K (what smoothing
    removes); 'voutlier' makes a few V channels 100x larger; 'both';
    'voffset' gives half of V's channels an offset (which V smoothing takes
    out) and makes one channel constant (which it must leave alone)."""
    d = q.shape[-1]
    if kind in ("kbias", "both"):
        k += (20.0 * torch.randn(d, generator=gen)).to(k.device, k.dtype)
    if kind in ("voutlier", "both"):
        v[..., : max(1, d // 32)] *= 100.0
    if kind == "voffset":
        v[..., : d // 2] += (3.0 * torch.randn(d // 2, generator=gen)).to(v.device, v.dtype)
        v[..., d - 1] = 7.0


def one_block_table(geometry, bm, bn, device, heads=(0, 2)):
    """Every row lists exactly one key block (its own diagonal, the last
    (ragged) block for the last row)."""
    from sparse_vdit.patterns.tables import BlockTable
    nq, nk = -(-geometry.seq_len // bm), -(-geometry.seq_len // bn)
    idx = [min(nk - 1, (qb * bm) // bn) for _ in heads for qb in range(nq)]
    offsets = torch.arange(len(idx) + 1, dtype=torch.int32)
    return 3, BlockTable(heads, geometry.seq_len, bm, bn, offsets.to(device),
                         torch.tensor(idx, dtype=torch.int32, device=device), 1)


def long_row_table(seq_len, bm, bn, device):
    """One head whose first query block lists every key block (> 1,000 when
    seq_len > 64,000 at block_n 64), the last query block three, others none."""
    from sparse_vdit.patterns.tables import BlockTable
    nq, nk = -(-seq_len // bm), -(-seq_len // bn)
    lists = [list(range(nk))] + [[] for _ in range(nq - 2)] + [[0, nk // 2, nk - 1]]
    counts = torch.tensor([len(x) for x in lists])
    offsets = torch.zeros(nq + 1, dtype=torch.int32)
    offsets[1:] = counts.cumsum(0)
    indices = torch.tensor([i for x in lists for i in x], dtype=torch.int32)
    return 1, BlockTable((0,), seq_len, bm, bn, offsets.to(device), indices.to(device), nk)


def check_case8(spec, device):
    """One 8-bit kernel case: quantize with the Triton pre-pass, run the
    kernel on those operands, compare with the emulated and exact oracles."""
    from sparse_vdit.kernels import quant8, triton_sparse8 as t8
    from sparse_vdit.patterns import Geometry
    gen = torch.Generator().manual_seed(zlib.crc32(repr(sorted(spec.items())).encode()))
    bm, bn = spec.get("bm", 128), spec.get("bn", 64)
    if spec["layer"] == "long":
        n_heads, table = long_row_table(spec["seq_len"], bm, bn, device)
        seq_len = spec["seq_len"]
    else:
        geometry = Geometry(*spec["g"])
        seq_len = geometry.seq_len
        if spec["layer"] == "one_block":
            n_heads, table = one_block_table(geometry, bm, bn, device)
        else:
            n_heads, table = _make_layer(spec["layer"], geometry, bm, bn, device)
    dtype = getattr(torch, spec["dtype"])
    q, k, v, out = _inputs(spec["b"], seq_len, n_heads, spec["d"], dtype, spec["layout"], device, gen)
    adversarial(q, k, v, gen, spec.get("adv", "none"))
    if spec["layer"] not in ("long", "one_block"):
        route_layer(spec["layer"], geometry, bm, bn, device, q, k)
    pv_fp8 = spec["pv_fp8"]
    scale = spec["d"] ** -0.5
    t8.prepare_table(table)
    heads_t = table.derived["triton_heads"]
    qz = quant8.quantize_triton(q, k, v, heads_t, bn, scale, pv_fp8)
    if spec.get("adv") == "voffset" and pv_fp8:
        assert (qz.voff != 0).any(), "no V channel smoothed: the kernel's offset add is not exercised"
    t8.launch8(qz, v, out, table.kv_offsets, table.kv_indices, heads_t, bm, bn, spec.get("cfg"))
    others = [h for h in range(n_heads) if h not in table.heads]
    assert torch.isnan(out[:, :, others]).all(), "kernel wrote heads outside the table"
    got = out[:, :, list(table.heads)]
    assert torch.isfinite(got).all(), "table heads not fully written (NaN/inf left)"
    counts = (table.kv_offsets[1:] - table.kv_offsets[:-1]).cpu().view(len(table.heads), table.n_q_blocks)
    for slot, qb in (counts == 0).nonzero().tolist():
        assert (got[:, qb * bm:(qb + 1) * bm, slot] == 0).all(), f"empty row ({slot}, {qb}) not zero"
    rows = None
    if spec["layer"] == "long":  # the rows that list blocks: the first and last query blocks
        rows = torch.cat([torch.arange(bm), torch.arange((table.n_q_blocks - 1) * bm, seq_len)])
        got = got[:, rows.to(got.device)]
    err_emu = rel(got, emulated_reference(qz, v, table, scale, rows))
    err_exact = rel(got, rows_oracle(q, k, v, table, scale, rows))
    assert err_emu < TOL_EMU[pv_fp8], f"error vs emulated reference {err_emu:.3e} >= {TOL_EMU[pv_fp8]}"
    assert err_exact < TOL_EXACT[pv_fp8], f"error vs float64 oracle {err_exact:.3e} >= {TOL_EXACT[pv_fp8]}"
    # the public entry point (pre-pass inside) gives the same bits
    out2 = torch.full_like(out, float("nan"))
    t8.sparse_attention8_triton(q, k, v, out2, table, pv_fp8=pv_fp8, config=spec.get("cfg"))
    got2 = out2[:, :, list(table.heads)]
    assert torch.equal(got2 if rows is None else got2[:, rows.to(got.device)], got), \
        "entry point differs from pre-pass + launch"
    return {"err_emu": err_emu, "err_exact": err_exact}


def sum_error_bound(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Bound on |pre-pass channel mean - exact mean| for x [B, S, L, D]: an
    fp32 sum in which each term takes part in at most m additions is off by
    at most m * u * sum |x| (u = 2^-24); the stats kernel adds a term at most
    STATS_SUB times inside a step (a reduction tree has fewer levels), once
    per step of its chunk and once per chunk when the partials are added;
    the division by seq_len adds u relative. Wrong arithmetic (a wrong count,
    a padded token, a missed chunk) is orders of magnitude above it."""
    from sparse_vdit.kernels import quant8
    n_chunks = -(-seq_len // quant8.STATS_CHUNK)
    m = quant8.STATS_SUB + quant8.STATS_CHUNK // quant8.STATS_SUB + n_chunks + 1
    u = 2.0 ** -24
    exact = x.double().sum(2) / seq_len
    return m * u * x.double().abs().sum(2) / seq_len + u * exact.abs()


def check_means(a, q, k, v, heads):
    """K's mean and V's offsets of the pre-pass `a` against float64 sums.
    Sums over all tokens are order-dependent (the device adds in another
    order than torch), so they are held to the bound that any order meets:
    kmean within sum_error_bound of the exact mean; each V offset one of the
    values that the rule (bf16 rounding, smoothing test) gives for a mean
    anywhere within that bound (two values only where the mean lies at a bf16
    rounding midpoint or at the smoothing threshold)."""
    from sparse_vdit.kernels import quant8
    seq_len = q.shape[1]
    kx = k[:, :, list(heads)].permute(0, 2, 1, 3)
    err = (a.kmean.double() - kx.double().sum(2) / seq_len).abs()
    bound = sum_error_bound(kx, seq_len)
    assert (err <= bound).all(), f"kmean off by {float((err / bound).max()):.3g}x its bound"
    if a.vt8 is None:
        return
    vx = v[:, :, list(heads)].permute(0, 2, 1, 3)
    exact = vx.double().sum(2) / seq_len
    e = sum_error_bound(vx, seq_len)
    vmax, vmin = vx.float().amax(2), vx.float().amin(2)
    # the rule on the lowest and highest fp32 means within the bound: rounding is
    # monotonic, so any mean in between gives one of these two offsets
    lo, hi = (quant8._v_offsets(((exact + sgn * e) * seq_len).float(), vmax, vmin, seq_len) for sgn in (-1, 1))
    ok = (a.vmean == lo) | (a.vmean == hi)
    assert ok.all(), f"V offsets outside the rule at {int((~ok).sum())} channels"


def check_prepass(spec, device):
    """The Triton pre-pass against the torch emulation: K's mean and V's
    offsets (sums over all tokens) within the bound of check_means; given
    those, every other output (int8 codes, scales, V's fp8 codes) equal bit
    for bit, the emulation using IEEE divisions as the kernel does."""
    from sparse_vdit.kernels import quant8
    from sparse_vdit.patterns import Geometry
    geometry = Geometry(*spec["g"])
    gen = torch.Generator().manual_seed(zlib.crc32(repr(sorted(spec.items())).encode()))
    dtype = getattr(torch, spec["dtype"])
    q, k, v, _ = _inputs(spec["b"], geometry.seq_len, 4, spec["d"], dtype, spec["layout"], device, gen)
    adversarial(q, k, v, gen, spec.get("adv", "none"))
    heads = (3, 0, 2)
    for pv_fp8 in (True, False):
        a = quant8.quantize_triton(q, k, v, torch.tensor(heads, dtype=torch.int32, device=device), 64, 0.1, pv_fp8)
        check_means(a, q, k, v, heads)
        b = quant8.quantize_torch(q, k, v, heads, 64, 0.1, pv_fp8, means=(a.kmean, a.vmean))
        for name in ("q8", "qs", "k8", "ks", "vs", "vmean", "voff"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and torch.equal(x, y), \
                f"{name} differs (pv_fp8={pv_fp8}) at {int((x != y).sum())} of {x.numel()}"
        if pv_fp8:
            assert torch.equal(a.vt8.view(torch.uint8), b.vt8.view(torch.uint8)), "vt8 differs"
            if spec.get("adv") == "voffset":  # the rule both sides share really ran both ways
                smoothed = (a.vmean != 0).sum(-1)
                assert (smoothed >= 1).all() and (a.vmean[..., -1] == 0).all(), a.vmean
        else:
            assert a.vt8 is None and (a.vmean == 0).all() and (a.voff == 0).all() and (a.vs == 1).all()
    return {}


def check_dispatch(device):
    """Through layer_attention: full heads served in the 8-bit launch equal a
    dense-table 8-bit call bit for bit; chained dense functions keep full
    heads; an ineligible call (fp32) falls back to bf16 with one log line."""
    import logging
    from sparse_vdit.kernels import dispatch, triton_sparse8 as t8
    from sparse_vdit.patterns import Geometry, LayerPattern, compile_layer
    from test_triton_kernel import PATTERNS, _pattern
    geometry = Geometry(*G_ODD)
    layer = LayerPattern(tuple(_pattern(t) for t in PATTERNS["mixed5"]))
    compiled = compile_layer(layer, geometry, str(device))
    heads, d, batch, n = len(layer.heads), 64, 3, geometry.seq_len
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(batch, n, heads * d, generator=gen).half().to(device) for _ in range(3))
    got = dispatch.layer_attention(q, k, v, compiled, heads=heads, precision="8-bit").view(batch, n, heads, d)
    full = compiled.full_heads
    dense_table = t8.table_with_dense_rows(None, full, n, q_device=device)
    out = torch.full_like(got, float("nan"))
    t8.sparse_attention8_triton(*(x.view(batch, n, heads, d) for x in (q, k, v)), out, dense_table)
    assert torch.equal(out[:, :, list(full)], got[:, :, list(full)]), "full heads differ from the dense-table call"
    bf16 = dispatch.layer_attention(q, k, v, compiled, heads=heads, precision="bf16").view(batch, n, heads, d)
    err = rel(got, bf16)
    assert 1e-5 < err < 0.07, f"8-bit vs bf16 path {err}"
    # a chained dense function keeps full heads; sparse heads still 8-bit
    calls = []

    def chained(a, b, c):
        calls.append(a.shape[1])
        return torch.nn.functional.scaled_dot_product_attention(a, b, c)

    got2 = dispatch.layer_attention(q, k, v, compiled, heads=heads, precision="8-bit",
                                    dense_fn=chained).view(batch, n, heads, d)
    assert calls == [len(full)]
    assert torch.equal(got2[:, :, list(compiled.sparse_heads)], got[:, :, list(compiled.sparse_heads)])
    # fp32 is not served in 8 bits: bf16 result exactly, one log line
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("sparse_vdit").addHandler(handler)
    try:
        q32, k32, v32 = (x.float() for x in (q, k, v))
        for _ in range(2):
            a = dispatch.layer_attention(q32, k32, v32, compiled, heads=heads, precision="8-bit")
        b = dispatch.layer_attention(q32, k32, v32, compiled, heads=heads, precision="bf16")
    finally:
        logging.getLogger("sparse_vdit").removeHandler(handler)
    assert torch.equal(a, b)
    assert len([r for r in records if "8-bit" in r.getMessage()]) == 1, [r.getMessage() for r in records]
    # auto: these rows (110 tokens) are far too short to repay the pre-pass -> exactly the bf16 result
    auto = dispatch.layer_attention(q, k, v, compiled, heads=heads, precision="auto").view(batch, n, heads, d)
    assert torch.equal(auto, bf16)
    with pytest_raises_value("precision"):
        dispatch.layer_attention(q, k, v, compiled, heads=heads, precision="int4")
    return {"err_vs_bf16": err}


def check_dispatch_routed(device):
    """Routed heads through layer_attention in 8 bits, full heads in the same
    launch: the launched table (a copy with dense rows) carries this call's
    routed rows, on a second call with other inputs too."""
    from oracle import layer_oracle
    from sparse_vdit.kernels import dispatch
    from sparse_vdit.patterns import Geometry, LayerPattern, compile_layer
    from test_triton_kernel import PATTERNS, _pattern
    geometry = Geometry(*G_VID)
    layer = LayerPattern(tuple(_pattern(t) for t in PATTERNS["mixed_routed"]))
    compiled = compile_layer(layer, geometry, str(device))
    heads, d, batch, n = len(layer.heads), 64, 2, geometry.seq_len
    errors = []
    for seed in (7, 8):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(batch, n, heads * d, generator=gen).half().to(device) for _ in range(3))
        got = dispatch.layer_attention(q, k, v, compiled, heads=heads, precision="8-bit").view(batch, n, heads, d)
        table8 = dispatch.table_with_full_rows(compiled, device)
        nnz = compiled.table.kv_indices.numel()
        assert table8 is not compiled.table and torch.equal(table8.kv_indices[:nnz], compiled.table.kv_indices)
        want = layer_oracle(*(x.view(batch, n, heads, d).cpu() for x in (q, k, v)), layer, geometry, 128, 64)
        errors.append(rel(got, want))
        assert errors[-1] < TOL_EXACT[True], f"8-bit routed layer vs float64 oracle {errors[-1]:.3e}"
    return {"err_exact": max(errors)}


class pytest_raises_value:
    def __init__(self, words):
        self.words = words

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            raise AssertionError(f"expected ValueError mentioning {self.words!r}")
        return issubclass(et, ValueError) and self.words in str(ev)


def check_compile8(device, backend):
    from sparse_vdit.kernels import triton_sparse8 as t8
    from test_triton_kernel import check_compile
    return check_compile(t8, device, backend, entry="sparse_attention8_triton")


# name -> spec. layer: a PATTERNS name of test_triton_kernel, "one_block" or "long".
CASES8 = {
    **{f"mixed5-{dt}-d{d}-{lay}-fp8{int(f)}": dict(layer="mixed5", g=G_ODD, dtype=dt, d=d, layout=lay, b=3,
                                                  pv_fp8=f)
       for dt, d, lay in (("float16", 64, "flat"), ("bfloat16", 128, "bhld")) for f in (True, False)},
    "mixed5-mid-fp16-d64-tma-fp8": dict(layer="mixed5", g=G_MID, dtype="float16", d=64, layout="flat", b=2,
                                        pv_fp8=True, cfg={"tma": True}),
    "mixed5-mid-fp16-d64-tile64-fp8": dict(layer="mixed5", g=G_MID, dtype="float16", d=64, layout="bhld", b=1,
                                           pv_fp8=True, cfg={"tile_m": 64}),
    "mixed5-mid-fp16-d64-64x128-fp16pv": dict(layer="mixed5", g=G_MID, dtype="float16", d=64, layout="flat",
                                              b=1, pv_fp8=False, bm=64, bn=128),
    "adv-both-fp16-d64-fp8": dict(layer="mixed5", g=G_ODD, dtype="float16", d=64, layout="flat", b=3,
                                  pv_fp8=True, adv="both"),
    "adv-kbias-bf16-d128-fp16pv": dict(layer="mixed5", g=G_ODD, dtype="bfloat16", d=128, layout="flat", b=2,
                                       pv_fp8=False, adv="kbias"),
    "one-block-rows-fp16-fp8": dict(layer="one_block", g=G_MID, dtype="float16", d=64, layout="flat", b=3,
                                    pv_fp8=True),
    "empty-rows-fp16-fp8": dict(layer="empty", g=G_MID, dtype="float16", d=64, layout="flat", b=2, pv_fp8=True),
    "adv-voffset-mid-bf16-d64-fp8": dict(layer="mixed5", g=G_MID, dtype="bfloat16", d=64, layout="flat", b=2,
                                         pv_fp8=True, adv="voffset"),
    "empty-rows-voffset-fp16-fp8": dict(layer="empty", g=G_MID, dtype="float16", d=64, layout="flat", b=2,
                                        pv_fp8=True, adv="voffset"),
    "long-row-1026-blocks-fp8": dict(layer="long", seq_len=65600, dtype="float16", d=64, layout="flat", b=1,
                                     pv_fp8=True),
    "mixed_routed-vid-fp16-d64-fp8": dict(layer="mixed_routed", g=G_VID, dtype="float16", d=64, layout="flat", b=2,
                                          pv_fp8=True),
}
PREPASS_CASES = {
    "prepass-fp16-d64-flat": dict(g=G_ODD, dtype="float16", d=64, layout="flat", b=3),
    "prepass-bf16-d128-bhld-adv": dict(g=G_MID, dtype="bfloat16", d=128, layout="bhld", b=2, adv="both"),
    "prepass-bf16-d64-flat-voffset": dict(g=G_MID, dtype="bfloat16", d=64, layout="flat", b=2, adv="voffset"),
}
OTHER = ("dispatch", "dispatch_routed", "compile")


def run_case8(name, device):
    if name in PREPASS_CASES:
        return check_prepass(PREPASS_CASES[name], device)
    if name == "dispatch":
        return check_dispatch(device)
    if name == "dispatch_routed":
        return check_dispatch_routed(device)
    if name == "compile":
        return check_compile8(device, "aot_eager" if device.type == "cpu" else "inductor")
    return check_case8(CASES8[name], device)


# --------------------------------------------------------------------------
# CPU, plain torch
# --------------------------------------------------------------------------
def _qkv(b=2, n=203, h=3, d=64, dtype=torch.float16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, n, h, d, generator=gen).to(dtype) for _ in range(3))


def test_quantize_error_bounds():
    from sparse_vdit.kernels import quant8
    q, k, v = _qkv()
    heads, n, bn, scale = (2, 0), q.shape[1], 64, 0.125
    qz = quant8.quantize_torch(q, k, v, heads, bn, scale, True)
    lp = quant8.padded_len(n)
    assert qz.q8.shape == (2, 2, lp, 64) and qz.vt8.shape == (2, 2, 64, lp)
    assert int(qz.q8.abs().max()) == 127 and int(qz.k8.abs().max()) == 127
    # padded tokens are zero
    assert (qz.q8[:, :, n:] == 0).all() and (qz.k8[:, :, n:] == 0).all() and (qz.vt8.float()[..., n:] == 0).all()
    qd, kd, vd = quant8.dequantize(qz, v, heads, scale)
    qh, kh, vh = (x[:, :, list(heads)].double() for x in (q, k, v))
    q_step = (qz.qs.double() / (scale * quant8.LOG2E))[:, :, :n].transpose(1, 2)[..., None]
    assert ((qd - qh).abs() <= q_step / 2 * (1 + 1e-4)).all()
    kc = kh - qz.kmean.double()[:, None]
    assert torch.allclose(qz.kmean.double(), kh.mean(1), atol=1e-6)
    k_step = qz.ks.double().repeat_interleave(bn, -1)[:, :, :n].transpose(1, 2)[..., None]
    assert ((kd - kc).abs() <= k_step / 2 * (1 + 1e-4) + 1e-6).all()
    # e4m3: 3 mantissa bits -> relative error <= 2^-4 for normals, 2^-10 (x scale) absolute below 2^-6
    # V: zero-mean random channels are not smoothed (their mean is noise);
    # whatever offset the quantizer took out comes back in dequantize
    assert (qz.vmean == 0).all()
    vmean = qz.vmean.double()[:, None]
    vs = qz.vs.double()[:, None]
    centred = (vh - vmean).abs() / vs
    assert float(centred.max()) <= 448 * (1 + 1e-6)
    err = (vd - vh).abs() / vs
    normal = centred >= 2 ** -6
    assert (err[normal] <= centred[normal] * 2 ** -4 * (1 + 1e-6) + 1e-9).all()
    assert (err[~normal] <= 2 ** -10 * (1 + 1e-6) + 1e-9).all()


def test_v_smoothing_keeps_channel_offsets_out_of_the_error():
    """With large per-channel offsets in V (as real models have), the offset
    (V's channel mean rounded to bf16) is taken out before e4m3, so the
    error scales with V's spread around its mean, not with the offset;
    channels whose mean is small against their range keep offset 0."""
    from sparse_vdit.kernels import quant8
    q, k, v = _qkv(seed=9)
    offset = 20.0 * torch.randn(1, 1, v.shape[2], v.shape[3], generator=torch.Generator().manual_seed(1))
    offset[..., :4] = 0.0  # four channels without an offset
    v = v + offset
    heads = (0, 1)
    qz = quant8.quantize_torch(q, k, v, heads, 64, 0.125, True)
    vd = quant8.dequantize(qz, v, heads, 0.125)[2]
    vh = v[:, :, list(heads)].double()
    mean = vh.mean(1)
    spread = vh.amax(1) - vh.amin(1)
    smoothed = mean.abs() * quant8.SMOOTH_RANGE_RATIO > spread
    assert not smoothed[..., :4].any() and smoothed[..., 4:].float().mean() > 0.9
    assert torch.equal(qz.vmean[smoothed], mean.float().to(torch.bfloat16).float()[smoothed])
    assert (qz.vmean[~smoothed] == 0).all()
    used = (vh - qz.vmean.double()[:, None]).abs().amax(1, keepdim=True)
    assert ((vd - vh).abs() <= used * 2 ** -4 * 1.01).all()
    big = smoothed[:, None].expand_as(vh)
    assert float((vd - vh)[big].abs().max()) < 0.05 * float(offset.abs().max()) * 2 ** -4


def test_near_constant_v_channels_are_not_smoothed():
    """A channel with (almost) no spread keeps offset 0: the kernel adds
    offset / scale times the row sum to its accumulator, which must stay
    finite and precise (a constant channel would give scale ~ 0)."""
    from sparse_vdit.kernels import quant8
    q, k, v = _qkv(seed=4)
    v[..., 0] = 5.0  # constant
    v[..., 1] = 40.0 + 0.03125 * (v[..., 1] > 0)  # two values (fp16 steps): spread below mean / 1024
    v[..., 2] += 20.0  # a real offset: smoothed
    qz = quant8.quantize_torch(q, k, v, (0, 1), 64, 0.125, True)
    assert (qz.vmean[..., :2] == 0).all() and (qz.vmean[..., 2] != 0).all()
    assert torch.isfinite(qz.voff).all() and float(qz.voff.abs().max()) < 448 * quant8.NEAR_CONSTANT_RATIO
    assert torch.equal(qz.voff, qz.vmean / qz.vs)


def test_smoothing_is_exact_under_softmax():
    """Subtracting any per-head channel vector from K changes no output, for
    any key subset (here a mixed table with prefix/suffix tokens)."""
    from sparse_vdit.patterns import Geometry
    geometry = Geometry(*G_ODD)
    n_heads, table = _make_layer("mixed5", geometry, 128, 64, "cpu")
    q, k, v = _qkv(b=3, n=geometry.seq_len, h=n_heads, dtype=torch.float64, seed=3)
    shift = 50.0 * torch.randn(n_heads, q.shape[-1], dtype=torch.float64)
    a, b = oracle(q, k, v, table, 0.125), oracle(q, k - shift, v, table, 0.125)
    assert rel(b, a) < 1e-12


def test_smoothing_rescues_channel_biased_k():
    """K with a large per-channel bias: without smoothing the int8 scores
    lose most of their resolution; with it the error stays at the unbiased level."""
    from sparse_vdit.kernels import quant8
    q, k, v = _qkv(n=256, seed=4)
    bias = 30.0 * torch.randn(q.shape[-1])
    kb = (k.float() + bias).half()
    heads, bn = (0, 1, 2), 64

    def score_err(kx, smooth):
        qz = quant8.quantize_torch(q, kx, v, heads, bn, 1.0, False)
        qd, kd, _ = quant8.dequantize(qz, v, heads, 1.0)
        if not smooth:  # naive: quantize K itself per block
            kx64 = kx.double().permute(0, 2, 1, 3)
            s = kx64.abs().reshape(*kx64.shape[:2], -1, bn, kx64.shape[-1]).amax((-1, -2)) / 127
            s = s.repeat_interleave(bn, -1)[..., None]
            kd = (torch.round(kx64 / s) * s).permute(0, 2, 1, 3)
            true = kx.double()
        else:
            true = kx.double() - qz.kmean.double()[:, None]
        qh = q.double()
        sd = torch.einsum("blhd,bmhd->bhlm", qd, kd)
        st = torch.einsum("blhd,bmhd->bhlm", qh, true)
        return float((sd - st).norm() / (st - st.mean(-1, keepdim=True)).norm())

    plain, smoothed, naive = score_err(k, True), score_err(kb, True), score_err(kb, False)
    assert smoothed < 1.5 * plain
    assert naive > 5 * smoothed, (naive, smoothed)


def test_v_outlier_channels_keep_other_channels():
    from sparse_vdit.kernels import quant8
    q, k, v = _qkv(seed=6)
    v[..., :2] *= 1000.0
    heads = (0, 1, 2)
    qz = quant8.quantize_torch(q, k, v, heads, 64, 0.125, True)
    vd = quant8.dequantize(qz, v, heads, 0.125)[2]
    vh = v.double()
    rest = rel(vd[..., 2:], vh[..., 2:])
    assert rest < 0.04, rest  # per-channel scales: the outliers cost the other channels nothing


def test_emulated_reference_close_to_exact():
    """The emulated reference (oracle on dequantized inputs) differs from
    the exact oracle by the quantization error only, which is small but not zero."""
    from sparse_vdit.kernels import quant8
    from sparse_vdit.patterns import Geometry
    geometry = Geometry(*G_ODD)
    n_heads, table = _make_layer("mixed5", geometry, 128, 64, "cpu")
    q, k, v = _qkv(b=3, n=geometry.seq_len, h=n_heads, seed=7)
    for pv_fp8, tol in ((True, 0.04), (False, 0.02)):
        qz = quant8.quantize_torch(q, k, v, table.heads, 64, 0.125, pv_fp8)
        err = rel(emulated_reference(qz, v, table, 0.125), oracle(q, k, v, table, 0.125))
        assert rel(rows_oracle(q, k, v, table, 0.125), oracle(q, k, v, table, 0.125)) < 1e-12
        assert 1e-4 < err < tol, (pv_fp8, err)


def test_mean_keys_per_query_routes_auto():
    """auto's rule: 8-bit only where rows average AUTO_MIN_KEYS_PER_QUERY keys;
    at Wan 480p diagonal(2) rows are short, multi-diagonal(4) rows long."""
    from sparse_vdit.kernels import dispatch
    from sparse_vdit.patterns import Diagonal, Geometry, LayerPattern, MultiDiagonal, compile_layer
    geometry = Geometry(21, 30, 52)
    short = compile_layer(LayerPattern((Diagonal(2),) * 2), geometry).table
    long = compile_layer(LayerPattern((MultiDiagonal(4),) * 2), geometry).table
    for table in (short, long):
        want = float(table.computed_pairs().sum()) / (2 * geometry.seq_len)
        assert dispatch.mean_keys_per_query(table) == want
    assert dispatch.mean_keys_per_query(short) < dispatch.AUTO_MIN_KEYS_PER_QUERY < dispatch.mean_keys_per_query(long)


def test_table_with_dense_rows():
    from sparse_vdit.kernels.triton_sparse8 import table_with_dense_rows
    from sparse_vdit.patterns import Geometry
    geometry = Geometry(*G_MID)
    _, table = _make_layer("mixed5", geometry, 128, 64, "cpu")
    merged = table_with_dense_rows(table, (0, 5), geometry.seq_len)
    n = len(table.heads)
    assert merged.heads == table.heads + (0, 5)
    mask = merged.block_mask()
    assert torch.equal(mask[:n], table.block_mask()) and mask[n:].all()
    alone = table_with_dense_rows(None, (1,), geometry.seq_len)
    assert alone.heads == (1,) and alone.block_mask().all() and alone.max_row_blocks == table.n_k_blocks


# --------------------------------------------------------------------------
# CPU: the compiled kernels (Triton's CUDA backend compiles without a GPU)
# --------------------------------------------------------------------------
def _kernel8_signature(tma: bool, pv_fp8: bool, d: int, bn: int = 64) -> dict:
    return dict(compile_cards._sig8(tma, pv_fp8, d, bn))


@pytest.mark.parametrize("capability,tma,pv_fp8,d", [(90, True, True, 128), (90, False, True, 64),
                                                     (90, True, False, 128), (80, False, False, 128)])
def test_kernel8_compiles_for_gpu(capability, tma, pv_fp8, d):
    """Every variant the host code can launch compiles for its GPU (the
    interpreter runs Python, so it cannot catch compile errors such as
    branches returning different types); on FP8 variants the P.V dot starts
    from a zero constant every block: two-level accumulation."""
    _cuda_backend_or_skip()
    from sparse_vdit.kernels import triton_sparse8 as t8
    const = dict(HEAD_DIM=d, BLOCK_M=128, TILE_M=64, BLOCK_N=64, USE_TMA=tma, KV_TAIL=True, PV_FP8=pv_fp8,
                 UPCAST=False, LOG2_PMAX=t8._LOG2_FP8_MAX,
                 PV_IMPRECISE=None if capability == 90 else 64)
    compiled = _compile_sm(t8._sparse_attn8_fwd, _kernel8_signature(tma, pv_fp8, d), const, capability)
    ttgir = compiled.asm["ttgir"]
    if pv_fp8:
        dots = fp8_dot_accumulators(ttgir)
        assert dots, "no FP8 dot found"
        for line, acc in dots:
            assert acc.startswith("%cst"), f"FP8 dot chains its accumulator ({acc}): {line}"
    else:
        assert "f8E4M3FN" not in ttgir


# Registers per thread that leave room for three programs of 4 warps on an
# SM of 64K registers (allocated in steps of 8 per thread).
THREE_PROGRAMS_REGS = 168


@pytest.mark.parametrize("kv_tail", [False, True])
def test_kernel8_hopper_variant_fits_three_programs_per_sm(kv_tail):
    """The Hopper variant (TMA, 64-row tiles, 4 warps, 3 stages) runs three
    programs per SM; one more vector live in the epilogue once took it to
    213 registers (two programs, 16% slower on an H200:
    benchmarks/results/kernels8_vsmooth_ab_before_fix.json). Compiled with the
    divisibility the launcher's arguments get at Wan's shapes, with
    default_config8's Hopper settings."""
    _cuda_backend_or_skip()
    import shutil

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sparse_vdit.kernels import triton_sparse8 as t8
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    cuobjdump = cuobjdump if os.path.exists(cuobjdump) else shutil.which("cuobjdump")
    if cuobjdump is None:
        pytest.skip("no cuobjdump to read the register count")
    fn = t8._sparse_attn8_fwd
    sig = _kernel8_signature(True, True, 128)
    const = dict(HEAD_DIM=128, BLOCK_M=128, TILE_M=64, BLOCK_N=64, USE_TMA=True, KV_TAIL=kv_tail, PV_FP8=True,
                 UPCAST=False, LOG2_PMAX=t8._LOG2_FP8_MAX, PV_IMPRECISE=None)
    aligned = [n for n, t in sig.items() if t.startswith("*")] + ["l_pad", "n_q_blocks", "n_k_blocks", "svb", "svl",
                                                                 "svh", "sob", "sol", "soh"]
    src = ASTSource(fn, dict(sig, **{k: "constexpr" for k in const}),
                    constexprs={(fn.arg_names.index(k),): v for k, v in const.items()},
                    attrs={(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 3})
    cubin = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sparse8_regs_{os.getpid()}_{int(kv_tail)}.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, timeout=60).stdout
    finally:
        os.remove(cubin)
    regs = [int(x.split(":")[1]) for x in usage.split() if x.startswith("REG:")]
    assert regs, usage
    assert regs[0] <= THREE_PROGRAMS_REGS, f"{regs[0]} registers per thread: fewer programs per SM ({usage})"


@pytest.mark.parametrize("capability,pv_fp8", [(90, True), (90, False), (89, True), (80, False)])
def test_prepass_compiles_for_gpu(capability, pv_fp8):
    """The pre-pass kernels compile for every card the 8-bit path serves:
    Hopper, Ada (FP8 P.V) and Ampere (16-bit P.V). Their fp32 divisions are
    all IEEE (div.rn), as the emulation's: Triton compiles `x / 127.0` to a
    multiplication by an approximate reciprocal, which made the GPU's scales
    differ from the emulation's in the last bit."""
    _cuda_backend_or_skip()
    from sparse_vdit.kernels import quant8
    ptx = []
    sig = {name: "*bf16" for name in ("Q", "K", "V")}
    sig.update({"heads_ptr": "*i32", "KMEAN": "*fp32", "VMEAN": "*fp32", "VS": "*fp32", "Q8": "*i8", "QS": "*fp32",
                "K8": "*i8",
                "KS": "*fp32", "VT8": "*fp8e4nv" if pv_fp8 else "*i8"})
    sig.update({name: "i32" for name in ("seq_len", "l_pad", "n_slots", "sqb", "sql", "sqh", "skb", "skl", "skh",
                                         "svb", "svl", "svh")})
    sig["qk_scale"] = "fp32"
    ptx.append(_compile_sm(quant8._quantize, sig, dict(HEAD_DIM=128, BLOCK=64, PV_FP8=pv_fp8, EMULATE_FP8=False),
                           capability).asm["ptx"])
    sig = {"K": "*bf16", "V": "*bf16", "heads_ptr": "*i32", "KSUM": "*fp32", "VSUM": "*fp32", "VMAX": "*fp32",
           "VMIN": "*fp32"}
    sig.update({name: "i32" for name in ("seq_len", "n_slots", "n_chunks", "skb", "skl", "skh", "svb", "svl", "svh")})
    _compile_sm(quant8._stats, sig, dict(HEAD_DIM=128, CHUNK=quant8.STATS_CHUNK, SUB=64, WANT_V=pv_fp8), capability)
    sig = {name: "*fp32" for name in ("KSUM", "VSUM", "VMAX", "VMIN", "KMEAN", "VMEAN", "VS", "VOFF")}
    sig.update(seq_len="i32", n_chunks="i32")
    ptx.append(_compile_sm(quant8._finalize, sig, dict(HEAD_DIM=128, WANT_V=pv_fp8,
                                                   SMOOTH_RATIO=quant8.SMOOTH_RANGE_RATIO,
                                                   NEAR_CONSTANT=quant8.NEAR_CONSTANT_RATIO, TINY=quant8._TINY,
                                                   VMAX_FP8=quant8.FP8_MAX), capability, num_warps=1).asm["ptx"])
    for text in ptx:
        divisions = re.findall(r"\b(?:div|rcp)\.[a-z.]*f32\b", text)
        assert "div.rn.f32" in divisions and set(divisions) == {"div.rn.f32"}, sorted(set(divisions))


# --------------------------------------------------------------------------
# CPU: interpreter worker in a subprocess
# --------------------------------------------------------------------------
ALL_INTERP = [*PREPASS_CASES, *CASES8, *OTHER]


def _worker(names):
    start_worker()
    report_cases(names, lambda name: run_case8(name, torch.device("cpu")))


@pytest.fixture(scope="module")
def interpreter8():
    return interpreter_worker_results(__file__, ALL_INTERP, 1200)


@pytest.mark.parametrize("name", ALL_INTERP)
def test_interpreter8(interpreter8, name):
    result = interpreter8[name]
    assert result["ok"], result.get("error", "") + "\n" + result.get("trace", "")


# --------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs a CUDA GPU (and no interpreter)")
G_480 = (5, 30, 52, 7, 9)  # Wan 480p frame grid, 5 latent frames, prefix/suffix tokens
GPU_CASES8 = {
    **{f"gpu-mixed5-{dt}-d{d}-{lay}-fp8{int(f)}": dict(layer="mixed5", g=G_480, dtype=dt, d=d, layout=lay, b=3,
                                                      pv_fp8=f)
       for dt, d, lay in (("bfloat16", 128, "flat"), ("float16", 64, "bhld")) for f in (True, False)},
    "gpu-mixed5-bf16-d128-ptr-tile64": dict(layer="mixed5", g=G_480, dtype="bfloat16", d=128, layout="flat", b=2,
                                            pv_fp8=True, cfg={"tma": False, "tile_m": 64, "num_warps": 4}),
    "gpu-mixed5-fp16-d64-fp16pv-ptr": dict(layer="mixed5", g=G_480, dtype="float16", d=64, layout="bhld", b=2,
                                           pv_fp8=False, cfg={"tma": False}),
    "gpu-mixed5-bf16-d128-tile128-w8": dict(layer="mixed5", g=G_480, dtype="bfloat16", d=128, layout="bhld", b=1,
                                            pv_fp8=True, cfg={"tile_m": 128, "num_warps": 8}),
    "gpu-adv-both-bf16-d128": dict(layer="mixed5", g=G_480, dtype="bfloat16", d=128, layout="flat", b=2,
                                   pv_fp8=True, adv="both"),
    "gpu-adv-voffset-bf16-d128": dict(layer="mixed5", g=G_480, dtype="bfloat16", d=128, layout="flat", b=2,
                                      pv_fp8=True, adv="voffset"),
    "gpu-empty-rows-voffset": dict(layer="empty", g=G_480, dtype="bfloat16", d=128, layout="flat", b=2,
                                   pv_fp8=True, adv="voffset"),
    **{f"gpu-mixed_routed-bf16-d128-flat-fp8{int(f)}": dict(layer="mixed_routed", g=G_480, dtype="bfloat16", d=128,
                                                           layout="flat", b=2, pv_fp8=f) for f in (True, False)},
    "gpu-one-block-rows": dict(layer="one_block", g=G_480, dtype="bfloat16", d=128, layout="flat", b=3,
                               pv_fp8=True),
    "gpu-empty-rows": dict(layer="empty", g=G_480, dtype="bfloat16", d=128, layout="flat", b=2, pv_fp8=True),
    "gpu-long-row-1026-blocks": dict(layer="long", seq_len=65600, dtype="bfloat16", d=128, layout="flat", b=1,
                                     pv_fp8=True),
}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(GPU_CASES8))
def test_gpu_kernel8(name):
    print(name, check_case8(GPU_CASES8[name], torch.device("cuda")))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", [*PREPASS_CASES, *OTHER])
def test_gpu_other8(name):
    print(name, run_case8(name, torch.device("cuda")))


@pytest.mark.gpu
@needs_cuda
def test_gpu_two_level_accumulation():
    """The FP8 P.V dot starts from zero each block and is added in fp32
    (never chained through the MMA accumulator)."""
    from sparse_vdit.kernels import triton_sparse8 as t8
    if not t8.fp8_pv_supported("cuda"):
        pytest.skip("no FP8 tensor cores")
    check_case8(GPU_CASES8["gpu-mixed5-bfloat16-d128-flat-fp81"], torch.device("cuda"))
    ttgir = fp8_ttgir(t8._sparse_attn8_fwd)
    assert ttgir, "no FP8 variant compiled"
    for text in ttgir:
        dots = fp8_dot_accumulators(text)
        assert dots, "no FP8 dot found"
        for line, acc in dots:
            assert acc.startswith("%cst"), f"FP8 dot chains its accumulator ({acc}): {line}"


def fp8_ttgir(kernel) -> list[str]:
    """TTGIR of the compiled variants of a Triton kernel that use FP8."""
    texts = []
    for cache in kernel.device_caches.values():
        for compiled in cache[0].values():
            text = compiled.asm.get("ttgir", "")
            if "f8E4M3FN" in text:
                texts.append(text)
    return texts


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker([a for a in sys.argv[1:] if a != "--worker"])

"""The 16-bit kernel's pooled tail for routed rows (kernels/routing.pooled_tail,
the HAS_TAIL branch of kernels/triton_sparse.py) against the float64
definition (kernels/routed_tail_reference.py).

Routed heads must match the reference WITH the tail, every other head of the
same launch the reference without it; outputs are NaN-poisoned, heads
outside the table must stay NaN. CPU: the Triton interpreter in one
subprocess (as tests/test_triton_kernel.py). GPU: bf16 at Wan 1.3B 480p
length on sampled query blocks, marked `gpu`.
"""
from __future__ import annotations

import json
import os
import sys
import zlib

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from test_triton_kernel import (_inputs, _pattern, interpreter_worker_results, rel, report_cases,  # noqa: E402
                                start_worker)

# name -> (geometry (frames, rows, cols, prefix, suffix), heads, dtype, head_dim, layout, batch, bm, bn, cfg)
CASES = {
    # 1,208 tokens with extra tokens on both sides: ragged last q and kv blocks, routed rows beside fixed ones
    "mixed-fp32-d64-flat": ((5, 12, 20, 3, 5), ["full", "rt20t", "skip", "w3", "rt50t", "diag1", "rt20"],
                            "float32", 64, "flat", 2, 128, 64, None),
    "mixed-fp16-d128-bhld": ((5, 12, 20, 3, 5), ["rt20t", "diag1", "rt50t"], "float16", 128, "bhld", 1, 128, 64,
                             None),
    # more key blocks than BLOCK_N: the tail runs several steps; 64x64 blocks; a rows-per-program config
    "long-fp32-d64-64x64-rows3": ((4, 24, 48, 1, 2), ["rt20t", "diag1"], "float32", 64, "flat", 1, 64, 64,
                                  {"rows_per_program": 3}),
    "video-only-bf16-d64-tma": ((6, 8, 11, 0, 0), ["rt20t", "md1", "rt50t"], "bfloat16", 64, "flat", 2, 128, 64,
                                {"tma": True}),
}
TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.5e-2}


def check_tail_case(name, device, ts, query_blocks=None):
    from sparse_vdit.kernels import routing
    from sparse_vdit.kernels.routed_tail_reference import query_rows, routed_tail_attention64
    from sparse_vdit.patterns import Geometry, LayerPattern, compile_layer
    g, tags, dtype_name, d, layout, batch, bm, bn, cfg = CASES[name]
    geometry = Geometry(*g)
    layer = LayerPattern(tuple(_pattern(t) for t in tags))
    compiled = compile_layer(layer, geometry, str(device), bm, bn)
    table = compiled.table
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    dtype = getattr(torch, dtype_name)
    q, k, v, out = _inputs(batch, geometry.seq_len, len(tags), d, dtype, layout, device, gen)
    routing.route(q, k, compiled)
    tail = routing.pooled_tail(k, v, compiled)
    ts.prepare_table(table)
    ts._launch(q, k, v, out, table.kv_offsets, table.kv_indices, table.derived["triton_heads"], None,
               table.seq_len, bm, bn, None, cfg, tail=tail)
    others = [h for h in range(len(tags)) if h not in table.heads]
    assert torch.isnan(out[:, :, others]).all(), "kernel wrote heads outside the table"

    masks = torch.ones(len(tags), table.n_q_blocks, table.n_k_blocks, dtype=torch.bool)
    masks[list(table.heads)] = table.block_mask().cpu()
    blocks = torch.arange(table.n_q_blocks) if query_blocks is None else query_blocks
    want = routed_tail_attention64(*(x.cpu() for x in (q, k, v)), masks, bm, bn, query_blocks=blocks)
    rows = query_rows(blocks, bm, geometry.seq_len)
    got = out[:, rows.to(device)].cpu()
    assert torch.isfinite(got[:, :, list(table.heads)]).all(), "table heads not fully written"
    errors = {}
    for head in table.heads:
        routed = layer.heads[head].kind == "routed" and layer.heads[head].tail
        target = (want.tail if routed else want.no_tail)[:, :, head]
        errors[head] = rel(got[:, :, head], target)
        assert errors[head] < TOL[dtype_name], f"head {head} ({'tail' if routed else 'no tail'}): {errors[head]:.3e}"
        if routed:  # the tail really changes these rows: a kernel that ignored it fails above
            moved = rel(want.no_tail[:, :, head], want.tail[:, :, head])
            assert moved > 20 * TOL[dtype_name], f"head {head}: the tail moves the output only {moved:.3e}"
    return {"errors": {str(h): e for h, e in errors.items()}}


# 401 tokens with extra tokens on both sides: at the default 128 / 64 blocks,
# query blocks 1-2 are routed and drop key blocks (at 110 tokens the one
# query block holds extra tokens, so no row is routed and there is no tail)
ROUTED_ROWS = (4, 9, 11, 2, 3)


def check_tail_errors(ts, device):
    """A tail that does not fit the call is refused before launch."""
    from sparse_vdit.kernels import routing
    from sparse_vdit.patterns import Geometry, LayerPattern, compile_layer
    geometry = Geometry(*ROUTED_ROWS)
    compiled = compile_layer(LayerPattern((_pattern("rt20t"), _pattern("diag1"))), geometry, str(device))
    gen = torch.Generator().manual_seed(5)
    q, k, v, out = _inputs(1, geometry.seq_len, 2, 64, torch.float32, "flat", device, gen)
    routing.route(q, k, compiled)
    tail = routing.pooled_tail(k, v, compiled)
    for bad in (tail._replace(k_mean=tail.k_mean.half()), tail._replace(rows=tail.rows[:-1]),
                tail._replace(v_mean=tail.v_mean[:, :-1])):
        try:
            ts.sparse_attention_triton(q, k, v, out, compiled.table, tail=bad)
        except ValueError as error:
            assert "tail" in str(error)
        else:
            raise AssertionError("a tail that does not fit was accepted")
    try:
        routing.pooled_tail(k, v, compile_layer(LayerPattern((_pattern("rt20"),) * 2), geometry, str(device)))
    except ValueError as error:
        assert "no routed heads with a tail" in str(error)
    else:
        raise AssertionError("a layer without routed heads got a tail")
    return {}


def check_tail_compile(ts, device, backend):
    """Routing, the tail and the kernel inside torch.compile(fullgraph=True):
    one custom op with the tail's tensors, the eager result."""
    from sparse_vdit.kernels import routing
    from sparse_vdit.patterns import Geometry, LayerPattern, compile_layer
    geometry = Geometry(*ROUTED_ROWS)
    compiled = compile_layer(LayerPattern((_pattern("rt20t"), _pattern("diag1"), _pattern("rt50"))), geometry,
                             str(device))
    gen = torch.Generator().manual_seed(9)
    q, k, v, _ = _inputs(2, geometry.seq_len, 3, 64, torch.float16, "flat", device, gen)
    ts.prepare_table(compiled.table)
    routing.route(q, k, compiled)
    listed = routing.pooled_tail(k, v, compiled).listed
    assert listed.shape[0] > 0 and bool((listed.sum(1) < listed.shape[1]).all()), "the tail drops nothing here"

    def fn(q, k, v):
        out = torch.zeros_like(q)
        routing.route(q, k, compiled)
        ts.sparse_attention_triton(q, k, v, out, compiled.table, tail=routing.pooled_tail(k, v, compiled))
        return out * 2.0

    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend=backend)(q, k, v)
    want = fn(q, k, v)
    assert torch.isfinite(got).all()
    err = rel(got, want)
    assert err < 1e-6, f"compiled result differs from eager: {err}"
    return {"err_vs_eager": err}


def _worker(names):
    start_worker()
    from sparse_vdit.kernels import triton_sparse as ts
    cpu = torch.device("cpu")
    special = {"errors": lambda: check_tail_errors(ts, cpu), "compile": lambda: check_tail_compile(ts, cpu, "aot_eager")}
    report_cases(names, lambda name: special[name]() if name in special else check_tail_case(name, cpu, ts))


@pytest.fixture(scope="module")
def interpreter_results():
    return interpreter_worker_results(__file__, [*CASES, "errors", "compile"], timeout=1500)


@pytest.mark.parametrize("name", [*CASES, "errors", "compile"])
def test_tail_kernel_interpreter(name, interpreter_results):
    result = interpreter_results[name]
    assert result["ok"], result.get("error", "") + "\n" + result.get("trace", "")


@pytest.mark.gpu
def test_tail_kernel_gpu_compiles_with_inductor():
    from sparse_vdit.kernels import triton_sparse as ts
    check_tail_compile(ts, torch.device("cuda"), "inductor")


@pytest.mark.gpu
def test_tail_kernel_gpu_wan480_length():
    """bf16 at 32,760 tokens (Wan 1.3B 480p grid), routed heads at 5 and 20%
    beside fixed ones, B 2, checked on sampled query blocks."""
    from sparse_vdit.kernels import routing
    from sparse_vdit.kernels import triton_sparse as ts
    from sparse_vdit.kernels.routed_tail_reference import query_rows, routed_tail_attention64
    from sparse_vdit.patterns import Diagonal, Geometry, LayerPattern, Routed, Window3D, compile_layer
    device = torch.device("cuda")
    geometry = Geometry(21, 30, 52)
    layer = LayerPattern((Routed(0.05, tail=True), Diagonal(1), Routed(0.2, tail=True), Window3D(1, 2, 3)))
    compiled = compile_layer(layer, geometry, "cuda")
    table = compiled.table
    gen = torch.Generator().manual_seed(7)
    q, k, v, out = _inputs(2, geometry.seq_len, 4, 128, torch.bfloat16, "flat", device, gen)
    routing.route(q, k, compiled)
    ts.sparse_attention_triton(q, k, v, out, table, tail=routing.pooled_tail(k, v, compiled))
    blocks = torch.tensor([0, 1, 57, 128, table.n_q_blocks - 1])
    masks = table.block_mask().cpu()
    want = routed_tail_attention64(*(x.cpu() for x in (q, k, v)), masks, table.block_m, table.block_n,
                                   query_blocks=blocks)
    got = out[:, query_rows(blocks, table.block_m, geometry.seq_len).to(device)].cpu()
    assert torch.isfinite(got).all()
    for head, pattern in enumerate(layer.heads):
        target = (want.tail if pattern.kind == "routed" and pattern.tail else want.no_tail)[:, :, head]
        assert rel(got[:, :, head], target) < 1.5e-2, head


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _worker(sys.argv[2:])

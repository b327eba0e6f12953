"""The Triton block-sparse kernel against a float64 masked dense oracle and
the reference path.

CPU: the kernel runs under the Triton interpreter (TRITON_INTERPRET=1). The
variable must be set before triton is imported, and setting it in this
process would leak into every other test module, so all interpreter checks
run in ONE subprocess (this file run as a script with --worker) that reports
one result per case; each case is a test here. GPU: the same kind of checks
in-process on CUDA in bf16/fp16 at realistic sizes, marked `gpu`.
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

# name -> case spec. Geometry (frames, rows, cols, prefix, suffix).
G_ODD = (3, 5, 7, 2, 3)       # 110 tokens: one ragged q block of 128, ragged kv tail
G_MID = (5, 12, 20, 3, 5)     # 1208 tokens: 10 q blocks of 128, 19 kv blocks of 64 (ragged)
G_VID = (6, 8, 11, 0, 0)      # 528 tokens, no extras
PATTERNS = {
    "diagonal": ["diag1"] * 3,
    "multi_diagonal": ["md1"] * 3,
    "multi_diagonal_frames": ["md0f1"] * 3,
    "vertical_stripe": ["vs0"] * 3,
    "window_3d": ["w3", "w3", "diag1"],
    "mixed_routed": ["full", "rt20", "skip", "w3", "rt50", "diag1"],  # routed rows in one launch with the rest
    "mixed5": ["full", "diag1", "skip", "md1", "vs0", "md0f1"],
}
CASES = {
    # pattern coverage, fp16, D 64, the ComfyUI flat layout, B 2
    **{f"{p}-fp16-d64-flat": dict(layer=p, g=G_MID, dtype="float16", d=64, layout="flat", b=2)
       for p in PATTERNS},
    "mixed5-fp32-d128-bhld": dict(layer="mixed5", g=G_ODD, dtype="float32", d=128, layout="bhld", b=2),
    "mixed5-fp16-d128-flat-b1": dict(layer="mixed5", g=G_VID, dtype="float16", d=128, layout="flat", b=1),
    "mixed5-bf16-d64-flat": dict(layer="mixed5", g=G_ODD, dtype="bfloat16", d=64, layout="flat", b=2),
    "mixed5-fp16-d64-tma": dict(layer="mixed5", g=G_MID, dtype="float16", d=64, layout="flat", b=2,
                                cfg={"tma": True}),
    "mixed5-fp16-d64-bhld-tma-lpt": dict(layer="mixed5", g=G_MID, dtype="float16", d=64, layout="bhld",
                                         b=2, cfg={"tma": True, "order": "lpt"}),
    "mixed5-fp16-d64-heads-order": dict(layer="mixed5", g=G_VID, dtype="float16", d=64, layout="flat",
                                        b=2, cfg={"order": "heads"}),
    "mixed5-fp32-d64-blocks64x64": dict(layer="mixed5", g=G_MID, dtype="float32", d=64, layout="flat", b=1,
                                        bm=64, bn=64),
    "mixed5-fp16-d64-blocks128x128": dict(layer="mixed5", g=G_VID, dtype="float16", d=64, layout="flat", b=2,
                                          bm=128, bn=128),
    "mixed5-fp16-d64-blocks64x128-tma": dict(layer="mixed5", g=G_MID, dtype="float16", d=64, layout="bhld",
                                             b=1, bm=64, bn=128, cfg={"tma": True}),
    "empty-rows-fp16-d64": dict(layer="empty", g=G_MID, dtype="float16", d=64, layout="flat", b=2),
    "mixed5-fp16-d64-tile64": dict(layer="mixed5", g=G_MID, dtype="float16", d=64, layout="flat", b=2,
                                   cfg={"tile_m": 64}),
    "mixed5-fp16-d64-bhld-tma-lpt-tile64": dict(layer="mixed5", g=G_ODD, dtype="float16", d=64, layout="bhld",
                                                b=3, cfg={"tma": True, "order": "lpt", "tile_m": 64}),
    # several rows per program (triton_sparse_rows.py): programs that cross heads, empty rows, ragged tails
    "mixed5-fp16-d64-rows3": dict(layer="mixed5", g=G_MID, dtype="float16", d=64, layout="flat", b=2,
                                  cfg={"rows_per_program": 3}),
    "empty-rows-fp16-d64-rows4": dict(layer="empty", g=G_MID, dtype="float16", d=64, layout="flat", b=2,
                                      cfg={"rows_per_program": 4}),
    "diagonal-bf16-d64-bhld-tma-rows2": dict(layer="diagonal", g=G_ODD, dtype="bfloat16", d=64, layout="bhld",
                                             b=3, cfg={"tma": True, "rows_per_program": 2}),
    "mixed5-fp32-d128-flat-tma-rows5": dict(layer="mixed5", g=G_VID, dtype="float32", d=128, layout="flat", b=1,
                                            cfg={"tma": True, "rows_per_program": 5}),
    # the same routed table again with other inputs: nothing cached on it (row order, entry rows) may go stale
    **{f"mixed_routed-fp16-d64-rows3-call{i}": dict(layer="mixed_routed", g=G_VID, dtype="float16", d=64,
                                                        layout="flat", b=2, call=i,
                                                        cfg={"rows_per_program": 3})
       for i in (1, 2)},
    "errors": dict(kind="errors"),
    "torch-compile": dict(kind="compile"),
}
TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.5e-2}


# --------------------------------------------------------------------------
# Shared helpers (run in the worker and in GPU tests)
# --------------------------------------------------------------------------
def _pattern(tag):
    from sparse_vdit.patterns import Diagonal, Full, MultiDiagonal, Routed, Skip, VerticalStripe, Window3D
    return {"diag1": Diagonal(1), "md1": MultiDiagonal(1), "md0f1": MultiDiagonal(0, 1),
            "vs0": VerticalStripe((0,)), "full": Full(), "skip": Skip(), "w3": Window3D(1, 2, 3),
            "rt20": Routed(0.2), "rt50": Routed(0.5), "rt20t": Routed(0.2, tail=True),
            "rt50t": Routed(0.5, tail=True)}[tag]


def _make_layer(name, geometry, bm, bn, device):
    from sparse_vdit.patterns import LayerPattern, compile_layer
    from sparse_vdit.patterns.tables import BlockTable
    if name == "empty":  # hand-made table with empty rows, a full row, and a tail-only row
        nq, nk = -(-geometry.seq_len // bm), -(-geometry.seq_len // bn)
        heads = (1, 3)
        lists = []
        for slot in range(len(heads)):
            for qb in range(nq):
                if (slot + qb) % 2 == 0:
                    lists.append([])
                elif qb == nq - 1:
                    lists.append([nk - 1])
                else:
                    lists.append(list(range(nk)))
        counts = torch.tensor([len(x) for x in lists])
        offsets = torch.zeros(len(lists) + 1, dtype=torch.int32)
        offsets[1:] = counts.cumsum(0)
        indices = torch.tensor([i for x in lists for i in x], dtype=torch.int32)
        table = BlockTable(heads, geometry.seq_len, bm, bn, offsets.to(device), indices.to(device),
                           int(counts.max()))
        return 4, table
    layer = LayerPattern(tuple(_pattern(t) for t in PATTERNS[name]))
    compiled = compile_layer(layer, geometry, str(device), bm, bn)
    return len(layer.heads), compiled.table


def route_layer(name, geometry, bm, bn, device, q, k) -> None:
    """Routed heads of a named layer: route its (cached) table for this q, k,
    and check the rows are a top-k of the float64 pooled scores."""
    from oracle import assert_routed_rows_valid
    from sparse_vdit.kernels import routing
    from sparse_vdit.patterns import LayerPattern, compile_layer
    layer = LayerPattern(tuple(_pattern(t) for t in PATTERNS.get(name, ())))
    if not any(p.kind == "routed" for p in layer.heads):
        return
    compiled = compile_layer(layer, geometry, str(device), bm, bn)  # the same table _make_layer returned
    routing.route(q, k, compiled)
    masks = compiled.table.block_mask()
    for slot, head in enumerate(compiled.sparse_heads):
        if layer.heads[head].kind == "routed":
            assert_routed_rows_valid(masks[slot], q, k, geometry, layer.heads[head].share, head, bm, bn, 1e-4)


def _inputs(b, seq_len, heads, d, dtype, layout, device, gen):
    """q, k, v, out as [B, L, H, D] views in the given memory layout; out is
    NaN-poisoned. 'flat' = slices of one fused [B, L, 3*H*D] tensor (ComfyUI's
    [B, L, H*D], non-contiguous); 'bhld' = [B, H, L, D] transposed."""
    if layout == "flat":
        fused = torch.randn(b, seq_len, 3 * heads * d, generator=gen).to(device=device, dtype=dtype)
        q, k, v = (fused[..., i * heads * d:(i + 1) * heads * d].view(b, seq_len, heads, d) for i in range(3))
        out = torch.full((b, seq_len, heads * d), float("nan"), dtype=dtype, device=device).view(b, seq_len, heads, d)
    else:
        q, k, v = (torch.randn(b, heads, seq_len, d, generator=gen).to(device=device, dtype=dtype).transpose(1, 2)
                   for _ in range(3))
        out = torch.full((b, heads, seq_len, d), float("nan"), dtype=dtype, device=device).transpose(1, 2)
    return q, k, v, out


def oracle(q, k, v, table, scale):
    """float64 masked dense attention over each head slot's token mask."""
    outs = []
    for slot, h in enumerate(table.heads):
        qh, kh, vh = (x[:, :, h].double() for x in (q, k, v))
        s = qh @ kh.transpose(1, 2) * scale
        s = s.masked_fill(~table.token_mask(slot).to(s.device), float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        outs.append(p @ vh)
    return torch.stack(outs, 2)  # [B, L, h, D]


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_case(spec, device, run_kernel):
    """Run one kernel case; returns dict of measured errors (raises on structural failures)."""
    from sparse_vdit.patterns import Geometry
    from sparse_vdit.kernels.reference import reference_sparse_attention
    geometry = Geometry(*spec["g"])
    bm, bn = spec.get("bm", 128), spec.get("bn", 64)
    gen = torch.Generator().manual_seed(zlib.crc32(repr(sorted(spec.items())).encode()))
    n_heads, table = _make_layer(spec["layer"], geometry, bm, bn, device)
    dtype = getattr(torch, spec["dtype"])
    q, k, v, out = _inputs(spec["b"], geometry.seq_len, n_heads, spec["d"], dtype, spec["layout"], device, gen)
    route_layer(spec["layer"], geometry, bm, bn, device, q, k)
    scale = spec["d"] ** -0.5
    run_kernel(q, k, v, out, table, spec.get("cfg"))
    others = [h for h in range(n_heads) if h not in table.heads]
    assert torch.isnan(out[:, :, others]).all(), "kernel wrote heads outside the table"
    got = out[:, :, list(table.heads)]
    assert torch.isfinite(got).all(), "table heads not fully written (NaN/inf left)"
    want = oracle(q, k, v, table, scale)
    ref = reference_sparse_attention(q, k, v, table)
    err_oracle, err_ref = rel(got, want), rel(got, ref)
    # rows with no listed block must be exact zeros
    counts = (table.kv_offsets[1:] - table.kv_offsets[:-1]).cpu().view(len(table.heads), table.n_q_blocks)
    for slot, qb in (counts == 0).nonzero().tolist():
        rows = got[:, qb * bm:(qb + 1) * bm, slot]
        assert (rows == 0).all(), f"empty row (slot {slot}, q block {qb}) not zero"
    tol = TOL[spec["dtype"]]
    assert err_oracle < tol, f"error vs float64 oracle {err_oracle:.3e} >= {tol}"
    assert err_ref < max(tol, 1e-2 if dtype != torch.float32 else tol), f"error vs reference {err_ref:.3e}"
    return {"err_oracle": err_oracle, "err_ref": err_ref, "empty_rows": int((counts == 0).sum())}


def _kernel_runner(ts):
    def run(q, k, v, out, table, cfg):
        if cfg:
            ts.prepare_table(table)
            order = ts.row_order(table, cfg.get("order", ts.DEFAULT_ORDER))
            ts._launch(q, k, v, out, table.kv_offsets, table.kv_indices, table.derived["triton_heads"],
                       order, table.seq_len, table.block_m, table.block_n, None, cfg)
        else:
            ts.sparse_attention_triton(q, k, v, out, table)
    return run


def check_errors(ts, device):
    from sparse_vdit.patterns import Geometry
    geometry = Geometry(*G_ODD)
    _, table = _make_layer("diagonal", geometry, 128, 64, device)
    gen = torch.Generator().manual_seed(1)
    q, k, v, out = _inputs(1, geometry.seq_len, 3, 80, torch.float16, "flat", device, gen)
    with pytest_raises(ValueError, "head_dim"):
        ts.sparse_attention_triton(q, k, v, out, table)
    q, k, v, out = _inputs(1, geometry.seq_len, 3, 64, torch.float16, "flat", device, gen)
    _, t32 = _make_layer("diagonal", geometry, 128, 32, device)
    with pytest_raises(ValueError, "block"):
        ts.sparse_attention_triton(q, k, v, out, t32)
    q2, k2, v2, out2 = _inputs(1, geometry.seq_len + 1, 3, 64, torch.float16, "flat", device, gen)
    with pytest_raises(ValueError, "tokens"):
        ts.sparse_attention_triton(q2, k2, v2, out2, table)
    return {}


class pytest_raises:  # tiny stand-in usable in the worker without pytest's machinery
    def __init__(self, exc, words):
        self.exc, self.words = exc, words

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            raise AssertionError(f"expected {self.exc.__name__} mentioning {self.words!r}")
        if not issubclass(et, self.exc) or self.words not in str(ev):
            return False
        return True


def check_compile(ts, device, backend, entry: str = "sparse_attention_triton"):
    """A function calling the kernel (module ts, function `entry`) compiles
    with fullgraph=True (no graph break) and gives the eager result."""
    from sparse_vdit.patterns import Geometry
    geometry = Geometry(*G_ODD)
    n_heads, table = _make_layer("mixed5", geometry, 128, 64, device)
    gen = torch.Generator().manual_seed(2)
    q, k, v, _ = _inputs(2, geometry.seq_len, n_heads, 64, torch.float16, "flat", device, gen)
    ts.prepare_table(table)

    def fn(q, k, v):
        out = torch.zeros_like(q)
        getattr(ts, entry)(q, k, v, out, table)
        return out * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    got = compiled(q, k, v)
    want = fn(q, k, v)
    assert torch.isfinite(got).all()
    err = rel(got, want)
    assert err < 1e-6, f"compiled result differs from eager: {err}"
    # the op is in the graph as one custom op
    assert hasattr(torch.ops.sparse_vdit, "sparse_attention")
    return {"err_vs_eager": err}


def run_case(name, device, ts):
    spec = CASES[name]
    kind = spec.get("kind", "kernel")
    if kind == "errors":
        return check_errors(ts, device)
    if kind == "compile":
        return check_compile(ts, device, "aot_eager" if device.type == "cpu" else "inductor")
    return check_case(spec, device, _kernel_runner(ts))


# --------------------------------------------------------------------------
# CPU: interpreter worker in a subprocess
# --------------------------------------------------------------------------
def start_worker() -> None:
    """First thing in a worker: the interpreter on before triton is imported."""
    os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def report_cases(names, run_one) -> None:
    """The worker side of interpreter_worker_results: run_one(name) per case,
    each failure reported with its trace, the results printed for the parent."""
    results = {}
    for name in names:
        try:
            results[name] = {"ok": True, **run_one(name)}
        except Exception as error:  # reported per case by the parent
            import traceback
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                             "trace": traceback.format_exc()[-2000:]}
    print("@@RESULTS@@" + json.dumps(results))


def _worker(names):
    start_worker()
    from sparse_vdit.kernels import triton_sparse as ts
    device = torch.device("cpu")
    assert ts.triton_available(device)
    report_cases(names, lambda name: run_case(name, device, ts))


def _triton_importable():
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


def _triton_version() -> tuple[int, ...]:
    import triton
    return tuple(int(part) for part in triton.__version__.split(".")[:2] if part.isdigit())


def interpreter_worker_results(script: str, names, timeout: int) -> dict:
    """Run `script --worker names...` under TRITON_INTERPRET=1 in a subprocess
    (the variable must be set before triton is imported, and would leak into
    other test modules); returns its per-case results."""
    if not _triton_importable():
        pytest.skip("triton is not installed")
    if _triton_version() < (3, 9):
        # Triton 3.6's interpreter fails on the kernel's scalar loads from a
        # table ("only 0-dimensional arrays can be converted"); 3.9's runs it.
        # The compiled kernel is checked by the GPU tests below on any version.
        pytest.skip("the Triton interpreter before 3.9 cannot run this kernel")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, os.path.abspath(script), "--worker", *names],
                          capture_output=True, text=True, env=env, timeout=timeout)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@RESULTS@@")]
    assert marker, f"interpreter worker failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(marker[-1][len("@@RESULTS@@"):])


@pytest.fixture(scope="module")
def interpreter_results():
    return interpreter_worker_results(__file__, list(CASES), 600)


@pytest.mark.parametrize("name", list(CASES))
def test_interpreter(interpreter_results, name):
    result = interpreter_results[name]
    assert result["ok"], result.get("error", "") + "\n" + result.get("trace", "")


# --------------------------------------------------------------------------
# CPU: the compiled kernel (Triton's CUDA backend compiles without a GPU)
# --------------------------------------------------------------------------
def _compile_sm(fn, signature: dict, constexprs: dict, capability: int, num_warps=4, num_stages=3):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _cuda_backend_or_skip():
    if not _triton_importable():
        pytest.skip("triton is not installed")
    try:
        import triton.backends.nvidia  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as error:  # pragma: no cover - depends on the wheel
        pytest.skip(f"Triton's CUDA backend is not importable: {error}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter enabled in this process")


@pytest.mark.parametrize("tma,tile_m,ws,has_tail", [(True, 128, False, False), (True, 64, False, False),
                                                    (False, 128, False, False), (True, 128, False, True)])
def test_kernel_compiles_for_sm90(tma, tile_m, ws, has_tail):
    """Variants the host code can launch compile for Hopper (the interpreter
    runs plain Python and cannot catch code-generator errors)."""
    _cuda_backend_or_skip()
    from sparse_vdit.kernels import triton_sparse as ts
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
    from compile_cards import tail_signature
    sig = {name: "*bf16" for name in ("Q", "K", "V", "O")}
    sig["k_desc"] = sig["v_desc"] = "tensordesc<bf16[64, 128]>" if tma else "*bf16"
    sig.update({name: "*i32" for name in ("kv_offsets", "kv_indices", "heads_ptr", "row_order")})
    sig.update({name: "i32" for name in ("seq_len", "n_q_blocks", "n_k_blocks", "sqb", "sql", "sqh", "skb", "skl",
                                         "skh", "svb", "svl", "svh", "sob", "sol", "soh", "k_rb", "k_rh", "k_ch",
                                         "v_rb", "v_rh", "v_ch")})
    sig["qk_scale"] = "fp32"
    sig.update(tail_signature("bf16"))
    const = dict(HEAD_DIM=128, BLOCK_M=128, BLOCK_N=64, USE_TMA=tma, USE_ORDER=False, KV_TAIL=True,
                 DOT_PREC="tf32", UPCAST=False, WARP_SPEC=ws, TILE_M=tile_m, HAS_TAIL=has_tail)
    compiled = _compile_sm(ts._sparse_attn_fwd, sig, const, 90, num_stages=2)
    assert "warp_group_dot" in compiled.asm["ttgir"]


@pytest.mark.parametrize("tma", [True, False])
def test_rows_kernel_compiles_for_sm90(tma):
    """The several-rows-per-program variant compiles for Hopper (branches that
    reassign q / acc inside the flat loop, stores under a data-dependent if)."""
    _cuda_backend_or_skip()
    from sparse_vdit.kernels import triton_sparse_rows as tr
    sig = {name: "*bf16" for name in ("Q", "K", "V", "O")}
    sig["k_desc"] = sig["v_desc"] = "tensordesc<bf16[1, 1, 64, 128]>" if tma else "*bf16"
    sig.update({name: "*i32" for name in ("kv_offsets", "kv_indices", "entry_rows", "heads_ptr")})
    sig.update({name: "i32" for name in ("seq_len", "n_rows", "n_q_blocks", "n_k_blocks", "sqb", "sql", "sqh", "skb",
                                         "skl", "skh", "svb", "svl", "svh", "sob", "sol", "soh")})
    sig["qk_scale"] = "fp32"
    const = dict(HEAD_DIM=128, BLOCK_M=128, BLOCK_N=64, ROWS=4, USE_TMA=tma, KV_TAIL=True, DOT_PREC="tf32",
                 UPCAST=False)
    compiled = _compile_sm(tr._sparse_attn_rows_fwd, sig, const, 90, num_stages=2)
    ttgir = compiled.asm["ttgir"]
    assert "warp_group_dot" in ttgir
    if tma:  # K and V both multi-buffered: their loads are pipelined across rows
        buffers = re.findall(r"local_alloc : \(\) -> !ttg.memdesc<(\d+)x64x128xbf16", ttgir)
        assert len(buffers) == 2 and all(int(n) >= 2 for n in buffers), buffers


def test_rows_kernel_entry_rows_cached_per_table():
    """The row of each table entry is computed once per kv_offsets tensor and
    dropped with it (a second launch on the same table must not recompute,
    nor compare tensors with ==)."""
    import gc

    if not _triton_importable():
        pytest.skip("triton is not installed")
    from sparse_vdit.kernels import triton_sparse_rows as tr
    offsets = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    first = tr.entry_rows(offsets, 5)
    assert first.tolist() == [0, 0, 2, 2, 2]
    assert tr.entry_rows(offsets, 5) is first
    other = torch.tensor([0, 1, 3], dtype=torch.int32)
    assert tr.entry_rows(other, 3).tolist() == [0, 1, 1]
    key = id(offsets)
    del offsets, first
    gc.collect()
    assert key not in tr._entry_rows_cache


def test_triton_available_cpu_without_interpreter():
    if not _triton_importable():
        pytest.skip("triton is not installed")
    from sparse_vdit.kernels import triton_sparse as ts
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter enabled in this process")
    assert ts.triton_available(torch.device("cpu")) is False
    assert ts.triton_available(torch.device("cuda")) is torch.cuda.is_available()


# --------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs a CUDA GPU (and no interpreter)")

GPU_CASES = {
    "mixed5-bf16-d128-flat-b2": dict(layer="mixed5", g=(5, 30, 52, 0, 0), dtype="bfloat16", d=128, layout="flat", b=2),
    "mixed5-bf16-d128-bhld-ptr": dict(layer="mixed5", g=(5, 30, 52, 7, 9), dtype="bfloat16", d=128, layout="bhld",
                                      b=1, cfg={"tma": False}),
    "mixed5-bf16-d128-flat-lpt": dict(layer="mixed5", g=(5, 30, 52, 7, 9), dtype="bfloat16", d=128, layout="flat",
                                      b=2, cfg={"order": "lpt"}),
    "mixed5-bf16-d128-flat-heads": dict(layer="mixed5", g=(5, 30, 52, 7, 9), dtype="bfloat16", d=128,
                                        layout="flat", b=1, cfg={"order": "heads"}),
    "mixed5-fp16-d64-flat": dict(layer="mixed5", g=(4, 45, 80, 0, 3), dtype="float16", d=64, layout="flat", b=2),
    "mixed5-bf16-d128-128x128": dict(layer="mixed5", g=(5, 30, 52, 1, 0), dtype="bfloat16", d=128, layout="flat",
                                     b=1, bm=128, bn=128),
    "mixed5-fp32-d64-flat": dict(layer="mixed5", g=(3, 30, 52, 0, 0), dtype="float32", d=64, layout="flat", b=1),
    "window_3d-bf16-d128-flat": dict(layer="window_3d", g=(5, 30, 52, 7, 9), dtype="bfloat16", d=128,
                                     layout="flat", b=2),
    "mixed_routed-bf16-d128-flat-b2": dict(layer="mixed_routed", g=(5, 30, 52, 7, 9), dtype="bfloat16", d=128,
                                           layout="flat", b=2),
    "mixed_routed-bf16-d128-bhld-ptr-b1": dict(layer="mixed_routed", g=(5, 30, 52, 0, 0), dtype="bfloat16",
                                               d=128, layout="bhld", b=1, cfg={"tma": False}),
    **{f"mixed_routed-bf16-d128-flat-lpt-call{i}": dict(layer="mixed_routed", g=(5, 30, 52, 7, 9),
                                                        dtype="bfloat16", d=128, layout="flat", b=2, call=i,
                                                        cfg={"order": "lpt"})
       for i in (1, 2)},
    "mixed_routed-bf16-d128-flat-rows3": dict(layer="mixed_routed", g=(5, 30, 52, 7, 9), dtype="bfloat16",
                                              d=128, layout="flat", b=2, cfg={"rows_per_program": 3}),
    "empty-rows-bf16-d128": dict(layer="empty", g=(5, 30, 52, 0, 0), dtype="bfloat16", d=128, layout="flat", b=2),
    "mixed5-bf16-d128-flat-tile64": dict(layer="mixed5", g=(5, 30, 52, 7, 9), dtype="bfloat16", d=128,
                                         layout="flat", b=3, cfg={"tile_m": 64}),
    "empty-rows-bf16-d128-tile64-lpt": dict(layer="empty", g=(5, 30, 52, 0, 0), dtype="bfloat16", d=128,
                                            layout="flat", b=2, cfg={"tile_m": 64, "order": "lpt"}),
    "mixed5-bf16-d128-flat-rows4": dict(layer="mixed5", g=(5, 30, 52, 7, 9), dtype="bfloat16", d=128,
                                        layout="flat", b=2, cfg={"rows_per_program": 4}),
    "diagonal-bf16-d128-bhld-rows3-ptr": dict(layer="diagonal", g=(5, 30, 52, 0, 3), dtype="bfloat16", d=128,
                                              layout="bhld", b=2, cfg={"rows_per_program": 3, "tma": False}),
    "empty-rows-bf16-d128-rows2": dict(layer="empty", g=(5, 30, 52, 0, 0), dtype="bfloat16", d=128,
                                       layout="flat", b=2, cfg={"rows_per_program": 2}),
}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_kernel(name):
    from sparse_vdit.kernels import triton_sparse as ts
    spec = dict(GPU_CASES[name])
    result = check_case(spec, torch.device("cuda"), _kernel_runner(ts))
    print(name, result)


@pytest.mark.gpu
@needs_cuda
def test_gpu_compile():
    from sparse_vdit.kernels import triton_sparse as ts
    print(check_compile(ts, torch.device("cuda"), "inductor"))


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker([a for a in sys.argv[1:] if a != "--worker"])

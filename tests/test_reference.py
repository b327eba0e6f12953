"""The reference path and the layer dispatcher against a float64 oracle."""
import pytest
import torch

from sparse_vdit.kernels import dispatch
from sparse_vdit.kernels.reference import reference_sparse_attention
from sparse_vdit.patterns import (Diagonal, Full, Geometry, LayerPattern, MultiDiagonal, Skip, VerticalStripe,
                                  Window3D, build_block_table, compile_layer)

from oracle import layer_oracle, rel_err

BM, BN = 16, 8
GEOMETRY = Geometry(3, 5, 7, prefix=2, suffix=3)  # 110 tokens: odd, extra on both sides
MIXED = LayerPattern((Diagonal(1), Full(), MultiDiagonal(0, frames=1), Skip(), VerticalStripe((0,)), Full(), Diagonal(0)))
TOL = {torch.float32: 1e-5, torch.float16: 3e-3}


def qkv(batch, geometry, heads, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, geometry.seq_len, heads, head_dim)
    # scaled so softmax is peaked, not uniform: masking errors show
    return [(torch.randn(shape, generator=g) * s).to(dtype) for s in (1.5, 1.5, 1.0)]


@pytest.fixture
def poisoned_outputs(monkeypatch):
    def nan_output(shape, like):
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    monkeypatch.setattr(dispatch, "_new_output", nan_output)


@pytest.mark.parametrize("pattern", [Diagonal(1), MultiDiagonal(1), MultiDiagonal(0, frames=1),
                                     VerticalStripe((0, -1)), Window3D(1, 1, 2)], ids=lambda p: p.label())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_reference_matches_oracle_per_pattern(pattern, dtype):
    layer = LayerPattern((pattern, pattern))
    q, k, v = qkv(2, GEOMETRY, 2, 16, dtype)
    table = build_block_table(layer.heads, [0, 1], GEOMETRY, BM, BN)
    out = reference_sparse_attention(q, k, v, table)
    assert out.dtype == dtype and out.shape == (2, GEOMETRY.seq_len, 2, 16)
    ref = layer_oracle(q, k, v, layer, GEOMETRY, BM, BN)
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("layout,out_layout", [("flat", "flat"), ("bhld", "bhld"), ("bhld", "flat")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dispatch_mixed_layer_all_modes(layout, out_layout, dtype, poisoned_outputs):
    heads, dim = len(MIXED.heads), 16
    q, k, v = qkv(2, GEOMETRY, heads, dim, dtype, seed=1)
    compiled = compile_layer(MIXED, GEOMETRY, "cpu", BM, BN)
    to_layout = {"flat": lambda x: x.reshape(2, GEOMETRY.seq_len, heads * dim),
                 "bhld": lambda x: x.transpose(1, 2).contiguous()}[layout]
    out = dispatch.layer_attention(to_layout(q), to_layout(k), to_layout(v), compiled, heads=heads,
                                   layout=layout, out_layout=out_layout, backend="reference")
    out4 = dispatch.as_blhd(out, out_layout, heads)
    assert not torch.isnan(out4).any(), "unwritten output elements"
    ref = layer_oracle(q, k, v, MIXED, GEOMETRY, BM, BN)
    assert rel_err(out4, ref) < TOL[dtype]
    assert torch.count_nonzero(out4[:, :, 3]) == 0  # the skip head
    for head in range(heads):  # every head individually, so a swapped head shows
        assert rel_err(out4[:, :, head], ref[:, :, head]) < TOL[dtype] or head == 3


def test_full_heads_use_given_dense_function(poisoned_outputs):
    calls = []

    def dense(q, k, v):
        calls.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = qkv(1, GEOMETRY, 7, 16, torch.float32, seed=2)
    compiled = compile_layer(MIXED, GEOMETRY, "cpu", BM, BN)
    flat = [x.reshape(1, GEOMETRY.seq_len, -1) for x in (q, k, v)]
    dispatch.layer_attention(*flat, compiled, heads=7, dense_fn=dense, backend="reference")
    assert calls == [torch.Size([1, 2, GEOMETRY.seq_len, 16])]  # both full heads, one call


def test_all_full_layer_is_plain_dense():
    layer = LayerPattern((Full(),) * 3)
    q, k, v = qkv(2, GEOMETRY, 3, 8, torch.float32, seed=3)
    compiled = compile_layer(layer, GEOMETRY, "cpu", BM, BN)
    flat = [x.reshape(2, GEOMETRY.seq_len, -1) for x in (q, k, v)]
    out = dispatch.layer_attention(*flat, compiled, heads=3)
    dense = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))
    assert torch.allclose(out, dense.transpose(1, 2).reshape(2, GEOMETRY.seq_len, 24), atol=1e-6)


def test_dispatch_rejects_mismatched_calls():
    compiled = compile_layer(MIXED, GEOMETRY, "cpu", BM, BN)
    q = torch.randn(1, GEOMETRY.seq_len, 7 * 16)
    with pytest.raises(ValueError, match="heads"):
        dispatch.layer_attention(q, q, q, compiled, heads=4)
    short = torch.randn(1, GEOMETRY.seq_len - 1, 7 * 16)
    with pytest.raises(ValueError, match="tokens"):
        dispatch.layer_attention(short, short, short, compiled, heads=7)


def test_head_runs():
    assert dispatch.head_runs((0, 1, 2, 5, 7, 8)) == [(0, 3), (5, 6), (7, 9)]
    assert dispatch.head_runs(()) == []


def test_failed_8bit_launch_runs_bf16_and_is_not_retried(monkeypatch, poisoned_outputs, caplog):
    """An 8-bit launch that raises (a kernel that does not compile on the
    user's card) falls back to bf16 with one log line, and later calls of
    that shape go straight to bf16 instead of failing again each time."""
    from sparse_vdit.kernels import triton_backend

    attempts = []

    def failing_run8(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("PTX compile failed")

    monkeypatch.setattr(triton_backend, "ineligible8", lambda q4: None)
    monkeypatch.setattr(triton_backend, "run8", failing_run8)
    monkeypatch.setattr(dispatch, "_failures8", set())
    monkeypatch.setattr(dispatch, "_logged_8bit", set())
    heads, dim = len(MIXED.heads), 16
    q, k, v = qkv(2, GEOMETRY, heads, dim, torch.float32, seed=4)
    compiled = compile_layer(MIXED, GEOMETRY, "cpu", BM, BN)
    flat = [x.reshape(2, GEOMETRY.seq_len, -1) for x in (q, k, v)]
    ref = layer_oracle(q, k, v, MIXED, GEOMETRY, BM, BN)
    with caplog.at_level("WARNING", logger="sparse_vdit"):
        for _ in range(3):
            out = dispatch.layer_attention(*flat, compiled, heads=heads, precision="8-bit")
            assert rel_err(out.view(2, GEOMETRY.seq_len, heads, dim), ref) < TOL[torch.float32]
    assert len(attempts) == 1
    assert sum("PTX compile failed" in r.getMessage() for r in caplog.records) == 1

"""The reference path on NaN / Inf, float64 and degenerate shapes, against a
float64 oracle that attends, row by row, only the keys the block table lists
(so a value the row never lists cannot reach it, as in the kernel)."""
import pytest
import torch

from sparse_vdit.kernels import dispatch
from sparse_vdit.kernels.reference import reference_sparse_attention
from sparse_vdit.patterns import (Diagonal, Full, Geometry, LayerPattern, MultiDiagonal, Skip, VerticalStripe,
                                  build_block_table, compile_layer)

from oracle import block_rounded, token_mask

BM, BN = 16, 8
GEOMETRY = Geometry(3, 4, 6, prefix=2, suffix=3)  # 77 tokens: odd, extra on both sides
PATTERNS = (Diagonal(0), MultiDiagonal(0, frames=1), VerticalStripe((1,)))


def listed_keys_oracle(q, k, v, patterns, geometry):
    """float64 [B, L, h, D]: per row, softmax over its listed keys only."""
    B, L, _, D = q.shape
    out = torch.zeros(B, L, len(patterns), D, dtype=torch.float64)
    for h, pattern in enumerate(patterns):
        mask = block_rounded(token_mask(pattern, geometry), BM, BN)
        for i in range(L):
            keys = mask[i].nonzero()[:, 0]
            if not len(keys):
                continue
            scores = q[:, i, h].double()[:, None, :] @ k[:, keys, h].double().transpose(1, 2) / D ** 0.5
            out[:, i, h] = (torch.softmax(scores, -1) @ v[:, keys, h].double())[:, 0]
    return out


def qkv(dtype=torch.float32, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, GEOMETRY.seq_len, len(PATTERNS), 8)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]


def run(q, k, v):
    table = build_block_table(PATTERNS, list(range(len(PATTERNS))), GEOMETRY, BM, BN)
    return reference_sparse_attention(q, k, v, table)


def same_function(out, ref, tol):
    """Non-finite values in the same places (NaN as NaN, +Inf as +Inf), finite ones close."""
    out = out.double()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.equal(torch.isposinf(out), torch.isposinf(ref)) and torch.equal(torch.isneginf(out), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    assert torch.allclose(out[finite], ref[finite], atol=tol, rtol=tol)


@pytest.mark.parametrize("where,token,value", [
    ("v", 30, float("nan")), ("v", 14, float("inf")), ("v", 60, float("-inf")),
    ("q", 41, float("nan")), ("k", 52, float("nan")), ("k", 12, float("inf")), ("q", 3, float("inf")),
])
def test_non_finite_input_reaches_exactly_the_rows_that_list_it(where, token, value):
    q, k, v = qkv()
    {"q": q, "k": k, "v": v}[where][1, token, :, 2] = value
    out = run(q, k, v)
    ref = listed_keys_oracle(q, k, v, PATTERNS, GEOMETRY)
    same_function(out, ref, 1e-5)
    assert not torch.isfinite(ref[1]).all() and torch.isfinite(ref[0]).all()  # the case is not vacuous
    if where == "v":  # some rows of the poisoned batch never list that key, and stay finite
        assert torch.isfinite(ref[1, :, :, 2]).any()


def test_nan_in_v_and_inf_in_the_same_column():
    q, k, v = qkv(seed=1)
    v[0, 20, 0, 1], v[0, 21, 0, 1], v[0, 22, 0, 3] = float("inf"), float("-inf"), float("nan")
    same_function(run(q, k, v), listed_keys_oracle(q, k, v, PATTERNS, GEOMETRY), 1e-5)


def test_float64_is_computed_in_float64():
    q, k, v = qkv(torch.float64, seed=2)
    out = run(q, k, v)
    assert out.dtype == torch.float64
    assert torch.allclose(out, listed_keys_oracle(q, k, v, PATTERNS, GEOMETRY), atol=1e-12, rtol=1e-12)


def test_batch_zero_and_empty_channels():
    q, k, v = qkv(batch=0)
    assert run(q, k, v).shape == (0, GEOMETRY.seq_len, len(PATTERNS), 8)
    layer = LayerPattern((Diagonal(1), Full(), Skip(), VerticalStripe((0,))))
    compiled = compile_layer(layer, GEOMETRY, "cpu", BM, BN)
    flat = torch.zeros(0, GEOMETRY.seq_len, 4 * 8)
    out = dispatch.layer_attention(flat, flat, flat, compiled, heads=4, backend="reference")
    assert out.shape == flat.shape


def test_row_with_no_listed_key_is_zero_not_nan():
    """An empty row (possible only in hand-made tables) gives 0, as the kernel does."""
    q, k, v = qkv(seed=3)
    table = build_block_table(PATTERNS[:1], [0], GEOMETRY, BM, BN)
    offsets = table.kv_offsets.clone()
    # drop every key block of query block 1 of the head
    indices = torch.cat([table.kv_indices[: offsets[1]], table.kv_indices[offsets[2]:]])
    offsets[2:] -= int(offsets[2] - offsets[1])
    from dataclasses import replace
    empty = replace(table, kv_offsets=offsets, kv_indices=indices, derived={})
    out = reference_sparse_attention(q, k, v, empty)
    assert torch.count_nonzero(out[:, BM:2 * BM]) == 0 and torch.isfinite(out).all()


def test_mismatched_inputs_are_a_clear_error():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="disagree"):
        run(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="tokens"):
        run(q, k, v[:, :-1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_the_kernel_computes_the_same_function_on_non_finite_input(dtype):
    """The Triton kernel and the reference path on the same poisoned q, k, v:
    NaN and Inf in the same places, finite values close."""
    from sparse_vdit.kernels import triton_sparse
    from sparse_vdit.patterns import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N

    if not triton_sparse.triton_available(torch.device("cuda")):
        pytest.skip("the Triton kernel is not available here")
    geometry = Geometry(3, 30, 52, prefix=5, suffix=7)
    patterns = (Diagonal(1), MultiDiagonal(1, frames=1), VerticalStripe((0,)))
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, geometry.seq_len, 3, 64, generator=g).to(dtype) for _ in range(3))
    poison = [(v, 0, 1700, 0, float("nan")), (v, 1, 3100, 1, float("inf")), (v, 1, 4000, 2, float("-inf")),
              (q, 0, 222, 1, float("nan")), (k, 1, 900, 0, float("nan")), (k, 0, 2500, 2, float("inf"))]
    for tensor, b, token, head, value in poison:
        tensor[b, token, head, :4] = value
    table = build_block_table(patterns, [0, 1, 2], geometry, DEFAULT_BLOCK_M, DEFAULT_BLOCK_N)
    ref = reference_sparse_attention(q, k, v, table)
    cuda = [x.cuda() for x in (q, k, v)]
    out = torch.full_like(cuda[0], 7.0)
    triton_sparse.sparse_attention_triton(*cuda, out, table.to(torch.device("cuda")))
    assert not torch.isfinite(ref).all() and torch.isfinite(ref).any()
    same_function(out.cpu(), ref.double(), 2e-2)

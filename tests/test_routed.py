"""Routed heads: the selection against its float64 definition (tests/oracle.py),
the tie rule, the static table layout, and attention through the dispatcher."""
import pytest
import torch

from sparse_vdit.kernels import dispatch, routing
from sparse_vdit.patterns import (Diagonal, Full, Geometry, LayerPattern, MultiDiagonal, PatternError, Routed, Skip,
                                  VerticalStripe, Window3D, compile_layer, pattern_from_dict)
from sparse_vdit.patterns.routed import routed_layout, select

from oracle import layer_oracle, rel_err, routed_block_mask64

BM, BN = 16, 8
GEOMETRY = Geometry(3, 5, 7, prefix=2, suffix=3)      # 110 tokens: odd, extra tokens on both sides
VIDEO_ONLY = Geometry(4, 5, 9)                        # 180 tokens: no extra tokens, ragged blocks
MIXED = LayerPattern((Routed(0.2), Full(), Diagonal(1), Skip(), Routed(0.5), Window3D(1, 1, 2), Routed(0.2),
                      VerticalStripe((0,)), MultiDiagonal(0, frames=1)))


def qkv(batch, geometry, heads, head_dim, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, geometry.seq_len, heads, head_dim)
    # a per-token offset shared by q and k makes pooled scores differ clearly between blocks
    drift = torch.randn(1, geometry.seq_len, heads, head_dim, generator=g)
    return [(torch.randn(shape, generator=g) + s * drift).to(dtype) for s in (1.0, 1.0, 0.0)]


@pytest.fixture
def poisoned_outputs(monkeypatch):
    def nan_output(shape, like):
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    monkeypatch.setattr(dispatch, "_new_output", nan_output)


def test_select_tie_rule_forced_and_nan():
    scores = torch.tensor([[1.0, 3.0, 3.0, float("nan"), 2.0, 3.0]])
    forced = torch.tensor([[False, False, False, True, False, False]])
    assert select(scores, forced, 3).tolist() == [[1, 2, 3]]        # forced first, then ties to the lower index
    assert select(scores, torch.zeros_like(forced), 4).tolist() == [[1, 2, 4, 5]]  # NaN ranks lowest
    assert select(torch.full((1, 5), float("inf")), torch.tensor([[False] * 4 + [True]]), 2).tolist() == [[0, 4]]
    assert select(torch.zeros(2, 6), torch.zeros(2, 6, dtype=torch.bool), 2).tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize("geometry", [GEOMETRY, VIDEO_ONLY], ids=str)
def test_layout_is_static_and_forces_own_and_extra_blocks(geometry):
    layout = routed_layout(geometry, 0.25, BM, BN)
    table = compile_layer(LayerPattern((Routed(0.25), Diagonal(0))), geometry, "cpu", BM, BN).table
    counts = (table.kv_offsets[1:] - table.kv_offsets[:-1]).view(2, -1)[0]
    full_rows = torch.ones(layout.n_q, dtype=torch.bool)
    full_rows[layout.rows] = False
    assert bool((counts[layout.rows] == layout.k).all()) and bool((counts[full_rows] == layout.n_k).all())
    assert layout.k >= round(0.25 * layout.n_k)
    for i, row in enumerate(layout.rows.tolist()):
        own = set(range(row * BM // BN, (min((row + 1) * BM, geometry.seq_len) - 1) // BN + 1))
        assert own <= set(layout.forced[i].nonzero()[:, 0].tolist())
    if geometry.prefix:
        assert bool(layout.forced[:, 0].all()) and bool(layout.forced[:, -1].all())


@pytest.mark.parametrize("geometry", [GEOMETRY, VIDEO_ONLY], ids=str)
@pytest.mark.parametrize("batch", [1, 2])
def test_selection_matches_float64_definition(geometry, batch):
    q, k, _ = qkv(batch, geometry, len(MIXED.heads), 16, seed=batch)
    compiled = compile_layer(MIXED, geometry, "cpu", BM, BN)
    routing.route(q, k, compiled)
    masks = compiled.table.block_mask()
    for slot, head in enumerate(compiled.sparse_heads):
        pattern = MIXED.heads[head]
        if pattern.kind == "routed":
            want = routed_block_mask64(q, k, geometry, pattern.share, head, BM, BN)
            assert torch.equal(masks[slot], want), (head, (masks[slot] != want).nonzero()[:5])
    offsets, indices = compiled.table.kv_offsets.long(), compiled.table.kv_indices.long()
    for row in range(offsets.numel() - 1):
        listed = indices[offsets[row]:offsets[row + 1]]
        assert torch.all(listed[1:] > listed[:-1]), "key blocks must stay ascending in a row"


def test_constant_inputs_pick_the_lowest_blocks():
    """All pooled scores equal: the tie rule alone decides, here and in float64."""
    q = torch.ones(2, VIDEO_ONLY.seq_len, 1, 8)
    compiled = compile_layer(LayerPattern((Routed(0.3),)), VIDEO_ONLY, "cpu", BM, BN)
    routing.route(q, q, compiled)
    assert torch.equal(compiled.table.block_mask()[0], routed_block_mask64(q, q, VIDEO_ONLY, 0.3, 0, BM, BN))
    layout = routed_layout(VIDEO_ONLY, 0.3, BM, BN)
    first = compiled.table.kv_indices[:layout.k].tolist()
    assert first[:layout.k - 2] == list(range(layout.k - 2))  # own blocks (0, 1) and the lowest others


@pytest.mark.parametrize("layout_name", ["flat", "bhld"])
@pytest.mark.parametrize("batch", [1, 2])
def test_dispatch_mixed_layer_with_routed_heads(layout_name, batch, poisoned_outputs):
    heads, dim = len(MIXED.heads), 16
    compiled = compile_layer(MIXED, GEOMETRY, "cpu", BM, BN)
    offsets = compiled.table.kv_offsets
    for seed in (3, 4):  # a second call with other inputs must not reuse the first call's rows
        q, k, v = qkv(batch, GEOMETRY, heads, dim, seed=seed)
        to_layout = {"flat": lambda x: x.reshape(batch, GEOMETRY.seq_len, heads * dim),
                     "bhld": lambda x: x.transpose(1, 2).contiguous()}[layout_name]
        out = dispatch.layer_attention(to_layout(q), to_layout(k), to_layout(v), compiled, heads=heads,
                                       layout=layout_name, backend="reference")
        out4 = dispatch.as_blhd(out, layout_name, heads)
        assert not torch.isnan(out4).any(), "unwritten output elements"
        ref = layer_oracle(q, k, v, MIXED, GEOMETRY, BM, BN)
        for head in range(heads):
            assert rel_err(out4[:, :, head], ref[:, :, head]) < 1e-5 or head == 3, head
        assert compiled.table.kv_offsets is offsets  # offsets never change


def test_routing_changes_with_the_content():
    """Moving the content moves the chosen blocks (the head is not a fixed shape)."""
    compiled = compile_layer(LayerPattern((Routed(0.2),)), VIDEO_ONLY, "cpu", BM, BN)
    q, k, _ = qkv(1, VIDEO_ONLY, 1, 16, seed=5)
    routing.route(q, k, compiled)
    first = compiled.table.kv_indices.clone()
    routing.route(q, k.roll(40, dims=1), compiled)
    assert not torch.equal(first, compiled.table.kv_indices)


@pytest.mark.parametrize("entry,message", [
    ({"mode": "routed", "share": 0}, "share"),
    ({"mode": "routed", "share": 1.5}, "share"),
    ({"mode": "routed", "share": "0.1"}, "share"),
    ({"mode": "routed", "share": True}, "share"),
    ({"mode": "routed", "share": float("nan")}, "share"),
])
def test_bad_routed_entries(entry, message):
    with pytest.raises(PatternError, match=message):
        pattern_from_dict(entry)
    assert pattern_from_dict({"mode": "routed", "share": 1}).share == 1.0


def test_calibration_scores_routed_candidates_as_they_run():
    """Scoring's error for a routed candidate equals the error of the routed
    table the dispatcher runs (all query blocks sampled, float64 inputs)."""
    from sparse_vdit.kernels.reference import reference_sparse_attention
    from sparse_vdit.plans import scoring
    from sparse_vdit.plans.candidates import Candidate
    q, k, v = (x.double() for x in qkv(2, GEOMETRY, 3, 16, seed=6))
    candidates = (Candidate("diagonal", rows=1), Candidate("routed", share=0.2), Candidate("routed", share=0.5),
                  Candidate("routed", share=0.2, tail=True), Candidate("vertical_stripe", top_frames=1),
                  Candidate("routed", share=0.5, tail=True))
    scores = scoring.score_layer(q, k, v, GEOMETRY, candidates, scoring.sampled_query_blocks(7, 1.0),
                                 block_m=BM, block_n=BN)
    dense = layer_oracle(q, k, v, LayerPattern((Full(),) * 3), GEOMETRY, BM, BN)
    for column in (1, 2, 3, 5):
        pattern = candidates[column].pattern()
        compiled = compile_layer(LayerPattern((pattern,) * 3), GEOMETRY, "cpu", BM, BN)
        routing.route(q, k, compiled)
        tail = routing.pooled_tail(k, v, compiled) if pattern.tail else None
        err = (reference_sparse_attention(q, k, v, compiled.table, tail=tail) - dense).pow(2).mean((0, 1, 3))
        assert torch.allclose(scores.sq_err[:, column], err, rtol=1e-4), (pattern, scores.sq_err[:, column], err)
    assert bool((scores.sq_err[:, 2] < scores.sq_err[:, 1]).all())  # keeping more blocks errs less
    assert bool((scores.sq_err[:, 3] < scores.sq_err[:, 1]).all())  # so does the tail


def test_routed_benchmark_smoke(tmp_path):
    """The GPU benchmark's one command runs end to end on the CPU at a tiny shape."""
    import json
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import bench_routed
    result = bench_routed.main(["--smoke", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "routed_smoke.json").read_text())["rows"]
    assert rows == result["rows"] and [r["method"] for r in rows] == ["cudnn dense"] + ["routed (ours)"] * 3
    routed = rows[1:]
    assert all(0 < r["kept_share"] < 1 and r["routing_ms"] >= 0 for r in routed)
    assert routed[0]["rel_err"] >= routed[-1]["rel_err"] > 0  # keeping more blocks errs less
    assert abs(bench_routed.tau_for_share(0.16) - 1.0) < 1e-9 and abs(bench_routed.tau_for_share(0.027) - 2.0) < 1e-9


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch", [1, 2])
def test_gpu_routing_has_no_host_sync_and_picks_a_top_k(batch):
    """The routing pass runs without a host synchronisation (CUDA's sync
    debug mode raises on one), and its bf16-input rows are a top-k of the
    float64 pooled scores up to rounding."""
    from oracle import assert_routed_rows_valid
    geometry = Geometry(5, 30, 52, prefix=7, suffix=9)
    layer = LayerPattern((Routed(0.1), Diagonal(1), Routed(0.2), Full()))
    compiled = compile_layer(layer, geometry, "cuda")
    q, k, _ = (x.to("cuda", torch.bfloat16) for x in qkv(batch, geometry, 4, 128, seed=batch))
    routing.route(q, k, compiled)  # first call: lazy CUDA init and kernel loads
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        routing.route(q, k, compiled)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    masks = compiled.table.block_mask()
    for slot, head in enumerate(compiled.sparse_heads):
        if layer.heads[head].kind == "routed":
            assert_routed_rows_valid(masks[slot], q.float().cpu(), k.float().cpu(), geometry, layer.heads[head].share,
                                     head, 128, 64, 1e-4)


def test_nothing_to_route_still_runs(poisoned_outputs):
    """Every query block holds extra tokens (one block here): no routed rows,
    the head sees everything, and the call runs."""
    compiled = compile_layer(LayerPattern((Routed(0.1), Full())), GEOMETRY, "cpu")  # 128-token blocks: one
    assert len(compiled.routing[0].rows) == 0
    q, k, v = qkv(1, GEOMETRY, 2, 16, seed=9)
    out = dispatch.layer_attention(*(x.reshape(1, GEOMETRY.seq_len, -1) for x in (q, k, v)), compiled, heads=2,
                                   backend="reference").view(1, GEOMETRY.seq_len, 2, 16)
    ref = layer_oracle(q, k, v, LayerPattern((Full(), Full())), GEOMETRY, 128, 64)
    assert rel_err(out, ref) < 1e-5


TAILED = LayerPattern((Routed(0.2, tail=True), Full(), Routed(0.2), Skip(), Routed(0.5, tail=True), Diagonal(1)))


@pytest.mark.parametrize("geometry", [GEOMETRY, VIDEO_ONLY])
@pytest.mark.parametrize("precision", ["bf16", "8-bit"])
def test_dispatch_routed_heads_with_a_pooled_tail(geometry, precision, poisoned_outputs):
    """Heads that ask for the tail match the float64 tail definition, the
    routed head beside them without one and the fixed heads match theirs;
    8-bit asked for runs the layer in 16 bits (only that kernel has the tail)."""
    from sparse_vdit.kernels.routed_tail_reference import routed_tail_attention64
    heads, dim = len(TAILED.heads), 16
    compiled = compile_layer(TAILED, geometry, "cpu", BM, BN)
    assert compiled.tail_rows is not None and int((compiled.tail_rows >= 0).sum()) > 0
    for seed in (5, 6):
        q, k, v = qkv(2, geometry, heads, dim, seed=seed)
        flat = [x.reshape(2, geometry.seq_len, heads * dim) for x in (q, k, v)]
        out = dispatch.as_blhd(dispatch.layer_attention(*flat, compiled, heads=heads, backend="reference",
                                                        precision=precision), "flat", heads)
        assert not torch.isnan(out).any(), "unwritten output elements"
        masks = torch.stack([routed_block_mask64(q, k, geometry, p.share, h, BM, BN) if p.name == "routed"
                             else torch.ones(-(-geometry.seq_len // BM), -(-geometry.seq_len // BN), dtype=torch.bool)
                             for h, p in enumerate(TAILED.heads)])
        want = routed_tail_attention64(q, k, v, masks, BM, BN)
        fixed = layer_oracle(q, k, v, TAILED, geometry, BM, BN)
        for head, pattern in enumerate(TAILED.heads):
            if pattern.name == "skip":
                assert (out[:, :, head] == 0).all()
                continue
            target = want.tail[:, :, head] if pattern.name == "routed" and pattern.tail else fixed[:, :, head]
            assert rel_err(out[:, :, head], target) < 1e-5, head
        moved = rel_err(want.no_tail[:, :, 0], want.tail[:, :, 0])
        assert moved > 1e-2, moved  # the tail matters here: ignoring it would fail above


def test_routed_tail_field():
    assert Routed(0.1, tail=True).to_dict() == {"mode": "routed", "share": 0.1, "tail": True}
    assert Routed(0.1).to_dict() == {"mode": "routed", "share": 0.1}
    assert pattern_from_dict({"mode": "routed", "share": 0.1, "tail": True}) == Routed(0.1, True)
    with pytest.raises(PatternError, match="tail must be true or false"):
        Routed(0.1, tail=1)
    layer = compile_layer(LayerPattern((Routed(0.1), Routed(0.1, tail=True))), GEOMETRY, "cpu", BM, BN)
    assert sorted(g.tail for g in layer.routing) == [False, True]  # one group per (share, tail)
    assert compile_layer(LayerPattern((Routed(0.1),)), GEOMETRY, "cpu", BM, BN).tail_rows is None


def test_tailed_heads_without_routed_rows_get_no_tail(poisoned_outputs):
    """At 128-token query blocks 110 tokens make one block holding extra
    tokens: every row is full, nothing is dropped, so the layer has no tail
    (an empty tail once reached the kernel as a zero-size tensor that
    inductor typed int64) and runs as its fixed rows."""
    layer = LayerPattern((Routed(0.2, tail=True), Routed(0.5)))
    compiled = compile_layer(layer, GEOMETRY, "cpu", 128, 64)
    assert [len(g.table_rows) for g in compiled.routing] == [0, 0]
    assert compiled.tail_rows is None
    q, k, v = qkv(2, GEOMETRY, 2, 16, seed=3)
    flat = [x.reshape(2, GEOMETRY.seq_len, 2 * 16) for x in (q, k, v)]
    out = dispatch.as_blhd(dispatch.layer_attention(*flat, compiled, heads=2, backend="reference"), "flat", 2)
    want = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) * 16 ** -0.5, -1)
    want = torch.einsum("bhlm,bmhd->blhd", want, v.double())
    assert rel_err(out, want) < 1e-5


def test_tail_layer_runs_16_bit_when_8_bits_are_asked_for(monkeypatch, caplog):
    """Only the 16-bit kernel has the tail: a layer with tailed routed heads
    runs there, with one log line when 8 bits were asked for, none for auto."""
    monkeypatch.setattr(dispatch, "use_8bit", lambda *args: True)  # as on a GPU that runs 8 bits
    monkeypatch.setattr(dispatch, "_logged_8bit", set())
    monkeypatch.setattr(dispatch, "_attention_8bit", lambda *args: pytest.fail("the 8-bit kernel was called"))
    heads, dim = len(TAILED.heads), 16
    compiled = compile_layer(TAILED, GEOMETRY, "cpu", BM, BN)
    flat = [x.reshape(1, GEOMETRY.seq_len, heads * dim) for x in qkv(1, GEOMETRY, heads, dim, seed=8)]
    want = dispatch.layer_attention(*flat, compiled, heads=heads, backend="reference", precision="bf16")
    with caplog.at_level("WARNING", logger="sparse_vdit"):
        auto = dispatch.layer_attention(*flat, compiled, heads=heads, backend="reference", precision="auto")
        assert not caplog.records
        got = dispatch.layer_attention(*flat, compiled, heads=heads, backend="reference", precision="8-bit")
    assert torch.equal(got, want) and torch.equal(auto, want)
    assert [r.getMessage() for r in caplog.records if "pooled tail" in r.getMessage()] and len(caplog.records) == 1

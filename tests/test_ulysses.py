"""Per-head plans under Ulysses sequence parallelism (parallel/): two
processes on gloo against yunchang's all-to-all and against a
single-process float64 oracle on the tiny real Wan."""
from __future__ import annotations

import itertools
import socket

import pytest
import torch
import torch.multiprocessing as mp

import ulysses_workers as workers
from oracle import layer_oracle
from sparse_vdit.parallel.balance import (CallShape, CostModel, balance_mode, balanced_order, decide, imbalance,
                                          layer_order, rank_heads)
from sparse_vdit.patterns import Diagonal, Full, Geometry, LayerPattern, MultiDiagonal, Skip, VerticalStripe
from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan, dumps_plan

WORLD = 2
GEOMETRY = Geometry(3, 5, 7)  # workers.LATENT after patchify: 105 tokens
TOLERANCE = 1e-5  # a float32 model against float64 attention (measured: about 1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args) -> None:
    mp.spawn(fn, args=(WORLD, free_port(), *args), nprocs=WORLD, join=True)


# ---- the all-to-all ---------------------------------------------------------
def test_all_to_all_is_yunchangs_layout(tmp_path):
    pytest.importorskip("yunchang")
    spawn(workers.comm_worker, str(tmp_path))
    full = workers.comm_full_input(WORLD)
    h = workers.COMM_SHAPE["heads_per_rank"]
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"comm_{rank}.pt")
        assert torch.equal(got["ours"], got["yunchang"])
        assert torch.equal(got["back_ours"], got["back_yunchang"])
        # head ownership: rank r holds the whole sequence of heads [r*h, (r+1)*h)
        assert torch.equal(got["ours"], full[:, :, rank * h:(rank + 1) * h])
        assert torch.equal(got["ours_second"], 2 * full[:, :, rank * h:(rank + 1) * h])
        assert torch.equal(got["back_ours"], got["input"])
        # with a head order: rank r holds heads order[r*h:(r+1)*h], and the way back restores model order
        mine = list(workers.COMM_ORDER[rank * h:(rank + 1) * h])
        assert torch.equal(got["ordered"], full[:, :, mine])
        assert torch.equal(got["ordered_second"], 2 * full[:, :, mine])
        assert torch.equal(got["ordered_back"], got["input"])
        # the identity given as an order is the plain layout
        assert torch.equal(got["identity"], got["ours"]) and torch.equal(got["identity_back"], got["input"])


@pytest.mark.parametrize("world,order", [(2, (4, 0, 5, 2, 1, 3)), (3, (5, 4, 3, 2, 1, 0)), (4, None),
                                         (4, (1, 0, 3, 2, 7, 6, 5, 4)), (3, (0, 1, 2, 3, 4, 5))])
def test_layouts_with_a_head_order_in_one_process(world, order):
    """The pack / unpack halves of both all-to-alls with the exchange done by
    hand (rank r receives slice r of every rank's send), at 2 to 4 ranks:
    rank r gets heads order[r*h:(r+1)*h] of the whole sequence, and the way
    back gives every rank its tokens with the heads in model order."""
    from sparse_vdit.parallel import comm

    heads = len(order) if order is not None else 2 * world
    h, chunk = heads // world, 3
    g = torch.Generator().manual_seed(world)
    full = torch.randn(2, world * chunk, heads, 5, generator=g, dtype=torch.float64)
    index = None if order is None else torch.tensor(order)
    mine = list(order or range(heads))
    chunks = [full[:, r * chunk:(r + 1) * chunk] for r in range(world)]
    sends = [comm.pack_for_heads([x, -x], world, index) for x in chunks]
    heads_of = [comm.unpack_heads(torch.stack([send[r] for send in sends])) for r in range(world)]
    for r in range(world):
        expected = full[:, :, mine[r * h:(r + 1) * h]]
        assert torch.equal(heads_of[r][0], expected) and torch.equal(heads_of[r][1], -expected)
    sends = [comm.pack_for_seq(heads_of[r][0], world) for r in range(world)]
    for r in range(world):
        assert torch.equal(comm.unpack_seq(torch.stack([send[r] for send in sends]), index), chunks[r])


# ---- plan slices and balancing ---------------------------------------------
def test_rank_heads_are_contiguous_blocks_of_the_order():
    assert rank_heads((0, 1, 2, 3, 4, 5), 3, 1) == (2, 3)
    assert rank_heads((5, 0, 4, 1, 3, 2), 2, 1) == (1, 3, 2)
    with pytest.raises(ValueError):
        rank_heads((0, 1, 2), 2, 0)


def test_balanced_order_evens_out_ranks():
    costs = (1.0, 1.0, 0.9, 0.1, 0.1, 0.0, 0.3, 0.2)
    order = balanced_order(costs, 2)
    assert sorted(order) == list(range(8))
    assert imbalance(costs, tuple(range(8)), 2) > 1.5
    best = min(max(sum(costs[i] for i in half), sum(costs) - sum(costs[i] for i in half))
               for half in itertools.combinations(range(8), 4))
    assert imbalance(costs, order, 2) == pytest.approx(best / (sum(costs) / 2))  # the optimum here (1.11x)
    uniform = (0.5,) * 8
    assert balanced_order(uniform, 4) == tuple(range(8))  # nothing to gain: identity


# ---- auto: the saving against the permutation's cost and the model's error ----
WAN_480P = Geometry(21, 30, 52)


def test_cost_model_units():
    model = CostModel()
    # one full head of Wan 1.3B 480p, B = 2, D = 128: measured 1.93 ms on H200 (bench_ulysses fit)
    assert model.head_ms(WAN_480P, CallShape(2, 128, 2)) == pytest.approx(1.93, rel=0.05)
    # 4 tensors (q, k, v in; out back) x read + write x B x tokens per rank x H x D x bytes, at the extra passes measured
    geometry, call = Geometry(1, 1, 11), CallShape(3, 8, 4)
    expected = model.permute_passes * (4 * 2 * 3 * 6 * 12 * 8 * 4) / 3000e9 * 1e3
    assert model.permute_ms(geometry, 12, 2, call) == pytest.approx(expected)
    assert CostModel(permute_passes=0.0).permute_ms(WAN_480P, 12, 2, CallShape()) == 0.0


def test_auto_permutes_only_where_the_saving_beats_cost_and_margin():
    costs = (1.0, 1.0, 0.0, 0.0)  # identity: [2, 0]; balanced: [1, 1], half the slowest rank's time saved
    balanced = balanced_order(costs, 2)
    assert balanced != (0, 1, 2, 3)
    decision = decide(costs, WAN_480P, 2)
    head = CostModel().head_ms(WAN_480P, CallShape())
    assert decision.order == balanced and decision.permuted
    assert decision.slowest_ms == pytest.approx(2 * head) and decision.saving_ms == pytest.approx(head)
    assert 0 < decision.cost_ms < 0.1 * head
    # a saving within the model's error is not taken
    assert not decide(costs, WAN_480P, 2, model=CostModel(margin=0.51, permute_passes=0.0)).permuted
    assert decide(costs, WAN_480P, 2, model=CostModel(margin=0.49, permute_passes=0.0)).permuted
    # nor one the permutation costs more than (slow copies)
    slow = CostModel(memory_gbps=10.0)
    assert slow.permute_ms(WAN_480P, 4, 2, CallShape()) > head
    assert not decide(costs, WAN_480P, 2, model=slow).permuted
    # at a tiny grid the copies outweigh the attention: identity
    assert not decide(costs, Geometry(1, 2, 3), 2).permuted
    # nothing to gain: identity, whatever the margin
    assert decide((0.5,) * 4, WAN_480P, 2, model=CostModel(margin=0.0, permute_passes=0.0)).order == (0, 1, 2, 3)


def test_balance_modes():
    layer = LayerPattern((Full(), Full(), Skip(), Skip()))
    orders = {mode: layer_order(layer, WAN_480P, 2, mode) for mode in ("off", "on", "auto")}
    assert orders["off"] == (0, 1, 2, 3) and orders["on"] != orders["off"] and orders["auto"] == orders["on"]
    assert layer_order(layer, WAN_480P, 2, True) == orders["on"] and layer_order(layer, WAN_480P, 2, False) == orders["off"]
    assert layer_order(layer, WAN_480P, 2, "auto", model=CostModel(margin=0.9)) == orders["off"]
    assert balance_mode(True) == "on" and balance_mode("auto") == "auto"
    for bad in ("yes", None, 1, "ON"):
        with pytest.raises(ValueError, match="head balancing"):
            balance_mode(bad)


@pytest.mark.parametrize("name", ["wan2.1-1.3b_static-baseline.json", "wan2.1-14b_static-baseline.json"])
@pytest.mark.parametrize("world", [2, 4])
def test_balancing_never_worse_on_shipped_plans(name, world):
    import os

    from sparse_vdit.parallel.balance import plan_imbalance
    from sparse_vdit.plans.format import load_plan

    plan = load_plan(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plans", name))
    geometry = Geometry(21, 30, 52)  # 480p, 81 frames
    before = plan_imbalance(plan.layers, geometry, world, balance="off")
    after = plan_imbalance(plan.layers, geometry, world, balance="on")
    auto = plan_imbalance(plan.layers, geometry, world, balance="auto")
    assert 1.0 <= after <= auto + 1e-9 and auto <= before + 1e-9  # auto takes a layer's balanced order or keeps it
    if world == 2:
        assert after <= 1.1 and auto <= 1.1  # the target, at two ranks


# ---- the tiny real Wan, two processes ----------------------------------------
ASYMMETRIC = (  # rank 0 gets heads 0-1, rank 1 heads 2-3: a head-offset error changes the output
    LayerPattern((Skip(), Diagonal(1), Full(), VerticalStripe((0,)))),
    LayerPattern((Full(), MultiDiagonal(1, 1), Diagonal(0), Skip())),
)
UNEVEN = (  # both full heads on rank 0: balancing moves one of them
    LayerPattern((Full(), Full(), Diagonal(0), Skip())),
    LayerPattern((Skip(), Diagonal(0), Full(), Full())),
)


def make_plan(layers) -> Plan:
    return Plan("ulysses test", ModelShape("wan2.1", len(layers), workers.WAN["num_heads"], workers.WAN["head_dim"]),
                tuple(layers), DenseSchedule(0.0), {"kind": "static-baseline"})


def with_rank_dense(layers, order_of, rank: int):
    """The plan a rank that falls back dense effectively runs: its heads full."""
    out = []
    for layer in layers:
        mine = set(rank_heads(order_of(layer), WORLD, rank))
        out.append(LayerPattern(tuple(Full() if i in mine else p for i, p in enumerate(layer.heads))))
    return tuple(out)


def identity(layer):
    return tuple(range(len(layer.heads)))


FREE_PERMUTATION = dict(permute_passes=0.0, margin=0.0)
SCENARIOS = {
    "asymmetric": dict(layers=ASYMMETRIC, balance=False, fail_rank=None),
    "balanced": dict(layers=UNEVEN, balance="on", fail_rank=None),
    # auto with a model where permuting is free and any saving counts: it permutes, through the folded layout
    "balanced, auto": dict(layers=UNEVEN, balance="auto", fail_rank=None, cost_model=FREE_PERMUTATION),
    "rank 1 falls back dense": dict(layers=ASYMMETRIC, balance=False, fail_rank=1),
    "no plan (Raylight's path)": dict(layers=None, balance=False, fail_rank=None),
    "ring 2 (Raylight's path)": dict(layers=ASYMMETRIC, balance=True, fail_rank=None, ring=2),
}


def expected_layers(name):
    spec = SCENARIOS[name]
    if spec["fail_rank"] is not None:
        return with_rank_dense(spec["layers"], identity, spec["fail_rank"])
    return spec["layers"]


def oracle_sample(comfy, layers):
    """Single process: the same model and inputs, each self-attention layer
    by tests/oracle.py in float64 (block-rounded token masks)."""
    import comfy_harness

    model = workers.wan_model(comfy.path)
    positive, negative, latent = workers.wan_inputs(model)
    seq_len = GEOMETRY.seq_len
    calls = [0]

    def override(func, q, k, v, heads=None, **kwargs):
        options = kwargs.get("transformer_options") or {}
        if layers is not None and q.shape[1] == k.shape[1] == seq_len and not kwargs.get("skip_reshape"):
            b, n, width = q.shape
            shape = (b, n, heads, width // heads)
            index = options.get("block_index", calls[0] % len(layers))  # ComfyUI < 0.5.0: call order
            calls[0] += 1
            out = layer_oracle(q.view(shape), k.view(shape), v.view(shape), layers[index],
                               GEOMETRY, workers.BLOCK, workers.BLOCK)
            return out.reshape(b, n, width).to(q.dtype)
        return func(q, k, v, heads=heads, **kwargs)

    patched = comfy_harness.install_attention_override(model, override)
    return comfy_harness.sample(patched, positive, negative, latent, seed=2)


@pytest.fixture(scope="module")
def ulysses_runs(comfy, tmp_path_factory):
    pytest.importorskip("yunchang")
    out_dir = tmp_path_factory.mktemp("ulysses")
    scenarios = [dict(name=name, plan=None if spec["layers"] is None else dumps_plan(make_plan(spec["layers"])),
                      balance=spec["balance"], fail_rank=spec["fail_rank"], ring=spec.get("ring", 1),
                      cost_model=spec.get("cost_model", {}))
                 for name, spec in SCENARIOS.items()]
    spawn(workers.wan_worker, comfy.path, scenarios, str(out_dir))
    return [torch.load(out_dir / f"wan_{rank}.pt") for rank in range(WORLD)]


def test_balanced_scenarios_permute_heads():
    call = CallShape(2, workers.WAN["head_dim"], 4)  # the tiny Wan's calls: B = 2, float32
    for layer in UNEVEN:
        assert layer_order(layer, GEOMETRY, WORLD, "on", 1.0, workers.BLOCK, workers.BLOCK, call) != identity(layer)
        assert layer_order(layer, GEOMETRY, WORLD, "auto", 1.0, workers.BLOCK, workers.BLOCK, call,
                           CostModel(**FREE_PERMUTATION)) != identity(layer)
        # the default model at 105 tokens: the copies outweigh the attention saved
        assert layer_order(layer, GEOMETRY, WORLD, "auto", 1.0, workers.BLOCK, workers.BLOCK, call) == identity(layer)


@pytest.mark.comfyui
@pytest.mark.parametrize("name", [n for n in SCENARIOS if SCENARIOS[n]["layers"] is not None and "ring" not in SCENARIOS[n]])
def test_ulysses_equals_single_process_oracle(comfy, ulysses_runs, name):
    import comfy_harness

    expected = oracle_sample(comfy, expected_layers(name))
    for rank, results in enumerate(ulysses_runs):
        got = results[name]
        error = comfy_harness.rel_diff(got["out"], expected)
        print(f"{name}: rank {rank} relative error {error:.3g}")
        assert error < TOLERANCE, f"rank {rank}: relative error {error:.3g}"
        assert got["counts"].get("sparse", 0) > 0 or SCENARIOS[name]["fail_rank"] == rank
        assert "previous" not in got["counts"]
        # the balanced scenarios ran permuted orders, the others none
        assert (got["counts"].get("permuted", 0) > 0) == name.startswith("balanced")
    if SCENARIOS[name]["fail_rank"] is not None:
        failing = ulysses_runs[SCENARIOS[name]["fail_rank"]][name]["counts"]
        assert failing.get("dense:error", 0) > 0 and failing.get("sparse", 0) == 0


@pytest.mark.comfyui
def test_the_oracle_tells_plans_apart(comfy, ulysses_runs):
    """The comparison can fail: the Ulysses result is far from the oracle
    of the plan with rank slices swapped (a head-offset error) and of dense."""
    import comfy_harness

    got = ulysses_runs[0]["asymmetric"]["out"]
    swapped = tuple(LayerPattern(layer.heads[2:] + layer.heads[:2]) for layer in ASYMMETRIC)
    off_by_heads, dense = (comfy_harness.rel_diff(got, oracle_sample(comfy, layers)) for layers in (swapped, None))
    print(f"asymmetric vs swapped-slices oracle {off_by_heads:.3g}, vs dense {dense:.3g}")
    assert off_by_heads > 100 * TOLERANCE and dense > 100 * TOLERANCE


@pytest.mark.comfyui
def test_unserved_forward_runs_raylights_path(comfy, ulysses_runs):
    """Without the pack's patch there is no grid: every call goes to the
    wrapped forward (the stand-in for Raylight's) and nothing hangs."""
    import comfy_harness

    for results in ulysses_runs:
        got = results["no plan (Raylight's path)"]
        assert got["counts"] == {}  # nothing installed: no Sparse-vDiT patch, no callback
    assert torch.equal(ulysses_runs[0]["no plan (Raylight's path)"]["out"],
                       ulysses_runs[1]["no plan (Raylight's path)"]["out"])
    # Raylight's own path attends the padded key: close to, not equal to, one process dense
    padded_keys = comfy_harness.rel_diff(ulysses_runs[0]["no plan (Raylight's path)"]["out"], oracle_sample(comfy, None))
    print(f"Raylight's path (padded key attended) vs one process dense: {padded_keys:.3g}")
    assert 0 < padded_keys < 0.5


@pytest.mark.comfyui
def test_ring_degree_above_one_runs_raylights_path(ulysses_runs):
    """Ring attention is not served: with the plan installed every call goes
    to the wrapped forward, and the output is the one without the plan."""
    for results in ulysses_runs:
        counts = results["ring 2 (Raylight's path)"]["counts"]
        assert set(counts) == {"previous"} and counts["previous"] > 0
        assert torch.equal(results["ring 2 (Raylight's path)"]["out"], results["no plan (Raylight's path)"]["out"])

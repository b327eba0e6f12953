"""The search on attention with planted per-head patterns: recovery, the
Judger, monotonicity in epsilon, exact re-solving, the speedup solver."""
import copy
import random

import pytest
import torch

from sparse_vdit.patterns import Geometry, compile_layer
from sparse_vdit.plans.calibrator import Calibrator, select_probe_steps
from sparse_vdit.plans.candidates import MENUS
from sparse_vdit.plans.cost import block_share_costs
from sparse_vdit.plans.format import ModelShape, PlanError, plan_to_dict
from sparse_vdit.plans.search import (FULL, judge, normalised_errors, predicted_speedup, solve_for_speedup, solve_plan,
                                      sparsity)
from sparse_vdit.plans.statistics import load_statistics, save_statistics
from sparse_vdit.synthetic import planted_layer

GEOMETRY = Geometry(6, 16, 20)  # 1,920 tokens, 320 per frame
LAYERS, HEADS, DIM = 6, 8, 64
# A uniform head: full, or a routed head with the pooled tail (the extended
# menu's routed candidates have it), which serves uniform attention almost
# exactly at a fraction of the cost.
EXPECTED = {"diagonal": ("diagonal",), "multi_diagonal": ("multi_diagonal",), "vertical_stripe": ("vertical_stripe",),
            "uniform": ("full", "routed"), "negligible": ("skip",)}


@pytest.fixture(scope="module")
def planted():
    rng = random.Random(0)
    modes = [[rng.choice(list(EXPECTED)) for _ in range(HEADS)] for _ in range(LAYERS)]
    calibrator = Calibrator(ModelShape("synthetic", LAYERS, HEADS, DIM), MENUS["extended"], probe_count=2,
                            query_fraction=0.5, warmup=0.0)
    assert calibrator.probe_index(0, 2) == 0 and calibrator.accepts(GEOMETRY)
    for probe in range(2):
        for layer in range(LAYERS):
            q, k, v = planted_layer(modes[layer], GEOMETRY, DIM, batch=2, seed=100 * layer + probe)
            calibrator.record(probe, layer, *(x.view(2, GEOMETRY.seq_len, HEADS, DIM) for x in (q, k, v)))
    stats = calibrator.statistics(block_share_costs(calibrator.candidates, GEOMETRY), "block-count")
    return modes, stats


def test_search_recovers_planted_modes(planted):
    modes, stats = planted
    plan = solve_plan(stats, 0.5, 1.0)
    found = [[p.name for p in layer.heads] for layer in plan.layers]
    hits = sum(f in EXPECTED[m] for ml, fl in zip(modes, found) for m, f in zip(ml, fl))
    assert all(p.tail for layer in plan.layers for p in layer.heads if p.name == "routed")
    assert hits / (LAYERS * HEADS) >= 0.95, list(zip(modes, found))
    stripe_heads = [(l, h) for l in range(LAYERS) for h in range(HEADS) if modes[l][h] == "vertical_stripe"]
    assert stripe_heads and all(plan.layers[l].heads[h].frames == (0,) for l, h in stripe_heads)  # the sink frame


def test_judger_keeps_full_when_every_candidate_fails():
    errors = torch.tensor([[[5.0, 3.0, 0.2], [0.1, 0.9, 4.0]]])  # [L=1, H=2, C=3]
    sparse = torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    # head 0: scores 5, 3.25, 0.6 -> argmin 2; head 1: 0.1, 1.15, 4.4 -> 0
    assert judge(errors.double(), sparse, 0.5, 1.0).tolist() == [[2, 0]]
    assert judge(errors.double(), sparse, 0.5, 0.05).tolist() == [[FULL, FULL]]
    with pytest.raises(PlanError):
        judge(errors.double(), sparse, -1.0, 1.0)
    # measured on a GPU where candidate 0 is no faster than full: never chosen, even at no error
    slower = torch.tensor([0.0, -0.2, 0.2], dtype=torch.float64)
    assert judge(torch.tensor([[[0.0, 0.0, 3.0], [0.0, 9.0, 0.1]]]).double(), slower, 0.5, 1.0).tolist() == [[FULL, 2]]


def test_larger_epsilon_is_never_denser(planted):
    _, stats = planted
    densities = []
    for eps in (0.0, 0.1, 0.5, 1.0, 2.0, 10.0, 1e6):
        plan = solve_plan(stats, 0.5, eps)
        densities.append(sum(compile_layer(layer, GEOMETRY).density() for layer in plan.layers))
    assert all(a >= b - 1e-12 for a, b in zip(densities, densities[1:])), densities
    assert densities[0] == pytest.approx(LAYERS) and densities[-1] < 0.5 * LAYERS


def test_saved_statistics_resolve_to_the_same_plan(planted, tmp_path):
    _, stats = planted
    path = str(tmp_path / "s.stats.safetensors")
    save_statistics(stats, path)
    loaded = load_statistics(path)
    assert torch.equal(loaded.sq_err, stats.sq_err) and loaded.candidates == stats.candidates
    for args in ((0.5, 1.0), (0.2, 3.0)):
        assert plan_to_dict(solve_plan(loaded, *args)) == plan_to_dict(solve_plan(stats, *args))


def test_bad_statistics_files(tmp_path):
    path = tmp_path / "broken.stats.safetensors"
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(PlanError, match="cannot read"):
        load_statistics(str(path))


def test_speedup_solver_meets_the_target_with_least_error(planted):
    _, stats = planted
    errors = normalised_errors(stats)
    totals = []
    for target in (1.5, 2.0, 3.0):
        choice = solve_for_speedup(stats, target)
        assert predicted_speedup(stats, choice) >= target - 1e-9
        total = sum(float(errors[l, h, c]) for (l, h), c in zip(
            [(l, h) for l in range(LAYERS) for h in range(HEADS)], choice.flatten().tolist()) if c != FULL)
        totals.append(total)
    assert totals == sorted(totals)  # a higher target never costs less error
    no_free_candidate = copy.copy(stats)
    no_free_candidate.cost = torch.ones_like(stats.cost)  # nothing is cheaper than full
    with pytest.raises(PlanError, match="out of reach"):
        solve_for_speedup(no_free_candidate, 1.5)


def test_costs_and_sparsity_from_blocks():
    costs = block_share_costs(MENUS["standard"], GEOMETRY)
    assert costs[0] == 0 and costs[-1] == 1 and ((costs > 0) & (costs < 1))[1:-1].all()
    assert sparsity(type("S", (), {"cost": costs})())[0] == 1.0


def test_probe_steps_follow_the_warmup():
    assert select_probe_steps(20, 3, 0.2) == [4, 12, 19]
    assert select_probe_steps(4, 2, 0.25) == [1, 3]
    assert select_probe_steps(10, 1, 0.0) == [0]


def test_fewer_steps_than_probes_still_gives_statistics():
    calibrator = Calibrator(ModelShape("synthetic", 1, 2, 16), MENUS["standard"], probe_count=5, query_fraction=1.0,
                            warmup=0.0)
    assert calibrator.probe_index(0, 2) == 0 and calibrator.probe_steps == [0, 1]
    geometry = Geometry(2, 4, 5)
    assert calibrator.accepts(geometry)
    for probe in range(2):
        q, k, v = planted_layer(["diagonal", "uniform"], geometry, 16, seed=probe)
        calibrator.record(probe, 0, *(x.view(1, geometry.seq_len, 2, 16) for x in (q, k, v)))
    stats = calibrator.statistics(block_share_costs(calibrator.candidates, geometry), "block-count")
    assert stats.sq_err.shape[0] == 2 and stats.probe_steps.tolist() == [0, 1]


def test_missing_probes_are_a_clear_error():
    calibrator = Calibrator(ModelShape("synthetic", 2, 2, 16), MENUS["standard"], probe_count=1)
    with pytest.raises(PlanError, match="no video self-attention"):
        calibrator.statistics(torch.ones(len(MENUS["standard"]) + 1), "block-count")


def test_probe_agreement_sees_a_pattern_that_moves_between_steps(planted):
    _, stats = planted
    plan = solve_plan(stats, 0.5, 1.0)
    same = plan.provenance["probe_agreement"]
    assert same["same_at_every_probe"] > 0.9  # planted heads keep their shape across steps
    layer, head = next((l, h) for l, lp in enumerate(plan.layers) for h, p in enumerate(lp.heads) if p.name != "full")
    moved = copy.deepcopy(stats)
    moved.sq_err[1, layer, head] = 1e9  # at the second probe every candidate fails for this head: full there
    agreement = solve_plan(moved, 0.5, 1.0).provenance["probe_agreement"]
    assert agreement["same_at_every_probe"] < same["same_at_every_probe"]
    assert agreement["matches_plan_per_probe"][0] < 1.0  # the worst step (probe 1) decides the plan


def test_bf16_block_sums_score_like_float32(monkeypatch):
    """The GPU path keeps the per-key-block sums in bf16: its errors must
    stay within a hundredth of the error unit (plus 1%) of float32's."""
    from sparse_vdit.plans import scoring
    from sparse_vdit.plans.search import ERROR_UNIT
    modes = ["diagonal", "multi_diagonal", "vertical_stripe", "uniform", "negligible", "diagonal"]
    q, k, v = (x.view(2, GEOMETRY.seq_len, len(modes), DIM) for x in planted_layer(modes, GEOMETRY, DIM, batch=2, seed=3))
    blocks = scoring.sampled_query_blocks((GEOMETRY.seq_len + 127) // 128, 0.5)
    exact = scoring.score_layer(q, k, v, GEOMETRY, MENUS["standard"], blocks)
    monkeypatch.setattr(scoring, "_block_sum_dtype", lambda device: torch.bfloat16)
    rounded = scoring.score_layer(q, k, v, GEOMETRY, MENUS["standard"], blocks)
    unit = exact.power * ERROR_UNIT
    a, b = exact.sq_err / unit, rounded.sq_err / unit
    assert ((a - b).abs() <= 0.01 + 0.01 * a).all(), (a - b).abs().max()
    assert not torch.equal(a, b)  # the bf16 path really ran


# ----- step ranges ------------------------------------------------------------
def shifted(stats, layers=range(LAYERS // 2)):
    """The planted statistics, but at the second probe every candidate fails
    for every head of `layers`: those heads need full there, not before."""
    moved = copy.deepcopy(stats)
    for layer in layers:
        moved.sq_err[1, layer] = 1e9
    return moved


def test_probe_spans_weigh_the_steps_each_range_serves():
    from sparse_vdit.plans.step_ranges import probe_spans
    errors = torch.rand(3, 2, 2, 4, dtype=torch.float64)
    spans = probe_spans(errors, [4, 12, 19], 20, first_sparse_step=4)
    # boundaries half-way between probes: steps 4-7 | 8-15 | 16-19 of the 16 sparse steps
    weight = dict(zip(spans.spans, spans.weights.tolist()))
    assert weight[(0, 0)] == 4 / 16 and weight[(1, 1)] == 8 / 16 and weight[(2, 2)] == 4 / 16
    assert weight[(0, 2)] == 1.0 and weight[(1, 2)] == 12 / 16
    start = dict(zip(spans.spans, spans.starts))
    assert start[(0, 0)] == start[(0, 2)] == 0.0 and start[(1, 1)] == 8 / 20 and start[(2, 2)] == 15.5 / 20
    assert torch.equal(spans.errors[spans.index((0, 2))], errors.amax(0))
    assert torch.equal(spans.errors[spans.index((1, 1))], errors[1])
    alone = probe_spans(errors, [4, 12, 19], None, 4)  # older statistics: no step count
    assert alone.spans == ((0, 2),) and torch.equal(alone.errors[0], errors.amax(0))


def test_the_partition_is_the_best_of_all():
    import itertools

    from sparse_vdit.plans.step_ranges import best_partition, probe_spans
    probes = 5
    spans = probe_spans(torch.zeros(probes, 1, 1, 1, dtype=torch.float64), list(range(probes)), probes, 0)
    rng = random.Random(1)
    for _ in range(20):
        values = [rng.random() for _ in spans.spans]
        for count in range(1, probes + 1):
            chosen = best_partition(values.__getitem__, spans, probes, count)
            runs = [spans.spans[n] for n in chosen]
            assert len(runs) == count and runs[0][0] == 0 and runs[-1][1] == probes - 1
            assert all(a[1] + 1 == b[0] for a, b in zip(runs, runs[1:]))
            brute = min(sum(values[spans.index((a, b - 1))] for a, b in zip((0,) + cut, cut + (probes,)))
                        for cut in itertools.combinations(range(1, probes), count - 1))
            assert sum(values[n] for n in chosen) == pytest.approx(brute)


def test_patterns_that_shift_get_their_own_step_range(planted):
    from sparse_vdit.plans.search import errors_per_probe
    _, stats = planted
    assert solve_plan(stats, 0.5, 1.0).later_ranges == ()  # planted heads keep their shape: one range
    moved = shifted(stats)
    plan = solve_plan(moved, 0.5, 1.0)
    assert len(plan.later_ranges) == 1 and plan.later_ranges[0].start == 0.25  # probes at steps 0 and 1 of 2
    per_probe = errors_per_probe(moved)
    for layers, errors in zip((plan.layers, plan.later_ranges[0].layers), per_probe):
        assert layers == solve_plan_layers(moved, judge(errors, sparsity(moved), 0.5, 1.0))
    late = plan.later_ranges[0].layers
    assert all(late[l].is_dense for l in range(LAYERS // 2)) and not any(plan.layers[l].is_dense for l in range(LAYERS // 2))
    assert plan.provenance["step_ranges"][1]["probe_steps"] == [1]
    # one range asked: the worst probed step decides, as before
    single = solve_plan(moved, 0.5, 1.0, step_ranges=1)
    assert single.later_ranges == () and single.layers == solve_plan_layers(
        moved, judge(normalised_errors(moved), sparsity(moved), 0.5, 1.0))
    assert plan.provenance["predicted_attention_speedup"] > single.provenance["predicted_attention_speedup"]


def solve_plan_layers(stats, choice):
    from sparse_vdit.plans.search import _layers_of
    return _layers_of(stats, choice)


def test_speedup_target_with_step_ranges_has_less_error(planted):
    from sparse_vdit.plans.search import errors_per_probe
    _, stats = planted
    moved = shifted(stats, layers=range(LAYERS - 1))
    per_probe = errors_per_probe(moved)
    ranged, single = solve_plan(moved, target_speedup=2.0), solve_plan(moved, target_speedup=2.0, step_ranges=1)
    assert len(ranged.later_ranges) == 1 and single.later_ranges == ()

    def error(layers, errors):
        """Total error of a range's patterns at the probe it serves."""
        total = 0.0
        for l, layer in enumerate(layers):
            for h, p in enumerate(layer.heads):
                if p.name != "full":
                    c = next(i for i, c in enumerate(moved.candidates) if c.pattern(moved.stripe_frames[l, h].tolist()) == p)
                    total += float(errors[l, h, c])
        return total

    ranged_error = sum(error(layers, e) for layers, e in zip((ranged.layers, ranged.later_ranges[0].layers), per_probe))
    single_error = sum(error(single.layers, e) for e in per_probe)
    assert ranged_error < single_error
    assert ranged.provenance["predicted_attention_speedup"] >= 2.0 - 1e-9
    assert single.provenance["predicted_attention_speedup"] >= 2.0 - 1e-9


@pytest.mark.parametrize("asked,message", [(3, "3 step ranges need at least 3 probed steps"), (0, "'auto' or a whole"),
                                           ("two", "'auto' or a whole"), (True, "'auto' or a whole")])
def test_bad_step_range_counts_are_refused(planted, asked, message):
    with pytest.raises(PlanError, match=message):
        solve_plan(planted[1], 0.5, 1.0, step_ranges=asked)


def test_statistics_without_a_step_count_keep_one_range(planted):
    moved = shifted(planted[1])
    del moved.info["total_steps"]
    assert solve_plan(moved, 0.5, 1.0).later_ranges == ()
    with pytest.raises(PlanError, match="older"):
        solve_plan(moved, 0.5, 1.0, step_ranges=2)


def test_saved_statistics_resolve_to_the_same_ranged_plan(planted, tmp_path):
    moved = shifted(planted[1])
    path = str(tmp_path / "m.stats.safetensors")
    save_statistics(moved, path)
    loaded = load_statistics(path)
    for kwargs in ({"lam": 0.5, "eps": 1.0}, {"target_speedup": 1.8}, {"step_ranges": "2"}):
        assert plan_to_dict(solve_plan(loaded, **kwargs)) == plan_to_dict(solve_plan(moved, **kwargs))


# ----- which steps and layers to probe -----------------------------------------
@pytest.mark.parametrize("text,count,expected", [("", 5, None), ("all", 5, None), (" ALL ", None, None),
                                                 ("3", 5, [3]), ("0-2, 4", 5, [0, 1, 2, 4]), ("4,1;1", None, [1, 4])])
def test_index_lists(text, count, expected):
    from sparse_vdit.plans.calibrator import parse_indices
    assert parse_indices(text, count, "layers") == expected


@pytest.mark.parametrize("text,message", [("5", "5 is out of range: there are 5"), ("2-9", "9 is out of range"),
                                          ("x", "'x' is not an index"), ("-1", "'-1' is not an index"),
                                          ("3-1", "runs backwards"), ("1.5", "not an index")])
def test_bad_index_lists(text, message):
    from sparse_vdit.plans.calibrator import parse_indices
    with pytest.raises(PlanError, match=message):
        parse_indices(text, 5, "probed layers")


def test_only_the_probed_layers_and_steps_are_scored():
    """Layers 1 and 3 of 4 at steps 2 and 5 of 6: the others are never
    scored and stay full in the plan; a probe step beyond the run is refused."""
    geometry, heads = Geometry(3, 8, 10), 2
    calibrator = Calibrator(ModelShape("synthetic", 4, heads, 16), MENUS["standard"], query_fraction=1.0,
                            warmup=0.0, probe_at=[5, 2], layers=[3, 1])
    assert [calibrator.probe_index(s, 6) for s in range(6)] == [None, None, 0, None, None, 1]
    assert calibrator.accepts(geometry) and calibrator.missing() == [(2, 1), (2, 3), (5, 1), (5, 3)]
    for probe in range(2):
        for layer in range(4):
            q, k, v = planted_layer(["negligible", "diagonal"], geometry, 16, seed=layer)
            calibrator.record(probe, layer, *(x.view(1, geometry.seq_len, heads, 16) for x in (q, k, v)))
    stats = calibrator.statistics(block_share_costs(calibrator.candidates, geometry), "block-count")
    assert torch.isinf(stats.sq_err[:, [0, 2]]).all() and torch.isfinite(stats.sq_err[:, [1, 3]]).all()
    assert stats.probe_steps.tolist() == [2, 5] and stats.info["probed_layers"] == [1, 3]
    for kwargs in ({"lam": 0.5, "eps": 1.0}, {"target_speedup": 1.2}):
        plan = solve_plan(stats, **kwargs)
        assert [layer.is_dense for layer in plan.layers] == [True, False, True, False], kwargs
    with pytest.raises(PlanError, match="probe step 5 is beyond this run's 4 steps"):
        Calibrator(ModelShape("synthetic", 4, heads, 16), MENUS["standard"], probe_at=[5]).probe_index(0, 4)
    with pytest.raises(PlanError, match="probed layers"):
        Calibrator(ModelShape("synthetic", 4, heads, 16), MENUS["standard"], layers=[4])


def test_statistics_restricted_to_some_modes(planted):
    """with_modes keeps only the named modes' candidates (their errors and
    costs, full's cost last) and solves as a calibration with that menu
    would; a larger menu never solves to more error at the same target."""
    from sparse_vdit.plans.candidates import PAPER_MODES
    from sparse_vdit.plans.statistics import with_modes
    _, stats = planted
    assert {"window_3d", "routed"} <= {c.mode for c in stats.candidates}  # the fixture's extended menu
    modes = ("skip", "diagonal", "multi_diagonal")  # no stripes
    fewer = with_modes(stats, modes)
    assert {c.mode for c in fewer.candidates} == set(modes) and len(fewer.candidates) < len(stats.candidates)
    keep = [i for i, c in enumerate(stats.candidates) if c.mode in modes]
    assert torch.equal(fewer.sq_err, stats.sq_err[..., keep])
    assert torch.equal(fewer.cost, stats.cost[keep + [len(stats.candidates)]])
    plan = solve_plan(fewer, target_speedup=2.0, step_ranges=1)
    assert {p.name for layer in plan.layers for p in layer.heads} <= set(modes) | {"full"}
    errors_all, errors_fewer = normalised_errors(stats), normalised_errors(fewer)
    for target in (1.5, 3.0):
        chosen = [(solve_for_speedup(s, target), e) for s, e in ((stats, errors_all), (fewer, errors_fewer))]
        totals = [sum(float(e[l, h, c]) for l in range(LAYERS) for h in range(HEADS)
                      for c in [int(choice[l, h])] if c != FULL) for choice, e in chosen]
        assert totals[0] <= totals[1] + 1e-9
    paper = with_modes(stats, PAPER_MODES)
    assert paper.candidates == tuple(c for c in stats.candidates if c.mode in PAPER_MODES)
    assert {c.mode for c in paper.candidates} == set(PAPER_MODES)
    with pytest.raises(ValueError, match="no candidate"):
        with_modes(stats, ("nothing",))


def test_menus_at_8_bit_have_no_pooled_tail():
    from sparse_vdit.plans.candidates import for_precision

    wide = MENUS["extended-wide"]
    assert any(c.tail for c in wide), "the extended menu has tailed routed heads to drop"
    assert for_precision(wide, "bf16") == wide
    for precision in ("8-bit", "auto"):
        menu = for_precision(wide, precision)
        assert not any(c.tail for c in menu)
        # the same candidates otherwise, in the same order: routed at every share, untailed
        assert [c.label for c in menu] == [c.label.replace(",tail", "") for c in wide]
        assert for_precision(menu + menu, precision) == menu  # no repeats
        assert for_precision(MENUS["wide"], precision) == MENUS["wide"]

"""Plan files: round trip, atomic writes, and every bad-input case."""
import json
import os

import pytest

from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal, Routed, Skip, VerticalStripe, Window3D
from sparse_vdit.plans import format as plan_format
from sparse_vdit.plans.format import (DenseSchedule, ModelShape, Plan, PlanError, StepRange, dumps_plan, load_plan,
                                      loads_plan, plan_to_dict, save_plan)

LAYER = LayerPattern((Diagonal(2), Full(), VerticalStripe((0, -1)), MultiDiagonal(1, frames=3), Skip()))


LATER = LayerPattern((Skip(), Diagonal(1), Full(), Full(), VerticalStripe((1,))))


def small_plan(layers=2, later=()):
    return Plan("test plan", ModelShape("wan2.1", layers, 5, 64), (LAYER,) * layers, DenseSchedule(0.25, 0.9),
                {"kind": "static-baseline", "software": "test"}, later)


def ranged_plan():
    """Patterns that change at 40% and again at 75% of the steps."""
    return small_plan(later=(StepRange(0.4, (LATER, LAYER)), StepRange(0.75, (LATER, LATER))))


def test_round_trip(tmp_path):
    plan = small_plan()
    path = tmp_path / "p.json"
    save_plan(plan, str(path))
    loaded = load_plan(str(path))
    assert loaded.layers == plan.layers and loaded.model == plan.model and loaded.dense == plan.dense
    assert loaded.provenance == plan.provenance and loaded.name == plan.name
    assert plan_to_dict(loaded) == plan_to_dict(plan)
    assert json.loads(path.read_text())["version"] == 1


NEW_MODES = LayerPattern((Window3D(1, 2, 3), Full(), Routed(0.05), Skip(), Window3D(0, 0, 9)))


def test_new_modes_need_version_3(tmp_path, monkeypatch):
    """A plan with a mode beyond the paper's is written as version 3 (older
    packs refuse it asking for an update); one without stays at version 1."""
    plan = small_plan(later=(StepRange(0.5, (NEW_MODES, LAYER)),))
    path = tmp_path / "w.json"
    save_plan(plan, str(path))
    assert json.loads(path.read_text())["version"] == 3
    assert load_plan(str(path)).later_ranges == plan.later_ranges
    data = json.loads(path.read_text())
    data["version"] = 2
    with pytest.raises(PlanError, match="later_step_ranges.*head 0: mode 'window_3d' needs plan format version 3"):
        loads_plan(json.dumps(data), "old.json")
    data["later_step_ranges"][0]["layers"][0]["heads"][0] = {"mode": "diagonal", "rows": 1}
    with pytest.raises(PlanError, match="head 2: mode 'routed' needs plan format version 3"):
        loads_plan(json.dumps(data), "old.json")
    monkeypatch.setattr(plan_format, "FORMAT_VERSION", 2)  # a pack from before version 3
    with pytest.raises(PlanError, match="version 3 is not supported.*update the pack"):
        load_plan(str(path))


def test_routed_tail_needs_version_4(tmp_path, monkeypatch):
    """A routed head with the pooled tail is written as version 4; without it
    the same head stays at version 3, written exactly as before (no field)."""
    tailed = LayerPattern((Routed(0.1, tail=True), Full(), Routed(0.1), Skip(), Window3D(0, 0, 9)))
    plan = small_plan(later=(StepRange(0.5, (tailed, LAYER)),))
    path = tmp_path / "t.json"
    save_plan(plan, str(path))
    data = json.loads(path.read_text())
    assert data["version"] == 4
    heads = data["later_step_ranges"][0]["layers"][0]["heads"]
    assert heads[0] == {"mode": "routed", "share": 0.1, "tail": True} and heads[2] == {"mode": "routed", "share": 0.1}
    assert load_plan(str(path)).later_ranges == plan.later_ranges
    data["version"] = 3
    with pytest.raises(PlanError, match=r"head 0: routed field \['tail'\] needs plan format version 4"):
        loads_plan(json.dumps(data), "old.json")
    heads[0]["tail"] = "yes"
    data["version"] = 4
    with pytest.raises(PlanError, match="routed.tail must be true or false"):
        loads_plan(json.dumps(data), "bad.json")
    monkeypatch.setattr(plan_format, "FORMAT_VERSION", 3)  # a pack from before version 4
    with pytest.raises(PlanError, match="version 4 is not supported.*update the pack"):
        load_plan(str(path))


def test_one_line_per_head():
    text = dumps_plan(small_plan())
    lines = [line.strip().rstrip(",") for line in text.splitlines()]
    assert lines.count('{"mode": "vertical_stripe", "frames": [0, -1]}') == 2  # one per layer


def corrupt(mutate, plan=None):
    data = json.loads(dumps_plan(plan or small_plan()))
    mutate(data)
    return json.dumps(data)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(version=5), "version 5 is not supported.*newer"),
    (lambda d: d.update(version=0), "version 0 is not supported"),
    (lambda d: d.update(version="1"), "version"),
    (lambda d: d.update(format="something"), "not a Sparse-vDiT plan"),
    (lambda d: d.pop("model"), "missing 'model'"),
    (lambda d: d["model"].update(heads=0), "heads"),
    (lambda d: d["model"].update(layers=3), "3 layers but 'layers' lists 2"),
    (lambda d: d["layers"][1]["heads"].pop(), "layer 1: lists 4 heads, model has 5"),
    (lambda d: d["layers"][0]["heads"][2].update(mode="stripe"), "layer 0, head 2: unknown pattern 'stripe'"),
    (lambda d: d["layers"][1]["heads"][0].update(rows=-3), "layer 1, head 0: .*rows"),
    (lambda d: d["layers"][1].update(layer=5), "listed in order"),
    (lambda d: d["dense"].update(warmup_fraction=1.5), "warmup_fraction"),
    (lambda d: d["provenance"].update(kind="measured-somewhere"), "provenance.kind"),
])
def test_bad_plans_are_refused_with_a_clear_message(mutate, message):
    with pytest.raises(PlanError, match=message):
        loads_plan(corrupt(mutate), "bad.json")


def test_round_trip_with_step_ranges(tmp_path):
    plan = ranged_plan()
    path = tmp_path / "r.json"
    save_plan(plan, str(path))
    loaded = load_plan(str(path))
    assert loaded.later_ranges == plan.later_ranges and loaded.layers == plan.layers
    assert plan_to_dict(loaded) == plan_to_dict(plan)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and [r["from_step_fraction"] for r in data["later_step_ranges"]] == [0.4, 0.75]


def test_the_step_picks_the_range():
    plan = ranged_plan()
    # 20 steps: 0-7 first range, 8-14 from 0.4, 15-19 from 0.75
    expected = [(LAYER, LAYER)] * 8 + [(LATER, LAYER)] * 7 + [(LATER, LATER)] * 5
    assert [plan.layers_at(step, 20) for step in range(20)] == expected
    assert plan.layers_at(None, None) == plan.layers == small_plan().layers_at(19, 20)
    assert [r.start for r in plan.step_ranges] == [0.0, 0.4, 0.75]


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(version=1), "later_step_ranges' needs plan format version 2"),
    (lambda d: d.update(later_step_ranges={"from_step_fraction": 0.5}), "'later_step_ranges' must be a list"),
    (lambda d: d["later_step_ranges"][0].update(from_step_fraction=0.0), r"later_step_ranges\[0\]: from_step_fraction"),
    (lambda d: d["later_step_ranges"][1].update(from_step_fraction=0.3), r"later_step_ranges\[1\]: .*increasing"),
    (lambda d: d["later_step_ranges"][1].update(from_step_fraction=1.0), r"later_step_ranges\[1\]: from_step_fraction"),
    (lambda d: d["later_step_ranges"][0].update(from_step_fraction="0.5"), "from_step_fraction"),
    (lambda d: d["later_step_ranges"][0].pop("layers"), r"later_step_ranges\[0\]: missing 'layers'"),
    (lambda d: d["later_step_ranges"][1]["layers"].pop(), r"later_step_ranges\[1\]: model says 2 layers"),
    (lambda d: d["later_step_ranges"][1]["layers"][0]["heads"][4].update(frames="x"),
     r"later_step_ranges\[1\]: layer 0, head 4"),
    (lambda d: d["later_step_ranges"].__setitem__(0, 7), r"later_step_ranges\[0\]: must be an object"),
])
def test_bad_step_ranges_are_refused_with_a_clear_message(mutate, message):
    with pytest.raises(PlanError, match=message):
        loads_plan(corrupt(mutate, ranged_plan()), "bad.json")


def test_truncated_and_missing_files(tmp_path):
    text = dumps_plan(small_plan())
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plan(str(path))
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(str(tmp_path / "absent.json"))
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PlanError):
        load_plan(str(path))


def test_model_shape_mismatch_names_both():
    with pytest.raises(PlanError, match=r"2 layers x 5 heads x head_dim 64.*30 layers x 12 heads x head_dim 128"):
        small_plan().check_model(30, 12, 128)
    small_plan().check_model(2, 5, 64)


def test_failed_save_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    save_plan(small_plan(), str(path))
    before = path.read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        save_plan(small_plan(layers=3), str(path))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary left


def test_dense_schedule():
    schedule = DenseSchedule(0.2, sigma_above=0.8)
    assert [schedule.is_dense(s, 10) for s in range(4)] == [True, True, False, False]
    assert schedule.is_dense(5, 10, sigma=0.9) and not schedule.is_dense(5, 10, sigma=0.5)
    assert not DenseSchedule().is_dense(0, 10)

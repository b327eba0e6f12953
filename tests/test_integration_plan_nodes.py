"""Load Plan, Solve Plan from a plan, and what Solve says: on a real ComfyUI
with a tiny Wan2.1 (calibrated once per test where a calibration is needed)."""
import logging
import os

import pytest

import comfy_harness as H
from test_integration_calibrate import folder, run_calibration, same_but_name  # noqa: F401  (folder: a fixture)

pytestmark = pytest.mark.comfyui


def test_load_plan_gives_a_shipped_plan_and_says_what_it_is(folder):
    from sparse_vdit.nodes.load_plan_node import SparseVDiTLoadPlan
    from sparse_vdit.nodes.preview_node import SparseVDiTPlanPreview

    plan, text = SparseVDiTLoadPlan.execute(plan="wan2.1-1.3b_static-baseline.json").result
    assert plan.model.layers == 30 and plan.model.heads == 12
    assert "static baseline" in text and "not calibrated" in text and "30 layers x 12 heads" in text
    image = SparseVDiTPlanPreview.execute(plan=plan).result[0]  # no model anywhere
    assert image.ndim == 4 and image.shape[-1] == 3 and image.shape[1] > 300


def test_the_plans_folder_is_made_at_start(comfy, tmp_path, monkeypatch):
    from sparse_vdit.nodes import plan_files

    target = tmp_path / "models" / "sparse_vdit_plans"
    monkeypatch.setattr(plan_files, "user_plans_dir", lambda: str(target))
    for name in plan_files.EXTENSIONS:
        monkeypatch.delitem(comfy.folder_paths.folder_names_and_paths, name, raising=False)
    plan_files.register_plan_folder()
    assert target.is_dir()


def test_solve_from_a_plan_names_what_it_wrote_and_never_overwrites(folder, caplog):
    from sparse_vdit.nodes.load_plan_node import SparseVDiTLoadPlan
    from sparse_vdit.nodes.solve_node import FROM_PLAN, SparseVDiTSolvePlan
    from sparse_vdit.plans.format import PlanError

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    _, calibrated, _ = run_calibration(model, positive, negative)
    loaded, text = SparseVDiTLoadPlan.execute(plan="tiny_cal.json").result
    assert "calibrated" in text and "tiny_cal.stats.safetensors (found" in text

    def solve(**given):
        settings = dict(statistics=FROM_PLAN, lambda_cost=0.5, epsilon=1.0, target_speedup=0.0, plan_name="re")
        return SparseVDiTSolvePlan.execute(**{**settings, **given}).result

    with caplog.at_level(logging.INFO, logger="sparse_vdit"):
        first, report = solve(plan=loaded)
        second, report2 = solve(plan=loaded)
    assert same_but_name(first, calibrated) and (first.name, second.name) == ("re", "re_2")
    assert sorted(os.listdir(folder)) == ["re.json", "re_2.json", "tiny_cal.json", "tiny_cal.stats.safetensors"]
    assert "wrote" in report and "re.json" in report and "'re' was taken" in report2
    assert [r.message for r in caplog.records if "wrote" in r.message] == [report.splitlines()[0], report2.splitlines()[0]]

    static = SparseVDiTLoadPlan.execute(plan="wan2.1-1.3b_static-baseline.json").result[0]
    with pytest.raises(PlanError, match="no calibration statistics"):
        solve(plan=static)
    with pytest.raises(PlanError, match="connect a calibrated plan"):
        solve()
    os.remove(folder / "tiny_cal.stats.safetensors")
    with pytest.raises(PlanError, match="not in the plans folders"):
        solve(plan=loaded)


def stats_epsilon(path):
    from sparse_vdit.plans.solve_report import calibration_epsilon
    from sparse_vdit.plans.statistics import load_statistics

    return calibration_epsilon(load_statistics(str(path)))


def test_solve_warns_when_a_target_skips_many_heads_or_overshoots_epsilon(folder, caplog):
    from sparse_vdit.nodes.solve_node import SparseVDiTSolvePlan
    from sparse_vdit.plans.describe import mode_counts

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    run_calibration(model, positive, negative)
    settings = dict(statistics="tiny_cal.stats.safetensors", lambda_cost=0.5, epsilon=1.0, plan_name="t")
    calm, calm_report = SparseVDiTSolvePlan.execute(target_speedup=1.0, **settings).result
    assert "Warning" not in calm_report and mode_counts(calm).get("skip", 0) == 0
    with caplog.at_level(logging.WARNING, logger="sparse_vdit"):
        greedy, report = SparseVDiTSolvePlan.execute(target_speedup=20.0, **settings).result
    counts = mode_counts(greedy)
    assert counts.get("skip", 0) > sum(counts.values()) / 4
    assert "more than a quarter" in report and "predicted above epsilon 1" in report
    assert stats_epsilon(folder / "tiny_cal.stats.safetensors") == 1.0  # the calibration's, which the warning uses
    assert len([r for r in caplog.records if "Solve Plan" in r.message]) == 2


def test_every_node_says_when_to_use_it_and_every_input_and_output_has_a_tooltip(comfy):
    import asyncio

    from sparse_vdit.nodes.extension import SparseVDiTExtension

    nodes = asyncio.run(SparseVDiTExtension().get_node_list())
    assert {n.define_schema().node_id for n in nodes} >= {"SparseVDiTLoadPlan", "SparseVDiTPatch"}
    for node in nodes:
        schema = node.define_schema()
        assert "Use it" in schema.description or "Use after" in schema.description, schema.node_id
        missing = [f"{schema.node_id}.{i.id}" for i in schema.inputs if not i.tooltip]
        missing += [f"{schema.node_id} output {o.display_name}" for o in schema.outputs if not o.tooltip]
        assert not missing, missing

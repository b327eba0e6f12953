"""Calibration, solving and preview on a real ComfyUI with a tiny Wan2.1."""
import os

import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui

STEPS = 4


@pytest.fixture
def folder(comfy, tmp_path, monkeypatch):
    from sparse_vdit.nodes import plan_files

    monkeypatch.setattr(plan_files, "user_plans_dir", lambda: str(tmp_path))
    for name in plan_files.EXTENSIONS:
        monkeypatch.delitem(comfy.folder_paths.folder_names_and_paths, name, raising=False)
    return tmp_path


def run_calibration(model, positive, negative, name="tiny_cal", epsilon=1.0, **optional):
    from sparse_vdit.nodes.calibrate_node import SparseVDiTCalibrate

    latent = {"samples": H.empty_latent()}
    return SparseVDiTCalibrate.execute(model=model, positive=positive, negative=negative, latent_image=latent, seed=11,
                                       steps=STEPS, cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1.0,
                                       lambda_cost=0.5, epsilon=epsilon, probe_steps=2, query_fraction=0.5,
                                       plan_name=name, dense_warmup=0.25, **optional).result


def same_but_name(a, b) -> bool:
    from sparse_vdit.plans.format import plan_to_dict

    return {**plan_to_dict(a), "name": ""} == {**plan_to_dict(b), "name": ""}


def test_calibrate_writes_plan_and_statistics_and_gives_the_dense_latent(folder):
    from sparse_vdit.nodes.patch_node import SparseVDiTPatch
    from sparse_vdit.plans.format import load_plan
    from sparse_vdit.plans.statistics import load_statistics

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    patched, plan, latent = run_calibration(model, positive, negative)
    dense = H.sample(model, positive, negative, H.empty_latent(), seed=11, steps=STEPS, cfg=4.0)
    assert torch.equal(latent["samples"], dense), "calibration must sample dense"

    assert sorted(os.listdir(folder)) == ["tiny_cal.json", "tiny_cal.stats.safetensors"]
    saved = load_plan(str(folder / "tiny_cal.json"))
    assert saved.layers == plan.layers and saved.provenance["kind"] == "calibrated"
    assert saved.provenance["geometry"] == {"frames": 4, "rows": 10, "cols": 11, "prefix": 0, "suffix": 0}
    assert saved.provenance["probe_steps"] == [1, 3]  # 2 probes after a 25% warm-up of 4 steps
    stats = load_statistics(str(folder / "tiny_cal.stats.safetensors"))
    assert stats.sq_err.shape == (2, 2, 4, len(stats.candidates)) and torch.isfinite(stats.sq_err).all()
    assert (stats.power > 0).all() and stats.cost_source == "block-count"
    # the Patch node loads the new plan by name, and the model it returned carries it
    assert patched.model_options["transformer_options"]["optimized_attention_override"].plan.layers == plan.layers
    SparseVDiTPatch.execute(model=model, plan="tiny_cal.json")


def test_solve_reproduces_the_calibrated_plan_and_larger_epsilon_is_never_denser(folder):
    from sparse_vdit.nodes.solve_node import SparseVDiTSolvePlan
    from sparse_vdit.patterns import Geometry, compile_layer

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    _, plan, _ = run_calibration(model, positive, negative)
    again = SparseVDiTSolvePlan.execute(statistics="tiny_cal.stats.safetensors", lambda_cost=0.5, epsilon=1.0,
                                        target_speedup=0.0, plan_name="tiny_cal").result[0]
    assert again.name == "tiny_cal_2" and (folder / "tiny_cal_2.json").exists()  # never over the calibrated plan
    assert same_but_name(again, plan)
    geometry = Geometry(4, 10, 11)
    density = []
    for eps in (0.0, 0.5, 1.0, 5.0, 50.0):
        solved = SparseVDiTSolvePlan.execute(statistics="tiny_cal.stats.safetensors", lambda_cost=0.5, epsilon=eps,
                                             target_speedup=0.0, plan_name=f"eps_{eps}").result[0]
        density.append(sum(compile_layer(l, geometry).density() for l in solved.layers))
    assert all(a >= b - 1e-12 for a, b in zip(density, density[1:])), density
    assert density[0] == pytest.approx(2.0)  # epsilon 0: everything full (no candidate is free of error and cost)


def test_calibrate_and_solve_with_two_step_ranges(folder):
    """Two ranges asked: probes at steps 1 and 3 of 4 split at step 2; the
    plan file carries both, the Patch node serves it, Solve reproduces it."""
    from sparse_vdit.nodes.patch_node import SparseVDiTPatch
    from sparse_vdit.nodes.solve_node import SparseVDiTSolvePlan
    from sparse_vdit.plans.format import load_plan, plan_to_dict

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    _, plan, _ = run_calibration(model, positive, negative, name="ranged", epsilon=5.0, step_ranges="2")
    saved = load_plan(str(folder / "ranged.json"))
    assert plan_to_dict(saved) == plan_to_dict(plan) and [r.start for r in saved.step_ranges] == [0.0, 0.5]
    assert [r["probe_steps"] for r in saved.provenance["step_ranges"]] == [[1], [3]]
    again = SparseVDiTSolvePlan.execute(statistics="ranged.stats.safetensors", lambda_cost=0.5, epsilon=5.0,
                                        target_speedup=0.0, plan_name="ranged", step_ranges="2").result[0]
    assert same_but_name(again, plan)
    one = SparseVDiTSolvePlan.execute(statistics="ranged.stats.safetensors", lambda_cost=0.5, epsilon=5.0,
                                      target_speedup=0.0, plan_name="one", step_ranges="1").result[0]
    assert one.later_ranges == () and one.provenance["step_ranges"][0]["probe_steps"] == [1, 3]
    patched = SparseVDiTPatch.execute(model=model, plan="ranged.json", backend="reference").result[0]
    H.sample(patched, positive, negative, seed=3, steps=STEPS)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    assert hook.plan.later_ranges == saved.later_ranges and hook.counts.get("dense:error", 0) == 0


def test_calibrate_only_the_chosen_steps_and_layers(folder, monkeypatch):
    """Steps 0 and 2, layer 1: only those calls are scored, and layer 0 stays
    full in the plan."""
    from sparse_vdit.plans import calibrator

    scored = []
    real = calibrator.score_layer
    monkeypatch.setattr(calibrator, "score_layer", lambda *a, **k: scored.append(1) or real(*a, **k))
    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    _, plan, _ = run_calibration(model, positive, negative, name="chosen", epsilon=50.0, probe_at_steps="2, 0",
                                 probe_layers="1")
    assert plan.provenance["probe_steps"] == [0, 2] and plan.provenance["calibration"]["probed_layers"] == [1]
    assert len(scored) == 2  # 2 steps x 1 layer (cond and uncond batched in one call)
    assert plan.layers[0].is_dense and not plan.layers[1].is_dense


def test_interrupt_mid_calibration_leaves_no_file(folder, monkeypatch):
    import comfy.model_management as mm
    from sparse_vdit.plans import calibrator

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    calls = {"n": 0}
    real = calibrator.Calibrator.record

    def record(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            mm.interrupt_current_processing(True)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(calibrator.Calibrator, "record", record)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_calibration(model, positive, negative)
    finally:
        mm.interrupt_current_processing(False)
    assert os.listdir(folder) == []


def test_bad_calibration_input_fails_before_sampling(folder, monkeypatch):
    from sparse_vdit.integration import calibrate
    from sparse_vdit.plans.format import PlanError

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    sampled = []
    monkeypatch.setattr(calibrate, "install_hook", lambda *a: sampled.append(1))
    for name in ("../evil", "", "a/b"):
        with pytest.raises(PlanError, match="plan name"):
            run_calibration(model, positive, negative, name=name)
    with pytest.raises(PlanError, match="epsilon"):
        run_calibration(model, positive, negative, epsilon=-1)
    with pytest.raises(PlanError, match="3 step ranges need at least 3 probed steps"):
        run_calibration(model, positive, negative, step_ranges="3")
    with pytest.raises(PlanError, match="probe steps: 4 is out of range: there are 4"):
        run_calibration(model, positive, negative, probe_at_steps="1, 4")
    with pytest.raises(PlanError, match="probed layers: 2 is out of range"):
        run_calibration(model, positive, negative, probe_layers="0-2")
    with pytest.raises(PlanError, match="unknown precision 'fp4'"):
        run_calibration(model, positive, negative, precision="fp4")
    assert not sampled and os.listdir(folder) == []


def test_calibration_for_8_bit_measures_routed_heads_without_the_tail(folder, caplog):
    from sparse_vdit.plans.statistics import load_statistics

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    with caplog.at_level("INFO", logger="sparse_vdit"):
        run_calibration(model, positive, negative, name="cal8", candidate_menu="extended-wide", precision="8-bit")
    assert "routed heads are calibrated without the pooled tail" in caplog.text
    stats = load_statistics(str(folder / "cal8.stats.safetensors"))
    routed = [c for c in stats.candidates if c.mode == "routed"]
    assert routed and not any(c.tail for c in routed) and stats.info["precision"] == "8-bit"


def test_preview_image(folder):
    from sparse_vdit.nodes.preview_node import SparseVDiTPlanPreview

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    _, plan, _ = run_calibration(model, positive, negative)
    image = SparseVDiTPlanPreview.execute(plan=plan).result[0]
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert image.shape[1] > 100 and image.shape[2] > 300 and 0 <= float(image.min()) and float(image.max()) <= 1


def test_auto_plan_calibrates_on_the_first_run_and_serves_it_after(folder, caplog, monkeypatch):
    import logging

    from sparse_vdit.nodes.patch_node import SparseVDiTPatch
    from sparse_vdit.plans import search

    # random weights have no sparse structure worth keeping at the default
    # budget; a lenient error unit makes the auto plan sparse so serving shows
    monkeypatch.setattr(search, "ERROR_UNIT", 1e4)

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    dense = H.sample(model, positive, negative, seed=3, steps=STEPS)
    patched = SparseVDiTPatch.execute(model=model, plan="auto", backend="reference").result[0]
    with caplog.at_level(logging.INFO, logger="sparse_vdit"):
        first = H.sample(patched, positive, negative, seed=3, steps=STEPS)
    assert torch.equal(first, dense), "the calibrating run is dense"
    files = sorted(os.listdir(folder))
    assert len(files) == 2 and files[0].startswith("auto_wan2.1-t2v_2x4x16_") and files[0].endswith("_4x10x11.json")
    assert any("calibrated and saved" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparse_vdit"):
        second = H.sample(patched, positive, negative, seed=3, steps=STEPS)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    assert hook.counts.get("sparse", 0) > 0 and not torch.equal(second, dense)
    # a fresh Patch node finds the saved plan too
    again = SparseVDiTPatch.execute(model=model, plan="auto", backend="reference").result[0]
    with caplog.at_level(logging.INFO, logger="sparse_vdit"):
        assert torch.equal(H.sample(again, positive, negative, seed=3, steps=STEPS), second)
    assert any("using the saved plan" in r.message for r in caplog.records)


def test_auto_plan_interrupted_first_run_saves_nothing(folder, monkeypatch):
    import comfy.model_management as mm
    from sparse_vdit.nodes.patch_node import SparseVDiTPatch
    from sparse_vdit.plans import calibrator

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    real = calibrator.Calibrator.record

    def record(self, *args, **kwargs):
        mm.interrupt_current_processing(True)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(calibrator.Calibrator, "record", record)
    patched = SparseVDiTPatch.execute(model=model, plan="auto", backend="reference").result[0]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            H.sample(patched, positive, negative, seed=3, steps=STEPS)
    finally:
        mm.interrupt_current_processing(False)
    assert os.listdir(folder) == []

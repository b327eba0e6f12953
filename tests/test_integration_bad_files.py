"""Bad files in the plans folder, as the nodes meet them on a real ComfyUI:
each node that uses one says which file to fix or delete; a node that does
not use it is not disturbed; names are checked before any sampling."""
import json
import logging
import os

import pytest

import comfy_harness as H
from test_integration_calibrate import folder  # noqa: F401  (the fixture: the plans folder is a temporary one)

pytestmark = pytest.mark.comfyui

BAD_HEAD = '{"format": "sparse-vdit-plan", "version": 1, "model": {"family": "w", "layers": 1, "heads": 1, ' \
           '"head_dim": 16}, "layers": [{"heads": [{"mode": []}]}]}'


def fitting_plan(name="fits"):
    from plan_oracle import mixed_plan

    from dataclasses import replace
    return replace(mixed_plan("wan2.1 tiny"), name=name)


def test_a_bad_file_in_the_folder_keeps_the_helpful_error_of_the_patch_node(folder):
    from sparse_vdit.nodes.patch_node import SparseVDiTPatch
    from sparse_vdit.plans.format import ModelShape, Plan, PlanError, save_plan
    from sparse_vdit.patterns import Full, LayerPattern

    (folder / "broken.json").write_text(BAD_HEAD)
    (folder / "huge_int.json").write_text('{"format": "sparse-vdit-plan", "version": ' + "9" * 5000 + "}")
    save_plan(fitting_plan(), str(folder / "fits.json"))
    save_plan(Plan("other", ModelShape("w", 3, 2, 8), (LayerPattern((Full(), Full())),) * 3), str(folder / "other.json"))
    model = H.tiny_wan_model(seed=0)
    with pytest.raises(PlanError, match=r"Plans that fit it: .*fits.json") as caught:
        SparseVDiTPatch.execute(model=model, plan="other.json")
    assert "broken" not in str(caught.value)
    with pytest.raises(PlanError, match=r"broken.json: layer 0, head 0: must be an object with a 'mode' name.*"
                                        r"fix or delete that file"):
        SparseVDiTPatch.execute(model=model, plan="broken.json")
    SparseVDiTPatch.execute(model=model, plan="fits.json", backend="reference")


def test_a_damaged_saved_auto_plan_is_logged_and_recalibrated(folder, caplog):
    from sparse_vdit.nodes.patch_node import SparseVDiTPatch
    from sparse_vdit.patterns import Geometry

    patched = SparseVDiTPatch.execute(model=H.tiny_wan_model(seed=0), plan="auto", backend="reference").result[0]
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    geometry = Geometry(*H.DEFAULT_GRID)
    for damage in (BAD_HEAD, "[" * 100000, '{"format": "sparse-vdit-plan", "version": 1, "dense": {"sigma_above": '
                   + "9" * 400 + "}}"):
        with open(hook.plan_path(geometry), "w") as handle:
            handle.write(damage)
        hook.plans.clear()
        with caplog.at_level(logging.WARNING, logger="sparse_vdit"):
            assert hook.plan_for(geometry) is None
        assert "is unusable" in caplog.text and "calibrating a new one" in caplog.text
        caplog.clear()


@pytest.mark.parametrize("name,match", [("x" * 225, "225 characters"), ("con", "reserved"), ("nul.json", "reserved"),
                                        ("wan2.1-14b_static-baseline", "shipped with the pack")])
def test_calibrate_checks_the_name_before_sampling(folder, monkeypatch, name, match):
    from sparse_vdit.nodes import calibrate_node
    from sparse_vdit.plans.format import PlanError

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started before the name was checked")
    monkeypatch.setattr(calibrate_node, "sample_latent", no_sampling)
    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    with pytest.raises(PlanError, match=match):
        calibrate_node.SparseVDiTCalibrate.execute(
            model=model, positive=positive, negative=negative, latent_image={"samples": H.empty_latent()}, seed=1,
            steps=4, cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1.0, lambda_cost=0.5, epsilon=1.0,
            probe_steps=2, query_fraction=0.5, plan_name=name)
    assert os.listdir(folder) == []


def test_calibrate_refuses_more_probes_than_statistics_hold_before_sampling(folder, monkeypatch):
    from sparse_vdit.nodes import calibrate_node
    from sparse_vdit.plans.format import PlanError

    monkeypatch.setattr(calibrate_node, "sample_latent", lambda *a, **k: pytest.fail("sampled"))
    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    with pytest.raises(PlanError, match="100 probe steps; at most 64"):
        calibrate_node.SparseVDiTCalibrate.execute(
            model=model, positive=positive, negative=negative, latent_image={"samples": H.empty_latent()}, seed=1,
            steps=200, cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1.0, lambda_cost=0.5, epsilon=1.0,
            probe_steps=2, query_fraction=0.5, plan_name="ok", probe_at_steps="0-99")


def test_temporaries_are_never_listed_and_stale_ones_go_at_start(folder):
    from sparse_vdit.nodes import plan_files
    from sparse_vdit.plans.atomic import STALE_SECONDS
    from sparse_vdit.plans.format import save_plan

    save_plan(fitting_plan(), str(folder / "fits.json"))
    text = (folder / "fits.json").read_text()
    for name in (".tmp-abc123fits.json", ".tmp-fits.json-x1.partial", ".hidden.json"):
        (folder / name).write_text(text)  # complete text: a listing that showed it would load it
    old = os.path.getmtime(folder / "fits.json") - 2 * STALE_SECONDS
    os.utime(folder / ".tmp-abc123fits.json", (old, old))
    user_plans = [n for n in plan_files.plan_names() if not n.endswith("static-baseline.json")]
    assert user_plans == ["fits.json"]
    plan_files._cleaned.discard(str(folder))  # the next start
    plan_files.register_plan_folder()
    assert sorted(os.listdir(folder)) == [".hidden.json", ".tmp-fits.json-x1.partial", "fits.json"]


def test_solve_names_the_damaged_statistics_and_checks_its_name_first(folder):
    from sparse_vdit.nodes.solve_node import SparseVDiTSolvePlan
    from sparse_vdit.plans.format import PlanError

    (folder / "cut.stats.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(PlanError, match=r"cut.stats.safetensors.*fix or delete that file"):
        SparseVDiTSolvePlan.execute("cut.stats.safetensors", 0.5, 1.0, 0.0, "solved")
    with pytest.raises(PlanError, match="reserved"):
        SparseVDiTSolvePlan.execute("cut.stats.safetensors", 0.5, 1.0, 0.0, "CON")
    assert "solved.json" not in os.listdir(folder)


def test_preview_draws_without_maps_when_the_statistics_are_damaged(folder, caplog):
    from dataclasses import replace

    from sparse_vdit.nodes.preview_node import SparseVDiTPlanPreview

    (folder / "cut.stats.safetensors").write_bytes(b"garbage")
    plan = replace(fitting_plan(), provenance={"kind": "calibrated", "statistics": "cut.stats.safetensors"})
    with caplog.at_level(logging.WARNING, logger="sparse_vdit"):
        image = SparseVDiTPlanPreview.execute(plan=plan).result[0]
    assert image.dim() == 4 and "without attention maps" in caplog.text and "cut.stats.safetensors" in caplog.text


def test_calibrated_plan_and_statistics_land_as_a_pair(folder):
    """The Calibrate node's files: both or neither (see test_file_validation for the failure cases)."""
    from sparse_vdit.nodes.calibrate_node import SparseVDiTCalibrate

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    SparseVDiTCalibrate.execute(model=model, positive=positive, negative=negative,
                                latent_image={"samples": H.empty_latent()}, seed=1, steps=3, cfg=4.0,
                                sampler_name="euler", scheduler="simple", denoise=1.0, lambda_cost=0.5, epsilon=1.0,
                                probe_steps=1, query_fraction=0.5, plan_name="pair")
    assert sorted(os.listdir(folder)) == ["pair.json", "pair.stats.safetensors"]
    assert json.loads((folder / "pair.json").read_text())["provenance"]["statistics"] == "pair.stats.safetensors"

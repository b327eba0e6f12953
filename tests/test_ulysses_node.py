"""The Sparse-vDiT → Raylight node: a clear no-op without Ray; with
Raylight's worker interface (faked: actors that run the function on their
own tiny Wan, as Raylight's model_function_runner does) every worker gets
the plan and the Ulysses callback, which wraps only Raylight's USP
self-attention."""
from __future__ import annotations

import logging
import pickle
import sys
import types

import pytest

pytestmark = pytest.mark.comfyui


class FakeActor:
    """Raylight's RayWorker.model_function_runner, run here after a pickle
    round trip of what Ray would send."""

    def __init__(self, model):
        self.model = model
        outer = self

        class Runner:
            @staticmethod
            def remote(fn, *args):
                fn, args = pickle.loads(pickle.dumps((fn, args)))
                outer.model = fn(outer.model, *args)
                return None
        self.model_function_runner = Runner()


def fake_ray():
    module = types.ModuleType("ray")
    module.get = lambda futures: list(futures)
    return module


def tiny_plan(model_patcher, full_everywhere=False):
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, Skip
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

    dm = model_patcher.model.diffusion_model
    heads, layers = dm.num_heads, len(dm.blocks)
    layer = LayerPattern((Full(),) * heads) if full_everywhere else LayerPattern((Diagonal(1), Skip()) + (Full(),) * (heads - 2))
    return Plan("node test", ModelShape("wan2.1", layers, heads, dm.dim // heads), (layer,) * layers, DenseSchedule(0.0))


def test_without_ray_it_passes_through_and_says_why(comfy, monkeypatch, caplog):
    from sparse_vdit.nodes.raylight_node import NO_RAYLIGHT, SparseVDiTRaylight

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    actors = {"workers": ["not touched"]}
    with caplog.at_level(logging.WARNING, logger="sparse_vdit"):
        out = SparseVDiTRaylight.execute(ray_actors=actors, plan="any.json")
    assert out.result[0] is actors
    assert NO_RAYLIGHT in caplog.text


def test_every_worker_gets_the_plan_and_the_ulysses_callback(comfy, monkeypatch):
    import comfy.patcher_extension as extension

    import comfy_harness
    from sparse_vdit.integration.sparse_patch import SparsePatch
    from sparse_vdit.integration.video_hook import OVERRIDE_KEY
    from sparse_vdit.nodes import raylight_node
    from sparse_vdit.parallel import raylight, ulysses

    monkeypatch.setitem(sys.modules, "ray", fake_ray())
    models = [comfy_harness.tiny_wan_model(seed=0) for _ in range(2)]
    plan = tiny_plan(models[0])
    monkeypatch.setattr(raylight_node, "load_named_plan", lambda name: plan)
    actors = [FakeActor(m) for m in models]
    out = raylight_node.SparseVDiTRaylight.execute(ray_actors={"workers": actors}, plan="tiny.json", dense_warmup=0.0,
                                                   balance_heads="on")
    assert out.result[0]["workers"] is actors
    for actor, original in zip(actors, models):
        assert actor.model is not original  # a clone: Raylight keeps the worker's unpatched model nowhere else
        hook = actor.model.model_options["transformer_options"][OVERRIDE_KEY]
        assert isinstance(hook, SparsePatch) and hook.plan.name == "node test"
        assert OVERRIDE_KEY not in original.model_options.get("transformer_options", {})
        callbacks = actor.model.get_callbacks(extension.CallbacksMP.ON_LOAD, raylight.KEY)
        assert len(callbacks) == 1
        # not under Raylight's USP (CFG-parallel, data-parallel, FSDP): the callback wraps nothing
        callbacks[0](actor.model, None, 0, False, True)
        assert ulysses.states(actor.model.model.diffusion_model) == []
        assert all("forward" not in b.self_attn.__dict__ for b in actor.model.model.diffusion_model.blocks)

    # under USP: Raylight replaced self_attn.forward with its usp_self_attn_forward; the callback wraps exactly those
    dm = actors[0].model.model.diffusion_model

    def usp_self_attn_forward(self, x, freqs, transformer_options={}, **kwargs):
        raise AssertionError("not called here")

    for block in dm.blocks:
        block.self_attn.forward = types.MethodType(usp_self_attn_forward, block.self_attn)
    for _ in range(2):  # every load: Raylight's patches, then ours; never stacked
        actors[0].model.get_callbacks(extension.CallbacksMP.ON_LOAD, raylight.KEY)[0](actors[0].model, None, 0, False, True)
        states = ulysses.states(dm)
        assert len(states) == len(dm.blocks)
        assert all(s.previous.__func__ is usp_self_attn_forward and s.balance == "on" for s in states)
    ulysses.uninstall(dm)
    assert all(b.self_attn.forward.__func__ is usp_self_attn_forward for b in dm.blocks)


def test_head_balancing_setting(comfy, monkeypatch):
    """auto by default; the earlier true / false mean on / off; anything else
    fails before any worker is touched."""
    import comfy_harness
    from sparse_vdit.nodes import raylight_node
    from sparse_vdit.parallel import raylight

    schema = raylight_node.SparseVDiTRaylight.define_schema()
    (balance_input,) = [i for i in schema.inputs if i.id == "balance_heads"]
    assert balance_input.default == "auto" and list(balance_input.options) == ["auto", "on", "off"]
    monkeypatch.setitem(sys.modules, "ray", fake_ray())
    model = comfy_harness.tiny_wan_model(seed=0)
    monkeypatch.setattr(raylight_node, "load_named_plan", lambda name: tiny_plan(model))
    seen = []
    monkeypatch.setattr(raylight_node, "send_to_workers", lambda ray, workers, *payload: seen.append(payload[-1]))
    for given, sent in (("auto", "auto"), ("off", "off"), (True, "on"), (False, "off")):
        raylight_node.SparseVDiTRaylight.execute(ray_actors={"workers": [FakeActor(model)]}, plan="tiny.json",
                                                 balance_heads=given)
        assert seen.pop() == sent
    with pytest.raises(ValueError, match="head balancing"):
        raylight_node.SparseVDiTRaylight.execute(ray_actors={"workers": [FakeActor(model)]}, plan="tiny.json",
                                                 balance_heads="sometimes")
    assert seen == []
    with pytest.raises(ValueError, match="head balancing"):
        raylight.patch_worker(model, tiny_plan(model), balance="yes")


def test_a_plan_that_does_not_fit_the_workers_model_fails_loudly(comfy, monkeypatch):
    import comfy_harness
    from sparse_vdit.nodes import raylight_node
    from sparse_vdit.plans.format import PlanError

    monkeypatch.setitem(sys.modules, "ray", fake_ray())
    model = comfy_harness.tiny_wan_model(seed=0)
    wrong = tiny_plan(comfy_harness.tiny_wan_model(seed=0, num_heads=2, head_dim=32))
    monkeypatch.setattr(raylight_node, "load_named_plan", lambda name: wrong)
    with pytest.raises(PlanError):
        raylight_node.SparseVDiTRaylight.execute(ray_actors={"workers": [FakeActor(model)]}, plan="wrong.json")


def test_a_worker_without_the_pack_installed_loads_it_from_its_folder(tmp_path):
    """Ray workers may not have the pack under any importable name: the
    entry point loads it from the folder the node sends."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sparse_vdit":
            raise ImportError("not installed on this worker")
sys.meta_path.insert(0, Block())
sys.path.insert(0, {os.path.join(root, 'parallel')!r})
import worker_entry
pack = worker_entry.load_pack({root!r})
import sparse_vdit.parallel.balance as balance
assert pack.__file__.startswith({root!r}) and balance.rank_heads((0, 1, 2, 3), 2, 1) == (2, 3)
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]

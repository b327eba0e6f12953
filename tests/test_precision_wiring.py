"""The precision input (kernels/dispatch.py: bf16 / 8-bit / auto) from the
Patch node to every sparse layer call, and the Calibrate cost measured at it.

On the CPU the 8-bit kernel cannot serve a call (no GPU, no interpreter in
this process), so these check the wiring; the kernel itself is checked in
test_quant8.py."""
import pytest
import torch

import comfy_harness as H
from test_integration_patch import patch, plan_folder, setup, spy, the_patch  # noqa: F401  (fixtures)


@pytest.mark.comfyui
def test_patch_node_carries_precision_to_every_layer_call(setup, plan_folder, spy):
    model, positive, negative = setup
    patched = patch(model, "mixed", precision="8-bit")
    assert the_patch(patched).precision == "8-bit"
    H.sample(patched, positive, negative, seed=3, steps=1, cfg=4.0)
    assert spy and all(c["kwargs"]["precision"] == "8-bit" for c in spy)
    assert all(c["kwargs"]["full_heads_8bit"] for c in spy), "nothing is chained: full heads join the 8-bit launch"


@pytest.mark.comfyui
def test_an_earlier_override_keeps_the_full_heads(setup, plan_folder, spy):
    model, positive, negative = setup
    before = H.record_attention_calls(model)  # stands in for a Sage patch installed earlier
    patched = patch(before.model, "mixed", precision="8-bit")
    H.sample(patched, positive, negative, seed=3, steps=1, cfg=4.0)
    assert spy and not any(c["kwargs"]["full_heads_8bit"] for c in spy)


@pytest.mark.comfyui
def test_default_is_bf16_and_unknown_precision_is_refused(setup, plan_folder, spy):
    model, positive, negative = setup
    default = H.sample(patch(model, "mixed"), positive, negative, seed=3, steps=1, cfg=4.0)
    bf16 = H.sample(patch(model, "mixed", precision="bf16"), positive, negative, seed=3, steps=1, cfg=4.0)
    assert torch.equal(default, bf16)
    assert spy and all(c["kwargs"]["precision"] == "bf16" for c in spy)
    with pytest.raises(ValueError, match="precision"):
        patch(model, "mixed", precision="int4")


def test_candidate_costs_take_the_precision():
    """Without a GPU the cost is the block share, whatever the precision."""
    from sparse_vdit.patterns import Geometry
    from sparse_vdit.plans.candidates import MENUS
    from sparse_vdit.plans.cost import candidate_costs

    geometry = Geometry(3, 6, 8)
    candidates = MENUS["standard"]
    a, source_a = candidate_costs(candidates, geometry, 4, 64, torch.device("cpu"))
    b, source_b = candidate_costs(candidates, geometry, 4, 64, torch.device("cpu"), precision="8-bit")
    assert torch.equal(a, b) and source_a == source_b == "block-count"

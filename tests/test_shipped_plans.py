"""The plans shipped in plans/ load, say what they are, and are exactly the
static-baseline generator's output (no hand edits, no claimed calibration)."""
import os

import pytest

from sparse_vdit.plans.format import dumps_plan, load_plan
from sparse_vdit.plans.static import SHIPPED, static_baseline_plan

PLANS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plans")


@pytest.mark.parametrize("filename", sorted(SHIPPED))
def test_shipped_plan_is_the_generator_output(filename):
    path = os.path.join(PLANS_DIR, filename)
    plan = load_plan(path)
    assert plan.provenance["kind"] == "static-baseline"
    assert "static-baseline" in filename
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == dumps_plan(static_baseline_plan(*SHIPPED[filename]))


def test_no_unlisted_plans_ship():
    shipped = {f for f in os.listdir(PLANS_DIR) if f.endswith(".json")}
    assert shipped == set(SHIPPED)

"""Sparse-vDiT Load Plan: a plan file as a PLAN, with what it is in words."""
from __future__ import annotations

from comfy_api.latest import io

from ..plans.describe import describe_plan
from .plan_files import load_named_plan, plan_names, statistics_present
from .types import PLAN_OUTPUT_TOOLTIP, PlanType


class SparseVDiTLoadPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SparseVDiTLoadPlan",
            display_name="Sparse-vDiT Load Plan",
            category="model_patches/sparse_vdit",
            description="Use it to look at a plan file (shipped, calibrated or shared) without any model: feed "
                        "Plan Preview to see it, compare plans, or Solve Plan to re-solve a calibrated one. To run "
                        "a model with a plan, pick the plan in the Patch node instead.",
            inputs=[
                io.Combo.Input("plan", options=plan_names(),
                               tooltip="A plan file from models/sparse_vdit_plans or the plans shipped with the pack "
                                       "(static baselines: not calibrated, for trying the speed)."),
            ],
            outputs=[PlanType.Output(display_name="PLAN", tooltip=PLAN_OUTPUT_TOOLTIP),
                     io.String.Output(display_name="description",
                                      tooltip="What the plan is: its model, how it was made, the share of heads per "
                                              "mode, its predicted speedup. Connect it to a Preview Any node to read it.")],
        )

    @classmethod
    def execute(cls, plan: str) -> io.NodeOutput:
        chosen = load_named_plan(plan)
        text = describe_plan(chosen, statistics_present(chosen))
        return io.NodeOutput(chosen, text)

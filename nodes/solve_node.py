"""Sparse-vDiT Solve Plan: a new plan from saved statistics, no sampling."""
from __future__ import annotations

import os

from comfy_api.latest import io

from ..plans.format import save_plan
from ..plans.search import solve_plan
from ..plans.step_ranges import CHOICES as STEP_RANGE_CHOICES
from ..plans.validation import check_plan_name
from . import plan_files
from .plan_files import load_named_statistics, statistics_names
from .types import STEP_RANGES_TOOLTIP, PlanType


class SparseVDiTSolvePlan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SparseVDiTSolvePlan",
            display_name="Sparse-vDiT Solve Plan",
            category="model_patches/sparse_vdit",
            description="Re-solves a calibrated plan for another lambda / epsilon, or for a target attention speedup, "
                        "from the statistics a calibration saved. Takes well under a second.",
            inputs=[
                io.Combo.Input("statistics", options=statistics_names()),
                io.Float.Input("lambda_cost", default=0.5, min=0.0, max=10.0, step=0.05),
                io.Float.Input("epsilon", default=1.0, min=0.0, max=100.0, step=0.1),
                io.Float.Input("target_speedup", default=0.0, min=0.0, max=50.0, step=0.1,
                               tooltip="0: use lambda and epsilon. Otherwise the least-error plan predicted to make "
                                       "attention this many times faster."),
                io.String.Input("plan_name", default="my_solved_plan"),
                io.Combo.Input("step_ranges", options=list(STEP_RANGE_CHOICES), default="auto", optional=True,
                               tooltip=STEP_RANGES_TOOLTIP),
            ],
            outputs=[PlanType.Output(display_name="PLAN")],
        )

    @classmethod
    def execute(cls, statistics, lambda_cost, epsilon, target_speedup, plan_name, step_ranges="auto") -> io.NodeOutput:
        name = check_plan_name(plan_name)
        stats = load_named_statistics(statistics)
        plan = solve_plan(stats, lambda_cost, epsilon, target_speedup, name=name, step_ranges=step_ranges,
                          statistics=statistics)
        save_plan(plan, os.path.join(plan_files.user_plans_dir(), name + ".json"))
        return io.NodeOutput(plan)

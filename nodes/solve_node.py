"""Sparse-vDiT Solve Plan: a new plan from saved statistics, no sampling."""
from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..plans.format import PlanError, save_plan
from ..plans.search import solve_plan
from ..plans.solve_report import calibration_epsilon, solve_warnings
from ..plans.step_ranges import CHOICES as STEP_RANGE_CHOICES
from ..plans.validation import check_plan_name
from . import plan_files
from .plan_files import load_named_statistics, statistics_names, unused_plan_name
from .types import PLAN_OUTPUT_TOOLTIP, STEP_RANGES_TOOLTIP, PlanType

log = logging.getLogger("sparse_vdit")
FROM_PLAN = "from the plan input"  # the statistics choice that takes the file the connected plan names


def statistics_for(statistics: str, plan) -> str:
    """The statistics file to solve from: the one chosen, or the one the
    connected plan names (a clear error when neither is there)."""
    if statistics != FROM_PLAN:
        return statistics
    if plan is None:
        raise PlanError("Solve Plan needs statistics: connect a calibrated plan (Load Plan) or choose a statistics "
                        "file (calibration writes one into models/sparse_vdit_plans)")
    named = plan.provenance.get("statistics")
    if not named:
        raise PlanError(f"plan '{plan.name}' has no calibration statistics to solve from (a "
                        f"{plan.provenance.get('kind', 'plan')} records none); calibrate your model first")
    if not plan_files.statistics_present(plan):
        raise PlanError(f"plan '{plan.name}' was solved from '{named}', which is not in the plans folders; copy it "
                        f"there beside the plan, or calibrate again")
    return named


class SparseVDiTSolvePlan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SparseVDiTSolvePlan",
            display_name="Sparse-vDiT Solve Plan",
            category="model_patches/sparse_vdit",
            description="Use after a calibration, to get a faster or more careful plan without sampling again: "
                        "re-solves for another lambda / epsilon, or for a target attention speedup, from the "
                        "statistics the calibration saved. Takes well under a second. Writes a new plan file "
                        "(never over an existing one) and says what it wrote.",
            inputs=[
                io.Combo.Input("statistics", options=[FROM_PLAN] + statistics_names(), default=FROM_PLAN,
                               tooltip="A calibration's statistics file (name.stats.safetensors, written beside "
                                       "its plan), or 'from the plan input': the file the connected plan was "
                                       "solved from."),
                io.Float.Input("lambda_cost", default=0.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight of a pattern's cost against its error: higher favours cheaper "
                                       "patterns. Used when target_speedup is 0."),
                io.Float.Input("epsilon", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Error budget: 1 lets a head's error power reach 1% of its layer's output "
                                       "power. Larger is sparser and faster. Used when target_speedup is 0."),
                io.Float.Input("target_speedup", default=0.0, min=0.0, max=50.0, step=0.1,
                               tooltip="0: use lambda and epsilon. Otherwise the least-error plan predicted to make "
                                       "attention this many times faster (a warning says when it costs too much)."),
                io.String.Input("plan_name", default="my_solved_plan",
                                tooltip="File name of the new plan in models/sparse_vdit_plans. If it is taken, "
                                        "_2, _3, ... is added (said in the report)."),
                io.Combo.Input("step_ranges", options=list(STEP_RANGE_CHOICES), default="auto", optional=True,
                               tooltip=STEP_RANGES_TOOLTIP),
                PlanType.Input("plan", optional=True,
                               tooltip="A calibrated plan (Load Plan): with statistics 'from the plan input', "
                                       "its statistics file is used."),
            ],
            outputs=[PlanType.Output(display_name="PLAN", tooltip=PLAN_OUTPUT_TOOLTIP),
                     io.String.Output(display_name="report",
                                      tooltip="What was written, the predicted speedup, and any warning.")],
        )

    @classmethod
    def execute(cls, statistics, lambda_cost, epsilon, target_speedup, plan_name, step_ranges="auto",
                plan=None) -> io.NodeOutput:
        asked = check_plan_name(plan_name)
        statistics = statistics_for(statistics, plan)
        stats = load_named_statistics(statistics)
        name = unused_plan_name(asked)
        solved = solve_plan(stats, lambda_cost, epsilon, target_speedup, name=name, step_ranges=step_ranges,
                            statistics=statistics)
        path = os.path.join(plan_files.user_plans_dir(), name + ".json")
        save_plan(solved, path)
        reference = calibration_epsilon(stats)
        warnings = solve_warnings(solved, stats, epsilon if reference is None else reference)
        lines = [f"Sparse-vDiT Solve Plan: wrote {path} from {statistics}"
                 + (f" ('{asked}' was taken)" if name != asked else "")
                 + f"; predicted attention speedup {solved.provenance['predicted_attention_speedup']}x; "
                 + solved.describe_step_ranges() + "."]
        log.info(lines[0])
        for warning in warnings:
            log.warning("Sparse-vDiT Solve Plan '%s': %s", name, warning)
            lines.append("Warning: " + warning)
        return io.NodeOutput(solved, "\n".join(lines))

"""Custom socket types of the pack, and input help shared by several nodes."""
from comfy_api.latest import io

PlanType = io.Custom("SPARSE_VDIT_PLAN")

STEP_RANGES_TOOLTIP = ("auto: where the statistics show patterns shift with the noise level and it pays, the sparse "
                       "steps are split into ranges, each with its own patterns. A number: exactly that many ranges "
                       "(at most one per probed step).")

PLAN_OUTPUT_TOOLTIP = ("The plan: which sparse pattern every head of every layer uses. Feed it to Plan Preview to "
                       "see it, or to Solve Plan to re-solve it.")

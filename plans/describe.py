"""A plan in a few lines of text: what a person choosing it needs to know
(which model it fits, how it was made, what share of heads each mode gets,
what speedup it predicts). The Load Plan node shows it; no ComfyUI here."""
from __future__ import annotations

from .format import Plan

_KINDS = {
    "static-baseline": "static baseline: a fixed pattern mix, not calibrated on any model and no quality measured; "
                       "use it to try the speed, then calibrate (or use the Patch node's auto) for your model",
    "calibrated": "calibrated: its patterns were chosen by scoring every candidate against dense attention on a "
                  "real model run",
}


def mode_counts(plan: Plan) -> dict[str, int]:
    """Heads per mode over every step range."""
    counts: dict[str, int] = {}
    for step_range in plan.step_ranges:
        for mode, n in plan.density_summary(step_range.layers).items():
            counts[mode] = counts.get(mode, 0) + n
    return counts


def describe_plan(plan: Plan, statistics_found: bool | None = None) -> str:
    """Several short lines. statistics_found: whether the statistics file the
    plan names is in the plans folders (None: not looked for)."""
    provenance = plan.provenance
    kind = provenance.get("kind", "?")
    counts = mode_counts(plan)
    total = sum(counts.values())
    lines = [f"{plan.name}", f"model: {plan.model.describe()}", _KINDS.get(kind, f"kind: {kind}")]
    lines.append("heads: " + ", ".join(f"{mode} {100 * n / total:.0f}%" for mode, n in sorted(counts.items())))
    lines.append(f"dense warm-up: the first {100 * plan.dense.warmup_fraction:.0f}% of the steps; "
                 f"{plan.describe_step_ranges()}")
    if "predicted_attention_speedup" in provenance:
        lines.append(f"predicted attention speedup over the sparse steps: "
                     f"{provenance['predicted_attention_speedup']}x ({provenance.get('cost_source', '?')} costs)")
    settings = [f"{key} {provenance[key]}" for key in ("lambda", "epsilon", "target_speedup") if key in provenance]
    if settings:
        lines.append("solved with " + ", ".join(settings))
    statistics = provenance.get("statistics")
    if statistics:
        where = {None: "", True: " (found: Solve Plan can re-solve it)", False: " (not in the plans folders)"}
        lines.append(f"statistics: {statistics}{where[statistics_found]}")
    if provenance.get("note"):
        lines.append(f"note: {provenance['note']}")
    return "\n".join(lines)

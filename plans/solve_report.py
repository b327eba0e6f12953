"""What a solved plan costs in error, in words: the warnings Solve Plan
gives when a target asks for more than the statistics support (many heads
skipped, or a head's predicted error above the calibration's epsilon)."""
from __future__ import annotations

import math

import torch

from ..patterns import Full
from .describe import mode_counts
from .format import Plan
from .search import errors_per_probe
from .statistics import Statistics

SKIP_SHARE_WARNING = 0.25  # more than this share of the head entries skipped: warn


def calibration_epsilon(stats: Statistics) -> float | None:
    """The epsilon the calibration solved with, when its statistics record it."""
    value = stats.info.get("epsilon")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def predicted_errors(plan: Plan, stats: Statistics) -> torch.Tensor:
    """float64 [ranges, L, H]: each head's normalised error (search.py's unit)
    with the pattern the plan gives it, at the worst probed step its range
    serves; 0 for full heads, NaN for a pattern the statistics did not score."""
    per_probe = errors_per_probe(stats)  # [P, L, H, C]
    probe_steps = stats.probe_steps.tolist()
    described = plan.provenance.get("step_ranges")
    ranges = plan.step_ranges
    out = torch.zeros(len(ranges), plan.model.layers, plan.model.heads, dtype=torch.float64)
    for r, step_range in enumerate(ranges):
        served = probe_steps
        if isinstance(described, list) and len(described) == len(ranges):
            served = [s for s in described[r].get("probe_steps", probe_steps) if s in probe_steps] or probe_steps
        probes = [probe_steps.index(s) for s in served]
        worst = per_probe[probes].amax(0)  # [L, H, C]
        for l, layer in enumerate(step_range.layers):
            for h, pattern in enumerate(layer.heads):
                if pattern == Full():
                    continue
                frames = stats.stripe_frames[l, h].tolist()
                match = [c for c, cand in enumerate(stats.candidates) if cand.pattern(frames) == pattern]
                out[r, l, h] = worst[l, h, match[0]] if match else math.nan
    return out


def solve_warnings(plan: Plan, stats: Statistics, epsilon: float) -> list[str]:
    """Sentences for the log and the node's text; empty when all is well."""
    warnings = []
    counts = mode_counts(plan)
    total, skipped = sum(counts.values()), counts.get("skip", 0)
    if skipped > SKIP_SHARE_WARNING * total:
        warnings.append(f"{skipped} of {total} head entries ({100 * skipped / total:.0f}%) are skipped (their "
                        f"attention output dropped): more than a quarter; expect a visible change. A lower "
                        f"target_speedup keeps more heads.")
    errors = predicted_errors(plan, stats)
    worst = float(errors.nan_to_num(0.0).max()) if errors.numel() else 0.0
    if worst > epsilon:
        r, l, h = (int(i) for i in torch.nonzero(errors.nan_to_num(0.0) == worst)[0])
        where = f"layer {l}, head {h}" + (f", step range {r + 1}" if len(plan.step_ranges) > 1 else "")
        over = int((errors.nan_to_num(0.0) > epsilon).sum())
        warnings.append(f"{over} head entries are predicted above epsilon {epsilon:g}; the worst, {where}, at "
                        f"{worst:.3g} (1 = 1% of the layer's output power).")
    return warnings

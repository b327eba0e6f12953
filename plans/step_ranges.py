"""Step ranges: when patterns shift with the noise level, consecutive probed
steps are grouped into ranges and each range gets its own patterns.

A range is a run of consecutive probes i..j (a span). It serves the steps
nearer to its probes than to any other range's: the boundary between two
ranges lies half-way between the last probe of one and the first probe of
the next. A span's errors are the worst of its probes, so every probed step
stays within the error budget of the patterns that serve it.

Which spans: for a given number of ranges, the partition of the probes
that minimises the sum of the spans' values (dynamic programming over
split points, exact). How many: the fewest whose objective is within a
margin of the best, so a range is added only where it pays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .format import PlanError

AUTO = "auto"
MAX_AUTO_RANGES = 4
CHOICES = (AUTO,) + tuple(str(n) for n in range(1, MAX_AUTO_RANGES + 1))  # what the nodes offer


@dataclass(frozen=True)
class ProbeSpans:
    """Every span i..j of consecutive probes, with what the search needs."""
    spans: tuple[tuple[int, int], ...]  # inclusive probe indices
    errors: torch.Tensor                # float64 [N, L, H, C]: worst probe of each span
    weights: torch.Tensor               # float64 [N]: share of the sparse steps each span serves
    starts: tuple[float, ...]           # the step fraction where each span begins (0 for the first probe)

    def index(self, span: tuple[int, int]) -> int | None:
        """Where a span is listed, None if it is not (older statistics list one)."""
        return self.spans.index(span) if span in self.spans else None


def probe_spans(errors_per_probe: torch.Tensor, probe_steps: list[int], total_steps: int | None,
                first_sparse_step: int) -> ProbeSpans:
    """errors_per_probe: [P, L, H, C]. Without total_steps (older statistics)
    the boundaries cannot be placed: only the span of every probe."""
    P = errors_per_probe.shape[0]
    if not total_steps:
        return ProbeSpans(((0, P - 1),), errors_per_probe.amax(0, keepdim=True), torch.ones(1, dtype=torch.float64),
                          (0.0,))
    # Boundary b: steps s >= bounds[b] are nearer probe b than probe b - 1.
    bounds = [-math.inf] + [(probe_steps[b - 1] + probe_steps[b]) / 2 for b in range(1, P)] + [math.inf]
    sparse_steps = range(first_sparse_step, total_steps)
    spans, errors, weights, starts = [], [], [], []
    for i in range(P):
        worst = errors_per_probe[i]
        for j in range(i, P):
            worst = torch.maximum(worst, errors_per_probe[j])
            spans.append((i, j))
            errors.append(worst)
            served = _count_between(sparse_steps, bounds[i], bounds[j + 1])
            # No sparse step at all (every step in the warm-up): weigh probes alike.
            weights.append(served / len(sparse_steps) if sparse_steps else (j - i + 1) / P)
            starts.append(0.0 if i == 0 else bounds[i] / total_steps)
    return ProbeSpans(tuple(spans), torch.stack(errors), torch.tensor(weights, dtype=torch.float64), tuple(starts))


def _count_between(steps: range, low: float, high: float) -> int:
    """How many steps s satisfy low <= s < high, without walking them
    (total_steps comes from a file: up to 10,000)."""
    first = steps.start if low == -math.inf else max(steps.start, math.ceil(low))
    stop = steps.stop if high == math.inf else min(steps.stop, math.ceil(high))
    return max(0, stop - first)


def best_partition(value: Callable[[int], float], spans: ProbeSpans, probes: int, ranges: int) -> list[int]:
    """Span indices of the partition of probes 0..P-1 into exactly `ranges`
    runs that minimises the sum of value(span index)."""
    # best[r][j]: (total, span indices) covering probes 0..j-1 with r runs.
    best: list[dict[int, tuple[float, list[int]]]] = [{0: (0.0, [])}]
    for r in range(1, ranges + 1):
        row = {}
        for j in range(r, probes + 1):
            options = []
            for i in range(r - 1, j):
                n = spans.index((i, j - 1))
                if i in best[r - 1] and n is not None:
                    total, chosen = best[r - 1][i]
                    options.append((total + value(n), chosen + [n]))
            if options:
                row[j] = min(options, key=lambda option: option[0])
        best.append(row)
    return best[ranges][probes][1]


def range_counts(requested, probes: int, has_boundaries: bool) -> list[int]:
    """The numbers of ranges to try: for auto, every one up to the probes (at
    most MAX_AUTO_RANGES: beyond, a range holds too few probes to trust)."""
    if requested == AUTO or requested is None:
        return list(range(1, min(probes, MAX_AUTO_RANGES) + 1)) if has_boundaries else [1]
    if isinstance(requested, str) and requested.isdigit():
        requested = int(requested)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise PlanError(f"step ranges must be 'auto' or a whole number >= 1, got {requested!r}")
    if requested > probes:
        raise PlanError(f"{requested} step ranges need at least {requested} probed steps; the statistics have {probes}")
    if requested > 1 and not has_boundaries:
        raise PlanError("these statistics do not record the number of sampling steps (calibrated by an older "
                        "Sparse-vDiT), so step ranges cannot be placed: re-calibrate, or use one range")
    return [requested]


def fewest_that_pay(objectives: dict[int, float], margin: float) -> int:
    """The fewest ranges whose objective is within `margin` of the best."""
    best = min(objectives.values())
    return min(r for r, objective in objectives.items() if objective <= best + margin)

"""The search: from calibration statistics to a plan, in well under a second.

Error normalisation: a head's error for a candidate is the mean squared
difference between the candidate's output and dense attention, divided by
ERROR_UNIT times the mean square of the layer's dense output (all heads),
taking the worst probed step. So epsilon = 1 lets a head's error power be 1%
of the layer's output power (about 10% RMS), and a head whose output is
negligible can be skipped at almost no error.

Sparsity S_i is the share of a full head's time a candidate saves, from the
measured time of its kernel on this GPU at this geometry (the block share on
CPU). The method's rule, per layer and head:

    Judger = AND over i of [ E_i + lambda * (1 - S_i) > epsilon ]
    Judger -> full, else argmin_i { E_i + lambda * (1 - S_i) }

over the candidates with S_i > 0 (one no faster than full offers nothing).

For a target attention speedup instead, each head takes the candidate that
minimises E_i + mu * cost_i (full included, at error 0) and mu is bisected
until the predicted speedup is met: the least total error for that budget
among the solutions this Lagrangian reaches.

Where patterns shift with the noise level, the probed steps are split into
step ranges, each with its own patterns (step_ranges.py); costs and errors
are then weighted by the share of sparse steps each range serves.
"""
from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

import torch

from .. import __version__
from ..patterns import Full, LayerPattern
from .format import DenseSchedule, Plan, PlanError, StepRange
from .statistics import Statistics
from .step_ranges import ProbeSpans, best_partition, fewest_that_pay, probe_spans, range_counts

ERROR_UNIT = 0.01
FULL = -1  # choice index meaning "keep the head dense"
# A further step range must save this share of dense attention time (judge
# mode) or cut the weighted error by this share of the one-range error
# (target mode); below that, fewer ranges serve as well.
COST_MARGIN = 0.02
ERROR_MARGIN = 0.05


def errors_per_probe(stats: Statistics) -> torch.Tensor:
    """float64 [P, L, H, C]: in units of ERROR_UNIT x the layer's output power at that step."""
    scale = (stats.power.double() * ERROR_UNIT).clamp_min(1e-30)[:, :, None, None]
    return stats.sq_err.double() / scale


def normalised_errors(stats: Statistics) -> torch.Tensor:
    """float64 [L, H, C]: the worst probed step decides."""
    return errors_per_probe(stats).amax(dim=0)


def sparsity(stats: Statistics) -> torch.Tensor:
    """float64 [C]: 1 - cost_i / cost_full (skip costs nothing: 1)."""
    cost = stats.cost.double()
    return 1.0 - cost[:-1] / cost[-1]


def judge(errors: torch.Tensor, sparsity_: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """int64 [L, H]: candidate index per head, FULL where every candidate fails."""
    if lam < 0 or eps < 0:
        raise PlanError(f"lambda and epsilon must be >= 0, got {lam} and {eps}")
    score = errors + lam * (1.0 - sparsity_)
    # A candidate no cheaper than full on this GPU (tiny sizes, launch-bound)
    # has nothing to offer over full: never pick it.
    score = torch.where(sparsity_ > 0, score, torch.full_like(score, math.inf))
    best_score, best = score.min(dim=-1)
    return torch.where(best_score > eps, torch.full_like(best, FULL), best)


def probe_agreement(stats: Statistics, lam: float, eps: float) -> dict:
    """Do patterns shift with the noise level? Each probed step judged on its
    own: the share of heads given the same choice at every probed step, and
    per step the share that matches the plan (worst step decides). Near 1:
    one plan for all sparse steps is what the statistics support."""
    sparsity_ = sparsity(stats)
    overall = judge(normalised_errors(stats), sparsity_, lam, eps)
    per_probe = torch.stack([judge(e, sparsity_, lam, eps) for e in errors_per_probe(stats)])
    return {"probe_steps": stats.probe_steps.tolist(),
            "same_at_every_probe": round(float((per_probe == per_probe[0]).all(0).double().mean()), 4),
            "matches_plan_per_probe": [round(float((c == overall).double().mean()), 4) for c in per_probe]}


def choice_cost(stats: Statistics, choice: torch.Tensor) -> torch.Tensor:
    """Per-head cost of a choice (full for FULL)."""
    cost = stats.cost.double()
    return torch.where(choice == FULL, cost[-1], cost[choice.clamp_min(0)])


def predicted_speedup(stats: Statistics, choice: torch.Tensor) -> float:
    total = float(choice_cost(stats, choice).sum())
    return float(stats.cost[-1]) * choice.numel() / max(total, 1e-12)


def relative_cost(stats: Statistics, choice: torch.Tensor) -> torch.Tensor:
    """Attention time of a choice ([..., L, H]) as a share of all heads full: [...]."""
    return choice_cost(stats, choice).sum((-2, -1)) / (float(stats.cost[-1]) * choice.shape[-2] * choice.shape[-1])


def _as_choice(index: torch.Tensor, candidates: int) -> torch.Tensor:
    """Candidate indices where index `candidates` means full."""
    return torch.where(index == candidates, torch.full_like(index, FULL), index)


def _spans(stats: Statistics, warmup: float) -> ProbeSpans:
    total = stats.info.get("total_steps")
    first_sparse = DenseSchedule(warmup).first_sparse_step(total) if total else 0
    return probe_spans(errors_per_probe(stats), stats.probe_steps.tolist(), total, first_sparse)


@dataclass
class Solution:
    """Chosen spans of probes (in order), and per span of all spans its
    choice ([N, L, H], FULL = dense) and relative cost ([N])."""
    spans: ProbeSpans
    chosen: list[int]
    choices: torch.Tensor
    span_cost: torch.Tensor

    def cost(self) -> float:
        """Predicted attention time over the sparse steps, as a share of dense."""
        return float(sum(self.spans.weights[n] * self.span_cost[n] for n in self.chosen))


def _judge_ranges(stats: Statistics, spans: ProbeSpans, lam: float, eps: float, counts: list[int]) -> Solution:
    choices = judge(spans.errors, sparsity(stats), lam, eps)
    span_cost = relative_cost(stats, choices)
    values = (spans.weights * span_cost).tolist()
    solutions = {count: Solution(spans, best_partition(values.__getitem__, spans, len(stats.probe_steps), count),
                                 choices, span_cost) for count in counts}
    costs = {count: solution.cost() for count, solution in solutions.items()}
    return solutions[fewest_that_pay(costs, COST_MARGIN)]


def _speedup_ranges(stats: Statistics, spans: ProbeSpans, target: float, counts: list[int],
                    iterations: int = 50) -> Solution:
    """Each count of ranges: the Lagrangian min of weighted error + mu x
    weighted cost over spans and choices, with mu bisected to the budget."""
    if target < 1:
        raise PlanError(f"target speedup must be >= 1, got {target}")
    C = len(stats.candidates)
    cost = stats.cost.double()
    errors_all = torch.cat([spans.errors, torch.zeros(*spans.errors.shape[:-1], 1, dtype=torch.float64)], -1)
    probes = len(stats.probe_steps)

    def pick(mu: float, count: int) -> tuple[Solution, torch.Tensor]:
        best, index = (errors_all + mu * cost).min(-1)
        values = (best.sum((1, 2)) * spans.weights).tolist()
        chosen = best_partition(values.__getitem__, spans, probes, count)
        choices = _as_choice(index, C)
        return Solution(spans, chosen, choices, relative_cost(stats, choices)), index

    def error(solution: Solution, index: torch.Tensor) -> float:
        """Each probed step's error with the patterns that serve it, weighted
        by its share of the steps: comparable across counts of ranges (a
        span's worst probe would overstate one long range)."""
        total = 0.0
        for n in solution.chosen:
            first, last = spans.spans[n]
            for probe in range(first, last + 1):
                alone = spans.index((probe, probe))
                alone = n if alone is None else alone  # older statistics: one span only
                total += float(spans.weights[alone] * errors_all[alone].gather(-1, index[n][..., None]).sum())
        return total

    budget = 1.0 / target
    cheapest = pick(1e30, 1)[0]
    if cheapest.cost() > budget * (1 + 1e-9):
        raise PlanError(f"a {target:.2f}x attention speedup is out of reach for these candidates "
                        f"(at most {1 / cheapest.cost():.2f}x)")
    solutions, errors = {}, {}
    for count in counts:
        low, high = 0.0, 1.0
        while pick(high, count)[0].cost() > budget and high < 1e300:  # bounded: errors come from a file
            high *= 2
        for _ in range(iterations):
            mid = (low + high) / 2
            if pick(mid, count)[0].cost() > budget:
                low = mid
            else:
                high = mid
        solutions[count], index = pick(high, count)
        errors[count] = error(solutions[count], index)
    return solutions[fewest_that_pay(errors, ERROR_MARGIN * errors[min(errors)])]


def solve_for_speedup(stats: Statistics, target: float) -> torch.Tensor:
    """One choice for every sparse step: [L, H]."""
    solution = _speedup_ranges(stats, _spans(stats, 0.0), target, [1])
    return solution.choices[solution.chosen[0]]


def _layers_of(stats: Statistics, choice: torch.Tensor) -> tuple[LayerPattern, ...]:
    layers = []
    for layer in range(choice.shape[0]):
        heads = []
        for head in range(choice.shape[1]):
            c = int(choice[layer, head])
            heads.append(Full() if c == FULL else stats.candidates[c].pattern(stats.stripe_frames[layer, head].tolist()))
        layers.append(LayerPattern(tuple(heads)))
    return tuple(layers)


def plan_from_solution(stats: Statistics, solution: Solution, name: str, warmup: float, settings: dict) -> Plan:
    spans, probe_steps = solution.spans, stats.probe_steps.tolist()
    ranges = [StepRange(spans.starts[n], _layers_of(stats, solution.choices[n])) for n in solution.chosen]
    described = [{"from_step_fraction": round(spans.starts[n], 6),
                  "probe_steps": probe_steps[spans.spans[n][0]: spans.spans[n][1] + 1],
                  "share_of_sparse_steps": round(float(spans.weights[n]), 4),
                  "predicted_attention_speedup": round(1 / max(float(solution.span_cost[n]), 1e-12), 3)}
                 for n in solution.chosen]
    provenance = {
        "kind": "calibrated", "geometry": stats.geometry.to_dict(), **settings,
        "error_unit": ERROR_UNIT, "cost_source": stats.cost_source,
        "predicted_attention_speedup": round(1 / max(solution.cost(), 1e-12), 3),
        "probe_steps": probe_steps, "step_ranges": described, "calibration": stats.info,
        "software": f"sparse-vdit {__version__}", "date": stats.info.get("date") or datetime.date.today().isoformat(),
    }
    return Plan(name, stats.model, ranges[0].layers, DenseSchedule(warmup), provenance, tuple(ranges[1:]))


def solve_plan(stats: Statistics, lam: float = 0.5, eps: float = 1.0, target_speedup: float = 0.0,
               name: str = "solved plan", warmup: float | None = None, step_ranges="auto", **extra) -> Plan:
    """A plan from statistics: by lambda/epsilon, or for a target attention
    speedup when target_speedup > 0; with `step_ranges` ranges of steps
    ("auto": as many as pay, see step_ranges.py)."""
    warmup = float(stats.info.get("warmup_fraction", 0.2)) if warmup is None else warmup
    spans = _spans(stats, warmup)
    counts = range_counts(step_ranges, len(stats.probe_steps), len(spans.spans) > 1)
    if target_speedup and target_speedup > 0:
        solution = _speedup_ranges(stats, spans, target_speedup, counts)
        settings = {"target_speedup": target_speedup}
    else:
        solution = _judge_ranges(stats, spans, lam, eps, counts)
        settings = {"lambda": lam, "epsilon": eps, "probe_agreement": probe_agreement(stats, lam, eps)}
    return plan_from_solution(stats, solution, name, warmup, {**settings, "step_ranges_asked": str(step_ranges), **extra})

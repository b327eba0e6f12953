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

For a target attention speedup instead, each head takes the candidate that
minimises E_i + mu * cost_i (full included, at error 0) and mu is bisected
until the predicted speedup is met: the least total error for that budget
among the solutions this Lagrangian reaches.
"""
from __future__ import annotations

import datetime

import torch

from .. import __version__
from ..patterns import Full, LayerPattern
from .format import DenseSchedule, Plan, PlanError
from .statistics import Statistics

ERROR_UNIT = 0.01
FULL = -1  # choice index meaning "keep the head dense"


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


def solve_for_speedup(stats: Statistics, target: float, iterations: int = 60) -> torch.Tensor:
    if target < 1:
        raise PlanError(f"target speedup must be >= 1, got {target}")
    errors = normalised_errors(stats)
    cost = stats.cost.double()
    errors_all = torch.cat([errors, torch.zeros(*errors.shape[:2], 1, dtype=errors.dtype)], -1)  # last = full

    def pick(mu: float) -> torch.Tensor:
        idx = (errors_all + mu * cost).argmin(-1)
        return torch.where(idx == len(stats.candidates), torch.full_like(idx, FULL), idx)

    budget = float(cost[-1]) * errors.shape[0] * errors.shape[1] / target
    cheapest = pick(1e30)
    if float(choice_cost(stats, cheapest).sum()) > budget * (1 + 1e-9):
        raise PlanError(f"a {target:.2f}x attention speedup is out of reach for these candidates "
                        f"(at most {predicted_speedup(stats, cheapest):.2f}x)")
    low, high = 0.0, 1.0
    while float(choice_cost(stats, pick(high)).sum()) > budget:
        high *= 2
    for _ in range(iterations):
        mid = (low + high) / 2
        if float(choice_cost(stats, pick(mid)).sum()) > budget:
            low = mid
        else:
            high = mid
    return pick(high)


def plan_from_choice(stats: Statistics, choice: torch.Tensor, name: str, warmup: float, settings: dict) -> Plan:
    layers = []
    for layer in range(choice.shape[0]):
        heads = []
        for head in range(choice.shape[1]):
            c = int(choice[layer, head])
            heads.append(Full() if c == FULL else stats.candidates[c].pattern(stats.stripe_frames[layer, head].tolist()))
        layers.append(LayerPattern(tuple(heads)))
    provenance = {
        "kind": "calibrated", "geometry": stats.geometry.to_dict(), **settings,
        "error_unit": ERROR_UNIT, "cost_source": stats.cost_source,
        "predicted_attention_speedup": round(predicted_speedup(stats, choice), 3),
        "probe_steps": stats.probe_steps.tolist(), "calibration": stats.info,
        "software": f"sparse-vdit {__version__}", "date": stats.info.get("date") or datetime.date.today().isoformat(),
    }
    return Plan(name, stats.model, tuple(layers), DenseSchedule(warmup), provenance)


def solve_plan(stats: Statistics, lam: float = 0.5, eps: float = 1.0, target_speedup: float = 0.0,
               name: str = "solved plan", warmup: float | None = None, **extra) -> Plan:
    """A plan from statistics: by lambda/epsilon, or for a target attention
    speedup when target_speedup > 0."""
    warmup = float(stats.info.get("warmup_fraction", 0.2)) if warmup is None else warmup
    if target_speedup and target_speedup > 0:
        choice = solve_for_speedup(stats, target_speedup)
        settings = {"target_speedup": target_speedup}
    else:
        choice = judge(normalised_errors(stats), sparsity(stats), lam, eps)
        settings = {"lambda": lam, "epsilon": eps, "probe_agreement": probe_agreement(stats, lam, eps)}
    return plan_from_choice(stats, choice, name, warmup, {**settings, **extra})

"""A calibration run on a ComfyUI model: sample dense while scoring every
candidate at the probed steps, then measure costs, solve, and write the
statistics and the plan (atomically, and only once everything succeeded,
so an interrupted run leaves no file behind)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..kernels.dispatch import PRECISIONS
from ..plans.calibrator import Calibrator, parse_indices
from ..plans.candidates import MENUS, for_precision
from ..plans.cost import candidate_costs
from ..plans.format import ModelShape, Plan, PlanError
from ..plans.search import solve_plan
from ..plans.statistics import Statistics, save_plan_with_statistics
from ..plans.validation import check_plan_name  # noqa: F401  (nodes import it from here too)
from ..plans.step_ranges import range_counts
from .calibration_hook import CalibrationHook
from .install import install_hook, require_model_info

log = logging.getLogger("sparse_vdit")
STATS_SUFFIX = ".stats.safetensors"


@dataclass
class CalibrationResult:
    plan: Plan
    statistics: Statistics
    plan_path: str
    statistics_path: str
    samples: object  # whatever the sample function returned (the dense latent)
    seconds: float


def calibrate(model_patcher, sample: Callable[[object], object], *, plan_name: str, folder: str,
              lam: float = 0.5, eps: float = 1.0, probe_steps: int = 3, query_fraction: float = 0.1,
              menu: str = "standard", warmup: float = 0.2, step_ranges="auto", settings: dict | None = None,
              check_interrupt: Callable[[], None] = lambda: None, cost_cache: str | None = None,
              probe_at: str = "", probe_layers: str = "all", steps: int | None = None,
              precision: str = "bf16") -> CalibrationResult:
    """sample(model) runs the dense sampling on the given (hooked) model.
    probe_at: '' (probe_steps steps spread after the warm-up) or the steps to
    probe ('4, 10, 16'); probe_layers: 'all' or the layers ('0-9, 20');
    steps: the run's sampling steps, when known (checks probe_at early)."""
    info = require_model_info(model_patcher)
    name = check_plan_name(plan_name)
    if menu not in MENUS:
        raise PlanError(f"unknown candidate menu {menu!r}; known: {', '.join(MENUS)}")
    if precision not in PRECISIONS:
        raise PlanError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if lam < 0 or eps < 0 or not 0 <= warmup < 1:
        raise PlanError("lambda and epsilon must be >= 0 and the warm-up in [0, 1)")
    steps_at = parse_indices(probe_at, steps, "probe steps")
    layers = parse_indices(probe_layers, info.layers, "probed layers")
    range_counts(step_ranges, len(steps_at) if steps_at else probe_steps, True)  # a bad count fails before sampling
    candidates = for_precision(MENUS[menu], precision)
    if candidates != MENUS[menu]:
        log.info("Sparse-vDiT: at %s precision, routed heads are calibrated without the pooled tail "
                 "(the 8-bit kernel has none).", precision)
    shape = ModelShape(info.family, info.layers, info.heads, info.head_dim)
    calibrator = Calibrator(shape, candidates, probe_steps, query_fraction, warmup,
                            info={"menu": menu, "precision": precision, "lambda": lam, "epsilon": eps, **(settings or {})},
                            check_interrupt=check_interrupt,
                            probe_at=steps_at, layers=layers)
    hook = CalibrationHook(info, calibrator)
    start = time.perf_counter()
    samples = sample(install_hook(model_patcher, hook))
    if calibrator.geometry is None:
        raise PlanError("the calibration run reached no video self-attention call: is this a Wan model?")
    device = _model_device(model_patcher)
    cost, source = candidate_costs(calibrator.candidates, calibrator.geometry, info.heads, info.head_dim, device,
                                   cache_path=cost_cache, check_interrupt=check_interrupt, precision=precision)
    stats = calibrator.statistics(cost, source)
    if str(step_ranges).isdigit() and int(step_ranges) > len(stats.probe_steps):
        log.info("Sparse-vDiT: %s step ranges asked, but only %d steps were probed (a short run): using %d.",
                 step_ranges, len(stats.probe_steps), len(stats.probe_steps))
        step_ranges = len(stats.probe_steps)
    plan = solve_plan(stats, lam, eps, name=name, warmup=warmup, step_ranges=step_ranges, statistics=name + STATS_SUFFIX)
    check_interrupt()
    plan_path = os.path.join(folder, name + ".json")
    stats_path = os.path.join(folder, name + STATS_SUFFIX)
    save_plan_with_statistics(plan, plan_path, stats, stats_path)
    seconds = time.perf_counter() - start
    log.info("Sparse-vDiT: calibrated '%s' in %.1f s (%s, probe steps %s); predicted attention speedup %.2fx; "
             "%.0f%% of heads get the same pattern at every probed step; %s; wrote %s and %s.", name, seconds,
             calibrator.geometry.describe(), calibrator.probe_steps, plan.provenance["predicted_attention_speedup"],
             100 * plan.provenance["probe_agreement"]["same_at_every_probe"], plan.describe_step_ranges(),
             plan_path, stats_path)
    return CalibrationResult(plan, stats, plan_path, stats_path, samples, seconds)


def _model_device(model_patcher) -> torch.device:
    device = getattr(model_patcher, "load_device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")

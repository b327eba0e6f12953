"""The Patch node's "auto" plan: one plan per model and latent grid, made
by the first run that needs it.

On a run whose grid has a saved auto plan, the hook serves it like any plan.
On a run whose grid has none, it calibrates instead: the run stays dense
(its output is a normal dense video) while the candidates are scored, and
when sampling ends the plan and its statistics are solved and saved, so the
next run with that model and grid is sparse. The log says which happened.
Plans are keyed by model shape, a fingerprint of its weights (the two
experts of Wan2.2 differ) and the exact grid.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re

import torch

from ..patterns import Geometry
from ..plans.calibrator import Calibrator
from ..plans.candidates import MENUS
from ..plans.cost import candidate_costs
from ..plans.format import DenseSchedule, ModelShape, Plan, PlanError, load_plan
from ..plans.search import solve_plan
from ..plans.statistics import save_plan_with_statistics
from .calibrate import STATS_SUFFIX
from .calibration_hook import observe
from .forward_info import ForwardInfo
from .install import WRAPPER_KEY, check_warmup, install_hook, schedule_for, unsupported
from .model_info import ModelInfo, describe_model
from .sparse_patch import SparsePatch

log = logging.getLogger("sparse_vdit")
AUTO = "auto"


def weights_fingerprint(diffusion_model) -> str:
    """8 hex digits from a slice of the first and last blocks' weights."""
    digest = hashlib.sha256()
    params = [p for name, p in diffusion_model.named_parameters() if name.endswith("weight")]
    for param in (params[:3] + params[-3:]) if params else []:
        digest.update(param.detach().flatten()[:4096].double().cpu().numpy().tobytes())
    return digest.hexdigest()[:8]


def auto_plan_name(model: ModelInfo, fingerprint: str, geometry: Geometry) -> str:
    family = re.sub(r"[^A-Za-z0-9.]+", "-", model.family)
    extra = f"+{geometry.prefix}+{geometry.suffix}" if geometry.prefix or geometry.suffix else ""
    return (f"auto_{family}_{model.layers}x{model.heads}x{model.head_dim}_{fingerprint}_"
            f"{geometry.frames}x{geometry.rows}x{geometry.cols}{extra}")


def _interrupt_check():
    import comfy.model_management

    return comfy.model_management.throw_exception_if_processing_interrupted


class AutoPatch(SparsePatch):
    def __init__(self, model: ModelInfo, folder: str, fingerprint: str, dense_warmup: float | None = None,
                 backend: str = "auto", lam: float = 0.5, eps: float = 1.0, probe_steps: int = 3,
                 query_fraction: float = 0.1, menu: str = "standard", previous=None, precision: str = "bf16"):
        super().__init__(None, model, DenseSchedule(), previous, backend, precision)
        self.folder, self.fingerprint, self.dense_warmup = folder, fingerprint, dense_warmup
        self.search = dict(lam=lam, eps=eps, probe_steps=probe_steps, query_fraction=query_fraction, menu=menu)
        self.plans: dict[Geometry, Plan | None] = {}
        self.calibrators: dict[Geometry, Calibrator] = {}

    @property
    def warmup(self) -> float:
        return 0.2 if self.dense_warmup is None or self.dense_warmup < 0 else float(self.dense_warmup)

    def plan_path(self, geometry: Geometry) -> str:
        return os.path.join(self.folder, auto_plan_name(self.model, self.fingerprint, geometry) + ".json")

    def plan_for(self, geometry: Geometry) -> Plan | None:
        if geometry not in self.plans:
            path = self.plan_path(geometry)
            plan = None
            if os.path.exists(path):
                try:
                    plan = load_plan(path)
                    plan.check_model(self.model.layers, self.model.heads, self.model.head_dim)
                    log.info("Sparse-vDiT auto: using the saved plan %s for %s.", os.path.basename(path), geometry.describe())
                except PlanError as error:
                    log.warning("Sparse-vDiT auto: %s is unusable (%s); calibrating a new one.", path, error)
                    plan = None
            self.plans[geometry] = plan
        return self.plans[geometry]

    def use_plan_for(self, geometry: Geometry) -> Plan | None:
        """Serve the saved plan of this grid from now on, if there is one."""
        plan = self.plan_for(geometry)
        if plan is not None:
            self.plan, self.schedule = plan, schedule_for(plan, self.dense_warmup)
        return plan

    def handle(self, func, call: dict, layer: int, info: ForwardInfo, args, kwargs):
        if self.use_plan_for(info.geometry) is not None:
            return super().handle(func, call, layer, info, args, kwargs)
        out = self.chain(func, args, kwargs, info)
        calibrator = self.calibrators.get(info.geometry)
        if calibrator is None:
            shape = ModelShape(self.model.family, self.model.layers, self.model.heads, self.model.head_dim)
            calibrator = Calibrator(shape, MENUS[self.search["menu"]], self.search["probe_steps"],
                                    self.search["query_fraction"], self.warmup,
                                    info={"mode": "auto", "lambda": self.search["lam"], "epsilon": self.search["eps"]},
                                    check_interrupt=_interrupt_check())
            self.calibrators[info.geometry] = calibrator
            log.info("Sparse-vDiT auto: no plan yet for %s; this run stays dense and calibrates one.",
                     info.geometry.describe())
        observe(self, calibrator, call, layer, info)
        return out

    def wrap_sample(self, executor, *args, **kwargs):
        """Around a whole sampling run: start calibration afresh, and save
        what it found only when sampling succeeded."""
        self.calibrators.clear()
        out = executor(*args, **kwargs)
        device = getattr(getattr(executor.class_obj, "model_patcher", None), "load_device", torch.device("cpu"))
        for geometry, calibrator in list(self.calibrators.items()):
            self.finish(geometry, calibrator, device)
        self.calibrators.clear()
        return out

    def finish(self, geometry: Geometry, calibrator: Calibrator, device) -> None:
        if calibrator.missing():
            log.warning("Sparse-vDiT auto: this run did not reach every probed step and layer (%d missing); "
                        "no plan saved for %s.", len(calibrator.missing()), geometry.describe())
            return
        name = auto_plan_name(self.model, self.fingerprint, geometry)
        cost, source = candidate_costs(calibrator.candidates, geometry, self.model.heads, self.model.head_dim,
                                       torch.device(device), check_interrupt=_interrupt_check(),
                                       precision=self.precision)
        stats = calibrator.statistics(cost, source)
        plan = solve_plan(stats, self.search["lam"], self.search["eps"], name=name, warmup=self.warmup,
                          statistics=name + STATS_SUFFIX)
        save_plan_with_statistics(plan, self.plan_path(geometry), stats, os.path.join(self.folder, name + STATS_SUFFIX))
        self.plans[geometry] = plan
        log.info("Sparse-vDiT auto: calibrated and saved %s.json (predicted attention speedup %.2fx, %s); "
                 "the next run with this model and grid uses it.", name, plan.provenance["predicted_attention_speedup"],
                 plan.describe_step_ranges())


def apply_auto(model_patcher, folder: str, dense_warmup: float | None = None, backend: str = "auto",
               precision: str = "bf16"):
    """A clone whose video self-attention follows the auto plan for its grid
    (calibrated by the first run that needs one: see auto_patch.py)."""
    import comfy.patcher_extension as extension

    info = describe_model(model_patcher)
    if info is None:
        return unsupported(model_patcher)
    check_warmup(dense_warmup)
    fingerprint = weights_fingerprint(model_patcher.model.diffusion_model)
    hook = AutoPatch(info, folder, fingerprint, dense_warmup, backend, precision=precision)
    patched = install_hook(model_patcher, hook)
    patched.remove_wrappers_with_key(extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, hook.wrap_sample)
    log.info("Sparse-vDiT: auto plan on %s (weights %s).", info.describe(), fingerprint)
    return patched

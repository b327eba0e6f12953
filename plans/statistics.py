"""Calibration statistics: everything the search needs, saved so a plan can
be re-solved for another lambda / epsilon / speedup without sampling.

Stored as safetensors (atomic write): tensors plus JSON metadata.
  sq_err        float64 [P, L, H, C]  raw mean squared error per probe step, layer, head, candidate
  power         float64 [P, L]        mean square of the dense output (the error's scale)
  cost          float64 [C + 1]       time per head of each candidate, then of full (ms, or block share on CPU)
  stripe_frames int64   [L, H, K]     key frames of stripe candidates, by attention mass
  frame_mass    float32 [L, H, F]     attention mass per key frame (first probe step)
  thumbnails    float16 [L, H, 32, 64] coarse attention maps (first probe step)
  probe_steps   int64   [P]           which sampling steps were probed
metadata: candidates, model shape, geometry, cost source, sampling settings, software, date.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..patterns import Geometry
from . import validation as check
from .atomic import atomic_write, atomic_write_pair, text_writer
from .candidates import Candidate
from .format import ModelShape, Plan, PlanError, checked_text, model_shape_from_dict

STATS_FORMAT = "sparse-vdit-statistics"
STATS_VERSION = 1


@dataclass
class Statistics:
    model: ModelShape
    geometry: Geometry
    candidates: tuple[Candidate, ...]
    sq_err: torch.Tensor
    power: torch.Tensor
    cost: torch.Tensor
    stripe_frames: torch.Tensor
    frame_mass: torch.Tensor
    thumbnails: torch.Tensor
    probe_steps: torch.Tensor
    cost_source: str = "block-count"
    info: dict = field(default_factory=dict)  # sampling settings, software, date, device

    def check(self) -> None:
        P, L, H, C = self.sq_err.shape
        if (L, H) != (self.model.layers, self.model.heads) or C != len(self.candidates):
            raise PlanError(f"statistics shape {tuple(self.sq_err.shape)} does not match "
                            f"{self.model.describe()} with {len(self.candidates)} candidates")
        if self.power.shape != (P, L) or self.cost.shape != (C + 1,) or self.probe_steps.shape != (P,):
            raise PlanError("statistics tensors have inconsistent shapes")


def with_modes(stats: Statistics, modes) -> Statistics:
    """The same statistics with only the candidates of these modes (full
    stays the fallback), e.g. the paper's menu, to solve with and without
    the newer modes from one calibration."""
    keep = [i for i, c in enumerate(stats.candidates) if c.mode in modes]
    if not keep:
        raise ValueError(f"no candidate of modes {sorted(modes)} in these statistics")
    index = torch.tensor(keep, dtype=torch.long)
    cost_index = torch.cat([index, torch.tensor([len(stats.candidates)])])  # the last cost is full's
    out = Statistics(stats.model, stats.geometry, tuple(stats.candidates[i] for i in keep),
                     stats.sq_err.index_select(-1, index), stats.power, stats.cost.index_select(0, cost_index),
                     stats.stripe_frames, stats.frame_mass, stats.thumbnails, stats.probe_steps, stats.cost_source,
                     {**stats.info, "modes": sorted(modes)})
    out.check()
    return out


def _writer(stats: Statistics):
    from safetensors.torch import save_file

    stats.check()
    tensors = {"sq_err": stats.sq_err, "power": stats.power, "cost": stats.cost, "stripe_frames": stats.stripe_frames,
               "frame_mass": stats.frame_mass, "thumbnails": stats.thumbnails, "probe_steps": stats.probe_steps}
    metadata = {
        "format": STATS_FORMAT, "version": str(STATS_VERSION),
        "model": json.dumps(stats.model.__dict__), "geometry": json.dumps(stats.geometry.to_dict()),
        "candidates": json.dumps([c.to_dict() for c in stats.candidates]),
        "cost_source": stats.cost_source, "info": json.dumps(stats.info),
    }
    return lambda tmp: save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata)


def save_statistics(stats: Statistics, path: str) -> None:
    atomic_write(path, _writer(stats))


def save_plan_with_statistics(plan: Plan, plan_path: str, stats: Statistics, stats_path: str) -> None:
    """A calibrated plan and the statistics it was solved from, written as a
    pair or not at all (no statistics file without its plan)."""
    atomic_write_pair([(stats_path, _writer(stats)), (plan_path, text_writer(checked_text(plan, plan_path)))])


def load_statistics(path: str) -> Statistics:
    """Every tensor and field checked (validation.py) before anything uses
    them; any problem is a PlanError naming the file and the field."""
    from safetensors import safe_open

    check.file_size_limit(path, check.MAX_STATS_BYTES, "statistics file")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # missing, truncated, not safetensors, an unknown dtype
        raise PlanError(f"cannot read statistics file {path}: {check.short(str(error), 200)}") from None
    if metadata.get("format") != STATS_FORMAT:
        raise PlanError(f"{path}: not a Sparse-vDiT statistics file")
    if metadata.get("version") != str(STATS_VERSION):
        raise PlanError(f"{path}: statistics version {check.short(metadata.get('version'))} is not supported "
                        f"(this pack reads {STATS_VERSION})")
    stats = Statistics(**check.statistics_parts(metadata, tensors, path, model_shape_from_dict))
    stats.check()
    return stats

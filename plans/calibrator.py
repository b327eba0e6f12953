"""Collects calibration statistics while a dense run goes on.

The ComfyUI hook hands it every video self-attention call of the probed
steps; it scores the candidates against dense on a sample of query blocks
(scoring.py) and accumulates per probe step and layer. Several calls of one
step and layer (cond and uncond run apart, VACE) are averaged.
"""
from __future__ import annotations

import datetime
import math
from typing import Callable, Sequence

import torch

from .. import __version__
from ..patterns import DEFAULT_BLOCK_M, Geometry
from .candidates import Candidate, max_top_frames
from .format import ModelShape, PlanError
from .scoring import THUMB_COLS, THUMB_ROWS, sampled_query_blocks, score_layer
from .statistics import Statistics


def select_probe_steps(total_steps: int, count: int, warmup: float) -> list[int]:
    """`count` steps spread over the steps after the dense warm-up."""
    first = min(total_steps - 1, math.ceil(warmup * total_steps - 1e-9))
    if count <= 1:
        return [first]
    return sorted({round(first + i * (total_steps - 1 - first) / (count - 1)) for i in range(count)})


class Calibrator:
    def __init__(self, model: ModelShape, candidates: Sequence[Candidate], probe_count: int = 3,
                 query_fraction: float = 0.1, warmup: float = 0.2, info: dict | None = None,
                 check_interrupt: Callable[[], None] = lambda: None):
        if probe_count < 1:
            raise ValueError(f"probe at least one step, got {probe_count}")
        sampled_query_blocks(1, query_fraction)  # validates the fraction before any work
        self.model = model
        self.candidates = tuple(candidates)
        self.probe_count = probe_count
        self.query_fraction = query_fraction
        self.warmup = warmup
        self.info = dict(info or {})
        self.check_interrupt = check_interrupt
        self.geometry: Geometry | None = None
        self.probe_steps: list[int] | None = None
        self.total_steps: int | None = None  # of the sampling schedule: places the step ranges
        L, H, C, K = model.layers, model.heads, len(self.candidates), max(max_top_frames(self.candidates), 1)
        self._sq_err = torch.zeros(probe_count, L, H, C, dtype=torch.float64)
        self._power = torch.zeros(probe_count, L, dtype=torch.float64)
        self._calls = torch.zeros(probe_count, L, dtype=torch.int64)
        self._stripe = torch.zeros(L, H, K, dtype=torch.int64)
        self._stripe_known = [False] * L
        self._frame_mass: torch.Tensor | None = None
        self._thumbs = torch.zeros(L, H, THUMB_ROWS, THUMB_COLS, dtype=torch.float16)

    def probe_index(self, step: int | None, total_steps: int | None) -> int | None:
        """Which probe a step is, or None if it is not probed."""
        if step is None or total_steps is None:
            return None
        if self.probe_steps is None:
            self.probe_steps = select_probe_steps(total_steps, self.probe_count, self.warmup)
            self.total_steps = total_steps
        return self.probe_steps.index(step) if step in self.probe_steps else None

    def accepts(self, geometry: Geometry) -> bool:
        """Calibration keeps the first video grid; calls may differ in the
        number of text tokens after the video (prompts differ)."""
        if self.geometry is None:
            self.geometry = geometry
            self._frame_mass = torch.zeros(self.model.layers, self.model.heads, geometry.frames)
        grid = (self.geometry.frames, self.geometry.rows, self.geometry.cols, self.geometry.prefix)
        return (geometry.frames, geometry.rows, geometry.cols, geometry.prefix) == grid

    def record(self, probe: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               geometry: Geometry | None = None) -> None:
        """q, k, v: [B, L, H, D] of one call of layer `layer` at probe step
        `probe`; geometry: the call's own (defaults to the calibration's)."""
        self.check_interrupt()
        geometry = geometry or self.geometry
        n_q_blocks = (geometry.seq_len + DEFAULT_BLOCK_M - 1) // DEFAULT_BLOCK_M
        blocks = sampled_query_blocks(n_q_blocks, self.query_fraction)
        known = self._stripe[layer] if self._stripe_known[layer] else None
        with torch.no_grad():
            scores = score_layer(q, k, v, geometry, self.candidates, blocks, stripe_frames=known)
        if not self._stripe_known[layer]:  # the first probe of a layer fixes its stripe frames
            self._stripe[layer] = scores.stripe_frames
            self._frame_mass[layer] = scores.frame_mass
            self._thumbs[layer] = scores.thumbnails
            self._stripe_known[layer] = True
        self._sq_err[probe, layer] += scores.sq_err
        self._power[probe, layer] += scores.power
        self._calls[probe, layer] += 1

    def _probes(self) -> int:
        """Probes in use: fewer than asked when the run has fewer steps."""
        return len(self.probe_steps) if self.probe_steps is not None else self.probe_count

    def missing(self) -> list[tuple[int, int]]:
        """(probe step, layer) pairs that were never recorded."""
        steps = self.probe_steps or list(range(self.probe_count))
        return [(steps[p], l) for p, l in (self._calls[: self._probes()] == 0).nonzero().tolist()]

    def statistics(self, cost: torch.Tensor, cost_source: str) -> Statistics:
        if self.geometry is None or self.missing():
            raise PlanError(f"calibration saw no video self-attention call for (step, layer) {self.missing()[:5]}: "
                            "did sampling run every step of the schedule on this model?")
        n = self._probes()
        calls = self._calls[:n].to(torch.float64)
        info = {"date": datetime.date.today().isoformat(), "software": f"sparse-vdit {__version__}",
                "query_fraction": self.query_fraction, "warmup_fraction": self.warmup,
                "total_steps": self.total_steps, **self.info}
        return Statistics(self.model, self.geometry, self.candidates, self._sq_err[:n] / calls[:, :, None, None],
                          self._power[:n] / calls, cost, self._stripe.clone(), self._frame_mass.clone(),
                          self._thumbs.clone(), torch.tensor(self.probe_steps, dtype=torch.int64), cost_source, info)

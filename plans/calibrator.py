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
from .format import DenseSchedule, ModelShape, PlanError
from .scoring import THUMB_COLS, THUMB_ROWS, sampled_query_blocks, score_layer
from .statistics import Statistics


def select_probe_steps(total_steps: int, count: int, warmup: float) -> list[int]:
    """`count` steps spread over the steps after the dense warm-up."""
    first = min(total_steps - 1, DenseSchedule(warmup).first_sparse_step(total_steps))
    if count <= 1:
        return [first]
    return sorted({round(first + i * (total_steps - 1 - first) / (count - 1)) for i in range(count)})


def parse_indices(text: str, count: int | None, what: str) -> list[int] | None:
    """'0-5, 9' -> [0, 1, 2, 3, 4, 5, 9]; '' or 'all' -> None (all of them).
    Indices are 0-based and must be below `count` when it is known."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    chosen: set[int] = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        first, _, last = part.partition("-")
        if not first.strip().isdigit() or (last and not last.strip().isdigit()):
            raise PlanError(f"{what}: {part!r} is not an index or a range such as 3-7 (0-based)")
        low, high = int(first), int(last) if last else int(first)
        if high < low:
            raise PlanError(f"{what}: the range {part!r} runs backwards")
        if count is not None and high >= count:
            raise PlanError(f"{what}: {high} is out of range: there are {count} (0 to {count - 1})")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


class Calibrator:
    """probe_count steps spread after the warm-up, or exactly the steps
    `probe_at`; every layer, or only `layers` (the others stay full)."""

    def __init__(self, model: ModelShape, candidates: Sequence[Candidate], probe_count: int = 3,
                 query_fraction: float = 0.1, warmup: float = 0.2, info: dict | None = None,
                 check_interrupt: Callable[[], None] = lambda: None, probe_at: Sequence[int] | None = None,
                 layers: Sequence[int] | None = None):
        if probe_at is not None:
            probe_count = len(probe_at)
        if probe_count < 1:
            raise ValueError(f"probe at least one step, got {probe_count}")
        if layers is not None and (not layers or not all(0 <= layer < model.layers for layer in layers)):
            raise PlanError(f"probed layers must be a non-empty set of 0..{model.layers - 1}, got {list(layers)}")
        sampled_query_blocks(1, query_fraction)  # validates the fraction before any work
        self.model = model
        self.candidates = tuple(candidates)
        self.probe_count = probe_count
        self.probe_at = sorted(set(probe_at)) if probe_at is not None else None
        self.layers = sorted(set(layers)) if layers is not None else list(range(model.layers))
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
            if self.probe_at is not None and self.probe_at[-1] >= total_steps:
                raise PlanError(f"probe step {self.probe_at[-1]} is beyond this run's {total_steps} steps "
                                f"(steps count from 0)")
            self.probe_steps = self.probe_at or select_probe_steps(total_steps, self.probe_count, self.warmup)
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

    def probes_layer(self, layer: int) -> bool:
        return layer in self.layers

    def record(self, probe: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               geometry: Geometry | None = None) -> None:
        """q, k, v: [B, L, H, D] of one call of layer `layer` at probe step
        `probe`; geometry: the call's own (defaults to the calibration's)."""
        self.check_interrupt()
        if not self.probes_layer(layer):
            return
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
        unseen = (self._calls[: self._probes(), self.layers] == 0).nonzero().tolist()
        return [(steps[p], self.layers[i]) for p, i in unseen]

    def statistics(self, cost: torch.Tensor, cost_source: str) -> Statistics:
        if self.geometry is None or self.missing():
            raise PlanError(f"calibration saw no video self-attention call for (step, layer) {self.missing()[:5]}: "
                            "did sampling run every step of the schedule on this model?")
        n = self._probes()
        calls = self._calls[:n].to(torch.float64).clamp_min(1)
        sq_err, power = self._sq_err[:n] / calls[:, :, None, None], self._power[:n] / calls
        unprobed = [layer for layer in range(self.model.layers) if layer not in self.layers]
        sq_err[:, unprobed] = math.inf  # no candidate is known to be safe there: the search keeps them full
        power[:, unprobed] = 1.0
        info = {"date": datetime.date.today().isoformat(), "software": f"sparse-vdit {__version__}",
                "query_fraction": self.query_fraction, "warmup_fraction": self.warmup,
                "total_steps": self.total_steps, "probed_layers": self.layers if unprobed else "all", **self.info}
        return Statistics(self.model, self.geometry, self.candidates, sq_err,
                          power, cost, self._stripe.clone(), self._frame_mass.clone(),
                          self._thumbs.clone(), torch.tensor(self.probe_steps, dtype=torch.int64), cost_source, info)

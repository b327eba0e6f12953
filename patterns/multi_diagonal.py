"""M3 multi-diagonal: a query sees the same place in other frames.

Bands at offsets that are multiples of the tokens per frame: query row
(t, y) sees key rows (t', y - rows .. y + rows) for every frame t' with
|t' - t| <= frames (all frames when `frames` is None).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern, check_int, grid_coords
from .geometry import Geometry


@dataclass(frozen=True)
class MultiDiagonal(Pattern):
    name = "multi_diagonal"
    rows: int = 1
    frames: int | None = None

    def __post_init__(self):
        check_int("multi_diagonal.rows", self.rows, 0, 4096)
        if self.frames is not None:
            check_int("multi_diagonal.frames", self.frames, 1, 4096)

    def video_row_mask(self, geometry: Geometry) -> torch.Tensor:
        t, y = grid_coords(geometry)
        near = (y[:, None] - y[None, :]).abs() <= self.rows
        if self.frames is None:
            return near
        return near & ((t[:, None] - t[None, :]).abs() <= self.frames)

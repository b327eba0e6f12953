"""M2 diagonal: a query sees its own neighbourhood in its own frame.

`rows` is the half-width of the band in latent rows: query row (t, y) sees
key rows (t, y - rows .. y + rows). In flattened token order that is a band
around the diagonal of (2 * rows + 1) * cols tokens, cut at frame edges.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern, check_int, grid_coords
from .geometry import Geometry


@dataclass(frozen=True)
class Diagonal(Pattern):
    name = "diagonal"
    rows: int = 2

    def __post_init__(self):
        check_int("diagonal.rows", self.rows, 0, 4096)

    def video_row_mask(self, geometry: Geometry) -> torch.Tensor:
        t, y = grid_coords(geometry)
        same_frame = t[:, None] == t[None, :]
        near = (y[:, None] - y[None, :]).abs() <= self.rows
        return same_frame & near

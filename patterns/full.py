"""M0 full: the head attends everything (dense attention)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern
from .geometry import Geometry


@dataclass(frozen=True)
class Full(Pattern):
    name = "full"
    kind = "full"

    def video_row_mask(self, geometry: Geometry) -> torch.Tensor:
        n = geometry.frames * geometry.rows
        return torch.ones((n, n), dtype=torch.bool)

"""M1 skip: the head attends nothing and its output is zero."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern
from .geometry import Geometry


@dataclass(frozen=True)
class Skip(Pattern):
    name = "skip"
    kind = "skip"

    def video_row_mask(self, geometry: Geometry) -> torch.Tensor:
        n = geometry.frames * geometry.rows
        return torch.zeros((n, n), dtype=torch.bool)

"""M4 vertical-stripe: every query sees the same few key columns.

The columns are whole frames of the video (global "sink" tokens, typically
the first frame), named by frame index; a negative index counts from the
last frame. Indices past the clip's length are ignored, and if none is left
the first frame is used, so a plan made for long clips still serves short
ones. Extra tokens (text, references) are always among the columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern, PatternError, check_int, grid_coords
from .geometry import Geometry


@dataclass(frozen=True)
class VerticalStripe(Pattern):
    name = "vertical_stripe"
    frames: tuple[int, ...] = (0,)

    def __post_init__(self):
        if isinstance(self.frames, list):
            object.__setattr__(self, "frames", tuple(self.frames))
        if not isinstance(self.frames, tuple) or not self.frames:
            raise PatternError(f"vertical_stripe.frames must be a non-empty list of frame indices, got {self.frames!r}")
        for index in self.frames:
            check_int("vertical_stripe.frames[]", index, -4096, 4095)

    def key_frames(self, n_frames: int) -> list[int]:
        chosen = sorted({f if f >= 0 else n_frames + f for f in self.frames} & set(range(n_frames)))
        return chosen or [0]

    def video_row_mask(self, geometry: Geometry) -> torch.Tensor:
        t, _ = grid_coords(geometry)
        key_is_column = torch.isin(t, torch.tensor(self.key_frames(geometry.frames)))
        return key_is_column[None, :].expand(t.numel(), t.numel()).clone()

    def params(self) -> dict:
        return {"frames": list(self.frames)}

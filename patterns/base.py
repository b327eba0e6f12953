"""What every attention pattern shares.

A pattern is defined over *grid rows*: one unit per (frame, row) of the video
(its `cols` tokens), plus one unit for the extra tokens before the video and
one for those after it. A pattern says which key rows each query row may see;
the extra units are global (every query of a sparse head sees them, and they
see everything), so text or reference tokens are never cut off.

Kernels work on blocks of tokens, so the function actually computed is the
pattern rounded out to whole blocks: a query block attends a key block when
any query row it holds may see any key row that block holds
(see tables.py). Working in rows rather than tokens keeps every parameter in
grid units, so one plan serves any resolution and frame count.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from .geometry import Geometry


class PatternError(ValueError):
    """A pattern name or parameter that cannot be used."""


@dataclass(frozen=True)
class Pattern:
    name: ClassVar[str] = ""
    # "sparse" patterns go through block tables; full and skip are special-cased.
    kind: ClassVar[str] = "sparse"

    def video_row_mask(self, geometry: Geometry) -> torch.Tensor:
        """bool [F*H, F*H]: may query row (t, y) see key row (t', y')."""
        raise NotImplementedError

    # A pattern finer than grid rows (e.g. one that limits columns) defines
    # block_mask(geometry, block_m, block_n) itself; tables.py then uses it.

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict:
        return {"mode": self.name, **self.params()}

    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})" if args else self.name


def grid_coords(geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame and row index of each video grid row, in token order."""
    t = torch.arange(geometry.frames).repeat_interleave(geometry.rows)
    y = torch.arange(geometry.rows).repeat(geometry.frames)
    return t, y


def unit_mask(pattern: Pattern, geometry: Geometry) -> torch.Tensor:
    """bool [U, U] over all units: [prefix unit] + video rows + [suffix unit]."""
    video = pattern.video_row_mask(geometry)
    if not (geometry.prefix or geometry.suffix):
        return video
    n_video = video.shape[0]
    lead = 1 if geometry.prefix else 0
    n_units = lead + n_video + (1 if geometry.suffix else 0)
    # Extra tokens are global for any head that computes something at all.
    extra_value = pattern.kind != "skip"
    mask = torch.full((n_units, n_units), extra_value, dtype=torch.bool)
    mask[lead:lead + n_video, lead:lead + n_video] = video
    return mask


def unit_bounds(geometry: Geometry) -> torch.Tensor:
    """int64 [U + 1]: token offset where each unit starts (last = seq_len)."""
    starts = []
    if geometry.prefix:
        starts.append(0)
    p = geometry.prefix
    starts.extend(p + i * geometry.cols for i in range(geometry.frames * geometry.rows))
    if geometry.suffix:
        starts.append(p + geometry.video_tokens)
    starts.append(geometry.seq_len)
    return torch.tensor(starts, dtype=torch.int64)


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PatternError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise PatternError(f"{name} must be {bound}, got {value}")

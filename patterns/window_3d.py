"""3-D window: a query sees its neighbourhood in time and space.

Query token (t, y, x) sees key tokens (t', y', x') with |t' - t| <= frames,
|y' - y| <= rows and |x' - x| <= cols, clipped at the grid's edges: the
shape of sliding-tile attention, in latent units (frames, latent rows,
latent columns) like the other patterns, so one plan serves any resolution.

Unlike the other patterns it limits columns, which grid rows (the unit of
base.py) cannot express, so it rounds itself out to blocks (block_mask).
A query block is a run of consecutive tokens: a partial first grid row,
whole middle rows, a partial last row. A key row within reach of a middle
row sees all its columns (a whole row widened stays whole); otherwise it
sees the first and/or last row's column interval widened by `cols`. So
each (query block, key row) sees at most two column intervals, and a key
block is attended when the seen tokens counted up to its end exceed those
counted up to its start: exact per token, in [query blocks x grid rows]
memory, never L x L. Extra tokens stay global.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Pattern, check_int, grid_coords
from .geometry import Geometry

def _seen_below(x, a1, b1, a2, b2):
    """How many columns < x lie in [a1, b1] union [a2, b2] (empty when b < a)."""
    def count(a, b):
        return (torch.minimum(x, b + 1) - a).clamp(min=0) * (b >= a)
    return count(a1, b1) + count(a2, b2) - count(torch.maximum(a1, a2), torch.minimum(b1, b2))


@dataclass(frozen=True)
class Window3D(Pattern):
    name = "window_3d"
    frames: int = 1
    rows: int = 4
    cols: int = 8

    def __post_init__(self):
        check_int("window_3d.frames", self.frames, 0, 4096)
        check_int("window_3d.rows", self.rows, 0, 4096)
        check_int("window_3d.cols", self.cols, 0, 4096)

    def row_reach(self, geometry: Geometry) -> torch.Tensor:
        """bool [U, U] over grid rows: within +-frames and +-rows (columns aside)."""
        t, y = grid_coords(geometry)
        return ((t[:, None] - t[None, :]).abs() <= self.frames) & ((y[:, None] - y[None, :]).abs() <= self.rows)

    def block_mask(self, geometry: Geometry, block_m: int, block_n: int) -> torch.Tensor:
        """bool [n_q_blocks, n_k_blocks]: the window rounded out to whole blocks."""
        seq_len, p, n_video, cols = geometry.seq_len, geometry.prefix, geometry.video_tokens, geometry.cols
        n_q, n_k = -(-seq_len // block_m), -(-seq_len // block_n)
        blocks = torch.arange(n_q)
        start = (blocks * block_m - p).clamp(0, n_video)  # video tokens [start, stop) of each query block
        stop = ((blocks + 1) * block_m - p).clamp(0, n_video)
        has_video = stop > start
        last = torch.maximum(stop - 1, start).clamp(max=n_video - 1)
        start = start.clamp(max=n_video - 1)  # blocks without video tokens are masked below
        first_row, last_row = start // cols, last // cols
        two_rows = last_row > first_row
        reach = self.row_reach(geometry)  # [key row, query row], symmetric
        counts = F.pad(reach.to(torch.int32).cumsum(1), (1, 0))
        middle_from = first_row + 1
        middle = ((counts[:, torch.maximum(last_row, middle_from)] - counts[:, middle_from]) > 0).T  # [block, key row]
        # Per (query block, key row): the seen columns, at most two intervals.
        first_end = torch.where(two_rows, torch.full_like(last, cols - 1), last % cols)
        a1 = torch.where(middle, 0, (start % cols - self.cols).clamp(min=0)[:, None])
        b1 = torch.where(middle, cols - 1, (first_end + self.cols).clamp(max=cols - 1)[:, None])
        b1 = torch.where(middle | reach[:, first_row].T, b1, -1)
        last_end = (last % cols + self.cols).clamp(max=cols - 1)[:, None]
        b2 = torch.where(~middle & (reach[:, last_row] & two_rows).T, last_end, -1)
        intervals = (a1, b1, torch.zeros_like(b2), b2)
        before = F.pad(_seen_below(torch.full_like(a1, cols), *intervals).cumsum(1), (1, 0))  # [block, U + 1]
        # Seen tokens before each key block's first token; a key block is
        # attended when its span holds any. An edge at the video's end has
        # row U and column 0, so it adds nothing past `before`.
        edge = (torch.arange(n_k + 1) * block_n - p).clamp(0, n_video)
        row, x = edge // cols, edge % cols
        at_row = row.clamp(max=reach.shape[0] - 1)
        upto = before[:, row] + _seen_below(x.expand(n_q, -1), *(i[:, at_row] for i in intervals))
        out = ((upto[:, 1:] - upto[:, :-1]) > 0) & has_video[:, None]
        # Extra tokens are global: they see everything and everything sees them.
        extra = torch.ones(seq_len, dtype=torch.bool)
        extra[p:p + n_video] = False
        out |= F.pad(extra, (0, n_q * block_m - seq_len)).view(n_q, block_m).any(-1)[:, None]
        out |= F.pad(extra, (0, n_k * block_n - seq_len)).view(n_k, block_n).any(-1)[None, :]
        return out

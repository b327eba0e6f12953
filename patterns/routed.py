"""Routed heads: the key blocks are chosen per call, from the content.

Per query block, the `share` of the key blocks with the highest pooled
score (block-mean q . block-mean k, scaled as the kernel scales scores,
averaged over the batch, since the kernel serves the whole batch from one
table), always including the key blocks that hold the query block's own
tokens (the diagonal) and those holding extra tokens (global, as for every
sparse head). A query block holding extra tokens attends every key block.
Tie rule: among equal scores the lower key block index wins (select()).

Every routed row lists the same number of key blocks (RoutedLayout.k), so a
routed head's table offsets are static per geometry and only the indices of
its routed rows change per call (kernels/routing.py writes them on the
device before every launch). The table compiled from block_mask() lists the
forced blocks and the nearest others: the same counts, so block counts and
costs hold, but a placeholder, never served.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .base import Pattern, PatternError
from .geometry import Geometry


def select(scores: torch.Tensor, forced: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [..., k], ascending: per row the k key blocks with the highest
    score, forced blocks first. scores [..., n_k] (any float dtype, any
    device), forced bool broadcastable to it. NaN ranks lowest; among equal
    scores the lower index wins (a stable sort), so the float64 reference
    and the device agree wherever their scores do."""
    finite = torch.finfo(scores.dtype).max
    ranked = torch.nan_to_num(scores, nan=float("-inf"), posinf=finite, neginf=-finite)
    ranked = ranked.masked_fill(forced, float("inf"))
    chosen = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.sort(chosen, dim=-1).values


@dataclass(frozen=True, eq=False)
class RoutedLayout:
    """What routing may change, for one geometry, share and block size."""
    k: int                 # key blocks per routed row
    rows: torch.Tensor     # int64 [n_routed]: the routed query blocks (no extra tokens)
    forced: torch.Tensor   # bool [n_routed, n_k]: own blocks and extra-token blocks
    n_q: int
    n_k: int


def _extra_blocks(geometry: Geometry, size: int) -> torch.Tensor:
    """bool per block of `size` tokens: holds an extra (non-video) token."""
    n = -(-geometry.seq_len // size)
    extra = torch.ones(n * size, dtype=torch.bool)
    extra[geometry.prefix:geometry.prefix + geometry.video_tokens] = False
    extra[geometry.seq_len:] = False
    return extra.view(n, size).any(-1)


@functools.lru_cache(maxsize=256)
def routed_layout(geometry: Geometry, share: float, block_m: int, block_n: int) -> RoutedLayout:
    n_q, n_k = -(-geometry.seq_len // block_m), -(-geometry.seq_len // block_n)
    rows = (~_extra_blocks(geometry, block_m)).nonzero()[:, 0]
    first = rows * block_m
    last = torch.clamp(first + block_m, max=geometry.seq_len) - 1
    key = torch.arange(n_k)
    forced = ((key[None, :] >= (first // block_n)[:, None]) & (key[None, :] <= (last // block_n)[:, None]))
    forced |= _extra_blocks(geometry, block_n)[None, :]
    most_forced = int(forced.sum(1).max()) if len(rows) else 0
    k = min(n_k, max(math.ceil(share * n_k), most_forced))
    return RoutedLayout(k, rows, forced, n_q, n_k)


@dataclass(frozen=True)
class Routed(Pattern):
    name = "routed"
    kind = "routed"
    share: float = 0.1  # of the key blocks, per query block
    # Every key block a routed row does not list also enters its softmax as
    # one pooled key (mean key and value, weighted by its token count), as in
    # Sol-Attn; float64 definition: kernels/routed_tail_reference.py.
    tail: bool = False

    def __post_init__(self):
        share = self.share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise PatternError(f"routed.share must be a number in (0, 1], got {share!r}")
        if not isinstance(self.tail, bool):
            raise PatternError(f"routed.tail must be true or false, got {self.tail!r}")
        object.__setattr__(self, "share", float(share))

    def params(self) -> dict:
        # No tail: written as before, so packs that predate the field read it.
        return {"share": self.share, "tail": True} if self.tail else {"share": self.share}

    def layout(self, geometry: Geometry, block_m: int, block_n: int) -> RoutedLayout:
        return routed_layout(geometry, self.share, block_m, block_n)

    def block_mask(self, geometry: Geometry, block_m: int, block_n: int) -> torch.Tensor:
        """The placeholder: forced blocks plus the nearest others, k per routed row."""
        layout = self.layout(geometry, block_m, block_n)
        mask = torch.ones(layout.n_q, layout.n_k, dtype=torch.bool)  # rows with extra tokens: everything
        if len(layout.rows):
            q_centre = (layout.rows * block_m + block_m / 2)[:, None]
            k_centre = (torch.arange(layout.n_k) * block_n + block_n / 2)[None, :]
            nearest = select(-(q_centre - k_centre).abs(), layout.forced, layout.k)
            mask[layout.rows] = torch.zeros(len(layout.rows), layout.n_k, dtype=torch.bool).scatter_(1, nearest, True)
        return mask


@dataclass(frozen=True, eq=False)
class RoutedGroup:
    """The routed heads of one layer table that share a `share` and a tail, on the
    table's device: what kernels/routing.py needs per call."""
    heads: tuple[int, ...]     # model head indices
    head_index: torch.Tensor   # int64 [h]: the same, on the device
    k: int
    rows: torch.Tensor         # int64 [n_routed]: routed query blocks
    forced: torch.Tensor       # bool [n_routed, n_k]
    positions: torch.Tensor    # int64 [h * n_routed * k]: their entries in the table's kv_indices
    table_rows: torch.Tensor | None = None  # int64 [h * n_routed]: their table rows (in positions' order)
    tail: bool = False                      # whether these rows get the pooled tail


def routed_groups(patterns: tuple[Pattern, ...], heads: tuple[int, ...], kv_offsets: torch.Tensor,
                  geometry: Geometry, block_m: int, block_n: int, device) -> tuple[RoutedGroup, ...]:
    """Groups for a table whose head slots hold `patterns` (model heads
    `heads`) with offsets kv_offsets (CPU)."""
    by_share: dict[tuple[float, bool], list[int]] = {}
    for slot, pattern in enumerate(patterns):
        if pattern.kind == "routed":
            by_share.setdefault((pattern.share, pattern.tail), []).append(slot)
    groups = []
    offsets = kv_offsets.to(torch.int64)
    for (share, tail), slots in by_share.items():
        layout = routed_layout(geometry, share, block_m, block_n)
        rows = torch.tensor(slots)[:, None] * layout.n_q + layout.rows[None, :]  # [h, n_routed] table rows
        positions = (offsets[rows][..., None] + torch.arange(layout.k)).flatten()
        chosen = tuple(heads[s] for s in slots)
        groups.append(RoutedGroup(chosen, torch.tensor(chosen, device=device), layout.k, layout.rows.to(device),
                                  layout.forced.to(device), positions.to(device), rows.flatten().to(device),
                                  tail))
    return tuple(groups)


def tail_rows(groups: tuple[RoutedGroup, ...], n_rows: int, device) -> torch.Tensor | None:
    """int32 [n_rows]: each tail group's table rows numbered in group order
    (the kernel's index into the call's listed flags), -1 for every other
    row; None when no routed row has a tail (no group asks for one, or at
    this geometry every row of those heads is full: nothing is dropped)."""
    tailed = [g for g in groups if g.tail]
    if not sum(len(g.table_rows) for g in tailed):
        return None
    rows = torch.full((n_rows,), -1, dtype=torch.int32)
    first = 0
    for group in tailed:
        n = len(group.table_rows)
        rows[group.table_rows.cpu()] = torch.arange(first, first + n, dtype=torch.int32)
        first += n
    return rows.to(device)

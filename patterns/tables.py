"""Block tables: a pattern compiled for one geometry and block size.

Per head and per query block of `block_m` tokens: how many key blocks of
`block_n` tokens it attends and which, stored CSR-style so memory follows
the blocks listed (never N x N). Rows are ordered head-major:
row = head_slot * n_q_blocks + q_block. Key blocks are ascending in a row.

The table is the ground truth of what a sparse head computes: a query
attends every real token of the key blocks its row lists and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .base import Pattern, unit_bounds, unit_mask
from .geometry import Geometry

DEFAULT_BLOCK_M = 128
DEFAULT_BLOCK_N = 64
# Head kinds served through block tables (routed heads: routed.py).
TABLE_KINDS = ("sparse", "routed")


def _blocks(n: int, size: int) -> int:
    return (n + size - 1) // size


def _block_unit_ranges(bounds: torch.Tensor, seq_len: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last unit each block of `size` tokens touches."""
    first_token = torch.arange(0, seq_len, size, dtype=torch.int64)
    last_token = torch.clamp(first_token + size - 1, max=seq_len - 1)
    lo = torch.searchsorted(bounds, first_token, right=True) - 1
    hi = torch.searchsorted(bounds, last_token, right=True) - 1
    return lo, hi


def pattern_block_mask(pattern: Pattern, geometry: Geometry, block_m: int, block_n: int) -> torch.Tensor:
    """bool [n_q_blocks, n_k_blocks]: the pattern rounded out to whole blocks."""
    own = getattr(pattern, "block_mask", None)
    if own is not None:  # finer than grid rows: the pattern rounds itself (base.py)
        return own(geometry, block_m, block_n)
    units = unit_mask(pattern, geometry).to(torch.int32)
    bounds = unit_bounds(geometry)
    q_lo, q_hi = _block_unit_ranges(bounds, geometry.seq_len, block_m)
    k_lo, k_hi = _block_unit_ranges(bounds, geometry.seq_len, block_n)
    # OR over the unit rows each query block spans, via prefix sums.
    rows = torch.cat([torch.zeros(1, units.shape[1], dtype=torch.int32), units.cumsum(0, dtype=torch.int32)])
    q_any = (rows[q_hi + 1] - rows[q_lo]) > 0
    # Then OR over the unit columns each key block spans.
    cols = torch.cat([torch.zeros(q_any.shape[0], 1, dtype=torch.int32), q_any.to(torch.int32).cumsum(1, dtype=torch.int32)], 1)
    return (cols[:, k_hi + 1] - cols[:, k_lo]) > 0


@dataclass(frozen=True, eq=False)
class BlockTable:
    heads: tuple[int, ...]  # model head index of each head slot
    seq_len: int
    block_m: int
    block_n: int
    kv_offsets: torch.Tensor  # int32 [len(heads) * n_q_blocks + 1]
    kv_indices: torch.Tensor  # int32 [nnz]
    max_row_blocks: int
    # Per-backend data derived from the table (e.g. a row order on the GPU),
    # filled lazily by the kernels so the table stays the single source.
    derived: dict = field(default_factory=dict, repr=False)

    @property
    def n_q_blocks(self) -> int:
        return _blocks(self.seq_len, self.block_m)

    @property
    def n_k_blocks(self) -> int:
        return _blocks(self.seq_len, self.block_n)

    @property
    def device(self) -> torch.device:
        return self.kv_indices.device

    def to(self, device) -> "BlockTable":
        return BlockTable(self.heads, self.seq_len, self.block_m, self.block_n,
                          self.kv_offsets.to(device), self.kv_indices.to(device), self.max_row_blocks)

    def block_mask(self) -> torch.Tensor:
        """bool [heads, n_q_blocks, n_k_blocks], rebuilt from the CSR lists."""
        rows = len(self.heads) * self.n_q_blocks
        offsets = self.kv_offsets.cpu().to(torch.int64)
        counts = offsets[1:] - offsets[:-1]
        row_of = torch.repeat_interleave(torch.arange(rows), counts)
        mask = torch.zeros(rows, self.n_k_blocks, dtype=torch.bool)
        mask[row_of, self.kv_indices.cpu().to(torch.int64)] = True
        return mask.view(len(self.heads), self.n_q_blocks, self.n_k_blocks)

    def token_mask(self, slot: int) -> torch.Tensor:
        """bool [L, L] for one head slot: for tests and small references only."""
        blocks = self.block_mask()[slot]
        full = blocks.repeat_interleave(self.block_m, 0).repeat_interleave(self.block_n, 1)
        return full[: self.seq_len, : self.seq_len]

    def computed_pairs(self) -> torch.Tensor:
        """int64 [heads]: (query, key) token pairs each head slot computes."""
        q_sizes = torch.full((self.n_q_blocks,), self.block_m, dtype=torch.int64)
        q_sizes[-1] = self.seq_len - self.block_m * (self.n_q_blocks - 1)
        k_sizes = torch.full((self.n_k_blocks,), self.block_n, dtype=torch.int64)
        k_sizes[-1] = self.seq_len - self.block_n * (self.n_k_blocks - 1)
        mask = self.block_mask().to(torch.int64)
        return torch.einsum("hqk,q,k->h", mask, q_sizes, k_sizes)


def build_block_table(patterns: Sequence[Pattern], heads: Sequence[int], geometry: Geometry,
                      block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N) -> BlockTable:
    """One table for several heads (one kernel launch serves them all)."""
    if len(patterns) != len(heads) or not patterns:
        raise ValueError("build_block_table needs one pattern per head, at least one")
    per_pattern: dict[Pattern, torch.Tensor] = {}
    masks = []
    for pattern in patterns:
        if pattern.kind not in TABLE_KINDS:
            raise ValueError(f"{pattern.name} heads do not go through block tables")
        if pattern not in per_pattern:
            per_pattern[pattern] = pattern_block_mask(pattern, geometry, block_m, block_n)
        masks.append(per_pattern[pattern])
    return table_from_block_mask(torch.stack(masks), heads, geometry.seq_len, block_m, block_n)


def table_from_block_mask(stacked: torch.Tensor, heads: Sequence[int], seq_len: int,
                          block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N) -> BlockTable:
    """A table from a bool block mask [heads, n_q_blocks, n_k_blocks] (any
    block-level mask, such as a static baseline's)."""
    expected = (len(heads), _blocks(seq_len, block_m), _blocks(seq_len, block_n))
    if tuple(stacked.shape) != expected or stacked.dtype != torch.bool:
        raise ValueError(f"block mask must be bool {expected}, got {stacked.dtype} {tuple(stacked.shape)}")
    stacked = stacked.cpu()
    counts = stacked.sum(-1).flatten()
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    indices = stacked.flatten(0, 1).nonzero()[:, 1]  # row-major: ascending per row
    if offsets[-1] >= 2**31:
        raise ValueError("block table too large for int32 offsets")
    return BlockTable(tuple(int(h) for h in heads), seq_len, block_m, block_n,
                      offsets.to(torch.int32), indices.to(torch.int32), int(counts.max()))

"""What every head of one layer does, compiled once per geometry and device.

A LayerPattern is part of a plan; compile_layer turns it into the head
groups and the one block table the kernels need. Compilation is cached, so
every denoising step after the first reuses the same tables.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .base import Pattern
from .geometry import Geometry
from .routed import RoutedGroup, routed_groups, tail_rows
from .tables import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, TABLE_KINDS, BlockTable, build_block_table


@dataclass(frozen=True)
class LayerPattern:
    heads: tuple[Pattern, ...]

    def heads_of_kind(self, kind: str) -> tuple[int, ...]:
        return tuple(i for i, p in enumerate(self.heads) if p.kind == kind)

    @property
    def is_dense(self) -> bool:
        return all(p.kind == "full" for p in self.heads)

    def groups(self) -> dict[str, list[int]]:
        """Heads grouped by pattern label (head fusion: one call per group)."""
        grouped: dict[str, list[int]] = {}
        for index, pattern in enumerate(self.heads):
            grouped.setdefault(pattern.label(), []).append(index)
        return grouped


@dataclass(frozen=True, eq=False)
class CompiledLayer:
    num_heads: int
    geometry: Geometry
    full_heads: tuple[int, ...]
    skip_heads: tuple[int, ...]
    table: BlockTable | None  # every sparse and routed head, one launch
    # Routed heads: table rows whose indices kernels/routing.py rewrites per call.
    routing: tuple[RoutedGroup, ...] = ()
    # int32 [table rows]: the rows with a pooled tail numbered, -1 elsewhere (None: no tail)
    tail_rows: torch.Tensor | None = None

    @property
    def sparse_heads(self) -> tuple[int, ...]:
        return self.table.heads if self.table is not None else ()

    def density(self) -> float:
        """Share of (query, key) pairs computed over all heads of the layer."""
        pairs = float(len(self.full_heads)) * self.geometry.seq_len ** 2
        if self.table is not None:
            pairs += float(self.table.computed_pairs().sum())
        return pairs / (self.num_heads * float(self.geometry.seq_len) ** 2)


@functools.lru_cache(maxsize=512)
def compile_layer(layer: LayerPattern, geometry: Geometry, device: str = "cpu",
                  block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N) -> CompiledLayer:
    sparse = tuple(i for i, p in enumerate(layer.heads) if p.kind in TABLE_KINDS)
    table, routing, tails = None, (), None
    if sparse:
        patterns = tuple(layer.heads[h] for h in sparse)
        table = build_block_table(patterns, sparse, geometry, block_m, block_n)
        routing = routed_groups(patterns, sparse, table.kv_offsets, geometry, block_m, block_n, torch.device(device))
        tails = tail_rows(routing, len(table.kv_offsets) - 1, torch.device(device))
        table = table.to(torch.device(device))
    return CompiledLayer(len(layer.heads), geometry, layer.heads_of_kind("full"), layer.heads_of_kind("skip"), table,
                         routing, tails)

"""Routed heads' table rows, per call, on the device (patterns/routed.py
says what is chosen and the tie rule).

No host synchronisation on the call path: pooled means by a reshape and a
sum over whole blocks (plus the ragged tail), scores by one batched matmul,
the choice by patterns.routed.select (a stable sort), written in place into
the table's kv_indices at positions fixed when the layer was compiled. The
offsets never change (every routed row lists k blocks), so what is cached
on a table stays valid: row orders and the rows-per-program entry map
depend only on the offsets, and the 8-bit path's copy of the table with
dense rows gets the routed entries copied (copy_routed).
"""
from __future__ import annotations

import torch

from ..patterns.geometry import Geometry
from ..patterns.layer import CompiledLayer
from ..patterns.routed import RoutedGroup, routed_layout, select


def block_means(x4: torch.Tensor, size: int) -> torch.Tensor:
    """float32 [B, n_blocks, H, D]: mean of each block of `size` tokens
    (the last one ragged) of x4 [B, L, H, D], without copying x4."""
    seq_len = x4.shape[1]
    whole = seq_len // size
    parts = []
    if whole:
        parts.append(x4[:, :whole * size].unflatten(1, (whole, size)).sum(2, dtype=torch.float32) / size)
    if seq_len % size:
        parts.append(x4[:, whole * size:].sum(1, keepdim=True, dtype=torch.float32) / (seq_len % size))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _head_range(x4: torch.Tensor, heads: tuple[int, ...]) -> torch.Tensor:
    """The smallest contiguous head slice holding `heads` (a view)."""
    return x4[:, :, min(heads):max(heads) + 1]


def pooled_scores(q4: torch.Tensor, k4: torch.Tensor, group: RoutedGroup, block_m: int, block_n: int,
                  scale: float) -> torch.Tensor:
    """float32 [h, n_routed, n_k]: block-mean q . block-mean k * scale,
    averaged over the batch, for the group's heads and routed query blocks."""
    local = group.head_index - min(group.heads)
    qm = block_means(_head_range(q4, group.heads), block_m)[:, group.rows][:, :, local]  # [B, n_routed, h, D]
    km = block_means(_head_range(k4, group.heads), block_n)[:, :, local]                  # [B, n_k, h, D]
    batch = q4.shape[0]
    qm = qm.permute(2, 1, 0, 3).flatten(2)  # [h, n_routed, B*D]: one matmul sums over the batch too
    km = km.permute(2, 1, 0, 3).flatten(2)
    return torch.bmm(qm, km.transpose(1, 2)) * (scale / batch)


def group_selection(q4, k4, group: RoutedGroup, block_m: int, block_n: int, scale: float) -> torch.Tensor:
    """int64 [h, n_routed, k]: each routed row's key blocks, ascending."""
    return select(pooled_scores(q4, k4, group, block_m, block_n, scale), group.forced, group.k)


def route(q4: torch.Tensor, k4: torch.Tensor, compiled: CompiledLayer, scale: float | None = None) -> None:
    """Write this call's routed rows into compiled.table.kv_indices. q4, k4: [B, L, H, D]."""
    table = compiled.table
    scale = q4.shape[-1] ** -0.5 if scale is None else scale
    for group in compiled.routing:
        chosen = group_selection(q4, k4, group, table.block_m, table.block_n, scale)
        table.kv_indices.index_copy_(0, group.positions, chosen.flatten().to(table.kv_indices.dtype))


def copy_routed(compiled: CompiledLayer, other) -> None:
    """Copy the routed entries into a table that extends compiled.table
    (same leading rows, e.g. the 8-bit path's table with dense rows)."""
    if other is compiled.table:
        return
    for group in compiled.routing:
        other.kv_indices.index_copy_(0, group.positions, compiled.table.kv_indices[group.positions])


def routed_block_masks(q4: torch.Tensor, k4: torch.Tensor, geometry: Geometry, share: float, block_m: int,
                       block_n: int, scale: float | None = None) -> torch.Tensor:
    """bool [H, n_q, n_k]: every head of q4 [B, L, H, D] routed at `share`
    for this call, as a block mask (calibration scores it against dense)."""
    layout = routed_layout(geometry, share, block_m, block_n)
    heads, device = q4.shape[2], q4.device
    masks = torch.ones(heads, layout.n_q, layout.n_k, dtype=torch.bool, device=device)
    if len(layout.rows):
        group = RoutedGroup(tuple(range(heads)), torch.arange(heads, device=device), layout.k,
                            layout.rows.to(device), layout.forced.to(device), torch.empty(0, dtype=torch.int64))
        chosen = group_selection(q4, k4, group, block_m, block_n, q4.shape[-1] ** -0.5 if scale is None else scale)
        masks[:, group.rows] = torch.zeros_like(masks[:, group.rows]).scatter_(2, chosen, True)
    return masks

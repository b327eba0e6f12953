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

from typing import NamedTuple

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


class PooledTail(NamedTuple):
    """What the 16-bit kernel needs to give routed rows a pooled tail (the
    semantics: kernels/routed_tail_reference.py): every key block a routed
    row does not list enters its softmax as one key, the block's mean key
    carrying the block's mean value, weighted by its token count."""
    k_mean: torch.Tensor  # [B, n_k, h, D], the input dtype: heads head0 .. head0 + h - 1
    v_mean: torch.Tensor  # [B, n_k, h, D]
    head0: int
    rows: torch.Tensor    # int32 [table rows]: the row's index into `listed`, -1 for rows without a tail
    listed: torch.Tensor  # uint8 [tail rows, n_k]: 1 where the row lists the key block


def pooled_tail(k4: torch.Tensor, v4: torch.Tensor, compiled: CompiledLayer) -> PooledTail:
    """This call's pooled tail for the routed rows of compiled whose heads ask
    for one (after route() wrote the rows). k4, v4: [B, L, H, D]. No host
    synchronisation."""
    tailed = [group for group in compiled.routing if group.tail]
    if compiled.tail_rows is None or not tailed:
        raise ValueError("the layer has no routed heads with a tail (or no routed rows): no tail to build")
    table = compiled.table
    routed_heads = [h for group in tailed for h in group.heads]
    head0, head1 = min(routed_heads), max(routed_heads)
    k_mean, v_mean = (block_means(x[:, :, head0:head1 + 1], table.block_n).to(x.dtype) for x in (k4, v4))
    listed = torch.zeros(sum(len(g.table_rows) for g in tailed), table.n_k_blocks, dtype=torch.uint8,
                         device=k4.device)
    first = 0
    for group in tailed:
        chosen = table.kv_indices[group.positions].view(-1, group.k).long()
        listed[first:first + len(chosen)].scatter_(1, chosen, 1)
        first += len(chosen)
    return PooledTail(k_mean, v_mean, head0, compiled.tail_rows, listed)

"""The Ulysses all-to-alls in yunchang's layout, on torch.distributed.

Rank r of a group of P holds tokens [r*s, (r+1)*s) of a sequence of P*s
(padded) tokens for all H heads. `seq_to_heads` gives every rank the whole
sequence for its block of h = H/P heads: rank r gets heads
order[r*h:(r+1)*h] (order = 0..H-1 unless a balancing permutation is
given; with the identity this is yunchang's `all_to_all_4D(scatter_idx=2,
gather_idx=1)`). `heads_to_seq` is its inverse. Both are collectives: every
rank of the group must call them, in the same order, whatever it decided
to do in between.

A head order is folded into the copies the layout needs anyway: the send
buffer is written straight from the model-order heads (an indexed write)
and the received heads are read straight into model order (an indexed
read), so a permuted exchange moves the same bytes as the identity's, one
pass each way (it was an index_select and an index_copy on top of them).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def group_size(group=None) -> int:
    return dist.get_world_size(group)


def group_rank(group=None) -> int:
    return dist.get_rank(group)


def _exchange(send: torch.Tensor, group) -> torch.Tensor:
    """all_to_all_single over dim 0 (one slice per rank)."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def _slots(order: torch.Tensor | None, h: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per model head m: (the rank it goes to, its place among that rank's
    h heads), from position i of `order` holding head order[i]."""
    if order is None:
        return None
    order = order.to(device=device, dtype=torch.long)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=device)
    return torch.div(position, h, rounding_mode="floor"), position % h


def pack_for_heads(tensors: Sequence[torch.Tensor], world: int, order: torch.Tensor | None = None) -> torch.Tensor:
    """[B, s, H, D] chunks (one or more tensors of one shape) -> the send
    buffer [P, n, B, s, h, D] of seq_to_heads: slice j holds rank j's heads."""
    batch, chunk, heads, head_dim = tensors[0].shape
    if heads % world:
        raise ValueError(f"{heads} heads do not split over {world} ranks")
    h = heads // world
    slots = _slots(order, h, tensors[0].device)
    send = torch.empty((world, len(tensors), batch, chunk, h, head_dim), dtype=tensors[0].dtype,
                       device=tensors[0].device)
    for i, x in enumerate(tensors):
        if x.shape != tensors[0].shape:
            raise ValueError("seq_to_heads sends tensors of one shape")
        # send[:, i] seen as [B, s, P, h, D]: slice j of dim 0 goes to rank j
        target = send[:, i].permute(1, 2, 0, 3, 4)
        if slots is None:
            target.copy_(x.reshape(batch, chunk, world, h, head_dim))
        else:  # one indexed write: model head m to its rank and place
            target[:, :, slots[0], slots[1]] = x
    return send


def unpack_heads(recv: torch.Tensor) -> list[torch.Tensor]:
    """The received [P, n, B, s, h, D] (slice j: rank j's tokens, my heads)
    -> n x [B, P*s, h, D] contiguous."""
    world, n, batch, chunk, h, head_dim = recv.shape
    return [recv[:, i].permute(1, 0, 2, 3, 4).reshape(batch, world * chunk, h, head_dim) for i in range(n)]


def pack_for_seq(x: torch.Tensor, world: int) -> torch.Tensor:
    """[B, P*s, h, D] -> the send buffer [P, B, s, h, D] of heads_to_seq."""
    batch, length, h, head_dim = x.shape
    if length % world:
        raise ValueError(f"{length} tokens do not split over {world} ranks")
    return x.reshape(batch, world, length // world, h, head_dim).permute(1, 0, 2, 3, 4).contiguous()


def unpack_seq(recv: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """The received [P, B, s, h, D] (slice j: rank j's heads, my tokens)
    -> [B, s, H, D], heads in model order."""
    world, batch, chunk, h, head_dim = recv.shape
    received = recv.permute(1, 2, 0, 3, 4)  # [B, s, P, h, D]
    slots = _slots(order, h, recv.device)
    if slots is None:
        return received.reshape(batch, chunk, world * h, head_dim)
    return received[:, :, slots[0], slots[1]]  # one indexed read, heads in model order


def seq_to_heads(tensors: Sequence[torch.Tensor], group=None, order: torch.Tensor | None = None) -> list[torch.Tensor]:
    """[B, s, H, D] chunks (one or more tensors of one shape, sent in one
    collective) -> [B, P*s, h, D] contiguous: the whole sequence, this
    rank's heads."""
    return unpack_heads(_exchange(pack_for_heads(tensors, group_size(group), order), group))


def heads_to_seq(x: torch.Tensor, group=None, order: torch.Tensor | None = None) -> torch.Tensor:
    """[B, P*s, h, D] (this rank's heads, whole sequence) -> [B, s, H, D]
    (every head, this rank's tokens), heads back in model order."""
    return unpack_seq(_exchange(pack_for_seq(x, group_size(group)), group), order)

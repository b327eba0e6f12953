"""Which heads each Ulysses rank runs: the plan slice and head balancing.

Slicing rule: with P ranks and H heads (H divisible by P, h = H/P), rank r
runs the heads order[r*h:(r+1)*h] of every layer, each with its own
pattern from the plan; `order` is 0..H-1 (Raylight's and yunchang's
contiguous head blocks) unless balancing permutes it. A rank's slice is a
LayerPattern of h heads, compiled and cached like any layer.

Balancing: a rank's attention time is about the sum of its heads' costs
(computed (query, key) pairs; skipped heads cost nothing), and a step
waits for the slowest rank. `balanced_order` picks, per layer, a head
order whose contiguous blocks have near-equal sums. Every rank computes
it from the same plan and geometry, deterministically, so all agree.
"""
from __future__ import annotations

import functools

from ..patterns import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, Geometry, LayerPattern, compile_layer
from ..patterns.tables import TABLE_KINDS


def rank_heads(order: tuple[int, ...], world: int, rank: int) -> tuple[int, ...]:
    heads = len(order)
    if heads % world:
        raise ValueError(f"{heads} heads do not split over {world} ranks")
    h = heads // world
    return tuple(order[rank * h:(rank + 1) * h])


def slice_layer(layer: LayerPattern, heads: tuple[int, ...]) -> LayerPattern:
    """The patterns of the given heads, in that order: a rank's plan slice."""
    return LayerPattern(tuple(layer.heads[i] for i in heads))


@functools.lru_cache(maxsize=4096)
def _pattern_share(pattern, geometry: Geometry, block_m: int, block_n: int) -> float:
    """Share of (query, key) pairs one head of this pattern computes."""
    if pattern.kind not in TABLE_KINDS:
        return 1.0 if pattern.kind == "full" else 0.0
    table = compile_layer(LayerPattern((pattern,)), geometry, "cpu", block_m, block_n).table
    return float(table.computed_pairs()[0]) / float(geometry.seq_len) ** 2


@functools.lru_cache(maxsize=1024)
def head_costs(layer: LayerPattern, geometry: Geometry, sparse_cost: float = 1.0,
               block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N) -> tuple[float, ...]:
    """Per head: the share of (query, key) pairs it computes (full 1, skip
    0), sparse heads scaled by `sparse_cost` (the sparse kernel's time per
    pair relative to the dense one's, where it was measured), at the block
    sizes the kernels use. Computed once per distinct pattern."""
    return tuple(_pattern_share(p, geometry, block_m, block_n) * (sparse_cost if p.kind in TABLE_KINDS else 1.0)
                 for p in layer.heads)


def rank_loads(costs: tuple[float, ...], order: tuple[int, ...], world: int) -> list[float]:
    return [sum(costs[i] for i in rank_heads(order, world, r)) for r in range(world)]


def imbalance(costs: tuple[float, ...], order: tuple[int, ...], world: int) -> float:
    """Slowest rank / mean rank (1.0: all finish together)."""
    loads = rank_loads(costs, order, world)
    mean = sum(loads) / world
    return max(loads) / mean if mean > 0 else 1.0


def _improve(bins: list[list[int]], costs: tuple[float, ...]) -> None:
    """Swap heads between the heaviest rank and another while that lowers
    the heavier of the two (so the maximum never rises)."""
    for _ in range(4 * sum(len(b) for b in bins)):
        loads = [sum(costs[i] for i in b) for b in bins]
        top = max(range(len(bins)), key=lambda r: (loads[r], -r))
        best = None
        for other in range(len(bins)):
            if other == top:
                continue
            for a_pos, a in enumerate(bins[top]):
                for b_pos, b in enumerate(bins[other]):
                    delta = costs[a] - costs[b]
                    if delta <= 1e-12:
                        continue
                    new_max = max(loads[top] - delta, loads[other] + delta)
                    if new_max < loads[top] - 1e-12 and (best is None or new_max < best[0]):
                        best = (new_max, other, a_pos, b_pos)
        if best is None:
            return
        _, other, a_pos, b_pos = best
        bins[top][a_pos], bins[other][b_pos] = bins[other][b_pos], bins[top][a_pos]


def balanced_order(costs: tuple[float, ...], world: int) -> tuple[int, ...]:
    """A head order whose `world` contiguous blocks of H/world heads have
    near-equal cost sums: heaviest head first onto the lightest rank with
    room, then improving swaps. Deterministic (ties by index). Returns the
    identity order when it is not better than the identity."""
    heads = len(costs)
    identity = tuple(range(heads))
    if world <= 1 or heads % world:
        return identity
    h = heads // world
    bins: list[list[int]] = [[] for _ in range(world)]
    loads = [0.0] * world
    for i in sorted(range(heads), key=lambda i: (-costs[i], i)):
        r = min((r for r in range(world) if len(bins[r]) < h), key=lambda r: (loads[r], r))
        bins[r].append(i)
        loads[r] += costs[i]
    _improve(bins, costs)
    order = tuple(i for b in bins for i in sorted(b))
    if imbalance(costs, order, world) >= imbalance(costs, identity, world) - 1e-12:
        return identity
    return order


@functools.lru_cache(maxsize=1024)
def layer_order(layer: LayerPattern, geometry: Geometry, world: int, balance: bool, sparse_cost: float = 1.0,
                block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N) -> tuple[int, ...]:
    """The head order the ranks use for this layer (cached per layer pattern)."""
    if not balance:
        return tuple(range(len(layer.heads)))
    return balanced_order(head_costs(layer, geometry, sparse_cost, block_m, block_n), world)


def plan_imbalance(layers, geometry: Geometry, world: int, balance: bool, sparse_cost: float = 1.0) -> float:
    """Step-level imbalance of a plan's layers: sum over layers of the slowest
    rank / sum over layers of the mean rank (each layer waits for its slowest)."""
    slowest = mean = 0.0
    for layer in layers:
        costs = head_costs(layer, geometry, sparse_cost)
        loads = rank_loads(costs, layer_order(layer, geometry, world, balance, sparse_cost), world)
        slowest += max(loads)
        mean += sum(loads) / world
    return slowest / mean if mean > 0 else 1.0

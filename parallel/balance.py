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
it from the same plan, geometry and call shape, deterministically, so all
agree.

Whether to permute (`balance`): "off" never, "on" whenever the balanced
order is better than the identity by the head costs, "auto" (default)
only where the predicted time saved on the slowest rank exceeds what the
permutation costs (`CostModel.permute_ms`) plus the cost model's own
error (`CostModel.margin`). A permutation is folded into the all-to-all's
copies (comm.py), so its modelled cost is only the indexed copies being
slower than plain ones; the margin is what keeps auto from losing where
the head costs mispredict the kernels' times (measured on 2 x H200, Wan
1.3B 480p d 0.3: 12% predicted, none measured).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

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


BALANCE_MODES = ("auto", "on", "off")


def balance_mode(value) -> str:
    """"auto", "on" or "off"; True / False (the earlier on/off setting) are
    "on" / "off"."""
    if value is True or value is False:
        return "on" if value else "off"
    if value not in BALANCE_MODES:
        raise ValueError(f"head balancing must be one of {', '.join(BALANCE_MODES)}, not {value!r}")
    return value


class CallShape(NamedTuple):
    """What the time of one layer call depends on besides the plan and grid
    (the same on every rank)."""
    batch: int = 2       # cond and uncond batched
    head_dim: int = 128  # every Wan size
    itemsize: int = 2    # bf16


@dataclass(frozen=True)
class CostModel:
    """Milliseconds on one GPU, for auto's decision. Modelled, not measured
    per machine: the throughput is what H200 gave (2 x H200, Wan 1.3B 480p,
    B = 2: 1.93 ms per full head per layer, about 570 TFLOP/s; cuDNN alone
    547-570, benchmarks/NOTES.md); the copies' cost is what
    benchmarks/bench_ulysses_layout.py measures on one GPU."""
    attention_tflops: float = 550.0  # dense attention, cuDNN bf16
    memory_gbps: float = 3000.0      # copy bandwidth (H100 peak 3,350, H200 4,800)
    permute_passes: float = 1.25     # extra passes over the exchanged tensors a permuted layout costs:
    #                                  measured 1.26 / 1.22 (1.3B / 14B, H100, bench_ulysses_layout.py,
    #                                  benchmarks/results/h100/ulysses_layout_NVIDIA_H100.txt)
    margin: float = 0.15             # share of the slowest rank's time a saving must exceed (the head
    #                                  costs' error: 1.3B 480p d 0.3 predicted 12% saved, measured none)

    def head_ms(self, geometry: Geometry, call: CallShape) -> float:
        """One full head's attention (QK^T and PV: 4 B L^2 D flops)."""
        return 4.0 * call.batch * geometry.seq_len ** 2 * call.head_dim / (self.attention_tflops * 1e12) * 1e3

    def permute_ms(self, geometry: Geometry, heads: int, world: int, call: CallShape) -> float:
        """What permuting costs a rank over the identity: q, k, v on the way
        in and the output on the way back, each read and written once."""
        chunk = math.ceil(geometry.seq_len / world)
        nbytes = 4 * 2 * call.batch * chunk * heads * call.head_dim * call.itemsize
        return self.permute_passes * nbytes / (self.memory_gbps * 1e9) * 1e3


DEFAULT_CALL = CallShape()
DEFAULT_COST_MODEL = CostModel()


@dataclass(frozen=True)
class Decision:
    """Auto's choice for one layer and what it weighed (ms on the slowest rank)."""
    order: tuple[int, ...]
    slowest_ms: float  # with the identity order
    saving_ms: float   # the balanced order's predicted saving
    cost_ms: float     # the permutation's modelled cost

    @property
    def permuted(self) -> bool:
        return self.order != tuple(range(len(self.order)))


def decide(costs: tuple[float, ...], geometry: Geometry, world: int, call: CallShape = DEFAULT_CALL,
           model: CostModel = DEFAULT_COST_MODEL) -> Decision:
    """The balanced order where its predicted saving exceeds the permutation's
    cost plus the model's margin, else the identity."""
    identity = tuple(range(len(costs)))
    balanced = balanced_order(costs, world)
    head_ms = model.head_ms(geometry, call)
    slowest = max(rank_loads(costs, identity, world)) * head_ms
    saving = slowest - max(rank_loads(costs, balanced, world)) * head_ms
    cost = model.permute_ms(geometry, len(costs), world, call)
    worth = balanced != identity and saving > cost + model.margin * slowest
    return Decision(balanced if worth else identity, slowest, saving, cost)


@functools.lru_cache(maxsize=1024)
def layer_order(layer: LayerPattern, geometry: Geometry, world: int, balance="auto", sparse_cost: float = 1.0,
                block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N, call: CallShape = DEFAULT_CALL,
                model: CostModel = DEFAULT_COST_MODEL) -> tuple[int, ...]:
    """The head order the ranks use for this layer (cached per layer pattern)."""
    mode = balance_mode(balance)
    if mode == "off":
        return tuple(range(len(layer.heads)))
    costs = head_costs(layer, geometry, sparse_cost, block_m, block_n)
    if mode == "on":
        return balanced_order(costs, world)
    return decide(costs, geometry, world, call, model).order


def plan_imbalance(layers, geometry: Geometry, world: int, balance="auto", sparse_cost: float = 1.0,
                   call: CallShape = DEFAULT_CALL, model: CostModel = DEFAULT_COST_MODEL) -> float:
    """Step-level imbalance of a plan's layers: sum over layers of the slowest
    rank / sum over layers of the mean rank (each layer waits for its slowest)."""
    slowest = mean = 0.0
    for layer in layers:
        costs = head_costs(layer, geometry, sparse_cost)
        order = layer_order(layer, geometry, world, balance, sparse_cost, call=call, model=model)
        loads = rank_loads(costs, order, world)
        slowest += max(loads)
        mean += sum(loads) / world
    return slowest / mean if mean > 0 else 1.0

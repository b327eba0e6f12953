"""Plans of a given density in the mix the method reports (most heads
diagonal or multi-diagonal, a few stripes, ~5% skipped, some full), for
benchmarks. Not calibrated on anything: for timing only."""
from __future__ import annotations

from sparse_vdit.patterns import Diagonal, Full, Geometry, LayerPattern, MultiDiagonal, Skip, VerticalStripe, compile_layer
from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan


def mixed_layer(heads: int, full_share: float, diag_rows: int, multi_rows: int) -> LayerPattern:
    """Heads in a fixed order: skip ~5%, stripe ~8%, full share, then diagonal and multi-diagonal alternating."""
    n_skip = max(1, round(0.05 * heads)) if heads >= 10 else 0
    n_stripe = max(1, round(0.08 * heads))
    n_full = round(full_share * heads)
    rest = heads - n_skip - n_stripe - n_full
    patterns = [Skip()] * n_skip + [VerticalStripe((0,))] * n_stripe + [Full()] * n_full
    patterns += [Diagonal(diag_rows) if i % 2 == 0 else MultiDiagonal(multi_rows) for i in range(rest)]
    return LayerPattern(tuple(patterns))


def mixed_plan(layers: int, heads: int, head_dim: int, geometry: Geometry, density: float) -> Plan:
    """The mix whose layer density at `geometry` is closest to `density`."""
    per_pattern: dict = {}

    def layer_density(layer: LayerPattern) -> float:  # mean of per-head densities, each computed once
        for p in layer.heads:
            if p not in per_pattern:
                per_pattern[p] = compile_layer(LayerPattern((p,)), geometry).density()
        return sum(per_pattern[p] for p in layer.heads) / len(layer.heads)

    best = None
    for full_share in [i / 40 for i in range(0, 21)]:
        for diag_rows in (1, 2, 3, 4, 6, 8):
            for multi_rows in (0, 1, 2):
                layer = mixed_layer(heads, full_share, diag_rows, multi_rows)
                d = layer_density(layer)
                if best is None or abs(d - density) < abs(best[0] - density):
                    best = (d, layer)
    d, layer = best
    return Plan(f"benchmark mix d={d:.3f}", ModelShape("wan2.1", layers, heads, head_dim), (layer,) * layers,
                DenseSchedule(0.0), {"kind": "static-baseline", "note": "benchmark mix, not calibrated"})

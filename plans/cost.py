"""What each candidate costs per head at a geometry: measured on the GPU
(its kernel, this card, this shape), or its share of blocks on the CPU.

Measured times are cached per card, software and shape in memory and,
when a path is given, in a JSON file, so calibration measures once.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import torch

from ..patterns import Full, Geometry, LayerPattern, compile_layer
from .atomic import atomic_write_text
from .candidates import Candidate

_memory_cache: dict[str, float] = {}


def block_share_costs(candidates: Sequence[Candidate], geometry: Geometry) -> torch.Tensor:
    """[C + 1]: share of (query, key) pairs each candidate computes; full = 1."""
    costs = []
    for c in candidates:
        if c.mode == "skip":
            costs.append(0.0)
        else:
            compiled = compile_layer(LayerPattern((c.pattern(),)), geometry)
            # a pooled tail: one more key per key block, for every query
            pooled = compiled.table.n_k_blocks / geometry.seq_len if c.tail else 0.0
            costs.append(compiled.density() + pooled)
    return torch.tensor(costs + [1.0], dtype=torch.float64)


def _time_ms(fn: Callable[[], object], repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measured_costs(candidates: Sequence[Candidate], geometry: Geometry, heads: int, head_dim: int,
                   device: torch.device, dtype=torch.bfloat16, cache_path: str | None = None,
                   check_interrupt: Callable[[], None] = lambda: None, precision: str = "bf16") -> torch.Tensor:
    """[C + 1]: median ms per head of each candidate's kernel, then of dense,
    at `precision` (kernels/dispatch.py; 8-bit serves full heads too)."""
    from ..kernels.dispatch import layer_attention

    disk = {}
    if cache_path and os.path.exists(cache_path):
        try:
            with open(cache_path, encoding="utf-8") as handle:
                disk = json.load(handle)
        except (OSError, ValueError):
            disk = {}
    prefix = (f"{torch.cuda.get_device_name(device)}|torch {torch.__version__}|{geometry.describe()}|"
              f"{heads}x{head_dim}|{str(dtype).replace('torch.', '')}|" + ("" if precision == "bf16" else f"{precision}|"))
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, geometry.seq_len, heads * head_dim, device=device, dtype=dtype, generator=generator)
               for _ in range(3))
    costs = []
    for c in list(candidates) + [None]:
        label = "full" if c is None else c.label
        key = prefix + label
        if key not in _memory_cache and key not in disk:
            check_interrupt()
            if c is not None and c.mode == "skip":
                _memory_cache[key] = 0.0
            else:
                layer = LayerPattern(((Full() if c is None else c.pattern()),) * heads)
                compiled = compile_layer(layer, geometry, str(device))
                _memory_cache[key] = _time_ms(lambda: layer_attention(q, k, v, compiled, heads=heads, backend="triton",
                                                                  precision=precision)) / heads
        costs.append(_memory_cache.get(key, disk.get(key)))
    if cache_path:
        disk.update({k: v for k, v in _memory_cache.items() if k.startswith(prefix)})
        atomic_write_text(cache_path, json.dumps(disk, indent=1, sort_keys=True))
    return torch.tensor(costs, dtype=torch.float64)


def candidate_costs(candidates: Sequence[Candidate], geometry: Geometry, heads: int, head_dim: int,
                    device: torch.device, dtype=torch.bfloat16, cache_path: str | None = None,
                    check_interrupt: Callable[[], None] = lambda: None,
                    precision: str = "bf16") -> tuple[torch.Tensor, str]:
    """(costs [C + 1], source): measured where the Triton kernel runs, else block share."""
    from ..kernels import triton_backend

    probe = torch.empty(1, 1, heads, head_dim, device=device, dtype=dtype)
    if device.type == "cuda" and triton_backend.can_serve(probe):
        costs = measured_costs(candidates, geometry, heads, head_dim, device, dtype, cache_path, check_interrupt,
                               precision)
        shown = "" if precision == "bf16" else f", {precision}"
        return costs, f"measured on {torch.cuda.get_device_name(device)} (ms per head{shown})"
    return block_share_costs(candidates, geometry), "block-count"

"""One layer's attention under a compiled plan, in either ComfyUI layout.

Layouts: "flat" is [B, L, H*D] (Wan, LTXV); "bhld" is [B, H, L, D]
(HunyuanVideo, Mochi, Cosmos). Full heads go to a dense function as one
group (ComfyUI's own attention, or cuDNN SDPA), skip heads get zeros, and
all sparse heads go to one block-sparse kernel launch: Triton on a GPU,
the reference path otherwise or when Triton cannot serve the call.

precision: "bf16" (the exact path), "8-bit" (INT8 QK^T + FP8 PV,
kernels/triton_sparse8.py; with no dense_fn given, full heads join the same
launch as dense rows) or "auto" (8-bit when the call is eligible and its
rows are long enough to repay the quantization pre-pass on this card: the
card's auto_min_keys in launch_table.py, from its 8-bit:16-bit tensor rates;
never on a card the table does not know). A call the 8-bit path cannot
serve runs in bf16, with one log line per reason; so does a layer with
routed heads that ask for the pooled tail (only the 16-bit kernel has it).
"""
from __future__ import annotations

import logging
import weakref
from typing import Callable, Literal

import torch

from ..patterns.layer import CompiledLayer
from . import routing
from .dense import dense_attention
from .launch_table import H200_AUTO_MIN_KEYS, launch_for_device
from .reference import reference_sparse_attention

Layout = Literal["flat", "bhld"]
DenseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
log = logging.getLogger("sparse_vdit")

_triton_failures: set[tuple] = set()  # shapes whose Triton launch failed once
PRECISIONS = ("bf16", "8-bit", "auto")
# "auto" runs a layer in 8 bits only when its launch averages at least the
# card's auto_min_keys keys per query (launch_table.py). On Hopper, measured:
# the pre-pass costs about one pass over q/k/v per call (0.43 ms at Wan 1.3B
# 480p, 2.4 ms at 14B 720p on an H200 in the run of 2026-11-30) and the 8-bit
# kernel is 15-20% faster than bf16 per block, so it breaks even near 7,300
# (1.3B) and 4,600 (14B) keys per query; measured there, every table above
# 7,500 gained (1.04-1.22x) and every one below it lost (0.42-0.96x)
# (benchmarks/results/kernels8_NVIDIA_H200.md). Other cards: modelled.
AUTO_MIN_KEYS_PER_QUERY = H200_AUTO_MIN_KEYS
_logged_8bit: set[str] = set()
# Calls whose 8-bit launch raised once run bf16 from then on: a kernel that
# fails to compile would otherwise be compiled again, and fail, on every call.
_failures8: set[tuple] = set()
_tables8: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # CompiledLayer -> table with full rows


def as_blhd(x: torch.Tensor, layout: Layout, heads: int) -> torch.Tensor:
    """A [B, L, H, D] view of x, no copy."""
    if layout == "flat":
        batch, seq_len, width = x.shape
        if width % heads:
            raise ValueError(f"last dim {width} is not a multiple of {heads} heads")
        return x.view(batch, seq_len, heads, width // heads)
    if layout == "bhld":
        return x.transpose(1, 2)
    raise ValueError(f"unknown layout {layout!r}")


def head_runs(heads: tuple[int, ...]) -> list[tuple[int, int]]:
    """Sorted head indices as [start, stop) runs, so slices replace gathers."""
    runs: list[tuple[int, int]] = []
    for h in heads:
        if runs and runs[-1][1] == h:
            runs[-1] = (runs[-1][0], h + 1)
        else:
            runs.append((h, h + 1))
    return runs


def _take_heads(x: torch.Tensor, heads: tuple[int, ...]) -> torch.Tensor:
    """[B, L, h, D] of the given heads: a view when they are contiguous."""
    runs = head_runs(heads)
    if len(runs) == 1:
        return x[:, :, runs[0][0]:runs[0][1]]
    return x.index_select(2, torch.tensor(heads, device=x.device))


def _put_heads(out: torch.Tensor, heads: tuple[int, ...], value: torch.Tensor) -> None:
    start = 0
    for a, b in head_runs(heads):
        out[:, :, a:b] = value[:, :, start:start + b - a]
        start += b - a


def _new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """Uninitialised output; tests swap in a NaN-filled one to catch unwritten elements."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _sparse_heads(q, k, v, out, compiled: CompiledLayer, backend: str, tail=None) -> None:
    table = compiled.table
    if backend in ("auto", "triton"):
        from . import triton_backend

        key = (q.device.type, q.dtype, q.shape[-1], table.seq_len)
        if key not in _triton_failures and triton_backend.can_serve(q):
            try:
                triton_backend.run(q, k, v, out, table, tail)
                return
            except Exception as error:  # never fail a generation on a kernel
                if backend == "triton":
                    raise
                _triton_failures.add(key)
                log.warning("sparse_vdit: Triton kernel failed (%s); using the reference path for %s", error, key)
        elif backend == "triton":
            raise RuntimeError("Triton backend requested but it cannot serve this call")
    _put_heads(out, compiled.sparse_heads, reference_sparse_attention(q, k, v, table, tail=tail))


def _log_8bit_once(reason: str) -> None:
    if reason not in _logged_8bit:
        _logged_8bit.add(reason)
        log.warning("sparse_vdit: 8-bit attention cannot serve this call (%s); running bf16.", reason)


def use_8bit(q4: torch.Tensor, compiled: CompiledLayer, precision: str, backend: str) -> bool:
    """Whether this call runs the 8-bit kernel. q4: [B, L, H, D]."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (one of {PRECISIONS})")
    if precision == "bf16" or backend == "reference":
        return False
    if _key8(q4) in _failures8:
        return False  # logged when it failed
    from . import triton_backend
    reason = triton_backend.ineligible8(q4)
    if precision == "auto":
        return reason is None and q4.is_cuda and auto_min_keys(q4.device) is not None
    if reason is not None:
        _log_8bit_once(reason)
        return False
    return True


def auto_min_keys(device) -> int | None:
    """Keys per query from which `auto` runs 8 bits on this device (None: never)."""
    return launch_for_device(device).auto_min_keys


def _key8(q4: torch.Tensor) -> tuple:
    return (q4.device, q4.dtype, q4.shape[-1], q4.shape[1])


def table_with_full_rows(compiled: CompiledLayer, device):
    """The layer's table plus a dense row set for each full head (cached):
    full heads served by the 8-bit kernel in the same launch."""
    if not compiled.full_heads:
        return compiled.table
    cached = _tables8.get(compiled)
    if cached is None:
        from .triton_sparse8 import table_with_dense_rows
        cached = table_with_dense_rows(compiled.table, compiled.full_heads, compiled.geometry.seq_len,
                                       q_device=device)
        _tables8[compiled] = cached
    return cached


def mean_keys_per_query(table) -> float:
    """Keys a query attends on average over the table's heads (cached)."""
    if "mean_keys_per_query" not in table.derived:
        pairs = float(table.computed_pairs().sum())
        table.derived["mean_keys_per_query"] = pairs / (len(table.heads) * table.seq_len)
    return table.derived["mean_keys_per_query"]


def _attention_8bit(q4, k4, v4, out4, compiled: CompiledLayer, table, backend: str) -> bool:
    """Run the 8-bit kernel over `table`; False (logged once) if it failed."""
    from . import triton_backend
    try:
        triton_backend.run8(q4, k4, v4, out4, table)
        return True
    except Exception as error:  # never fail a generation on a kernel
        if backend == "triton" and not isinstance(error, ValueError):
            raise
        _failures8.add(_key8(q4))
        _log_8bit_once(f"{type(error).__name__}: {error}")
        return False


def layer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, compiled: CompiledLayer, *,
                    heads: int, layout: Layout = "flat", out_layout: Layout | None = None,
                    dense_fn: DenseFn | None = None, backend: str = "auto", precision: str = "bf16",
                    full_heads_8bit: bool | None = None) -> torch.Tensor:
    """Attention for one layer following its compiled pattern.

    dense_fn(q, k, v) takes and returns [B, h, L, D]; it serves full heads.
    backend: "auto", "triton" (raise if unavailable) or "reference".
    precision: "bf16", "8-bit" or "auto" (module docstring).
    full_heads_8bit: whether the 8-bit path also serves full heads (default:
    when no dense_fn is given, i.e. no other attention override is chained).
    """
    if heads != compiled.num_heads:
        raise ValueError(f"plan layer has {compiled.num_heads} heads, call has {heads}")
    out_layout = out_layout or layout
    q4, k4, v4 = (as_blhd(x, layout, heads) for x in (q, k, v))
    batch, seq_len, _, head_dim = q4.shape
    if seq_len != compiled.geometry.seq_len or k4.shape[1] != seq_len:
        raise ValueError(f"plan compiled for {compiled.geometry.seq_len} tokens, call has q {seq_len} / k {k4.shape[1]}")
    eight = use_8bit(q4, compiled, precision, backend)
    if eight and compiled.tail_rows is not None:  # `auto` picks 16 bits here without a word
        if precision == "8-bit":
            _log_8bit_once("routed heads with a pooled tail are served by the 16-bit kernel only")
        eight = False
    full8 = eight and bool(compiled.full_heads) and (dense_fn is None if full_heads_8bit is None else full_heads_8bit)
    if eight and compiled.table is None and not full8:
        eight = False  # only full heads, served by the chained dense function
    if eight and precision == "auto":
        table8 = table_with_full_rows(compiled, q.device) if full8 else compiled.table
        eight = mean_keys_per_query(table8) >= auto_min_keys(q.device)
        full8 = full8 and eight
    dense_fn = dense_fn or dense_attention

    if len(compiled.full_heads) == heads and not full8:  # nothing sparse: one dense call, no gathers
        result = dense_fn(q4.transpose(1, 2), k4.transpose(1, 2), v4.transpose(1, 2))
        return result if out_layout == "bhld" else result.transpose(1, 2).reshape(batch, seq_len, heads * head_dim)

    if out_layout == "flat":
        out = _new_output((batch, seq_len, heads * head_dim), q)
        out4 = out.view(batch, seq_len, heads, head_dim)
    else:
        out = _new_output((batch, heads, seq_len, head_dim), q)
        out4 = out.transpose(1, 2)

    for a, b in head_runs(compiled.skip_heads):
        out4[:, :, a:b] = 0
    tail = None
    if compiled.routing:  # routed heads: this call's rows, before any path reads the table
        routing.route(q4, k4, compiled)
        if compiled.tail_rows is not None:
            tail = routing.pooled_tail(k4, v4, compiled)
    if eight:
        table = table_with_full_rows(compiled, q.device) if full8 else compiled.table
        if compiled.routing:
            routing.copy_routed(compiled, table)
        eight = _attention_8bit(q4, k4, v4, out4, compiled, table, backend)
        full8 = full8 and eight  # on failure everything below runs in bf16
    if compiled.full_heads and not full8:
        group = [_take_heads(x, compiled.full_heads).transpose(1, 2) for x in (q4, k4, v4)]
        _put_heads(out4, compiled.full_heads, dense_fn(*group).transpose(1, 2))
    if compiled.table is not None and not eight:
        _sparse_heads(q4, k4, v4, out4, compiled, backend, tail)
    return out

"""Measured attention time for the head-to-head: CUDA events around every
self-attention call (host time included where the GPU waits for it) and,
from the profiler, the GPU kernel time inside those calls."""
from __future__ import annotations

import bisect
import time

import torch

RANGE_DENSE, RANGE_SPARSE = "sv_self_attention_warmup_step", "sv_self_attention_sparse_step"


class AttentionTimer:
    """CUDA events around every self-attention call of Wan's blocks, by step.

    Wraps ``comfy.ldm.wan.model.optimized_attention`` (what WanSelfAttention
    calls, overrides included); a call whose keys are as long as its queries
    is self-attention (cross-attention keys are the text)."""

    def __init__(self, sigmas: list[float], device, first_sparse: int):
        import comfy.ldm.wan.model as wan

        self.first_sparse = first_sparse
        self.wan, self.original = wan, wan.optimized_attention
        self.sigmas, self.cuda = sigmas, device.type == "cuda"
        self.events: list[tuple[int, object, object]] = []
        self.cpu_ms: list[tuple[int, float]] = []

        def timed(q, k, v, *args, **kwargs):
            if k.shape[1] != q.shape[1]:
                return self.original(q, k, v, *args, **kwargs)
            step = self.step_of(kwargs.get("transformer_options") or {})
            with torch.profiler.record_function(RANGE_SPARSE if step >= self.first_sparse else RANGE_DENSE):
                return record(step, q, k, v, *args, **kwargs)

        def record(step, q, k, v, *args, **kwargs):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = self.original(q, k, v, *args, **kwargs)
                end.record()
                self.events.append((step, start, end))
                return out
            t = time.perf_counter()
            out = self.original(q, k, v, *args, **kwargs)
            self.cpu_ms.append((step, 1000 * (time.perf_counter() - t)))
            return out

        wan.optimized_attention = timed

    def step_of(self, options) -> int:
        sig = options.get("sigmas")
        if sig is None:
            return -1
        s = float(sig[0])
        return min(range(len(self.sigmas) - 1), key=lambda i: abs(self.sigmas[i] - s))

    def reset(self):
        self.events, self.cpu_ms = [], []

    def kernel_ms(self, run) -> tuple[float, float]:
        """GPU kernel time (ms) inside self-attention calls over one run(),
        from the profiler: (warm-up steps, sparse steps). Host time is left
        out: what the calls cost once the host keeps up, as at real sizes."""
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            run()
            torch.cuda.synchronize()
        return kernel_time_in_ranges(prof.events(), (RANGE_DENSE, RANGE_SPARSE))

    def per_step_ms(self) -> dict[int, float]:
        if self.cuda:
            torch.cuda.synchronize()
            pairs = [(s, a.elapsed_time(b)) for s, a, b in self.events]
        else:
            pairs = self.cpu_ms
        out: dict[int, float] = {}
        for s, ms in pairs:
            out[s] = out.get(s, 0.0) + ms
        return out


def kernel_time_in_ranges(events, names) -> tuple[float, ...]:
    """Per range name, the summed duration (ms) of the GPU kernels that start
    inside that range's span on the GPU timeline (the profiler's device-side
    copy of a record_function range; one stream, so nothing else runs there)."""
    from torch.autograd import DeviceType

    spans = {name: [] for name in names}
    kernels = []
    for e in events:
        if e.device_type != DeviceType.CUDA:
            continue
        if e.name in spans:
            spans[e.name].append((e.time_range.start, e.time_range.end))
        else:
            kernels.append((e.time_range.start, e.time_range.end - e.time_range.start))
    kernels.sort()
    starts = [k[0] for k in kernels]
    totals = []
    for name in names:
        total = 0.0
        for a, b in spans[name]:
            lo, hi = bisect.bisect_left(starts, a), bisect.bisect_right(starts, b)
            total += sum(d for _, d in kernels[lo:hi])
        totals.append(total / 1000.0)
    return tuple(totals)

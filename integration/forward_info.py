"""Per-forward facts the attention hook needs but ComfyUI does not pass:
the token grid of the current latent and the sampling step. The diffusion
model wrapper computes them and puts them in transformer_options."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..patterns.geometry import Geometry

KEY = "sparse_vdit_forward"


@dataclass
class ForwardInfo:
    geometry: Geometry
    step: int | None          # index into the sampling schedule, None if unknown
    total_steps: int | None
    sigma: float | None
    self_attention_calls: int = field(default=0)  # for models without block_index
    outer: object = None      # an override installed after ours, called first
    # False where a forward makes more self-attention calls than it has
    # layers (VACE): without block_index their layers cannot be counted.
    countable: bool = True


def hidden_key_run(mask: torch.Tensor, seq_len: int) -> tuple[int, int] | None:
    """For a mask that only hides one contiguous run of keys, the same for
    every query and batch row (HunyuanVideo's padded text), that run as
    (start, end) (start == end: nothing hidden); None for any other mask.
    Boolean masks keep True; additive masks keep 0 and hide large negative
    values."""
    if mask.shape[-1] != seq_len or (mask.ndim >= 2 and mask.shape[-2] != 1):
        return None
    rows = mask.reshape(-1, seq_len)
    if not torch.equal(rows, rows[:1].expand_as(rows)):
        return None
    row = rows[0]
    if row.dtype == torch.bool:
        hidden = ~row
    else:
        hidden = row != 0
        if not bool(((row == 0) | (row < -1e4)).all()):
            return None  # a soft bias, not padding
    where = torch.nonzero(hidden).flatten()
    if where.numel() == 0:
        return seq_len, seq_len
    start, end = int(where[0]), int(where[-1]) + 1
    return (start, end) if end - start == where.numel() else None


def step_of(transformer_options: dict) -> tuple[int | None, int | None, float | None]:
    """(step, total_steps, sigma) from the sampler's sigmas, nearest match so
    samplers that evaluate between steps still land on a step."""
    sigmas = transformer_options.get("sigmas")
    if sigmas is None:
        return None, None, None
    sigma = float(sigmas.flatten()[0]) if torch.is_tensor(sigmas) else float(sigmas)
    schedule = transformer_options.get("sample_sigmas")
    if schedule is None or len(schedule) < 2:
        return None, None, sigma
    schedule = torch.as_tensor(schedule, dtype=torch.float64).flatten().cpu()
    step = int(torch.argmin((schedule[:-1] - sigma).abs()))
    return step, int(schedule.numel() - 1), sigma

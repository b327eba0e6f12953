"""A training state small enough to travel: factored second moments, no first
moment, weights on the bfloat16 grid.

The wan480 yardstick (25.5 M parameters) must resume from a checkpoint that
travels with the repository in one device call (64 MiB with everything else).
AdamW's state is 12 bytes a parameter with fp32 weights (300 MB); this one is
2 bytes a parameter plus a few vectors (51 MB):

- second moments factored as in Adafactor (Shazeer & Stern 2018): for a
  matrix, running means of the squared gradient over its rows and over its
  columns, v ~ outer(row, col) / mean(row); vectors keep a full running mean;
- no first moment; each update's RMS is clipped to ``clip`` (Adafactor's
  update clipping) and decoupled weight decay is applied;
- every weight is kept on the bfloat16 grid by stochastic rounding after each
  step (its fp32 value rounded up or down with the odds of its distance), so
  the bf16 copy in the checkpoint holds the weights exactly and a resumed run
  continues bit for bit. The rounding noise comes from a generator seeded by
  (seed, step): a resumed run draws the same noise.
"""
from __future__ import annotations

import torch


def round_to_bf16_grid(x: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """In place: fp32 ``x`` rounded to a bfloat16 value, stochastically with
    ``generator`` (the neighbour above with odds equal to the distance), else
    to nearest. Adds random low bits, then clears them."""
    if x.dtype != torch.float32:
        raise TypeError(f"round_to_bf16_grid takes float32, got {x.dtype}")
    if generator is None:
        x.copy_(x.to(torch.bfloat16).float())
        return
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, generator=generator, device=x.device, dtype=torch.int32)
    finite = torch.isfinite(x)
    bits.copy_(torch.where(finite, (bits + noise) & -65536, bits))


def on_bf16_grid(x: torch.Tensor) -> bool:
    return bool((x.float().view(torch.int32) & 65535).eq(0).all())


class FactoredRMS(torch.optim.Optimizer):
    """Adafactor-like optimizer (see the module docstring). State per
    parameter: ``step``; matrices ``row`` and ``col``, others ``v``."""

    def __init__(self, params, lr: float = 3e-4, beta2: float = 0.999, eps: float = 1e-30, clip: float = 1.0,
                 weight_decay: float = 0.0, seed: int = 0):
        super().__init__(params, dict(lr=lr, beta2=beta2, eps=eps, clip=clip, weight_decay=weight_decay))
        self.seed = int(seed)

    @torch.no_grad()
    def step(self, closure=None):
        generator = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    if p.ndim >= 2:
                        state["row"] = torch.zeros(p.shape[0], device=p.device)
                        state["col"] = torch.zeros(p[0].numel(), device=p.device)
                    else:
                        state["v"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = int(state["step"])
                if generator is None:  # one stream per optimizer step, the same after a resume
                    generator = torch.Generator(device=p.device).manual_seed(self.seed * 1_000_003 + t)
                beta2 = group["beta2"]
                g = p.grad.float()
                g2 = g * g + group["eps"]
                if p.ndim >= 2:
                    g2m = g2.reshape(p.shape[0], -1)
                    state["row"].lerp_(g2m.mean(1), 1 - beta2)
                    state["col"].lerp_(g2m.mean(0), 1 - beta2)
                    # row / mean(row) first: the product of two tiny means underflows fp32
                    v = torch.outer(state["row"] / state["row"].mean(), state["col"])
                    v = v.view(p.shape)
                else:
                    state["v"].lerp_(g2, 1 - beta2)
                    v = state["v"]
                update = g / (v / (1 - beta2 ** t)).sqrt()
                rms = update.pow(2).mean().sqrt()
                update /= (rms / group["clip"]).clamp_min(1.0)
                new = p.float() * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * update
                round_to_bf16_grid(new, generator)
                p.copy_(new)
        return None

"""Attention inputs with planted per-head patterns, for the demo and tests.

Each head's q and k are built from random Fourier features of token
positions, so the dot product q.k is large exactly where the planted
pattern says a query should look:
  diagonal       - same frame, nearby rows   (features of (frame * far, row))
  multi_diagonal - nearby rows, any frame    (features of row only)
  vertical_stripe- keys of the first frame carry a direction every q shares
  uniform        - q ~ 0: attention spreads over everything, and the values
                   vary with frame and row, so only full attention gets it right
  negligible     - v ~ 0: the head contributes nothing (can be skipped)
"""
from __future__ import annotations

import math

import torch

from .patterns import Geometry

PLANTED_MODES = ("diagonal", "multi_diagonal", "vertical_stripe", "uniform", "negligible")


def _positions(geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame and row of every token; extra tokens get frame -1, row -100 (far away)."""
    t = torch.arange(geometry.frames).repeat_interleave(geometry.rows * geometry.cols).float()
    y = torch.arange(geometry.rows).repeat_interleave(geometry.cols).repeat(geometry.frames).float()
    far = lambda n, value: torch.full((n,), value)  # noqa: E731
    t = torch.cat([far(geometry.prefix, -1000.0), t, far(geometry.suffix, -1000.0)])
    y = torch.cat([far(geometry.prefix, -1000.0), y, far(geometry.suffix, -1000.0)])
    return t, y


def _fourier(coords: torch.Tensor, dim: int, length: float, generator) -> torch.Tensor:
    """[L, dim] features whose dot products approximate exp(-d^2 / (2 length^2))."""
    freqs = torch.randn(coords.shape[1], dim, generator=generator) / length
    phase = torch.rand(dim, generator=generator) * 2 * math.pi
    return math.sqrt(2.0 / dim) * torch.cos(coords @ freqs + phase)


def planted_head(mode: str, geometry: Geometry, head_dim: int, generator, sharpness: float = 6.0,
                 reach_rows: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of one head, each [L, head_dim], float32."""
    t, y = _positions(geometry)
    n = geometry.seq_len
    v = torch.randn(n, head_dim, generator=generator)
    noise = lambda: 0.05 * torch.randn(n, head_dim, generator=generator)  # noqa: E731
    # q.k / sqrt(D) = sharpness^2 * kernel: peaked, at the logit range real
    # (RMS-normed) heads have, so quantizing kernels see realistic inputs
    scale = sharpness / math.sqrt(math.sqrt(head_dim))
    if mode in ("diagonal", "multi_diagonal"):
        coords = torch.stack([t * (1000.0 if mode == "diagonal" else 0.0), y], 1)
        feats = _fourier(coords, head_dim, reach_rows, generator) * math.sqrt(head_dim)
        return scale * feats + noise(), scale * feats + noise(), v
    if mode == "vertical_stripe":
        direction = torch.randn(head_dim, generator=generator)
        direction = direction / direction.norm() * sharpness * math.sqrt(math.sqrt(head_dim))
        q = direction.expand(n, head_dim) + noise()
        k = noise() + (t == 0).float()[:, None] * direction
        return q, k, v
    if mode == "uniform":
        # values vary with the frame and row, so only attending everything gives the average
        n_rows = geometry.frames * geometry.rows
        per_row = torch.randn(n_rows + 1, head_dim, generator=generator) * 2
        row = torch.where(t >= 0, t * geometry.rows + y, torch.full_like(t, n_rows)).long()
        return noise() * 0.1, noise(), v * 0.2 + per_row[row]
    if mode == "negligible":
        return noise(), noise(), v * 1e-4
    raise ValueError(f"unknown planted mode {mode!r}; known: {PLANTED_MODES}")


def planted_layer(modes: list[str], geometry: Geometry, head_dim: int = 128, batch: int = 1, seed: int = 0,
                  dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as ComfyUI passes them to Wan attention: [B, L, H*D]."""
    generator = torch.Generator().manual_seed(seed)
    heads = [[planted_head(m, geometry, head_dim, generator) for m in modes] for _ in range(batch)]
    out = []
    for part in range(3):
        x = torch.stack([torch.stack([h[part] for h in sample], 1) for sample in heads])  # [B, L, H, D]
        out.append(x.reshape(batch, geometry.seq_len, -1).to(device=device, dtype=dtype))
    return tuple(out)

"""Independent oracles for tests: pattern semantics written token by token,
and float64 masked dense attention. Nothing here reuses the package's
mask-building code, so a bug there cannot hide in both."""
from __future__ import annotations

import torch

from sparse_vdit.patterns import Geometry


def token_unit(geometry: Geometry, index: int):
    """'P' / 'S' for extra tokens, else (frame, row)."""
    if index < geometry.prefix:
        return "P"
    if index >= geometry.prefix + geometry.video_tokens:
        return "S"
    local = index - geometry.prefix
    return divmod(local // geometry.cols, geometry.rows)


def token_allowed(pattern, geometry: Geometry, i: int, j: int) -> bool:
    if pattern.name == "skip":
        return False
    if pattern.name == "full":
        return True
    qi, kj = token_unit(geometry, i), token_unit(geometry, j)
    if isinstance(qi, str) or isinstance(kj, str):
        return True
    (tq, yq), (tk, yk) = qi, kj
    if pattern.name == "diagonal":
        return tq == tk and abs(yq - yk) <= pattern.rows
    if pattern.name == "multi_diagonal":
        return abs(yq - yk) <= pattern.rows and (pattern.frames is None or abs(tq - tk) <= pattern.frames)
    if pattern.name == "vertical_stripe":
        wanted = {f if f >= 0 else geometry.frames + f for f in pattern.frames}
        wanted = {f for f in wanted if 0 <= f < geometry.frames} or {0}
        return tk in wanted
    raise AssertionError(pattern.name)


def token_mask(pattern, geometry: Geometry) -> torch.Tensor:
    n = geometry.seq_len
    return torch.tensor([[token_allowed(pattern, geometry, i, j) for j in range(n)] for i in range(n)])


def block_rounded(mask: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """Token mask rounded out to whole blocks, back at token resolution."""
    n = mask.shape[0]
    out = torch.zeros_like(mask)
    for a in range(0, n, block_m):
        for b in range(0, n, block_n):
            if mask[a:a + block_m, b:b + block_n].any():
                out[a:a + block_m, b:b + block_n] = True
    return out


def masked_attention64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q, k, v: [B, L, D] for one head; mask [L, L]. float64; rows with no key give 0."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0) @ v


def layer_oracle(q, k, v, layer, geometry: Geometry, block_m: int, block_n: int) -> torch.Tensor:
    """q, k, v: [B, L, H, D]. Every head by its pattern, block-rounded. float64 [B, L, H, D]."""
    outs = []
    for head, pattern in enumerate(layer.heads):
        mask = block_rounded(token_mask(pattern, geometry), block_m, block_n)
        outs.append(masked_attention64(q[:, :, head], k[:, :, head], v[:, :, head], mask))
    return torch.stack(outs, 2)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())

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
    if pattern.name == "window_3d":
        xq, xk = ((index - geometry.prefix) % geometry.cols for index in (i, j))
        return abs(tq - tk) <= pattern.frames and abs(yq - yk) <= pattern.rows and abs(xq - xk) <= pattern.cols
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
        if pattern.name == "routed":  # chosen from q and k, by its definition
            mask = block_mask_to_tokens(routed_block_mask64(q, k, geometry, pattern.share, head, block_m, block_n),
                                        geometry.seq_len, block_m, block_n)
        else:
            mask = block_rounded(token_mask(pattern, geometry), block_m, block_n)
        outs.append(masked_attention64(q[:, :, head], k[:, :, head], v[:, :, head], mask))
    return torch.stack(outs, 2)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def routed_definition64(q: torch.Tensor, k: torch.Tensor, geometry: Geometry, share: float, head: int,
                        block_m: int, block_n: int):
    """A routed head by its definition, in float64: (pooled scores [n_q, n_k]
    = batch mean of block-mean q . block-mean k / sqrt(D), {routed query
    block: its forced key blocks (own, extra-token)}, key blocks per routed
    row). Query blocks holding extra tokens are not routed (they see all)."""
    import math
    n = geometry.seq_len
    n_k = -(-n // block_n)

    def means(x, size):
        x = x[:, :, head].double()
        return torch.stack([x[:, i * size:(i + 1) * size].mean(1) for i in range(-(-n // size))], 1)  # [B, blocks, D]

    is_extra = [token_unit(geometry, i) in ("P", "S") for i in range(n)]
    extra_keys = {j for j in range(n_k) if any(is_extra[j * block_n:(j + 1) * block_n])}
    scores = torch.einsum("bid,bjd->ij", means(q, block_m), means(k, block_n)) / q.shape[0] * q.shape[-1] ** -0.5
    forced = {}
    for i in range(-(-n // block_m)):
        tokens = range(i * block_m, min((i + 1) * block_m, n))
        if not any(is_extra[t] for t in tokens):
            forced[i] = {t // block_n for t in tokens} | extra_keys
    k_row = min(n_k, max([math.ceil(share * n_k)] + [len(f) for f in forced.values()]))
    return scores.cpu(), forced, k_row


def routed_block_mask64(q, k, geometry: Geometry, share: float, head: int, block_m: int, block_n: int) -> torch.Tensor:
    """bool [n_q, n_k]: per routed query block its forced key blocks, then
    the highest pooled scores, ties to the lower block; other rows all."""
    scores, forced, k_row = routed_definition64(q, k, geometry, share, head, block_m, block_n)
    mask = torch.ones(scores.shape, dtype=torch.bool)
    for i, must in forced.items():
        order = sorted(range(scores.shape[1]), key=lambda j: (j not in must, -float(scores[i, j]), j))
        mask[i] = False
        mask[i, order[:k_row]] = True
    return mask


def assert_routed_rows_valid(mask: torch.Tensor, q, k, geometry: Geometry, share: float, head: int,
                             block_m: int, block_n: int, tol: float) -> None:
    """mask [n_q, n_k] is a top-k of the float64 pooled scores up to `tol`
    (relative to the largest score): for devices whose rounding may swap
    near-ties. Forced blocks kept, k per routed row, other rows full."""
    scores, forced, k_row = routed_definition64(q, k, geometry, share, head, block_m, block_n)
    mask = mask.cpu()
    slack = tol * float(scores.abs().max())
    for i in range(scores.shape[0]):
        if i not in forced:
            assert bool(mask[i].all()), f"query block {i} holds extra tokens and must see every key block"
            continue
        chosen = set(mask[i].nonzero()[:, 0].tolist())
        assert len(chosen) == k_row and forced[i] <= chosen, (i, sorted(chosen), sorted(forced[i]))
        picked = [float(scores[i, j]) for j in chosen - forced[i]]
        left = [float(scores[i, j]) for j in range(scores.shape[1]) if j not in chosen]
        if picked and left:
            assert min(picked) >= max(left) - slack, f"query block {i}: a lower-scored block was chosen"


def block_mask_to_tokens(mask: torch.Tensor, seq_len: int, block_m: int, block_n: int) -> torch.Tensor:
    return mask.repeat_interleave(block_m, 0).repeat_interleave(block_n, 1)[:seq_len, :seq_len]

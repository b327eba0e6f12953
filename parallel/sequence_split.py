"""Ulysses around ComfyUI's own WanModel, without Raylight: for tests and
benchmarks.

What Raylight's USP forward does to Wan's token sequence, done with module
hooks so ComfyUI's forward runs unchanged: before the first block the
sequence is zero-padded at the end to a multiple of the group size and
rank r keeps chunk r; every block gets its chunk of the RoPE table (and of
per-token modulation, Wan2.2 TI2V); after the last block the chunks are
gathered and the padding dropped. `dense_usp_forward` stands in for
Raylight's self-attention (xfuser's Ulysses attention: three all-to-alls,
dense attention over the padded sequence, padded keys included).
"""
from __future__ import annotations

import math
import types

import torch
import torch.distributed as dist

from ..integration.video_hook import OVERRIDE_KEY
from . import comm


def _chunk(x: torch.Tensor, full_len: int, world: int, rank: int) -> torch.Tensor:
    """Rank's chunk of dim 1 of a tensor of full_len tokens, zero-padded."""
    per = math.ceil(full_len / world)
    padded = per * world
    if padded != full_len:
        pad = torch.zeros((x.shape[0], padded - full_len, *x.shape[2:]), dtype=x.dtype, device=x.device)
        x = torch.cat([x, pad], dim=1)
    return x[:, rank * per:(rank + 1) * per]


class SequenceSplit:
    """Hooks on `diffusion_model.blocks`; `remove()` takes them off."""

    def __init__(self, diffusion_model, group=None):
        self.group = group
        self.world, self.rank = comm.group_size(group), comm.group_rank(group)
        self.full_len = None
        blocks = diffusion_model.blocks
        self.handles = [block.register_forward_pre_hook(self._pre, with_kwargs=True) for block in blocks]
        self.handles.append(blocks[0].register_forward_pre_hook(self._first, with_kwargs=True, prepend=True))
        self.handles.append(blocks[-1].register_forward_hook(self._last))

    def _first(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        self.full_len = x.shape[1]
        x = _chunk(x, self.full_len, self.world, self.rank)
        return ((x,) + tuple(args[1:]), kwargs) if args else (args, dict(kwargs, x=x))

    def _pre(self, module, args, kwargs):
        kwargs = dict(kwargs)
        for name in ("freqs", "e"):
            value = kwargs.get(name)
            if torch.is_tensor(value) and value.ndim >= 2 and value.shape[1] == self.full_len and self.full_len > 1:
                kwargs[name] = _chunk(value, self.full_len, self.world, self.rank)
        return args, kwargs

    def _last(self, module, args, output):
        parts = [torch.empty_like(output) for _ in range(self.world)]
        dist.all_gather(parts, output.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, :self.full_len]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def dense_usp_forward(group=None):
    """A self_attn.forward like Raylight's under xfuser: ComfyUI's forward,
    attention by Ulysses over the padded sequence (padded keys attended)."""

    def attention(func, q, k, v, heads=None, **kwargs):
        batch, chunk, width = q.shape
        d = width // heads
        local = [comm.seq_to_heads([x.view(batch, chunk, heads, d)], group)[0] for x in (q, k, v)]
        passed = {k_: v_ for k_, v_ in kwargs.items() if k_ not in ("skip_reshape", "skip_output_reshape", "heads")}
        out = func(*(x.transpose(1, 2) for x in local), heads=local[0].shape[2], skip_reshape=True,
                   skip_output_reshape=True, **passed)
        return comm.heads_to_seq(out.transpose(1, 2), group).reshape(batch, chunk, width)

    def usp_self_attn_forward(self, x, freqs, transformer_options={}, **kwargs):
        options = dict(transformer_options)
        options[OVERRIDE_KEY] = attention
        return type(self).forward(self, x, freqs, transformer_options=options, **kwargs)

    return usp_self_attn_forward


def install_dense_usp(diffusion_model, group=None) -> None:
    """Every Wan block's self_attn.forward becomes the dense stand-in."""
    forward = dense_usp_forward(group)
    for block in diffusion_model.blocks:
        block.self_attn.forward = types.MethodType(forward, block.self_attn)

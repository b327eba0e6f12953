"""Cosmos 1: [B, H, L, D] self-attention over (t, h, w) tokens (latent
divisible by the patch, no extra tokens), no block_index: layers are the
full-attention sub-blocks, counted in call order."""
from __future__ import annotations

from dataclasses import dataclass

from .base import ModelAdapter, has_class
from .cosmos_predict2 import cosmos_shape


@dataclass(frozen=True)
class Cosmos1Adapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "GeneralDIT"):
            return None
        shape = cosmos_shape(diffusion_model)
        if shape is None:
            return None
        blocks, heads, head_dim, patch = shape
        layers = sum(getattr(sub, "block_type", None) in ("fa", "full_attn")
                     for block in blocks.values() for sub in getattr(block, "blocks", ()))
        if not layers:
            return None
        return cls("cosmos1", layers, heads, head_dim, patch, pads_to_patch=False)

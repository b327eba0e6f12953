"""Cosmos 1: [B, H, L, D] self-attention over (t, h, w) tokens (latent
divisible by the patch, no extra tokens), no block_index: layers are the
full-attention sub-blocks, counted in call order."""
from __future__ import annotations

from dataclasses import dataclass

from .base import ModelAdapter, has_class


@dataclass(frozen=True)
class Cosmos1Adapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "GeneralDIT"):
            return None
        blocks, heads, channels = (getattr(diffusion_model, a, None) for a in ("blocks", "num_heads", "model_channels"))
        pt, ps = getattr(diffusion_model, "patch_temporal", None), getattr(diffusion_model, "patch_spatial", None)
        if blocks is None or not heads or not channels or not pt or not ps:
            return None
        layers = sum(getattr(sub, "block_type", None) in ("fa", "full_attn")
                     for block in blocks.values() for sub in getattr(block, "blocks", ()))
        if not layers:
            return None
        return cls("cosmos1", layers, int(heads), int(channels) // int(heads), (int(pt), int(ps), int(ps)),
                   pads_to_patch=False)

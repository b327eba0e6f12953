"""Cosmos Predict2: [B, H, L, D] self-attention over (t, h, w) tokens;
block_index from ComfyUI 0.2x, counted before."""
from __future__ import annotations

from dataclasses import dataclass

from .base import ModelAdapter, has_class


@dataclass(frozen=True)
class CosmosPredict2Adapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "MiniTrainDIT"):
            return None
        shape = cosmos_shape(diffusion_model)
        if shape is None:
            return None
        blocks, heads, head_dim, patch = shape
        return cls("cosmos_predict2", len(blocks), heads, head_dim, patch, pads_to_patch=False)


def cosmos_shape(diffusion_model):
    """(blocks, heads, head_dim, patch) of a Cosmos model (both generations
    keep these attribute names), or None."""
    blocks, heads, channels = (getattr(diffusion_model, a, None) for a in ("blocks", "num_heads", "model_channels"))
    pt, ps = getattr(diffusion_model, "patch_temporal", None), getattr(diffusion_model, "patch_spatial", None)
    if blocks is None or not heads or not channels or not pt or not ps:
        return None
    return blocks, int(heads), int(channels) // int(heads), (int(pt), int(ps), int(ps))

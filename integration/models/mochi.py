"""Mochi: joint [video, text] attention in [B, H, L, D], text cropped to its
length (no mask), no block_index (layers are counted), and no diffusion-model
wrapper (the grid is read in ComfyUI's apply_model wrapper)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import ModelAdapter, has_class


@dataclass(frozen=True)
class MochiAdapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "AsymmDiTJoint"):
            return None
        blocks, heads, hidden = (getattr(diffusion_model, a, None) for a in ("blocks", "num_heads", "hidden_size_x"))
        patch = getattr(diffusion_model, "patch_size", None)
        if blocks is None or not heads or not hidden or not patch:
            return None
        return cls("mochi", len(blocks), int(heads), int(hidden) // int(heads), (1, int(patch), int(patch)),
                   text="after", pads_to_patch=False, wrapper="apply_model")

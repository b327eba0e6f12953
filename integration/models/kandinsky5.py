"""Kandinsky 5 video (native since ComfyUI 0.1x): [B, H, L, D] self-attention
over video tokens only (text has its own encoder blocks and reaches the video
through cross-attention), block_index on the visual blocks. The image variant
(4-D latent) runs dense."""
from __future__ import annotations

from dataclasses import dataclass

from .base import ModelAdapter, has_class


@dataclass(frozen=True)
class Kandinsky5Adapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "Kandinsky5"):
            return None
        blocks = getattr(diffusion_model, "visual_transformer_blocks", None)
        patch = tuple(getattr(diffusion_model, "patch_size", ()) or ())
        attn = getattr(blocks[0], "self_attention", None) if blocks else None
        heads, head_dim = getattr(attn, "num_heads", None), getattr(attn, "head_dim", None)
        if not heads or not head_dim or len(patch) != 3:
            return None
        return cls("kandinsky5", len(blocks), int(heads), int(head_dim), tuple(int(p) for p in patch))

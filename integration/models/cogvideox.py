"""CogVideoX 1.0 / 1.5 (native since ComfyUI 0.21): flat [B, L, H*D] joint
self-attention over [text (226 tokens), video], no mask, no block_index
(one self-attention call per block: counted). The latent is padded to the
patch (temporal patch 2 on 1.5)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import ModelAdapter, has_class


@dataclass(frozen=True)
class CogVideoXAdapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "CogVideoXTransformer3DModel"):
            return None
        blocks = getattr(diffusion_model, "blocks", None)
        patch = getattr(diffusion_model, "patch_size", None)
        if not blocks or not patch:
            return None
        heads, head_dim = getattr(blocks[0], "num_heads", None), getattr(blocks[0], "head_dim", None)
        if not heads or not head_dim:
            return None
        patch_t = getattr(diffusion_model, "patch_size_t", None) or 1
        return cls("cogvideox", len(blocks), int(heads), int(head_dim), (int(patch_t), int(patch), int(patch)),
                   text="before")

"""LTXV: flat self-attention, patch size 1, tokens in (frame, row, col)
order, no block_index before 0.2x (layers are counted). LTX-2 / LTXAV
(separate audio self-attention) is not served: it runs dense."""
from __future__ import annotations

from dataclasses import dataclass

from .base import ModelAdapter, has_class


@dataclass(frozen=True)
class LTXVAdapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "LTXVModel") or type(diffusion_model).__name__.startswith("LTXAV"):
            return None
        blocks = getattr(diffusion_model, "transformer_blocks", None)
        attn = getattr(blocks[0], "attn1", None) if blocks else None
        heads, inner = getattr(attn, "heads", None), getattr(diffusion_model, "inner_dim", None)
        if not heads or not inner:
            return None
        return cls("ltxv", len(blocks), int(heads), int(inner) // int(heads), (1, 1, 1), pads_to_patch=False)

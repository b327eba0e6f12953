"""Wan2.1 / Wan2.2 and every native variant that subclasses WanModel (T2V,
I2V, FLF, Fun, VACE, Camera, Phantom...): flat [B, L, H*D] self-attention
over video tokens only; block_index from ComfyUI 0.5.0, grid_sizes from
0.2x. Extra tokens: frames appended through time_dim_concat (Phantom),
Fun-style reference tokens first (reference_latent through ref_conv), and
in-context reference latents appended last (context_latents, 0.3x)."""
from __future__ import annotations

from dataclasses import dataclass

from ...patterns.geometry import Geometry
from .base import CallTokens, ModelAdapter, grid_geometry, has_class, forward_argument, tokens_of


@dataclass(frozen=True)
class WanAdapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "WanModel"):
            return None
        blocks, heads, dim, patch = (getattr(diffusion_model, a, None) for a in ("blocks", "num_heads", "dim", "patch_size"))
        if blocks is None or not heads or not dim or patch is None or len(patch) != 3:
            return None
        return cls("wan", len(blocks), int(heads), int(dim) // int(heads), tuple(int(p) for p in patch))

    def forward_geometry(self, diffusion_model, x, args, kwargs) -> Geometry:
        grid = grid_geometry(x, self.patch_size)
        frames = grid.frames
        time_dim_concat = forward_argument(diffusion_model, args, kwargs, "time_dim_concat")
        if time_dim_concat is not None:
            frames += grid_geometry(time_dim_concat, self.patch_size).frames
        reference = kwargs.get("reference_latent") if getattr(diffusion_model, "ref_conv", None) is not None else None
        prefix = grid.rows * grid.cols if reference is not None else 0
        suffix = sum(tokens_of(lat, self.patch_size, True) for lat in kwargs.get("context_latents") or ())
        return Geometry(frames, grid.rows, grid.cols, prefix=prefix, suffix=suffix)

    def countable(self, diffusion_model) -> bool:
        # VACE runs extra self-attention on its context with the same block index.
        return getattr(diffusion_model, "vace_blocks", None) is None

    def disagreement(self, tokens: CallTokens, options: dict) -> str | None:
        sizes = options.get("grid_sizes")
        if sizes is None:
            return None
        grid = tokens.geometry
        if tuple(int(s) for s in sizes) != (grid.frames, grid.rows, grid.cols):
            return f"ComfyUI's grid_sizes {tuple(int(s) for s in sizes)} differ from the grid read off the latent"
        return None

"""HunyuanVideo (T2V, I2V) and HunyuanVideo 1.5 (same class): joint text +
video self-attention in the [B, H, L, D] layout, an additive mask on padded
text keys, double blocks then single blocks with block_index restarting.

Token order: [video, text] up to ComfyUI 0.13, [text, video] since 0.14.
Read from the model, not the version: the old double block carries
`flipped_img_txt = True` (video first); the new one has no such flag.
ComfyUI >= 0.14 also names the image slice of single-block calls
(`img_slice`), which must agree. Reference latents (I2V) are video-grid
tokens placed just before the video."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ...patterns.geometry import Geometry
from .base import CallTokens, ModelAdapter, has_class, forward_argument, tokens_of


@dataclass(frozen=True)
class HunyuanVideoAdapter(ModelAdapter):
    @classmethod
    def recognise(cls, diffusion_model):
        if not has_class(diffusion_model, "HunyuanVideo"):
            return None
        double, single = getattr(diffusion_model, "double_blocks", None), getattr(diffusion_model, "single_blocks", None)
        heads, hidden = getattr(diffusion_model, "num_heads", None), getattr(diffusion_model, "hidden_size", None)
        patch = tuple(getattr(diffusion_model, "patch_size", ()) or ())
        if double is None or single is None or not heads or not hidden or len(patch) != 3:
            return None  # e.g. the 2-D image variant
        video_first = bool(getattr(double[0], "flipped_img_txt", False)) if len(double) else False
        return cls("hunyuan_video", len(double) + len(single), int(heads), int(hidden) // int(heads),
                   tuple(int(p) for p in patch), double_layers=len(double), text="after" if video_first else "before",
                   pads_to_patch=False)

    def forward_geometry(self, diffusion_model, x, args, kwargs) -> Geometry:
        grid = super().forward_geometry(diffusion_model, x, args, kwargs)
        reference = tokens_of(forward_argument(diffusion_model, args, kwargs, "ref_latent"), self.patch_size, False)
        return replace(grid, prefix=reference)

    def disagreement(self, tokens: CallTokens, options: dict) -> str | None:
        image = options.get("img_slice")
        if image is None or tokens.text_span is None:
            return None
        start, end = tokens.text_span
        text_first = self.text == "before"
        if not text_first or int(image[0]) != end or int(image[1]) != tokens.geometry.seq_len:
            return f"ComfyUI's img_slice {list(image)} does not match text tokens at {start}..{end}"
        return None

"""The yardstick sizes: one small trained Wan2.1 for fast CPU checks, one at
video scale for the GPU head-to-head.

Both are ComfyUI's own ``WanModel`` (t2v) with head_dim 128, as the real
models. ``tiny`` has 2,048 tokens per sample (a 128-token query block is half
a frame); ``video`` has 13,312 tokens per sample and 1,024 per frame, so
query blocks sit inside one frame as at Wan2.1 480p (1,560 tokens a frame),
and it is above ComfyUI core's sparse node's default ``min_tokens`` (12,288),
so that node serves it at its defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field

WAN_COMMON = dict(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16, freq_dim=256, text_dim=4096,
                  window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)


@dataclass(frozen=True)
class YardstickSize:
    name: str
    config: dict = field(hash=False)  # WanModel keyword arguments
    latent: tuple[int, int, int]  # latent frames, height, width (1x2x2 patchify)
    weights: str  # file name in yardstick/
    text_len: int = 16

    @property
    def grid(self) -> tuple[int, int, int]:
        t, h, w = self.latent
        return t, h // 2, w // 2

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def heads(self) -> int:
        return self.config["num_heads"] * self.config["num_layers"]


TINY = YardstickSize("tiny", dict(WAN_COMMON, dim=256, ffn_dim=768, num_heads=2, num_layers=6),
                     latent=(8, 32, 32), weights="wan_tiny_yardstick.safetensors")
VIDEO = YardstickSize("video", dict(WAN_COMMON, dim=256, ffn_dim=768, num_heads=2, num_layers=8),
                      latent=(13, 64, 64), weights="wan_video_yardstick.safetensors")
SIZES = {s.name: s for s in (TINY, VIDEO)}


def size_named(name: str) -> YardstickSize:
    if name not in SIZES:
        raise ValueError(f"unknown yardstick size {name!r}; pick one of {sorted(SIZES)}")
    return SIZES[name]

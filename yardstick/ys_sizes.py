"""The yardstick sizes: one small trained Wan2.1 for fast CPU checks, one at
video scale for the GPU head-to-head, one at Wan2.1 480p length.

Both are ComfyUI's own ``WanModel`` (t2v) with head_dim 128, as the real
models. ``tiny`` has 2,048 tokens per sample (a 128-token query block is half
a frame); ``video`` has 13,312 tokens per sample and 1,024 per frame, so
query blocks sit inside one frame as at Wan2.1 480p (1,560 tokens a frame),
and it is above ComfyUI core's sparse node's default ``min_tokens`` (12,288),
so that node serves it at its defaults.

``wan480`` is evaluated at Wan2.1 480p's latent 21 x 60 x 104 (32,760 tokens,
1,560 a frame, as the 1.3B model), 8 layers x 4 heads of 128: the smallest
WanModel the brief allows (dim = 4 x 128 = 512) with the ffn cut to 512, so
its weights fit 16 MB in 4 bits (``quant``) and its training state (bf16
weights, factored second moments) fits one device call. It trains on short
clips (``short_latent``, 7 frames) first, then on the full grid, on the
many-object scenes of ys_scenes.py (``data``). ``wan480-tiny`` is the same
recipe at a CPU size, for the tests.
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
    data: str = "classic"  # "classic": ys_data.make_batch; "scenes": ys_scenes.make_scenes
    short_latent: tuple[int, int, int] | None = None  # first-stage training clip, if any
    quant: str | None = None  # stored weights: None = fp16, "int4" = ys_quant (4 bits, per-group scales)

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
WAN480 = YardstickSize("wan480", dict(WAN_COMMON, dim=512, ffn_dim=512, num_heads=4, num_layers=8),
                       latent=(21, 60, 104), weights="wan480_yardstick.safetensors", data="scenes",
                       short_latent=(7, 60, 104), quant="int4")
WAN480_TINY = YardstickSize("wan480-tiny", dict(WAN_COMMON, dim=256, ffn_dim=256, num_heads=2, num_layers=2),
                            latent=(3, 16, 24), weights="wan480_tiny_yardstick.safetensors", data="scenes",
                            short_latent=(2, 16, 24), quant="int4")
SIZES = {s.name: s for s in (TINY, VIDEO, WAN480, WAN480_TINY)}


def size_named(name: str) -> YardstickSize:
    if name not in SIZES:
        raise ValueError(f"unknown yardstick size {name!r}; pick one of {sorted(SIZES)}")
    return SIZES[name]

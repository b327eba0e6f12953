"""What the pack needs to know about a loaded ComfyUI model: its family and
attention shape, read off the diffusion model object. Returns None for a
model the pack does not understand (it then runs dense)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    family: str
    layers: int
    heads: int
    head_dim: int
    patch_size: tuple[int, int, int]

    def describe(self) -> str:
        return f"{self.family}: {self.layers} layers x {self.heads} heads x head_dim {self.head_dim}"


def diffusion_model_of(model_patcher):
    return getattr(getattr(model_patcher, "model", None), "diffusion_model", None)


def describe_diffusion_model(diffusion_model) -> ModelInfo | None:
    name = type(diffusion_model).__name__
    # Every native Wan variant (T2V, I2V, FLF, Fun, VACE, Camera, Phantom...)
    # subclasses WanModel and keeps .blocks / .num_heads / .dim / .patch_size.
    if name.endswith("WanModel") or any(c.__name__ == "WanModel" for c in type(diffusion_model).__mro__):
        blocks = getattr(diffusion_model, "blocks", None)
        heads = getattr(diffusion_model, "num_heads", None)
        dim = getattr(diffusion_model, "dim", None)
        patch = getattr(diffusion_model, "patch_size", None)
        if blocks is None or not heads or not dim or patch is None or len(patch) != 3:
            return None
        return ModelInfo("wan", len(blocks), int(heads), int(dim) // int(heads), tuple(int(p) for p in patch))
    return None


def describe_model(model_patcher) -> ModelInfo | None:
    diffusion_model = diffusion_model_of(model_patcher)
    info = None if diffusion_model is None else describe_diffusion_model(diffusion_model)
    if info is None:
        return None
    # A more precise family name, e.g. "wan2.1 t2v", where the config says it.
    config = getattr(getattr(getattr(model_patcher, "model", None), "model_config", None), "unet_config", None) or {}
    precise = " ".join(str(config[k]) for k in ("image_model", "model_type") if config.get(k))
    return ModelInfo(precise or info.family, info.layers, info.heads, info.head_dim, info.patch_size)

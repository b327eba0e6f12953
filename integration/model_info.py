"""What the pack needs to know about a loaded ComfyUI model: its family and
attention shape, read off the diffusion model object. Returns None for a
model the pack does not understand (it then runs dense)."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ModelInfo:
    family: str
    layers: int
    heads: int
    head_dim: int
    patch_size: tuple[int, int, int]
    # HunyuanVideo: double blocks, then single blocks whose block_index
    # restarts at 0; plan layer = double_layers + index for single blocks.
    double_layers: int = 0
    # Joint attention: text tokens follow the video tokens (their count
    # depends on the prompt, so it is read off each call).
    text_after_video: bool = False
    # Wan pads the latent up to the patch size; HunyuanVideo's patch
    # embedding floors.
    pads_to_patch: bool = True
    # Where the latent grid is read: the diffusion model's own wrapper, or
    # ComfyUI's apply_model wrapper for models that have none (Mochi).
    wrapper: str = "diffusion_model"

    def describe(self) -> str:
        return f"{self.family}: {self.layers} layers x {self.heads} heads x head_dim {self.head_dim}"


def diffusion_model_of(model_patcher):
    return getattr(getattr(model_patcher, "model", None), "diffusion_model", None)


def _is(diffusion_model, class_name: str) -> bool:
    return any(c.__name__ == class_name for c in type(diffusion_model).__mro__)


def describe_diffusion_model(diffusion_model) -> ModelInfo | None:
    name = type(diffusion_model).__name__
    if _is(diffusion_model, "HunyuanVideo"):
        double = getattr(diffusion_model, "double_blocks", None)
        single = getattr(diffusion_model, "single_blocks", None)
        heads = getattr(diffusion_model, "num_heads", None)
        hidden = getattr(diffusion_model, "hidden_size", None)
        patch = tuple(getattr(diffusion_model, "patch_size", ()) or ())
        if double is None or single is None or not heads or not hidden or len(patch) != 3:
            return None  # e.g. the 2-D image variant
        return ModelInfo("hunyuan_video", len(double) + len(single), int(heads), int(hidden) // int(heads),
                         tuple(int(p) for p in patch), double_layers=len(double), text_after_video=True,
                         pads_to_patch=False)
    if _is(diffusion_model, "AsymmDiTJoint"):
        # Mochi: joint [video, text] attention, [B, H, L, D], text cropped to
        # its length (no mask), no block_index, no diffusion-model wrapper.
        blocks, heads, hidden = (getattr(diffusion_model, a, None) for a in ("blocks", "num_heads", "hidden_size_x"))
        patch = getattr(diffusion_model, "patch_size", None)
        if blocks is None or not heads or not hidden or not patch:
            return None
        return ModelInfo("mochi", len(blocks), int(heads), int(hidden) // int(heads), (1, int(patch), int(patch)),
                         text_after_video=True, pads_to_patch=False, wrapper="apply_model")
    if _is(diffusion_model, "MiniTrainDIT"):
        # Cosmos Predict2: [B, H, L, D] self-attention over (t, h, w) tokens,
        # no block_index (layers are counted).
        blocks, heads, channels = (getattr(diffusion_model, a, None) for a in ("blocks", "num_heads", "model_channels"))
        pt, ps = getattr(diffusion_model, "patch_temporal", None), getattr(diffusion_model, "patch_spatial", None)
        if blocks is None or not heads or not channels or not pt or not ps:
            return None
        return ModelInfo("cosmos_predict2", len(blocks), int(heads), int(channels) // int(heads),
                         (int(pt), int(ps), int(ps)), pads_to_patch=False)
    if _is(diffusion_model, "GeneralDIT"):
        # Cosmos 1: [B, H, L, D] self-attention over (t, h, w) tokens (latent
        # divisible by the patch, no extra tokens), no block_index: layers are
        # the full-attention sub-blocks, counted in call order.
        blocks, heads, channels = (getattr(diffusion_model, a, None) for a in ("blocks", "num_heads", "model_channels"))
        pt, ps = getattr(diffusion_model, "patch_temporal", None), getattr(diffusion_model, "patch_spatial", None)
        if blocks is None or not heads or not channels or not pt or not ps:
            return None
        layers = sum(getattr(sub, "block_type", None) in ("fa", "full_attn")
                     for block in blocks.values() for sub in getattr(block, "blocks", ()))
        if not layers:
            return None
        return ModelInfo("cosmos1", layers, int(heads), int(channels) // int(heads), (int(pt), int(ps), int(ps)),
                         pads_to_patch=False)
    if _is(diffusion_model, "LTXVModel") and not name.startswith("LTXAV"):
        # LTXV: patch size 1, tokens in (frame, row, col) order, no block_index
        # (layers are counted), head_dim 64 at the real size.
        blocks = getattr(diffusion_model, "transformer_blocks", None)
        attn = getattr(blocks[0], "attn1", None) if blocks else None
        heads = getattr(attn, "heads", None)
        inner = getattr(diffusion_model, "inner_dim", None)
        if not heads or not inner:
            return None
        return ModelInfo("ltxv", len(blocks), int(heads), int(inner) // int(heads), (1, 1, 1), pads_to_patch=False)
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
    return replace(info, family=precise or info.family)

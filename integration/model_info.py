"""What the pack needs to know about a loaded ComfyUI model: the adapter of
its family (integration/models/), read off the diffusion model object. None
for a model the pack does not understand (it then runs dense)."""
from __future__ import annotations

from .models import ADAPTERS, ModelAdapter

# The name the rest of the pack uses for "what we know about the model".
ModelInfo = ModelAdapter


def diffusion_model_of(model_patcher):
    return getattr(getattr(model_patcher, "model", None), "diffusion_model", None)


def describe_diffusion_model(diffusion_model) -> ModelAdapter | None:
    for adapter in ADAPTERS:
        found = adapter.recognise(diffusion_model)
        if found is not None:
            return found
    return None


def describe_model(model_patcher) -> ModelAdapter | None:
    diffusion_model = diffusion_model_of(model_patcher)
    info = None if diffusion_model is None else describe_diffusion_model(diffusion_model)
    if info is None:
        return None
    # A more precise family name, e.g. "wan2.1 t2v", where the config says it.
    config = getattr(getattr(getattr(model_patcher, "model", None), "model_config", None), "unet_config", None) or {}
    precise = " ".join(str(config[k]) for k in ("image_model", "model_type") if config.get(k))
    return info.with_family(precise) if precise else info

"""Sampling inside a node, the way ComfyUI's KSampler does it: noise from
the seed, a progress bar with previews, interruptible."""
from __future__ import annotations


def sample_latent(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                  positive, negative, latent: dict, denoise: float = 1.0) -> dict:
    import comfy.sample
    import comfy.utils
    import latent_preview

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, steps)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                  denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = dict(latent)
    out["samples"] = samples
    return out

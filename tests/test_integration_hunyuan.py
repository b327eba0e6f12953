"""HunyuanVideo on a real ComfyUI: joint text + video self-attention ([video,
text] before ComfyUI 0.14, [text, video] since) in the [B, H, L, D] layout, an additive mask on padded text keys, double blocks then
single blocks with block_index restarting. A tiny model built from ComfyUI's
own classes is patched with a mixed plan and checked against an oracle run."""
import dataclasses

import pytest
import torch

import comfy_harness as H
from oracle import layer_oracle, masked_attention64
from plan_oracle import mixed_plan

pytestmark = pytest.mark.comfyui

DOUBLE, SINGLE, HEADS, HEAD_DIM = 1, 1, 4, 16
TEXT, TEXT_KEPT = 20, 14
T, R, C = H.DEFAULT_GRID


def tiny_hunyuan(comfy, v15: bool = False):
    """HunyuanVideo (patch 1x2x2, 16 latent channels) or HunyuanVideo 1.5
    (patch 1x1x1, 32 latent channels + image and mask channels, cond-type
    embedding, vision projection; no pooled vector, no guidance)."""
    import comfy.ldm.hunyuan_video.model as hv

    wanted = {"in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 32,
              "hidden_size": HEADS * HEAD_DIM, "mlp_ratio": 2.0, "num_heads": HEADS, "depth": DOUBLE,
              "depth_single_blocks": SINGLE, "axes_dim": [4, 6, 6], "theta": 256, "patch_size": [1, 2, 2],
              "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False,
              "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False}
    config_class = "HunyuanVideo"
    if v15:
        wanted.update({"in_channels": 65, "out_channels": 32, "vec_in_dim": None, "patch_size": [1, 1, 1],
                       "guidance_embed": False, "use_cond_type_embedding": True, "vision_in_dim": 16,
                       "meanflow_sum": True})
        config_class = "HunyuanVideo15"
    fields = {f.name for f in dataclasses.fields(hv.HunyuanVideoParams)}
    return H.tiny_model(config_class, {"image_model": "hunyuan_video", **{k: v for k, v in wanted.items() if k in fields}})


def conds(text_kept=TEXT_KEPT, masked=True, ref_latent=None):
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, TEXT, dtype=torch.int64)
    mask[:, :text_kept] = 1

    def one():
        extra = {"pooled_output": torch.randn(1, 768, generator=g)}
        if masked:
            extra["attention_mask"] = mask.clone()
        if ref_latent is not None:
            extra["ref_latent"] = ref_latent
        return [[torch.randn(1, TEXT, 32, generator=g), extra]]
    return one(), one()


def plan():
    return mixed_plan("hunyuan_video")


def text_first() -> bool:
    """ComfyUI >= 0.14 orders joint attention [text, video] (the oracle knows
    it from the version; the pack must find it out from the model)."""
    return H.version_tuple() >= (0, 14)


def oracle_override(has_block_index: bool, text_kept: int, ref_tokens: int = 0):
    """Joint self-attention as the float64 oracle of the plan: padded text
    keys removed, padded text queries dense over the kept keys, text before
    or after the video as this ComfyUI orders it, reference tokens just
    before the video."""
    from sparse_vdit.patterns import Geometry

    layers, video = plan().layers, T * R * C
    length = TEXT + ref_tokens + video
    keep = torch.ones(length, dtype=torch.bool)
    if text_first():
        keep[text_kept:TEXT] = False
        geometry = Geometry(T, R, C, prefix=text_kept + ref_tokens)
    else:
        keep[ref_tokens + video + text_kept:] = False
        geometry = Geometry(T, R, C, prefix=ref_tokens, suffix=text_kept)
    state = {"n": 0}

    def override(func, q, k, v, heads, **kwargs):
        if q.shape[2] == k.shape[2] == length:
            options = kwargs["transformer_options"]
            index = state["n"] % (DOUBLE + SINGLE)
            if has_block_index:
                index = options["block_index"] + (DOUBLE if options.get("block_type") == "single" else 0)
            state["n"] += 1
            q4, k4, v4 = (x.transpose(1, 2).double() for x in (q, k, v))  # [B, L, H, D]
            out = torch.empty_like(q4)
            out[:, keep] = layer_oracle(q4[:, keep], k4[:, keep], v4[:, keep], layers[index], geometry, 128, 64)
            if not bool(keep.all()):
                pad = torch.ones(int((~keep).sum()), int(keep.sum()), dtype=torch.bool)
                out[:, ~keep] = torch.stack([masked_attention64(q4[:, ~keep, h], k4[:, keep, h], v4[:, keep, h], pad)
                                             for h in range(heads)], 2)
            return out.to(q.dtype).reshape(q.shape[0], -1, heads * q.shape[-1])
        return func(q, k, v, heads, **kwargs)
    return override, state


CASES = {
    "padded text": dict(text_kept=TEXT_KEPT),
    "unpadded text": dict(text_kept=TEXT),
    "no text mask": dict(text_kept=TEXT, masked=False),
    "reference latent (I2V)": dict(text_kept=TEXT_KEPT, ref=True),
    "HunyuanVideo 1.5, padded text": dict(text_kept=TEXT_KEPT, v15=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hunyuan_video_joint_attention(comfy, case):
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.integration.model_info import describe_model

    spec = CASES[case]
    if spec.get("v15") and not hasattr(comfy.supported_models, "HunyuanVideo15"):
        assert H.version_tuple() < (0, 4), "this ComfyUI should have HunyuanVideo 1.5"
        return
    model = tiny_hunyuan(comfy, spec.get("v15", False))
    # HunyuanVideo 1.5 has no 2x2 patch: a latent the grid's own size, 32 channels.
    latent = torch.zeros(1, 32, T, R, C) if spec.get("v15") else None
    info = describe_model(model)
    assert (info.layers, info.heads, info.head_dim, info.double_layers) == (2, HEADS, HEAD_DIM, DOUBLE)
    assert info.text == ("before" if text_first() else "after")  # read off the model, checked by version
    ref_latent = torch.randn(1, 16, 1, 2 * R, 2 * C, generator=torch.Generator().manual_seed(3)) if spec.get("ref") else None
    positive, negative = conds(spec["text_kept"], spec.get("masked", True), ref_latent)
    override, state = oracle_override(H.has_block_index(), spec["text_kept"], R * C if spec.get("ref") else 0)
    expected = H.sample(H.install_attention_override(model, override), positive, negative, latent, seed=5, steps=2,
                        cfg=1.0)
    assert state["n"] == 2 * (DOUBLE + SINGLE)
    patched = apply_plan(model, plan(), backend="reference")
    out = H.sample(patched, positive, negative, latent, seed=5, steps=2, cfg=1.0)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    assert hook.counts.get("sparse") == 2 * (DOUBLE + SINGLE), hook.counts
    dense = H.sample(model, positive, negative, latent, seed=5, steps=2, cfg=1.0)
    assert H.rel_diff(out, dense) > 1e-3  # the plan matters
    assert H.rel_diff(out, expected) < 1e-4

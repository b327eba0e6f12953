"""HunyuanVideo on a real ComfyUI: joint [video, text] self-attention in the
[B, H, L, D] layout, an additive mask on padded text keys, double blocks then
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


def tiny_hunyuan(comfy):
    import comfy.ldm.hunyuan_video.model as hv

    wanted = {"in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 32,
              "hidden_size": HEADS * HEAD_DIM, "mlp_ratio": 2.0, "num_heads": HEADS, "depth": DOUBLE,
              "depth_single_blocks": SINGLE, "axes_dim": [4, 6, 6], "theta": 256, "patch_size": [1, 2, 2],
              "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False,
              "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False}
    fields = {f.name for f in dataclasses.fields(hv.HunyuanVideoParams)}
    return H.tiny_model("HunyuanVideo", {"image_model": "hunyuan_video", **{k: v for k, v in wanted.items() if k in fields}})


def conds():
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, TEXT, dtype=torch.int64)
    mask[:, :TEXT_KEPT] = 1
    def one():
        return [[torch.randn(1, TEXT, 32, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                         "attention_mask": mask.clone()}]]
    return one(), one()


def plan():
    return mixed_plan("hunyuan_video")


def oracle_override(has_block_index: bool):
    """Video+text self-attention as the float64 oracle of the plan, padded
    text keys removed; padded text queries attend the kept keys densely."""
    from sparse_vdit.patterns import Geometry

    layers, video = plan().layers, T * R * C
    state = {"n": 0}

    def override(func, q, k, v, heads, **kwargs):
        if q.shape[2] == k.shape[2] == video + TEXT:
            options = kwargs["transformer_options"]
            index = state["n"] % (DOUBLE + SINGLE)
            if has_block_index:
                index = options["block_index"] + (DOUBLE if options.get("block_type") == "single" else 0)
            state["n"] += 1
            kept = video + TEXT_KEPT
            q4, k4, v4 = (x.transpose(1, 2) for x in (q, k, v))  # [B, L, H, D]
            head = layer_oracle(q4[:, :kept], k4[:, :kept], v4[:, :kept], layers[index], Geometry(T, R, C, suffix=TEXT_KEPT), 128, 64)
            tail = torch.stack([masked_attention64(q4[:, kept:, h], k4[:, :kept, h], v4[:, :kept, h],
                                                   torch.ones(TEXT - TEXT_KEPT, kept, dtype=torch.bool)) for h in range(heads)], 2)
            out = torch.cat([head, tail], 1).to(q.dtype)
            return out.reshape(q.shape[0], -1, heads * q.shape[-1])
        return func(q, k, v, heads, **kwargs)
    return override, state


def test_hunyuan_video_joint_attention_with_padded_text(comfy):
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.integration.model_info import describe_model

    model = tiny_hunyuan(comfy)
    info = describe_model(model)
    assert (info.layers, info.heads, info.head_dim, info.double_layers) == (2, HEADS, HEAD_DIM, DOUBLE)
    positive, negative = conds()
    override, state = oracle_override(H.has_block_index())
    expected = H.sample(H.install_attention_override(model, override), positive, negative, seed=5, steps=2, cfg=1.0)
    assert state["n"] == 2 * (DOUBLE + SINGLE)
    patched = apply_plan(model, plan(), backend="reference")
    out = H.sample(patched, positive, negative, seed=5, steps=2, cfg=1.0)
    hook = patched.model_options["transformer_options"]["optimized_attention_override"]
    assert hook.counts.get("sparse") == 2 * (DOUBLE + SINGLE), hook.counts
    dense = H.sample(model, positive, negative, seed=5, steps=2, cfg=1.0)
    assert H.rel_diff(out, dense) > 1e-3  # the plan matters
    assert H.rel_diff(out, expected) < 1e-4

"""Wan variants with extra self-attention tokens or calls, on a real ComfyUI:
Fun-style reference tokens placed first, Phantom-style frames appended
through time_dim_concat, VACE's extra self-attention calls under one block
index. Each is patched with a mixed plan and checked against an oracle run."""
import pytest
import torch

import comfy_harness as H
from plan_oracle import LAYERS, mixed_plan, oracle_override, patched_and_oracle

pytestmark = pytest.mark.comfyui

T, R, C = H.DEFAULT_GRID


def run_both(model, positive, negative, geometry, by_block_index=False, latent=None):
    """(patched, oracle, hook, state) for the mixed plan, one step."""
    plan = mixed_plan()
    override, state = oracle_override(plan, lambda n: geometry if n == geometry.seq_len else None, by_block_index)
    out, expected, hook = patched_and_oracle(model, positive, negative, plan, override, latent)
    return out, expected, hook, state


def test_fun_reference_tokens_come_first(comfy):
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0, extra_config={"in_dim_ref_conv": 16})
    positive, negative = H.make_conds(model, seed=1)
    reference = torch.randn(1, 16, 1, 2 * R, 2 * C, generator=torch.Generator().manual_seed(3))
    positive = [[positive[0][0], {"reference_latents": [reference]}]]
    negative = [[negative[0][0], {"reference_latents": [reference]}]]
    geometry = Geometry(T, R, C, prefix=R * C)
    out, expected, hook, state = run_both(model, positive, negative, geometry)
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4


def test_phantom_frames_appended_through_time_dim_concat(comfy):
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    extra = torch.randn(1, 16, 2, 2 * R, 2 * C, generator=torch.Generator().manual_seed(4))
    positive = [[positive[0][0], {"time_dim_concat": extra}]]
    negative = [[negative[0][0], {"time_dim_concat": extra}]]
    geometry = Geometry(T + 2, R, C)
    out, expected, hook, state = run_both(model, positive, negative, geometry)
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4


def test_vace_extra_self_attention_uses_its_block_pattern(comfy):
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0, config_class="WAN21_Vace",
                             extra_config={"model_type": "vace", "vace_layers": 1, "vace_in_dim": 96})
    positive, negative = H.make_conds(model, seed=1)
    geometry = Geometry(T, R, C)
    if not H.has_block_index():  # VACE calls cannot be told from layers: everything runs dense, nothing breaks
        from sparse_vdit.integration.install import apply_plan
        patched = apply_plan(model, mixed_plan(), backend="reference")
        out = H.sample(patched, positive, negative, seed=5, steps=1)
        hook = patched.model_options["transformer_options"]["optimized_attention_override"]
        assert "sparse" not in hook.counts and torch.equal(out, H.sample(model, positive, negative, seed=5, steps=1))
        return
    out, expected, hook, state = run_both(model, positive, negative, geometry, by_block_index=True)
    assert state["n"] == LAYERS + 1 and hook.counts.get("sparse") == LAYERS + 1, hook.counts  # the VACE call too
    assert H.rel_diff(out, expected) < 1e-4


@pytest.mark.parametrize("config_class,extra,channels", [
    ("WAN21_I2V", {"model_type": "i2v", "in_dim": 36}, 16),          # image latent concatenated as channels
    ("WAN22_T2V", {"in_dim": 48, "out_dim": 48}, 48),                # Wan2.2 TI2V 5B layout: 48-channel latent
], ids=["wan2.1-i2v", "wan2.2-ti2v"])
def test_other_wan_models_follow_the_plan(comfy, config_class, extra, channels):
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0, config_class=config_class, extra_config=extra)
    positive, negative = H.make_conds(model, seed=1)
    latent = torch.zeros(1, channels, T, 2 * R, 2 * C)
    out, expected, hook, state = run_both(model, positive, negative, Geometry(T, R, C), latent=latent)
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4


def clip_vision(tokens: int, seed: int):
    """What CLIPVisionEncode gives the model: penultimate hidden states [1, tokens, 1280]."""
    from types import SimpleNamespace

    return SimpleNamespace(penultimate_hidden_states=torch.randn(1, tokens, 1280, generator=torch.Generator().manual_seed(seed)))


def with_values(conds, values: dict):
    return [[c[0], dict(c[1], **values)] for c in conds]


def test_wan_flf_first_and_last_frame(comfy):
    """FLF2V: an I2V model with img_emb.emb_pos for two CLIP images (514
    tokens, as WanFirstLastFrameToVideo concatenates them), the first and
    last frames given as concatenated latent channels and mask."""
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0, config_class="WAN21_I2V",
                             extra_config={"model_type": "i2v", "in_dim": 36, "flf_pos_embed_token_number": 514})
    assert model.model.diffusion_model.img_emb.emb_pos is not None
    positive, negative = H.make_conds(model, seed=1)
    image = torch.randn(1, 16, T, 2 * R, 2 * C, generator=torch.Generator().manual_seed(6))
    mask = torch.ones(1, 4, T, 2 * R, 2 * C)
    mask[:, :, 0] = mask[:, :, -1] = 0.0  # first and last frames given
    values = {"concat_latent_image": image, "concat_mask": mask, "clip_vision_output": clip_vision(2 * 257, 7)}
    positive, negative = with_values(positive, values), with_values(negative, values)
    out, expected, hook, state = run_both(model, positive, negative, Geometry(T, R, C))
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4
    # the two-image CLIP context reaches the model (the FLF path is really taken)
    plain = H.sample(model, with_values(positive, {"clip_vision_output": clip_vision(2 * 257, 8)}),
                     with_values(negative, {"clip_vision_output": clip_vision(2 * 257, 8)}), seed=5, steps=1)
    assert H.rel_diff(plain, H.sample(model, positive, negative, seed=5, steps=1)) > 1e-4


@pytest.mark.parametrize("config_class,extra,clip", [
    ("WAN21_Camera", {"model_type": "camera", "in_dim": 32}, True),     # Wan2.1 Fun Camera: I2V-style, CLIP context
    ("WAN22_Camera", {"model_type": "camera_2.2", "in_dim": 36}, False),  # Wan2.2 Fun Camera: no CLIP
], ids=["wan2.1-camera", "wan2.2-camera"])
def test_wan_camera_control(comfy, config_class, extra, clip):
    """CameraWanModel: Pluecker camera embeddings [B, 24, T, 8H, 8W] added
    to the patch embedding by its control adapter; tokens are unchanged."""
    from sparse_vdit.patterns import Geometry

    model = H.tiny_wan_model(seed=0, config_class=config_class, extra_config=extra)
    assert type(model.model.diffusion_model).__name__ == "CameraWanModel"
    positive, negative = H.make_conds(model, seed=1)
    camera = torch.randn(1, 24, T, 16 * R, 16 * C, generator=torch.Generator().manual_seed(6))
    values = {"camera_conditions": camera}
    if clip:
        values["clip_vision_output"] = clip_vision(257, 7)
    positive, negative = with_values(positive, values), with_values(negative, values)
    out, expected, hook, state = run_both(model, positive, negative, Geometry(T, R, C))
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4
    # the camera embedding reaches the model (its adapter is really run)
    still = with_values(positive, {"camera_conditions": torch.zeros_like(camera)})
    assert H.rel_diff(H.sample(model, still, with_values(negative, {"camera_conditions": torch.zeros_like(camera)}),
                               seed=5, steps=1), H.sample(model, positive, negative, seed=5, steps=1)) > 1e-4


def test_in_context_reference_latents_are_appended(comfy):
    """ComfyUI 0.3x appends in-context reference latents (Bernini's
    `context_latents`) after the video tokens: served, the appended tokens
    global. On an older ComfyUI, checks the feature is really absent."""
    import inspect

    import comfy.ldm.wan.model as wan
    from sparse_vdit.patterns import Geometry

    if "context_latents" not in inspect.getsource(wan.WanModel):
        assert H.version_tuple() < (0, 30), "this ComfyUI should append context_latents"
        return
    model = H.tiny_wan_model(seed=0)
    positive, negative = H.make_conds(model, seed=1)
    context = [torch.randn(1, 16, 1, 2 * R, 2 * C, generator=torch.Generator().manual_seed(5))]
    positive = [[positive[0][0], {"context_latents": context}]]
    negative = [[negative[0][0], {"context_latents": context}]]
    geometry = Geometry(T, R, C, suffix=R * C)
    out, expected, hook, state = run_both(model, positive, negative, geometry)
    assert state["n"] == LAYERS and hook.counts.get("sparse") == LAYERS, hook.counts
    assert H.rel_diff(out, expected) < 1e-4

"""The headless ComfyUI harness works, and what Wan sends to attention.

Runs against the checkout in $COMFYUI_PATH (0.8.0 and 0.3.64 in CI).
"""

from __future__ import annotations

import copy

import pytest
import torch

import comfy_harness as h

pytestmark = pytest.mark.comfyui

STEPS = 3
LAYERS = 2
HEADS = 4
HEAD_DIM = 16


@pytest.fixture(scope="module")
def wan(comfy):
    return h.tiny_wan_model(seed=0, num_layers=LAYERS, num_heads=HEADS, head_dim=HEAD_DIM)


@pytest.fixture(scope="module")
def conds(wan):
    return h.make_conds(wan, seed=1)


@pytest.fixture(scope="module")
def baseline(wan, conds):
    pos, neg = conds
    return h.sample(wan, pos, neg, h.empty_latent(), seed=2, steps=STEPS, cfg=5.0)


def test_import_namespace(comfy):
    assert comfy.version == h.comfyui_version(comfy.path)
    assert comfy.model_management.get_torch_device() == torch.device("cpu")
    assert comfy.model_management.__file__.startswith(comfy.path + "/comfy/")
    # a second import of the same checkout is the cached namespace
    assert h.import_comfy(comfy.path) is comfy
    with pytest.raises(RuntimeError):
        h.import_comfy("/nonexistent/other/checkout")


def test_tiny_model_is_real_wan(comfy, wan):
    import comfy.ldm.wan.model as wan_model

    assert isinstance(wan, comfy.model_patcher.ModelPatcher)
    assert isinstance(wan.model, comfy.model_base.WAN21)
    dm = wan.model.diffusion_model
    assert isinstance(dm, wan_model.WanModel)
    assert len(dm.blocks) == LAYERS and dm.num_heads == HEADS and dm.dim == HEADS * HEAD_DIM
    assert tuple(dm.patch_size) == h.PATCH_SIZE
    assert h.model_text_dim(wan) == h.TEXT_DIM
    params = dict(dm.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params.values())
    # deterministic in the seed
    same = h.tiny_wan_model(seed=0).model.diffusion_model.state_dict()
    other = h.tiny_wan_model(seed=1).model.diffusion_model.state_dict()
    assert all(torch.equal(v, same[k]) for k, v in dm.state_dict().items())
    assert not torch.equal(dm.blocks[0].self_attn.q.weight, other["blocks.0.self_attn.q.weight"])


def test_geometry_constants():
    assert h.latent_grid(h.DEFAULT_LATENT_SHAPE) == h.DEFAULT_GRID
    assert h.token_count(h.DEFAULT_LATENT_SHAPE) == h.VIDEO_TOKENS == 440
    assert h.token_count((1, 16, 5, 21, 23)) == 5 * 11 * 12  # pad_to_patch_size rounds up
    assert tuple(h.empty_latent().shape) == h.DEFAULT_LATENT_SHAPE


def test_sample_deterministic(wan, conds, baseline):
    pos, neg = conds
    assert tuple(baseline.shape) == h.DEFAULT_LATENT_SHAPE
    assert torch.isfinite(baseline).all()
    assert baseline.std() > 0.1
    again = h.sample(wan, pos, neg, h.empty_latent(), seed=2, steps=STEPS, cfg=5.0)
    assert torch.equal(again, baseline)
    other_seed = h.sample(wan, pos, neg, h.empty_latent(), seed=3, steps=STEPS, cfg=5.0)
    assert h.rel_diff(other_seed, baseline) > 0.1


def test_record_attention_calls(comfy, wan, conds, baseline):
    pos, neg = conds
    before = copy.deepcopy(list(wan.model_options["transformer_options"].keys()))
    rec = h.record_attention_calls(wan)
    assert rec.model is not wan
    assert "optimized_attention_override" not in wan.model_options["transformer_options"]
    assert list(wan.model_options["transformer_options"].keys()) == before

    out = h.sample(rec.model, pos, neg, h.empty_latent(), seed=2, steps=STEPS, cfg=5.0)
    assert torch.equal(out, baseline)  # the recorder is transparent

    n = h.VIDEO_TOKENS
    selfs = rec.self_attention(n)
    cross = rec.cross_attention()
    # cond and uncond batched into one B=2 call: one self + one cross call per block per step
    assert len(rec.calls) == STEPS * LAYERS * 2
    assert len(selfs) == len(cross) == STEPS * LAYERS
    for c in rec.calls:
        assert c.func_name == "attention_pytorch"
        assert c.heads == HEADS and not c.heads_positional
        assert not c.skip_reshape and not c.skip_output_reshape and not c.has_mask
        assert c.has_transformer_options
        assert c.batch == 2 and c.cond_or_uncond == [1, 0]  # uncond first
        assert c.q_shape == (2, n, HEADS * HEAD_DIM)
        assert c.out_shape == c.q_shape
        assert set(c.kwargs_keys) <= {"heads", "transformer_options", "_inside_attn_wrapper"}
    for c in selfs:
        assert c.k_shape == c.v_shape == (2, n, HEADS * HEAD_DIM)
    for c in cross:
        assert c.k_shape == c.v_shape == (2, h.TEXT_LEN, HEADS * HEAD_DIM)
    # self then cross in every block, in block order
    assert [c.q_len == c.k_len for c in rec.calls] == [True, False] * (STEPS * LAYERS)

    if h.has_block_index(comfy.version):
        assert [c.block_index for c in selfs] == list(range(LAYERS)) * STEPS
        assert [c.block_index for c in cross] == list(range(LAYERS)) * STEPS
        assert all(c.total_blocks == LAYERS and c.block_type == "double" for c in rec.calls)
    else:
        assert all(c.block_index is None and c.total_blocks is None for c in rec.calls)
        assert all("block_index" not in c.transformer_options_keys for c in rec.calls)

    # sigma per step, decreasing; same within a step
    sig = [c.sigma for c in selfs]
    per_step = [sig[i * LAYERS:(i + 1) * LAYERS] for i in range(STEPS)]
    assert all(len(set(s)) == 1 for s in per_step)
    firsts = [s[0] for s in per_step]
    assert firsts == sorted(firsts, reverse=True) and len(set(firsts)) == STEPS


def test_cfg1(wan, conds, baseline):
    pos, neg = conds
    rec = h.record_attention_calls(wan)
    out = h.sample(rec.model, pos, neg, h.empty_latent(), seed=2, steps=STEPS, cfg=1.0)
    assert torch.isfinite(out).all() and out.std() > 0.1
    assert h.rel_diff(out, baseline) > 0.01
    # cfg 1 skips uncond: B=1, positive only
    assert len(rec.calls) == STEPS * LAYERS * 2
    assert all(c.batch == 1 and c.cond_or_uncond == [0] for c in rec.calls)
    again = h.sample(wan, pos, neg, h.empty_latent(), seed=2, steps=STEPS, cfg=1.0)
    assert torch.equal(out, again)


def test_recorder_chains_previous_override_and_keeps_tensors(wan, conds, baseline):
    pos, neg = conds
    seen = []

    def prior(func, *args, **kwargs):  # stands in for e.g. a Sage attention patch
        seen.append(args[0].shape[1])
        return func(*args, **kwargs)

    patched = h.install_attention_override(wan, prior)
    rec = h.record_attention_calls(patched, keep_tensors=True)
    rec2 = copy.deepcopy(rec)
    assert rec2 is rec
    out = h.sample(rec.model, pos, neg, h.empty_latent(), seed=2, steps=1, cfg=5.0)
    assert len(seen) == len(rec.calls) == LAYERS * 2
    assert "optimized_attention_override" not in wan.model_options["transformer_options"]
    assert patched.model_options["transformer_options"]["optimized_attention_override"] is prior
    assert torch.isfinite(out).all()

    # recorded tensors reproduce the recorded output with plain SDPA
    c = rec.self_attention(h.VIDEO_TOKENS)[0]
    b, n, _ = c.q.shape
    q, k, v = (t.view(b, -1, HEADS, HEAD_DIM).transpose(1, 2) for t in (c.q, c.k, c.v))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
    assert h.rel_diff(c.out, ref) < 1e-5


def test_attention_matters(wan, conds, baseline):
    """Self-attention is not uniform and changes the sampled output."""
    pos, neg = conds

    def uniform_self_attention(func, q, k, v, *args, **kwargs):
        if q.shape[1] == k.shape[1]:
            return v.mean(dim=1, keepdim=True).expand_as(v).contiguous()
        return func(q, k, v, *args, **kwargs)

    out = h.sample(h.install_attention_override(wan, uniform_self_attention), pos, neg,
                   h.empty_latent(), seed=2, steps=STEPS, cfg=5.0)
    assert h.rel_diff(out, baseline) > 0.05

    # and the softmax itself is far from uniform: max weight >> 1/N
    rec = h.record_attention_calls(wan, keep_tensors=True)
    h.sample(rec.model, pos, neg, h.empty_latent(), seed=2, steps=1, cfg=5.0)
    c = rec.self_attention(h.VIDEO_TOKENS)[0]
    q = c.q.view(2, -1, HEADS, HEAD_DIM).transpose(1, 2)
    k = c.k.view(2, -1, HEADS, HEAD_DIM).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM ** 0.5, dim=-1)
    assert p.max(dim=-1).values.mean() > 20.0 / h.VIDEO_TOKENS

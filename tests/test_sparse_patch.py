"""The attention override's routing, without ComfyUI: what it serves, what
it passes down the chain, and that failures fall back to dense."""
import logging
import os

import pytest
import torch

from sparse_vdit.integration.forward_info import KEY, ForwardInfo, hidden_key_run, step_of
from sparse_vdit.integration.model_info import ModelInfo
from sparse_vdit.integration.models.hunyuan_video import HunyuanVideoAdapter
from sparse_vdit.integration.models.wan import WanAdapter
from sparse_vdit.integration.sparse_patch import SparsePatch
from sparse_vdit.patterns import Diagonal, Full, Geometry, LayerPattern, MultiDiagonal
from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

GEOMETRY = Geometry(3, 4, 5)  # 60 tokens
HEADS, DIM = 2, 8
PLAN = Plan("p", ModelShape("wan", 2, HEADS, DIM),
            (LayerPattern((Diagonal(0), MultiDiagonal(0))), LayerPattern((Full(), Full()))), DenseSchedule(0.5))
INFO = WanAdapter("wan", 2, HEADS, DIM, (1, 2, 2))


class Func:
    """Stands in for ComfyUI's attention function: records and returns a marker."""
    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, heads=None, **kwargs):
        self.calls.append((q.shape, k.shape, heads, kwargs))
        if kwargs.get("skip_reshape"):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return torch.full_like(q, 7.0)


def options(step=2, total=4, block_index=0, geometry=GEOMETRY):
    opts = {KEY: ForwardInfo(geometry, step, total, 0.5), "_marker": 1}
    if block_index is not None:
        opts["block_index"] = block_index
    return opts


def qkv(length=GEOMETRY.seq_len, batch=2):
    return [torch.randn(batch, length, HEADS * DIM) for _ in range(3)]


def patch(**kw):
    return SparsePatch(PLAN, INFO, PLAN.dense, backend=kw.pop("backend", "reference"), **kw)


def test_serves_video_self_attention():
    func, p = Func(), patch()
    out = p(func, *qkv(), heads=HEADS, transformer_options=options())
    assert p.counts == {"sparse": 1} and out.shape == (2, GEOMETRY.seq_len, HEADS * DIM)
    assert not func.calls  # no full heads in layer 0


@pytest.mark.parametrize("case", ["cross", "mask", "warmup", "dense_layer", "beyond_plan", "no_info", "heads"])
def test_passes_other_calls_down_the_chain(case):
    func, p = Func(), patch()
    q, k, v = qkv()
    kwargs = dict(heads=HEADS, transformer_options=options())
    if case == "cross":
        k = v = torch.randn(2, 512, HEADS * DIM)
    elif case == "mask":
        kwargs["mask"] = torch.zeros(GEOMETRY.seq_len, GEOMETRY.seq_len)
    elif case == "warmup":
        kwargs["transformer_options"] = options(step=1)
    elif case == "dense_layer":
        kwargs["transformer_options"] = options(block_index=1)
    elif case == "beyond_plan":
        kwargs["transformer_options"] = options(block_index=5)
    elif case == "no_info":
        kwargs["transformer_options"] = {}
    elif case == "heads":
        q, k, v = (x.view(2, GEOMETRY.seq_len, HEADS * 2, DIM // 2).flatten(2) for x in (q, k, v))
        kwargs["heads"] = HEADS * 2
    out = p(func, q, k, v, **kwargs)
    assert torch.all(out == 7.0) and len(func.calls) == 1 and p.counts == {"dense": 1}
    assert func.calls[0][3]["transformer_options"] is kwargs["transformer_options"]  # passed on unchanged


def test_previous_override_gets_what_is_passed_on():
    seen = []

    def previous(func, *args, **kwargs):
        seen.append(args[0].shape)
        return func(*args, **kwargs)
    func, p = Func(), patch(previous=previous)
    q, _, _ = qkv()
    p(func, q, torch.randn(2, 9, HEADS * DIM), torch.randn(2, 9, HEADS * DIM), heads=HEADS, transformer_options=options())
    assert seen == [q.shape] and len(func.calls) == 1


def test_counts_layers_without_block_index():
    p = patch()
    opts = options(block_index=None)
    p(Func(), *qkv(), heads=HEADS, transformer_options=opts)   # layer 0: sparse
    p(Func(), *qkv(), heads=HEADS, transformer_options=opts)   # layer 1: all full -> dense
    p(Func(), *qkv(), heads=HEADS, transformer_options=opts)   # layer 2: beyond the plan
    assert p.counts == {"sparse": 1, "dense": 2} and opts[KEY].self_attention_calls == 3


def test_failure_in_sparse_path_runs_dense_and_logs_once(monkeypatch, caplog):
    from sparse_vdit.integration import sparse_patch

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(sparse_patch, "layer_attention", broken)
    func, p = Func(), patch()
    with caplog.at_level(logging.WARNING, logger="sparse_vdit"):
        for _ in range(3):
            out = p(func, *qkv(), heads=HEADS, transformer_options=options())
            assert torch.all(out == 7.0)
    assert p.counts == {"dense:error": 3}
    assert sum("kernel exploded" in r.message for r in caplog.records) == 1


def test_auto_backend_without_kernel_runs_dense():
    func, p = Func(), patch(backend="auto")  # CPU: no Triton kernel can serve
    out = p(func, *qkv(), heads=HEADS, transformer_options=options())
    assert torch.all(out == 7.0) and p.counts == {"dense": 1}


def test_bad_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        patch(backend="fast")


def test_wan_geometry_and_step():
    class Wan:  # stands in for WanModel: its forward's argument names
        ref_conv = None

        def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
            pass

    class FunWan(Wan):
        ref_conv = object()

    x = torch.zeros(1, 16, 5, 21, 30)  # odd H: padded to the patch size
    plain, fun = Wan(), FunWan()
    assert INFO.forward_geometry(plain, x, (x,), {}) == Geometry(5, 11, 15)
    concat = torch.zeros(1, 16, 2, 21, 30)
    assert INFO.forward_geometry(plain, x, (x, None, None, None, concat), {}) == Geometry(7, 11, 15)
    reference = {"reference_latent": torch.zeros(1, 16, 1, 21, 30)}
    assert INFO.forward_geometry(fun, x, (x,), reference) == Geometry(5, 11, 15, prefix=165)
    assert INFO.forward_geometry(plain, x, (x,), reference) == Geometry(5, 11, 15)  # no ref_conv: not used
    context = {"context_latents": [torch.zeros(1, 16, 1, 21, 30), torch.zeros(1, 16, 2, 8, 8)]}
    assert INFO.forward_geometry(plain, x, (x,), context) == Geometry(5, 11, 15, suffix=165 + 32)
    schedule = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert step_of({"sigmas": torch.tensor([0.5, 0.5]), "sample_sigmas": schedule}) == (2, 4, 0.5)
    assert step_of({"sigmas": torch.tensor([0.6]), "sample_sigmas": schedule})[0] == 2  # nearest step
    assert step_of({}) == (None, None, None)


def test_wan_grid_sizes_must_agree():
    """ComfyUI >= 0.2x names Wan's grid per call: a different grid runs dense."""
    func, p = Func(), patch()
    opts = dict(options(), grid_sizes=(3, 4, 5))
    p(func, *qkv(), heads=HEADS, transformer_options=opts)
    assert p.counts == {"sparse": 1}
    opts = dict(options(), grid_sizes=(3, 5, 4))  # same token count, other grid
    p(func, *qkv(), heads=HEADS, transformer_options=opts)
    assert p.counts == {"sparse": 1, "dense": 1}


def test_hidden_key_runs():
    big = -torch.finfo(torch.float32).max
    trailing = torch.zeros(1, 1, 10)
    trailing[..., 7:] = big
    assert hidden_key_run(trailing, 10) == (7, 10)
    middle = torch.zeros(1, 1, 10)
    middle[..., 3:5] = big
    assert hidden_key_run(middle, 10) == (3, 5)  # text first: padding sits before the video
    assert hidden_key_run(torch.zeros(2, 1, 10), 10) == (10, 10)
    assert hidden_key_run(torch.tensor([True] * 6 + [False] * 4), 10) == (6, 10)
    two = torch.zeros(1, 1, 10)
    two[..., [2, 7]] = -1e9
    assert hidden_key_run(two, 10) is None           # two runs
    assert hidden_key_run(torch.zeros(1, 1, 10, 10), 10) is None  # per-query mask
    assert hidden_key_run(torch.full((1, 1, 10), -0.5), 10) is None  # a soft bias
    different = torch.zeros(2, 1, 10)
    different[1, :, 8:] = -1e9
    assert hidden_key_run(different, 10) is None     # rows differ across the batch


def hunyuan(text: str):
    return HunyuanVideoAdapter("hunyuan_video", 2, HEADS, DIM, (1, 2, 2), double_layers=1, text=text,
                               pads_to_patch=False)


@pytest.mark.parametrize("order", ["after", "before"])
def test_masked_call_with_padded_text_is_served_on_the_kept_tokens(order):
    """Joint text after (ComfyUI < 0.14) or before (>= 0.14) the video, the
    last text keys masked: the sparse path runs on the kept tokens, the
    padded queries run dense over them, and the result is the float64 oracle
    of the plan on the kept tokens."""
    from oracle import layer_oracle, masked_attention64

    text, kept = 6, 4
    seen = []

    def func(q, k, v, heads=None, **kwargs):
        seen.append((q.shape[2], k.shape[2]))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    p = SparsePatch(PLAN, hunyuan(order), PLAN.dense, backend="reference")
    length, video = GEOMETRY.seq_len + text, GEOMETRY.seq_len
    q, k, v = (torch.randn(1, HEADS, length, DIM, dtype=torch.float64) for _ in range(3))
    pad = slice(video + kept, length) if order == "after" else slice(kept, text)
    keep = torch.ones(length, dtype=torch.bool)
    keep[pad] = False
    mask = torch.zeros(1, 1, length, dtype=torch.float64)
    mask[..., pad] = -1e30
    out = p(func, q, k, v, HEADS, mask=mask, skip_reshape=True, transformer_options=options())
    assert p.counts == {"sparse": 1} and out.shape == (1, length, HEADS * DIM)
    assert seen == [(text - kept, video + kept)]  # only the padded queries, over the kept keys
    kept_geometry = Geometry(3, 4, 5, suffix=kept) if order == "after" else Geometry(3, 4, 5, prefix=kept)
    q4, k4, v4 = (x.transpose(1, 2) for x in (q, k, v))
    expected = torch.empty(1, length, HEADS, DIM, dtype=torch.float64)
    expected[:, keep] = layer_oracle(q4[:, keep], k4[:, keep], v4[:, keep], PLAN.layers[0], kept_geometry, 128, 64)
    for h in range(HEADS):
        expected[:, ~keep, h] = masked_attention64(q4[:, ~keep, h], k4[:, keep, h], v4[:, keep, h],
                                                   torch.ones(text - kept, video + kept, dtype=torch.bool))
    assert (out.view(1, length, HEADS, DIM) - expected).abs().max() < 1e-5  # the reference path may run in fp32
    single = dict(options(block_index=0), block_type="single")  # single block 0 is plan layer 1 (all full)
    p(func, q, k, v, HEADS, mask=mask, skip_reshape=True, transformer_options=single)
    assert p.counts == {"sparse": 1, "dense": 1}


@pytest.mark.parametrize("where", ["video", "wrong_side"])
def test_a_mask_over_other_tokens_runs_dense(where):
    """Never a misplaced pattern: a mask hiding video keys, or padding on the
    side where this model has no text, runs the call dense."""
    text = 6
    p = SparsePatch(PLAN, hunyuan("before"), PLAN.dense, backend="reference")
    length = GEOMETRY.seq_len + text
    q, k, v = (torch.randn(1, HEADS, length, DIM) for _ in range(3))
    mask = torch.zeros(1, 1, length)
    if where == "video":
        mask[..., text + 10:text + 14] = -1e30
    else:
        mask[..., length - 2:] = -1e30  # trailing keys: video under text-first order
    p(Func(), q, k, v, HEADS, mask=mask, skip_reshape=True, transformer_options=options())
    assert p.counts == {"dense": 1}


def test_img_slice_must_agree_with_the_text_order():
    """ComfyUI >= 0.14 names the image slice of HunyuanVideo's single blocks."""
    text = 6
    length = GEOMETRY.seq_len + text
    q, k, v = (torch.randn(1, HEADS, length, DIM) for _ in range(3))
    for order, image, served in (("before", [text, length], True), ("after", [text, length], False),
                                 ("before", [text + 1, length], False)):
        p = SparsePatch(PLAN, hunyuan(order), PLAN.dense, backend="reference")
        p(Func(), q, k, v, HEADS, skip_reshape=True, transformer_options=dict(options(), img_slice=image))
        assert p.counts == ({"sparse": 1} if served else {"dense": 1}), (order, image)


@pytest.mark.parametrize("kwargs, served", [({"scale": DIM ** -0.5}, True), ({"scale": 0.3}, False),
                                            ({"enable_gqa": True}, False), ({"enable_gqa": False}, True),
                                            ({"low_precision_attention": False}, True)])
def test_new_keyword_arguments(kwargs, served):
    """ComfyUI >= 0.2x passes scale / enable_gqa / low_precision_attention:
    a call the sparse path would compute differently runs dense, and
    everything else reaches the chain intact."""
    func, p = Func(), SparsePatch(PLAN, INFO, PLAN.dense, backend="reference")
    p(func, *qkv(), heads=HEADS, transformer_options=options(block_index=1), **kwargs)  # all full: chained
    assert func.calls and all(func.calls[0][3].get(key) == value for key, value in kwargs.items())
    p2 = SparsePatch(PLAN, INFO, PLAN.dense, backend="reference")
    p2(Func(), *qkv(), heads=HEADS, transformer_options=options(), **kwargs)
    assert p2.counts == ({"sparse": 1} if served else {"dense": 1})


def test_unknown_model_comes_back_unpatched_with_one_log_line(caplog):
    from types import SimpleNamespace

    from sparse_vdit.integration.install import apply_plan

    class FakePatcher:
        model = SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2))
        model_options = {"transformer_options": {}}

        def clone(self):
            return FakePatcher()
    original = FakePatcher()
    with caplog.at_level(logging.WARNING, logger="sparse_vdit"):
        out = apply_plan(original, PLAN)
    assert out is not original and "optimized_attention_override" not in out.model_options["transformer_options"]
    assert [r.message for r in caplog.records if "not a model this pack supports" in r.message] != []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs a CUDA GPU (and no interpreter)")
def test_step_ranges_on_the_gpu_kernel():
    """A plan with two step ranges on the Triton path: each step gets its
    own range's patterns, as the float64 oracle computes them."""
    from oracle import layer_oracle, rel_err
    from sparse_vdit.patterns import Skip, VerticalStripe
    from sparse_vdit.plans.format import StepRange

    geometry, heads, dim = Geometry(3, 8, 10), 4, 64
    first = LayerPattern((Diagonal(0), Full(), MultiDiagonal(1), VerticalStripe((0,))))
    later = LayerPattern((Full(), Skip(), Diagonal(1), MultiDiagonal(0, frames=1)))
    plan = Plan("gpu ranges", ModelShape("wan", 1, heads, dim), (first,), DenseSchedule(0.0), {},
                (StepRange(0.5, (later,)),))
    hook = SparsePatch(plan, WanAdapter("wan", 1, heads, dim, (1, 2, 2)), plan.dense, backend="auto")
    q, k, v = (torch.randn(2, geometry.seq_len, heads * dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for step, layer in ((1, first), (3, later)):
        out = hook(Func(), q, k, v, heads=heads, transformer_options=options(step=step, total=4, geometry=geometry))
        ref = layer_oracle(*(x.view(2, geometry.seq_len, heads, dim).cpu() for x in (q, k, v)), layer, geometry, 128, 64)
        assert rel_err(out.cpu().view_as(ref), ref) < 2e-2, step
    assert hook.counts == {"sparse": 2}


def test_auto_under_ulysses_serves_a_saved_plan_only(tmp_path):
    """The Ulysses path asks the hook which pattern a layer has this step:
    an auto hook with no saved plan for the grid answers None (dense), one
    with a saved plan answers that plan's pattern, past the warm-up only."""
    from sparse_vdit.integration.auto_patch import AutoPatch
    from sparse_vdit.parallel.ulysses import UlyssesState, _plan_pattern
    from sparse_vdit.plans.format import save_plan

    state = UlyssesState(previous=None)
    hook = AutoPatch(INFO, str(tmp_path), "abcd1234", dense_warmup=0.5)
    info = ForwardInfo(GEOMETRY, 3, 4, 0.25)
    assert _plan_pattern(state, hook, 0, info) is None and "auto" in state.logged
    save_plan(PLAN, hook.plan_path(GEOMETRY))
    hook.plans.clear()
    assert _plan_pattern(state, hook, 0, info) == PLAN.layers[0]
    assert _plan_pattern(state, hook, 1, info) is None            # an all-full layer
    assert _plan_pattern(state, hook, 0, ForwardInfo(GEOMETRY, 1, 4, 0.75)) is None  # warm-up


def test_low_precision_attention_false_keeps_8bit_off(monkeypatch):
    """A call carrying low_precision_attention=False runs the plan in bf16
    even when the user chose 8-bit."""
    from sparse_vdit.integration import sparse_patch

    seen = []
    real = sparse_patch.layer_attention

    def spy(*args, **kwargs):
        seen.append(kwargs["precision"])
        return real(*args, **dict(kwargs, precision="bf16"))
    monkeypatch.setattr(sparse_patch, "layer_attention", spy)
    p = SparsePatch(PLAN, INFO, PLAN.dense, backend="reference", precision="8-bit")
    p(Func(), *qkv(), heads=HEADS, transformer_options=options())
    p(Func(), *qkv(), heads=HEADS, transformer_options=options(), low_precision_attention=False)
    assert seen == ["8-bit", "bf16"] and p.counts == {"sparse": 2}

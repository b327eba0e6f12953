"""The per-card launch table (kernels/launch_table.py) on the CPU: a row per
card class, Hopper's measured parameters unchanged, the safe row and its one
log line for a card the table does not know, `auto`'s per-card threshold,
and the kernels' launches getting the row's parameters."""
from __future__ import annotations

import logging
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from sparse_vdit.kernels import dispatch, launch_table  # noqa: E402

CLASSES = [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]
CUDA = torch.device("cuda", 0)


@pytest.fixture
def card(monkeypatch):
    """Pretend cuda:0 has the given capability (nothing touches a GPU)."""
    def set_card(capability, name="pretend GPU"):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(launch_table, "_logged_unknown", set())
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return set_card


def _triton_modules():
    ts = pytest.importorskip("sparse_vdit.kernels.triton_sparse")
    if ts.triton is None:
        pytest.skip("triton is not installed")
    from sparse_vdit.kernels import triton_sparse8 as t8
    return ts, t8


def test_known_card_row_traces_under_torch_compile(monkeypatch):
    """The kernels ask for the row inside torch.compile'd graphs (ComfyUI's
    compile nodes, the GPU suite's inductor test): a known card must not call
    torch.cuda.get_device_name, which Dynamo cannot trace (it returns a str).
    The real get_device_name stays in place, so the old code fails here."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * launch_table.launch_for_device(CUDA).tile_m8, fullgraph=True,
                             backend="eager")
    assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 64.0))
    torch._dynamo.reset()


@pytest.mark.parametrize("capability", CLASSES)
def test_every_card_class_has_a_complete_row(capability):
    row = launch_table.LAUNCH_TABLE[capability]
    assert row.known and row.arch == f"sm_{capability[0]}{capability[1]}" and row.why and row.cards
    for head_dim in (64, 128):
        for block_n in (64, 128):
            cfg = row.config16(head_dim, block_n)
            assert cfg["num_warps"] in (4, 8) and cfg["num_stages"] in (1, 2, 3)
    assert row.config8(128, 64)["tile_m"] == 64 and row.config8(64, 64)["tile_m"] == 64
    # FP8 P.V in a fresh accumulator per block: Triton's default does it on Hopper only
    assert row.config8(128, 64)["pv_imprecise"] == (None if capability == (9, 0) else 64)
    assert row.pv_fp8 == (capability >= (8, 9))  # FP8 tensor cores from Ada on
    assert row.auto_min_keys is not None and 0 < row.auto_min_keys < 20000


def test_hopper_keeps_its_measured_parameters(card):
    """sm_90's parameters as swept on the H200 before the table existed."""
    ts, t8 = _triton_modules()
    card((9, 0))
    tma = ts.TensorDescriptor is not None
    expected16 = {(128, 64): (4, 2), (64, 64): (4, 2), (128, 128): (8, 3), (64, 128): (4, 3)}
    for (head_dim, block_n), (warps, stages) in expected16.items():
        cfg = ts.default_config(CUDA, torch.bfloat16, head_dim, 128, block_n)
        assert cfg == {"num_warps": warps, "num_stages": stages, "tma": tma, "ws": False}
    assert ts.default_config(CUDA, torch.float32, 128, 128, 64)["tma"] is False
    for head_dim in (64, 128):
        assert t8.default_config8(CUDA, head_dim, 128, 64) == {"num_warps": 4, "num_stages": 3, "tma": tma,
                                                               "tile_m": 64, "pv_imprecise": None}
    assert t8.fp8_pv_supported(CUDA)
    assert dispatch.auto_min_keys(CUDA) == dispatch.AUTO_MIN_KEYS_PER_QUERY == 7500


@pytest.mark.parametrize("capability", [c for c in CLASSES if c != (9, 0)])
def test_other_classes_keep_the_pointer_path(card, capability):
    """Unmeasured classes run what they ran before the table (pointer loads,
    2 stages at head_dim 128 and 3 at 64; 8 bits with 64-row tiles, 4 warps,
    2 stages; P.V in FP8 only with FP8 tensor cores) except 8 warps for the
    bf16 kernel at head_dim 128, where 4 warps spill (test_cards_compile)."""
    ts, t8 = _triton_modules()
    card(capability)
    for head_dim, warps, stages in ((128, 8, 2), (64, 4, 3)):
        for block_n in (64, 128):
            cfg = ts.default_config(CUDA, torch.bfloat16, head_dim, 128, block_n)
            assert cfg == {"num_warps": warps, "num_stages": stages, "tma": False, "ws": False}
    assert t8.default_config8(CUDA, 128, 128, 64) == {"num_warps": 4, "num_stages": 2, "tma": False, "tile_m": 64,
                                                      "pv_imprecise": 64}
    assert t8.fp8_pv_supported(CUDA) == (capability >= (8, 9))


@pytest.mark.parametrize("capability", [(7, 5), (8, 7), (10, 3), (12, 1), (13, 0)])
def test_unknown_card_runs_the_safe_variant_with_one_log_line(card, caplog, capability):
    ts, t8 = _triton_modules()
    card(capability, "Future GPU")
    with caplog.at_level(logging.WARNING, logger="sparse_vdit"):
        cfg = ts.default_config(CUDA, torch.bfloat16, 128, 128, 64)
        cfg8 = t8.default_config8(CUDA, 128, 128, 64)
        fp8 = t8.fp8_pv_supported(CUDA)
        auto = dispatch.auto_min_keys(CUDA)
    assert cfg == {"num_warps": 4, "num_stages": 1, "tma": False, "ws": False}
    assert cfg8 == {"num_warps": 4, "num_stages": 1, "tma": False, "tile_m": 64, "pv_imprecise": 64}
    assert fp8 is False and auto is None
    lines = [r.getMessage() for r in caplog.records if "no launch parameters" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"sm_{capability[0]}{capability[1]}" in lines[0] and "Future GPU" in lines[0]


def test_interpreter_row_on_cpu(monkeypatch):
    ts, t8 = _triton_modules()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cpu = torch.device("cpu")
    assert ts.default_config(cpu, torch.float16, 128, 128, 64) == {"num_warps": 4, "num_stages": 1, "tma": False,
                                                                   "ws": False}
    assert t8.default_config8(cpu, 64, 64, 64) == {"num_warps": 4, "num_stages": 1, "tma": False, "tile_m": 64,
                                                   "pv_imprecise": 64}
    assert dispatch.auto_min_keys(cpu) is None


def test_auto_threshold_model():
    """The model reproduces the H200's measured threshold from the H200's own
    rates; a card whose 8 bits save more per block, or whose pre-pass is
    cheaper against its tensor cores, switches at shorter rows."""
    table = launch_table.LAUNCH_TABLE
    h200 = launch_table.modelled_auto_min_keys(launch_table.H200, True, saving=launch_table.H200_SAVING8)
    assert h200 == launch_table.H200_AUTO_MIN_KEYS == table[(9, 0)].auto_min_keys
    assert launch_table.RTX4090.saving8(True) == pytest.approx(1 - (1 / 660.6 + 1 / 330.3) / (2 / 165.2))
    assert launch_table.RTX3090.saving8(False) == pytest.approx(0.375, abs=0.01)
    for rtx in ((8, 6), (8, 9), (12, 0)):
        assert table[rtx].auto_min_keys < table[(9, 0)].auto_min_keys
    # Bandwidth enters inversely, the 16-bit rate directly.
    slow_memory = launch_table.PublishedRates("x", 165.2, 660.6, 330.3, 0.5, "test")
    assert (launch_table.modelled_auto_min_keys(slow_memory, True)
            > launch_table.modelled_auto_min_keys(launch_table.RTX4090, True))


class _Recorder:
    """Stands in for a @triton.jit kernel: records the launch, runs nothing."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
        return launch


def _small_table(device="cpu"):
    from sparse_vdit.patterns import Diagonal, Geometry, LayerPattern, compile_layer
    geometry = Geometry(frames=2, rows=4, cols=40)
    return compile_layer(LayerPattern((Diagonal(1),) * 2), geometry, device).table


@pytest.mark.parametrize("capability", CLASSES)
def test_kernels_are_launched_with_the_rows_parameters(card, monkeypatch, capability):
    """The launchers pass the card's warps / stages / TMA / tile to the
    kernels (kernels replaced by recorders; the tensors stay on the CPU, so
    the row is looked up for a pretend cuda device through default_config)."""
    ts, t8 = _triton_modules()
    from sparse_vdit.kernels import quant8
    card(capability)
    row = launch_table.LAUNCH_TABLE[capability]
    table = _small_table()
    seq_len = table.seq_len
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, seq_len, 2, 64, generator=gen, dtype=torch.float16) for _ in range(3))
    out = torch.empty_like(q)
    heads_t = torch.tensor(table.heads, dtype=torch.int32)

    def on_card(default):  # the launcher asks with the tensors' (CPU) device: answer for the card
        return lambda device, *args: default(CUDA, *args)

    monkeypatch.setattr(ts, "default_config", on_card(ts.default_config))
    monkeypatch.setattr(t8, "default_config8", on_card(t8.default_config8))
    kernel16, kernel8 = _Recorder(), _Recorder()
    monkeypatch.setattr(ts, "_sparse_attn_fwd", kernel16)
    monkeypatch.setattr(t8, "_sparse_attn8_fwd", kernel8)

    ts._launch(q, k, v, out, table.kv_offsets, table.kv_indices, heads_t, None, seq_len,
               table.block_m, table.block_n)
    (_, _, kw), = kernel16.calls
    cfg16 = row.config16(64, table.block_n)
    assert (kw["num_warps"], kw["num_stages"]) == (cfg16["num_warps"], cfg16["num_stages"])
    assert kw["USE_TMA"] == (row.tma and ts.TensorDescriptor is not None)

    qz = quant8.quantize_torch(q, k, v, table.heads, table.block_n, 0.125, row.pv_fp8)
    t8.launch8(qz, v, out, table.kv_offsets, table.kv_indices, heads_t, table.block_m, table.block_n)
    (grid, _, kw), = kernel8.calls
    cfg8 = row.config8(table.block_m, table.block_n)
    assert (kw["num_warps"], kw["num_stages"], kw["TILE_M"]) == (cfg8["num_warps"], cfg8["num_stages"],
                                                                 cfg8["tile_m"])
    assert kw["USE_TMA"] == (row.tma and ts.TensorDescriptor is not None)
    assert kw["PV_FP8"] == row.pv_fp8 and kw["PV_IMPRECISE"] == cfg8["pv_imprecise"]
    assert grid[0] == len(table.heads) * -(-seq_len // table.block_m) * (table.block_m // cfg8["tile_m"])


@pytest.mark.gpu
def test_gpu_card_runs_its_rows_parameters():
    """On the GPU at hand: its class has a row (no log line), and the kernels
    it compiles carry that row's warps and stages."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    ts, t8 = _triton_modules()
    row = launch_table.launch_for_device("cuda")
    assert row.known, f"no launch-table row for {torch.cuda.get_device_capability()}"
    table = _small_table("cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, table.seq_len, 2, 128, generator=gen, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    out = torch.full_like(q, float("nan"))
    ts.sparse_attention_triton(q, k, v, out, table)
    t8.sparse_attention8_triton(q, k, v, out, table)
    torch.cuda.synchronize()
    assert torch.isfinite(out[:, :, list(table.heads)]).all()

    def launched(kernel):
        return [c.metadata for cache in kernel.device_caches.values() for c in cache[0].values()]

    cfg16, cfg8 = row.config16(128, table.block_n), row.config8(table.block_m, table.block_n)
    assert any((m.num_warps, m.num_stages) == (cfg16["num_warps"], cfg16["num_stages"])
               for m in launched(ts._sparse_attn_fwd))
    assert any((m.num_warps, m.num_stages) == (cfg8["num_warps"], cfg8["num_stages"])
               for m in launched(t8._sparse_attn8_fwd))

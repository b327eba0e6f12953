"""The yardstick's tools that need no ComfyUI: sharded checkpoints, the
static baseline masks, block tables from a block mask, the sizes."""
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "yardstick"))

import static_masks  # noqa: E402
import ys_checkpoint as ckpt  # noqa: E402
import ys_data  # noqa: E402
import ys_quant  # noqa: E402
from ys_sizes import SIZES, TINY, VIDEO, WAN480, size_named  # noqa: E402

from sparse_vdit.patterns import Diagonal, Geometry, build_block_table, pattern_block_mask, table_from_block_mask  # noqa: E402


def test_sizes_meet_the_head_to_head_brief():
    assert VIDEO.tokens == 13 * 32 * 32 >= 12288  # above core's sparse node's min_tokens
    assert VIDEO.tokens // VIDEO.latent[0] >= 900 and VIDEO.heads >= 16
    for size in SIZES.values():
        assert size.config["dim"] // size.config["num_heads"] == 128
    assert TINY.tokens == 2048
    assert WAN480.latent == (21, 60, 104) and WAN480.tokens == 32760 and WAN480.tokens // 21 == 1560
    assert WAN480.config["num_heads"] >= 4 and WAN480.config["num_layers"] >= 8
    with pytest.raises(ValueError, match="unknown yardstick size"):
        size_named("huge")


def test_checkpoint_round_trip_in_small_shards(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(300, 70, generator=g), "b.step": torch.tensor(7.0),
               "c": torch.randint(0, 9, (5, 3), generator=g), "d": torch.randn(10, dtype=torch.float64, generator=g)}
    limit = 16 * 1024  # bytes: "a" (84,000 bytes) is cut into pieces
    folder = str(tmp_path / "checkpoint")
    shards = ckpt.save_checkpoint(folder, tensors, {"step": 3, "note": "x"}, limit=limit)
    assert len(shards) >= 6
    for path in shards:
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
        assert os.path.getsize(path) - 8 - header <= limit
    loaded, info = ckpt.load_checkpoint(folder)
    assert info == {"step": 3, "note": "x"} and set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    # saving again replaces the folder whole; no partial folder is left behind
    ckpt.save_checkpoint(folder, {"a": torch.zeros(2)}, {"step": 4}, limit=limit)
    assert ckpt.load_checkpoint(folder)[1] == {"step": 4}
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    assert not ckpt.has_checkpoint(str(tmp_path / "none"))


def brute_block_mask(grid, keep, bm, bn):
    t, h, w = grid
    n = t * h * w
    idx = torch.arange(n)
    ft, fh, fw, fs = idx // (h * w), (idx // w) % h, idx % w, idx % (h * w)
    full = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            full[i, j] = keep((ft[i], fh[i], fw[i], fs[i]), (ft[j], fh[j], fw[j], fs[j]))
    nq, nk = -(-n // bm), -(-n // bn)
    out = torch.zeros(nq, nk, dtype=torch.bool)
    for a in range(nq):
        for b in range(nk):
            out[a, b] = full[a * bm:(a + 1) * bm, b * bn:(b + 1) * bn].any()
    return out


@pytest.mark.parametrize("grid", [(3, 5, 7), (4, 4, 6)])
def test_static_masks_equal_a_token_level_brute_force(grid):
    bm, bn = 16, 8  # small blocks so the odd grid has partial tails
    per_frame = grid[1] * grid[2]

    def radial(q, k, c=0.1):
        d = max(1, abs(int(q[0]) - int(k[0])))
        band = c * per_frame / 2 ** int(torch.log2(torch.tensor(float(d))))
        return (band >= 1 or int(q[0]) == int(k[0])) and abs(int(q[3]) - int(k[3])) <= band

    def window(q, k):
        return abs(int(q[0]) - int(k[0])) <= 1 and abs(int(q[1]) - int(k[1])) <= 2 and abs(int(q[2]) - int(k[2])) <= 2

    assert torch.equal(static_masks.radial_mask(grid, 0.1, bm, bn), brute_block_mask(grid, radial, bm, bn))
    assert torch.equal(static_masks.window_mask(grid, 1, 2, bm, bn), brute_block_mask(grid, window, bm, bn))


def test_masks_at_density_are_near_the_asked_density_and_keep_the_diagonal():
    grid = (5, 16, 32)  # 2,560 tokens: 4 query blocks a frame
    for kind in ("radial", "window"):
        for density in (0.25, 0.5):
            mask, setting = static_masks.mask_at_density(kind, grid, density)
            assert abs(setting["density"] - density) < 0.12, (kind, density, setting)
            assert setting["density"] == round(static_masks.block_density(mask, 2560), 4)
            for q in range(mask.shape[0]):  # each query block sees its own tokens
                assert mask[q, 2 * q] and mask[q, 2 * q + 1]


def test_table_from_block_mask_equals_the_pattern_table():
    geometry = Geometry(3, 5, 7)
    patterns = [Diagonal(1), Diagonal(2)]
    built = build_block_table(patterns, (0, 2), geometry, 16, 8)
    masks = torch.stack([pattern_block_mask(p, geometry, 16, 8) for p in patterns])
    again = table_from_block_mask(masks, (0, 2), geometry.seq_len, 16, 8)
    assert torch.equal(built.kv_offsets, again.kv_offsets) and torch.equal(built.kv_indices, again.kv_indices)
    assert again.max_row_blocks == built.max_row_blocks and again.heads == (0, 2)
    with pytest.raises(ValueError, match="block mask must be bool"):
        table_from_block_mask(masks.int(), (0, 2), geometry.seq_len, 16, 8)
    with pytest.raises(ValueError, match="block mask must be bool"):
        table_from_block_mask(masks[:1], (0, 2), geometry.seq_len, 16, 8)


def test_int4_weights_round_trip_within_half_a_step(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {"blocks.0.ffn.0.weight": torch.randn(300, 250, generator=g),   # cols not a multiple of the group
          "blocks.0.self_attn.q.weight": torch.randn(256, 256, generator=g) * 1e-3,
          "head.head.weight": torch.randn(64, 1100, generator=g),           # the output head stays fp16
          "blocks.0.modulation": torch.randn(1, 6, 256, generator=g), "blocks.0.ffn.0.bias": torch.randn(300, generator=g)}
    sd["blocks.0.ffn.0.weight"][3, :40] = 0.0  # an all-zero group
    path = str(tmp_path / "w.safetensors")
    ys_quant.save_quantized(sd, path, {"note": 1})
    assert ys_quant.is_quantized(path)
    back = ys_quant.load_dequantized(path)
    assert set(back) == set(sd)
    for name, w in sd.items():
        assert back[name].shape == w.shape, name
        if ys_quant.quantized(name, w):
            step = w.abs().view(w.shape[0], -1)  # per group of 32: error <= half the group's step (max / 7 / 2)
            cols = w.shape[1]
            pad = torch.nn.functional.pad(step, (0, -cols % 32)).view(w.shape[0], -1, 32).amax(-1)
            bound = (pad / 7 / 2 * 1.01 + 1e-8).repeat_interleave(32, 1)[:, :cols]
            assert ((back[name] - w).abs() <= bound).all(), name
            assert (back[name] - w).abs().max() > 0  # it was quantised
        else:
            assert torch.equal(back[name], w.half()), name
    assert torch.equal(back["blocks.0.ffn.0.weight"][3, :32], torch.zeros(32))
    assert os.path.getsize(path) < ys_quant.stored_bytes(sd) + 4096


def test_wan480_weights_fit_16_mb_in_4_bits():
    # parameter count of WanModel at this config, from the shapes alone (no ComfyUI needed)
    c = WAN480.config
    d, f, layers = c["dim"], c["ffn_dim"], c["num_layers"]
    per_block = 8 * (d * d + d) + 2 * (d * f) + f + d + 4 * d + 2 * d + 6 * d  # attn x2, ffn, norms, modulation
    rest = c["text_dim"] * d + d + d * d + d + c["freq_dim"] * d + d + d * d + d + d * 6 * d + 6 * d \
        + 16 * 4 * d + d + d * 64 + 64 + 2 * d
    assert layers * per_block + rest == 25_459_264
    assert 8 * (layers * per_block + rest) / 8 > 16e6  # 8 bits cannot fit: 4 bits it is
    shapes = {"text_embedding.0.weight": (d, c["text_dim"]), "time_projection.1.weight": (6 * d, d)}
    assert ys_quant.stored_bytes({k: torch.empty(s) for k, s in shapes.items()}) < 2.2e6


def test_scenes_are_deterministic_bounded_and_move():
    a = ys_data.make_videos("scenes", [0, 2, 4], seed=5, latent=(5, 20, 36))
    b = ys_data.make_videos("scenes", [0, 2, 4], seed=5, latent=(5, 20, 36))
    c = ys_data.make_videos("scenes", [0, 2, 4], seed=6, latent=(5, 20, 36))
    assert a.shape == (3, 16, 5, 20, 36) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 1 and a.std() > 0.2
    motion = (a[:, :, 1:] - a[:, :, :-1]).abs().mean((1, 2, 3, 4))
    assert (motion > 0.01).all()
    with pytest.raises(ValueError, match="unknown yardstick data"):
        ys_data.make_videos("noise", [0], seed=0)

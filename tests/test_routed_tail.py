"""The pooled-tail reference for routed heads (kernels/routed_tail_reference.py)
against a brute-force float64 construction, its exact cases, and a CPU smoke
of benchmarks/routed_tail.py on the tiny yardstick."""
import json
import math
import os
import sys

import pytest
import torch

from sparse_vdit.kernels.routed_tail_reference import query_rows, routed_tail_attention64
from sparse_vdit.kernels.routing import routed_block_masks
from sparse_vdit.patterns import Geometry

from oracle import block_mask_to_tokens, masked_attention64

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BM, BN = 16, 8
GEOMETRY = Geometry(3, 5, 7, prefix=2, suffix=3)  # 110 tokens: ragged blocks, extra tokens on both sides
VIDEO_ONLY = Geometry(2, 3, 7)                    # 42 tokens, no extra tokens


def qkv(batch, seq_len, heads, head_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    drift = torch.randn(1, seq_len, heads, head_dim, generator=g)  # gives blocks distinct pooled scores
    return [torch.randn(batch, seq_len, heads, head_dim, generator=g) + s * drift for s in (1.0, 1.0, 0.0)]


def brute_tail64(q, k, v, mask, block_n, rows):
    """float64 [B, R, H, D]: per query row an explicit key / value / bias list:
    every token of a listed block (bias 0), one pooled key per dropped block
    (mean key, mean value, bias log of its token count), one softmax."""
    batch, seq_len, heads, head_dim = q.shape
    q, k, v = q.double(), k.double(), v.double()
    out = torch.empty(batch, len(rows), heads, head_dim, dtype=torch.float64)
    for h in range(heads):
        for i, row in enumerate(rows.tolist()):
            keys, values, bias = [], [], []
            for j in range(mask.shape[-1]):
                tokens = slice(j * block_n, min((j + 1) * block_n, seq_len))
                count = tokens.stop - tokens.start
                if mask[h, row // BM, j]:
                    keys.append(k[:, tokens, h])
                    values.append(v[:, tokens, h])
                    bias += [0.0] * count
                else:
                    keys.append(k[:, tokens, h].mean(1, keepdim=True))
                    values.append(v[:, tokens, h].mean(1, keepdim=True))
                    bias.append(math.log(count))
            scores = torch.einsum("bd,bnd->bn", q[:, row, h], torch.cat(keys, 1)) * head_dim ** -0.5
            weights = torch.softmax(scores + torch.tensor(bias, dtype=torch.float64), -1)
            out[:, i, h] = torch.einsum("bn,bnd->bd", weights, torch.cat(values, 1))
    return out


def brute_no_tail64(q, k, v, mask, rows):
    heads = q.shape[2]
    tokens = [block_mask_to_tokens(mask[h], q.shape[1], BM, BN) for h in range(heads)]
    return torch.stack([masked_attention64(q[:, :, h], k[:, :, h], v[:, :, h], tokens[h])[:, rows]
                        for h in range(heads)], 2)


@pytest.mark.parametrize("geometry", [GEOMETRY, VIDEO_ONLY], ids=str)
@pytest.mark.parametrize("share", [0.2, 0.5])
def test_tail_matches_brute_force_on_routed_masks(geometry, share):
    q, k, v = qkv(2, geometry.seq_len, 2, 8, seed=int(share * 10))
    mask = routed_block_masks(q, k, geometry, share, BM, BN)
    assert not bool(mask.all()), "the test needs dropped blocks"
    blocks = torch.tensor([0, 2, mask.shape[1] - 1])  # first, a middle one, the ragged last one
    rows = query_rows(blocks, BM, geometry.seq_len)
    got = routed_tail_attention64(q, k, v, mask, BM, BN, query_blocks=blocks)
    assert got.tail.shape == (2, len(rows), 2, 8) and bool(torch.isfinite(got.tail).all())  # every row written
    torch.testing.assert_close(got.tail, brute_tail64(q, k, v, mask, BN, rows), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.no_tail, brute_no_tail64(q, k, v, mask, rows), rtol=1e-12, atol=1e-12)


def test_stacked_random_masks_and_all_rows():
    """Leading mask dims give one output per mask; a random mask (not only
    routed ones) and every query block, against the brute force."""
    seq_len = VIDEO_ONLY.seq_len
    q, k, v = qkv(1, seq_len, 2, 4, seed=3)
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 2, -(-seq_len // BM), -(-seq_len // BN), generator=g) < 0.4
    masks[..., 0] = True
    got = routed_tail_attention64(q, k, v, masks, BM, BN)
    rows = torch.arange(seq_len)
    assert got.tail.shape == (3, 1, seq_len, 2, 4)
    for m in range(3):
        torch.testing.assert_close(got.tail[m], brute_tail64(q, k, v, masks[m], BN, rows), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.no_tail[m], brute_no_tail64(q, k, v, masks[m], rows), rtol=1e-12, atol=1e-12)


def test_every_block_listed_is_dense_exactly():
    q, k, v = qkv(2, GEOMETRY.seq_len, 2, 8, seed=5)
    mask = routed_block_masks(q, k, GEOMETRY, 1.0, BM, BN)
    assert bool(mask.all())
    got = routed_tail_attention64(q, k, v, mask, BM, BN)
    assert torch.equal(got.tail, got.no_tail)  # no pooled term is added at all
    dense = torch.stack([masked_attention64(q[:, :, h], k[:, :, h], v[:, :, h],
                                            torch.ones(GEOMETRY.seq_len, GEOMETRY.seq_len, dtype=torch.bool))
                         for h in range(2)], 2)
    torch.testing.assert_close(got.tail, dense, rtol=1e-13, atol=1e-13)


def test_equal_keys_within_each_block_make_the_tail_exact():
    """A dropped block whose keys all equal their mean is served exactly by
    its pooled key (values may differ): the tail equals dense, no tail does not."""
    seq_len = GEOMETRY.seq_len
    q, _, v = qkv(2, seq_len, 2, 8, seed=7)
    g = torch.Generator().manual_seed(2)
    k = torch.randn(2, -(-seq_len // BN), 2, 8, generator=g).repeat_interleave(BN, 1)[:, :seq_len] * 2
    mask = routed_block_masks(q, k, GEOMETRY, 0.2, BM, BN)
    got = routed_tail_attention64(q, k, v, mask, BM, BN)
    dense = routed_tail_attention64(q, k, v, torch.ones_like(mask), BM, BN).no_tail
    torch.testing.assert_close(got.tail, dense, rtol=1e-12, atol=1e-12)
    assert float((got.no_tail - dense).abs().max()) > 1e-3


def test_bad_mask_shape_fails_before_work():
    q, k, v = qkv(1, 40, 2, 4)
    with pytest.raises(ValueError, match="block_masks end in"):
        routed_tail_attention64(q, k, v, torch.ones(2, 3, 4, dtype=torch.bool), BM, BN)


@pytest.mark.comfyui
def test_benchmark_smoke_on_the_tiny_yardstick(comfy, tmp_path):
    """benchmarks/routed_tail.py end to end on the CPU: one probe step, one
    query block in 16; its files and their fields."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import routed_tail

    result = routed_tail.main(["--size", "tiny", "--comfyui", comfy.path, "--probe-steps", "0",
                               "--query-fraction", "0.0625", "--results", str(tmp_path)])
    with open(tmp_path / "routed_tail_tiny.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    assert saved["sampling"]["probe_steps"] == [0] and saved["head_count"] == 12 == len(saved["heads"])
    for head in saved["heads"]:
        assert set(head["no_tail"]) == set(head["tail"]) == {"0.05", "0.1", "0.2", "0.3"}
        errors = list(head["no_tail"].values()) + list(head["tail"].values()) + [head["best_fixed"]["error"]]
        assert all(math.isfinite(e) and e >= 0 for e in errors)
        assert head["best_fixed"]["candidate"] and 0 <= head["best_fixed"]["block_share"] <= 1
    for row in saved["per_share"]:
        assert row["block_share"] >= row["share"] - 1e-9
        for key in ("tail_beats_no_tail", "tail_beats_best_fixed", "no_tail_beats_best_fixed",
                    "tail_beats_best_fixed_at_most_its_blocks"):
            assert 0 <= row[key] <= 12
    table = (tmp_path / "routed_tail_tiny.md").read_text()
    assert "| share |" in table and table.count("\n| 0.") == 4

"""Block tables equal the patterns' definitions, on odd geometries."""
import pytest
import torch

from sparse_vdit.patterns import (Diagonal, Full, Geometry, LayerPattern, MultiDiagonal, PatternError, Skip,
                                  VerticalStripe, Window3D, build_block_table, compile_layer, pattern_from_dict)

from oracle import block_rounded, token_mask

GEOMETRIES = [
    Geometry(3, 5, 7),                       # 105 tokens, rows not block aligned
    Geometry(4, 3, 5, prefix=2, suffix=3),   # extra tokens on both sides
    Geometry(2, 6, 11, suffix=9),            # text-like suffix
    Geometry(1, 4, 4),                       # a single frame
]
SPARSE = [Diagonal(0), Diagonal(2), MultiDiagonal(0), MultiDiagonal(1, frames=1),
          VerticalStripe((0,)), VerticalStripe((-1, 1, 99)),
          Window3D(0, 0, 0), Window3D(1, 1, 2), Window3D(0, 2, 1), Window3D(2, 0, 99)]
BLOCKS = [(16, 8), (8, 16), (32, 32)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("block_m,block_n", BLOCKS)
def test_table_mask_is_pattern_rounded_to_blocks(geometry, block_m, block_n):
    table = build_block_table(SPARSE, list(range(len(SPARSE))), geometry, block_m, block_n)
    assert table.seq_len == geometry.seq_len
    for slot, pattern in enumerate(SPARSE):
        exact = token_mask(pattern, geometry)
        implied = table.token_mask(slot)
        assert torch.equal(implied, block_rounded(exact, block_m, block_n)), pattern
        assert bool((implied | ~exact).all()), "table drops keys the pattern allows"


def test_single_token_blocks_give_the_exact_pattern():
    geometry = Geometry(3, 4, 5, prefix=1, suffix=2)
    table = build_block_table(SPARSE, list(range(len(SPARSE))), geometry, 1, 1)
    for slot, pattern in enumerate(SPARSE):
        assert torch.equal(table.token_mask(slot), token_mask(pattern, geometry)), pattern


def test_window_3d_limits_columns_and_clips_at_edges():
    """A narrow window sees fewer keys than the diagonal band over the same
    rows (columns are cut), and a window past the grid is the whole clip."""
    geometry = Geometry(3, 4, 9, prefix=2)
    narrow = token_mask(Window3D(0, 1, 1), geometry).sum()
    assert narrow < token_mask(Diagonal(1), geometry).sum()
    assert build_block_table([Window3D(0, 1, 1)], [0], geometry, 1, 1).token_mask(0).sum() == narrow
    everything = build_block_table([Window3D(50, 50, 50)], [0], geometry, 4, 4).token_mask(0)
    assert bool(everything.all())


def test_csr_is_compact_and_sorted():
    geometry = Geometry(5, 6, 9, prefix=3)
    table = build_block_table([Diagonal(1), VerticalStripe((0,))], [4, 7], geometry, 16, 8)
    offsets, indices = table.kv_offsets.long(), table.kv_indices.long()
    assert offsets.numel() == 2 * table.n_q_blocks + 1
    assert int(offsets[-1]) == indices.numel() == int(table.block_mask().sum())
    for row in range(offsets.numel() - 1):
        listed = indices[offsets[row]:offsets[row + 1]]
        assert torch.all(listed[1:] > listed[:-1])
    assert table.max_row_blocks == int((offsets[1:] - offsets[:-1]).max())
    assert table.heads == (4, 7)


def test_full_and_skip_do_not_become_tables():
    with pytest.raises(ValueError):
        build_block_table([Full()], [0], Geometry(2, 2, 2))
    layer = LayerPattern((Full(), Skip(), Diagonal(1), Full(), MultiDiagonal(0)))
    compiled = compile_layer(layer, Geometry(3, 4, 5), "cpu", 16, 8)
    assert compiled.full_heads == (0, 3) and compiled.skip_heads == (1,)
    assert compiled.sparse_heads == (2, 4)
    assert compile_layer(layer, Geometry(3, 4, 5), "cpu", 16, 8) is compiled  # cached


def test_density_counts_real_pairs():
    geometry = Geometry(3, 4, 5, suffix=2)
    layer = LayerPattern((Full(), Skip(), Diagonal(0)))
    compiled = compile_layer(layer, geometry, "cpu", 1, 1)
    diag = token_mask(Diagonal(0), geometry).sum().item()
    expected = (geometry.seq_len ** 2 + 0 + diag) / (3 * geometry.seq_len ** 2)
    assert compiled.density() == pytest.approx(expected)


def test_one_plan_serves_any_resolution():
    """Parameters are in grid units: the same pattern compiles for any grid."""
    for geometry in [Geometry(21, 30, 52), Geometry(21, 45, 80), Geometry(7, 13, 17, suffix=5)]:
        table = build_block_table([MultiDiagonal(1), Diagonal(2), Window3D(1, 2, 4)], [0, 1, 2], geometry)
        assert table.seq_len == geometry.seq_len and table.kv_indices.numel() > 0


@pytest.mark.parametrize("entry,message", [
    ({"mode": "banana"}, "unknown pattern"),
    ({"mode": "diagonal", "rows": -1}, "rows"),
    ({"mode": "diagonal", "rows": 1.5}, "integer"),
    ({"mode": "diagonal", "width": 3}, "no parameter"),
    ({"mode": "multi_diagonal", "frames": 0}, "frames"),
    ({"mode": "vertical_stripe", "frames": []}, "non-empty"),
    ({"rows": 2}, "mode"),
    ({"mode": "window_3d", "cols": -1}, "cols"),
    ({"mode": "window_3d", "frames": True}, "integer"),
    ({"mode": "window_3d", "width": 3}, "no parameter"),
])
def test_bad_pattern_entries(entry, message):
    with pytest.raises(PatternError, match=message):
        pattern_from_dict(entry)


def test_bad_geometry():
    with pytest.raises(ValueError):
        Geometry(0, 4, 4)
    with pytest.raises(ValueError):
        Geometry(2, 4, 4, prefix=-1)

"""FlexAttention driven by the pack's own block tables, for benchmarks: the
same plan, another kernel. Every listed block is a full block (the table's
semantics: all real tokens of a listed block) and the mask_mod is the exact
table lookup, so the BlockMask means what the table means."""
from __future__ import annotations

import torch

from sparse_vdit.patterns.tables import BlockTable

_COMPILED = {}


def compiled_flex():
    """flex_attention under torch.compile (its fast path), built once."""
    if "fn" not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention
        torch._dynamo.config.cache_size_limit = 256
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 256
        _COMPILED["fn"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["fn"]


def table_block_mask(table: BlockTable, device):
    """BlockMask [1, h, nq, nk] for the table's head slots (broadcast over batch)."""
    from torch.nn.attention.flex_attention import BlockMask
    heads = len(table.heads)
    nq, nk = table.n_q_blocks, table.n_k_blocks
    offsets = table.kv_offsets.to(device=device, dtype=torch.int64)
    per_row = offsets[1:] - offsets[:-1]
    counts = per_row.view(1, heads, nq).to(torch.int32)
    # FlexAttention's dense padded [1, h, nq, nk] index layout.
    pos = torch.arange(table.kv_indices.numel(), device=device) - torch.repeat_interleave(offsets[:-1], per_row)
    row_of = torch.repeat_interleave(torch.arange(heads * nq, device=device), per_row)
    idx = torch.zeros(heads * nq, nk, dtype=torch.int32, device=device)
    idx[row_of, pos] = table.kv_indices.to(device=device, dtype=torch.int32)
    idx = idx.view(1, heads, nq, nk)
    blocks = table.block_mask().to(device)
    bm, bn = table.block_m, table.block_n

    def mask_mod(b, h, q_idx, kv_idx):
        return blocks[h, q_idx // bm, kv_idx // bn]

    return BlockMask.from_kv_blocks(torch.zeros_like(counts), idx.clone(), counts, idx, BLOCK_SIZE=(bm, bn),
                                    mask_mod=mask_mod, seq_lengths=(table.seq_len, table.seq_len))


class FlexTableAttention:
    """Callable (qh, kh, vh [B, h, L, D]) -> [B, h, L, D] over one table.
    The first call finds kernel options that work (FlexAttention's default
    tile may be larger than the table's blocks); `note` says what was used."""

    def __init__(self, table: BlockTable, device, scale: float | None = None, compiled: bool = True):
        from torch.nn.attention.flex_attention import flex_attention
        self.flex = compiled_flex() if compiled else flex_attention
        self.block_mask = table_block_mask(table, device)
        self.scale = scale
        self.kernel_options = None
        self.note = f"BlockMask {table.block_m}x{table.block_n}, all listed blocks full"
        self._pin = {"BLOCK_M": table.block_m, "BLOCK_N": table.block_n}

    def __call__(self, qh, kh, vh):
        if self.kernel_options is None:
            try:
                return self.flex(qh, kh, vh, block_mask=self.block_mask, scale=self.scale)
            except Exception as error:  # kernel tile larger than the sparse block: say so and pin it
                self.kernel_options = self._pin
                self.note += f"; kernel_options {self._pin} after: {str(error).splitlines()[0][:120]}"
        return self.flex(qh, kh, vh, block_mask=self.block_mask, scale=self.scale, kernel_options=self.kernel_options)

"""Pattern semantics: what each head attends, over the latent token grid,
and its compilation into block tables. No kernels live here."""
from .base import Pattern, PatternError
from .diagonal import Diagonal
from .full import Full
from .geometry import Geometry
from .layer import CompiledLayer, LayerPattern, compile_layer
from .multi_diagonal import MultiDiagonal
from .registry import PATTERNS, pattern_from_dict
from .routed import Routed
from .skip import Skip
from .tables import (DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, BlockTable, build_block_table, pattern_block_mask,
                     table_from_block_mask)
from .vertical_stripe import VerticalStripe
from .window_3d import Window3D

__all__ = [
    "Pattern", "PatternError", "Full", "Skip", "Diagonal", "MultiDiagonal", "VerticalStripe", "Window3D", "Routed",
    "Geometry", "LayerPattern", "CompiledLayer", "compile_layer", "PATTERNS", "pattern_from_dict",
    "BlockTable", "build_block_table", "pattern_block_mask", "table_from_block_mask", "DEFAULT_BLOCK_M", "DEFAULT_BLOCK_N",
]

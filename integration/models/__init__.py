"""One adapter per model family (see base.py). Order matters only where a
class would match two families (none today)."""
from __future__ import annotations

from .base import CallTokens, ModelAdapter
from .cogvideox import CogVideoXAdapter
from .cosmos1 import Cosmos1Adapter
from .cosmos_predict2 import CosmosPredict2Adapter
from .hunyuan_video import HunyuanVideoAdapter
from .kandinsky5 import Kandinsky5Adapter
from .ltxv import LTXVAdapter
from .mochi import MochiAdapter
from .wan import WanAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    WanAdapter, HunyuanVideoAdapter, MochiAdapter, CosmosPredict2Adapter, Cosmos1Adapter, LTXVAdapter,
    CogVideoXAdapter, Kandinsky5Adapter,
)

__all__ = ["ADAPTERS", "CallTokens", "ModelAdapter"]

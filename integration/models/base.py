"""What the attention hook asks of a model family: one adapter per family.

An adapter recognises its diffusion model, gives its attention shape
(layers, heads, head_dim), says where the latent grid is read and how a
forward's tokens are laid out (extra tokens before or after the video,
joint text and its order), and which layer a call belongs to on each
ComfyUI version. The hook holds no per-model branches: adding a model is
adding one adapter file and its tiny-model test.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace

import torch

from ...patterns.geometry import Geometry

TEXT_ORDERS = ("none", "before", "after")


@dataclass(frozen=True)
class CallTokens:
    """Where the tokens of one self-attention call sit: the grid with its
    extra tokens, and the joint text span (start, end), if any."""
    geometry: Geometry
    text_span: tuple[int, int] | None = None


@dataclass(frozen=True)
class ModelAdapter:
    family: str
    layers: int
    heads: int
    head_dim: int
    patch_size: tuple[int, int, int]
    # Models with double then single blocks whose block_index restarts at 0
    # (HunyuanVideo): plan layer = double_layers + index for single blocks.
    double_layers: int = 0
    # Joint text in self-attention: "none", or its place relative to the
    # video ("before": [text, video]; "after": [video, text]). Its length
    # depends on the prompt, so it is read off each call.
    text: str = "none"
    # Wan pads the latent up to the patch size; HunyuanVideo floors.
    pads_to_patch: bool = True
    # Where the latent grid is read: the diffusion model's own wrapper, or
    # ComfyUI's apply_model wrapper for models that have none (Mochi).
    wrapper: str = "diffusion_model"

    def __post_init__(self):
        if self.text not in TEXT_ORDERS:
            raise ValueError(f"text must be one of {TEXT_ORDERS}, got {self.text!r}")

    @classmethod
    def recognise(cls, diffusion_model) -> "ModelAdapter | None":
        """An adapter for this diffusion model, or None if it is not this family."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.family}: {self.layers} layers x {self.heads} heads x head_dim {self.head_dim}"

    def with_family(self, family: str) -> "ModelAdapter":
        return replace(self, family=family)

    # ----- per forward -------------------------------------------------------
    def forward_geometry(self, diffusion_model, x: torch.Tensor, args: tuple, kwargs: dict) -> Geometry:
        """The tokens of this forward's video self-attention, without joint text."""
        return grid_geometry(x, self.patch_size, pad=self.pads_to_patch)

    def countable(self, diffusion_model) -> bool:
        """Whether self-attention calls can be counted into layers where
        ComfyUI gives no block_index (one call per layer per forward)."""
        return True

    # ----- per call ----------------------------------------------------------
    def place(self, q_len: int, geometry: Geometry) -> CallTokens | None:
        """The layout of a self-attention call of q_len tokens, or None if it
        is not the video self-attention (a text refiner, another module)."""
        if self.text == "none":
            return CallTokens(geometry) if q_len == geometry.seq_len else None
        extra = q_len - geometry.seq_len
        if extra < 0:
            return None
        if self.text == "before":
            return CallTokens(replace(geometry, prefix=geometry.prefix + extra), (0, extra))
        return CallTokens(replace(geometry, suffix=geometry.suffix + extra), (geometry.seq_len, q_len))

    def disagreement(self, tokens: CallTokens, options: dict) -> str | None:
        """Why ComfyUI's own facts about this call (grid sizes, image slice)
        contradict the layout, or None. A contradicted call runs dense."""
        return None

    def layer_of(self, options: dict, counted: int | None) -> int | None:
        """The plan layer of a call: ComfyUI's block_index where it gives one,
        else the call's count in the forward (None: cannot be counted)."""
        index = options.get("block_index")
        if index is None:
            return counted
        if options.get("block_type") == "single":
            index += self.double_layers
        return int(index)


def has_class(obj, class_name: str) -> bool:
    return any(c.__name__ == class_name for c in type(obj).__mro__)


def grid_geometry(x: torch.Tensor, patch_size: tuple[int, int, int], pad: bool = True) -> Geometry:
    """The video grid of latent x [B, C, T, H, W] after patchify (padded up
    to the patch size, or floored)."""
    size = (lambda n, p: math.ceil(n / p)) if pad else (lambda n, p: n // p)
    return Geometry(*(size(n, p) for n, p in zip(x.shape[2:], patch_size)))


def tokens_of(latent: torch.Tensor | None, patch_size, pad: bool) -> int:
    """Token count of an extra latent [B, C, T, H, W] after patchify (0 for None)."""
    if latent is None or latent.ndim != 5:
        return 0
    return grid_geometry(latent, patch_size, pad).video_tokens


def forward_argument(diffusion_model, args: tuple, kwargs: dict, name: str):
    """An argument of the diffusion model's forward by name, positional or
    keyword: positions differ between ComfyUI versions, names do not."""
    if name in kwargs:
        return kwargs[name]
    try:
        bound = inspect.signature(diffusion_model.forward).bind_partial(*args)
    except (TypeError, ValueError, AttributeError):
        return None
    return bound.arguments.get(name)

"""Yardstick weights stored in 4 bits with per-group scales, dequantised at load.

Why 4 bits: the wan480 size's minimum model (dim 512 = 4 heads x 128, 8
layers, text_dim 4096 fixed by ComfyUI's Wan2.1 detection) has 21.3 M
parameters even with no feed-forward at all (25.5 M with ffn 512): 8 bits
would take 25.5 MB, over the 16 MB the repository can carry.

Format (one safetensors file, plain WanModel key names):
- every 2-D matrix of at least ``MIN_ELEMENTS`` outside the output head is
  stored as ``KEY.int4`` (uint8, two codes a byte, low nibble first) and
  ``KEY.scale`` (fp16 [rows, groups]): each row is cut into groups of
  ``GROUP`` values, code = round(w / scale) + 8 with scale = max|w| / 7 of
  the group (codes 1..15, symmetric);
- everything else (biases, norms, modulation, patch embedding, head) as fp16;
- the metadata ``sparse_vdit_quant`` records the format and each matrix's shape.

The dequantised weights ARE the model: the dense reference and every sparse
method run on them (:func:`load_dequantized`, then ComfyUI's own loader).
Quantising is deterministic and done on the CPU, so the same bf16 training
weights give the same file bytes on any machine.
"""
from __future__ import annotations

import json

import torch

GROUP = 32
QMAX = 7
MIN_ELEMENTS = 65536
FORMAT = "int4-g32-sym-fp16scale"
META_KEY = "sparse_vdit_quant"


def quantized(name: str, tensor: torch.Tensor) -> bool:
    """Which tensors are stored in 4 bits."""
    return tensor.ndim == 2 and tensor.numel() >= MIN_ELEMENTS and not name.startswith("head.")


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes packed two a byte [rows * padded_cols / 2] uint8, scales [rows, groups] fp16)."""
    w = w.detach().to("cpu", torch.float32)
    rows, cols = w.shape
    padded = -(-cols // GROUP) * GROUP
    w = torch.nn.functional.pad(w, (0, padded - cols)).view(rows, padded // GROUP, GROUP)
    scale = (w.abs().amax(-1) / QMAX).to(torch.float16)
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    codes = (torch.round(w / safe[..., None]).clamp(-QMAX, QMAX) + 8).to(torch.uint8).view(-1)
    return codes[0::2] | (codes[1::2] << 4), scale


def dequantize(packed: torch.Tensor, scale: torch.Tensor, shape) -> torch.Tensor:
    rows, cols = shape
    codes = torch.stack([packed & 15, packed >> 4], dim=-1).view(rows, scale.shape[1], GROUP)
    w = (codes.to(torch.float32) - 8) * scale.float()[..., None]
    return w.view(rows, -1)[:, :cols].contiguous()


def save_quantized(state_dict: dict, path: str, metadata: dict | None = None) -> None:
    """Write ``state_dict`` (any float dtype) in the format above."""
    from safetensors.torch import save_file

    out, shapes = {}, {}
    for name, tensor in state_dict.items():
        if quantized(name, tensor):
            out[name + ".int4"], out[name + ".scale"] = quantize(tensor)
            shapes[name] = list(tensor.shape)
        else:
            out[name] = tensor.detach().to("cpu", torch.float16).contiguous()
    meta = {"format": "pt", "sparse_vdit_yardstick": json.dumps(metadata or {}),
            META_KEY: json.dumps({"format": FORMAT, "group": GROUP, "shapes": shapes})}
    save_file(out, path, metadata=meta)


def is_quantized(path: str) -> bool:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return META_KEY in (f.metadata() or {})


def load_dequantized(path: str) -> dict:
    """The model's state dict (fp32 for the quantised matrices, fp16 otherwise)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        info = json.loads((f.metadata() or {})[META_KEY])
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown weight format {info.get('format')!r} (this code reads {FORMAT})")
    raw = load_file(path)
    sd = {k: v for k, v in raw.items() if not k.endswith((".int4", ".scale"))}
    for name, shape in info["shapes"].items():
        sd[name] = dequantize(raw[name + ".int4"], raw[name + ".scale"], shape)
    return sd


def stored_bytes(state_dict: dict) -> int:
    """Bytes of tensor data the format stores for ``state_dict`` (headers aside)."""
    total = 0
    for name, t in state_dict.items():
        if quantized(name, t):
            rows, cols = t.shape
            groups = -(-cols // GROUP)
            total += rows * groups * (GROUP // 2 + 2)
        else:
            total += 2 * t.numel()
    return total

"""The yardstick model: ComfyUI's own Wan2.1 T2V diffusion model at a small size.

Imported from a ComfyUI checkout (never copied into the project). The weights
are saved with the plain ``WanModel.state_dict()`` keys
(``blocks.0.self_attn.q.weight`` ...), the layout of ComfyUI's Wan2.1
``diffusion_models`` files, so ``comfy.sd.load_diffusion_model_state_dict``
detects it as Wan2.1 t2v (dim 256 -> 2 heads of 128) and loads it.

ComfyUI's detection fixes two sizes for Wan2.1: ``freq_dim`` 256 and
``text_dim`` 4096 (the umt5 width; it is not read from the weights), so the
stand-in prompt embeddings are [16, 4096] tensors.
"""
from __future__ import annotations

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WEIGHTS = os.path.join(HERE, "wan_tiny_yardstick.safetensors")

sys.path.insert(0, HERE)
from ys_sizes import TINY, YardstickSize  # noqa: E402

CONFIG = TINY.config
TEXT_LEN = TINY.text_len
SHIFT = 8.0  # ComfyUI's WAN21_T2V sampling shift (supported_models.py)


def import_comfy(path: str | None = None, cpu: bool = True):
    """Import ComfyUI from a checkout (``path`` or $COMFYUI_PATH).

    CPU: the test harness's ``import_comfy`` (torchvision stub, CPU flags,
    SDPA attention). GPU: the same flags without ``--cpu``, and only the
    modules training needs (``comfy.ldm.wan.model``, ``comfy.ops``).
    Returns the ``comfy`` package.
    """
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import comfy_harness

    path = path or comfy_harness.comfyui_path()
    if not path:
        raise RuntimeError("pass --comfyui or set COMFYUI_PATH to a ComfyUI checkout")
    if cpu:
        comfy_harness.import_comfy(path)
    else:
        path = os.path.abspath(path)
        if sys.path[:1] != [path]:
            sys.path.insert(0, path)
        # the harness's sampling helpers import the same checkout (after the
        # GPU flags below are in place: model_management keeps its device)
        os.environ["COMFYUI_PATH"] = path
        comfy_harness.stub_unimportable_packages()
        import comfy.options  # noqa: F401
        import comfy.cli_args

        args = comfy.cli_args.args
        args.disable_smart_memory = True
        args.use_pytorch_cross_attention = True
    import comfy.ldm.wan.model  # noqa: F401
    import comfy.ops  # noqa: F401
    return sys.modules["comfy"]


def weights_path(size: YardstickSize = TINY) -> str:
    return os.path.join(HERE, size.weights)


def build_model(device="cpu", dtype=torch.float32, seed: int = 0, size: YardstickSize = TINY):
    """A freshly initialised ``comfy.ldm.wan.model.WanModel`` of ``size``."""
    import comfy.ldm.wan.model as wan
    import comfy.ops

    model = wan.WanModel(**size.config, device=device, dtype=dtype, operations=comfy.ops.disable_weight_init)
    init_weights(model, seed, dim=size.config["dim"])
    return model


@torch.no_grad()
def init_weights(model, seed: int = 0, dim: int = CONFIG["dim"]) -> None:
    """Wan-style init: xavier linears/conv, zero biases, unit norms,
    modulation ~ N(0, 1/dim), zero output head. Deterministic in ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    for name, p in sorted(model.named_parameters()):
        if name.endswith("modulation"):
            val = torch.randn(p.shape, generator=g) / dim ** 0.5
        elif name.startswith("head.head"):
            val = torch.zeros(p.shape)
        elif p.ndim >= 2:
            fan_out, fan_in = p.shape[0], p[0].numel()
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            val = (torch.rand(p.shape, generator=g) * 2 - 1) * bound
        elif name.endswith("bias"):
            val = torch.zeros(p.shape)
        else:
            val = torch.ones(p.shape)
        p.copy_(val.to(p.dtype))


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model, path: str, dtype=torch.float16, metadata: dict | None = None, quant: str | None = None) -> None:
    """Save in ComfyUI's Wan diffusion-model key layout (plain WanModel keys);
    ``quant="int4"``: 4 bits with per-group scales (ys_quant.py)."""
    if quant == "int4":
        import ys_quant

        ys_quant.save_quantized(model.state_dict(), path, metadata)
    elif quant is None:
        save_state_dict(model.state_dict(), path, dtype, metadata)
    else:
        raise ValueError(f"unknown weight storage {quant!r}")


def save_state_dict(sd: dict, path: str, dtype=torch.float16, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sd.items()}
    meta = {"format": "pt", "sparse_vdit_yardstick": json.dumps(metadata or {})}
    save_file(sd, path, metadata=meta)


def load_state_dict(path: str = WEIGHTS) -> dict:
    """The model's weights; a 4-bit file (ys_quant.py) comes back dequantised."""
    import ys_quant
    from safetensors.torch import load_file

    if ys_quant.is_quantized(path):
        return ys_quant.load_dequantized(path)
    return load_file(path)


def load_metadata(path: str = WEIGHTS) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("sparse_vdit_yardstick", "{}"))


def load_patcher(path: str = WEIGHTS, dtype=torch.float32):
    """Load through ComfyUI's own diffusion-model loader (detection included).

    Returns a ``ModelPatcher`` of a ``model_base.WAN21`` (ComfyUI must already
    be imported, e.g. by :func:`import_comfy`). ``dtype`` is the inference
    dtype (float32 on CPU).
    """
    import comfy.sd

    sd = load_state_dict(path)
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})
    if patcher is None:
        raise RuntimeError(f"ComfyUI did not recognise {path} as a diffusion model")
    return patcher


def conditioning(size: YardstickSize = TINY):
    """The stand-in prompts [8, text_len, 4096] (see data.conditioning)."""
    import ys_data as data

    return data.conditioning(text_len=size.text_len, text_dim=size.config["text_dim"])

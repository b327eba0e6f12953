"""Headless ComfyUI harness for integration tests.

Imports ComfyUI from a source checkout (never vendored into this project),
builds a tiny but real Wan2.1 T2V model from ComfyUI's own classes, and samples
it with ``comfy.sample.sample`` on the CPU exactly as ``nodes.common_ksampler``
does.  Works with ComfyUI 0.8.0 and 0.3.64 checkouts (one per process).

Typical use (the ``comfy`` fixture in conftest.py calls :func:`import_comfy`)::

    model = tiny_wan_model(seed=0)                  # ModelPatcher, fp32, CPU
    pos, neg = make_conds(model, seed=1)            # [[context, {}]] each
    latent = empty_latent()                         # [1, 16, 4, 20, 22] zeros
    out = sample(model, pos, neg, latent, seed=2)   # 3 euler steps, cfg 5

    rec = record_attention_calls(model)             # a CLONE with a recorder
    sample(rec.model, pos, neg, latent, seed=2)
    rec.self_attention(VIDEO_TOKENS)                # list[AttentionCall]

Default geometry: latent [B, 16, T=4, H=20, W=22], patch (1, 2, 2) ->
grid 4 x 10 x 11 = 440 video tokens (110 per frame, deliberately not a
multiple of any block size); text context 512 tokens (Wan's text length).
A 3-step cfg sample takes well under a second on 2 CPU cores.
"""

from __future__ import annotations

import importlib.machinery
import logging
import math
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import torch

# --------------------------------------------------------------------------
# Defaults (geometry of the tiny model and its latent)
# --------------------------------------------------------------------------

LATENT_CHANNELS = 16
DEFAULT_LATENT_SHAPE = (1, LATENT_CHANNELS, 4, 20, 22)  # B, C, T, H, W
PATCH_SIZE = (1, 2, 2)
DEFAULT_GRID = (4, 10, 11)  # frames x rows x cols after patchify
VIDEO_TOKENS = 4 * 10 * 11  # 440 self-attention tokens per sample
TOKENS_PER_FRAME = 10 * 11  # 110
TEXT_LEN = 512  # cross-attention key length (Wan pads text to 512)
TEXT_DIM = 32  # tiny model's text embedding width

ENV_VAR = "COMFYUI_PATH"

_NAMESPACE: types.SimpleNamespace | None = None


def comfyui_path() -> str | None:
    """The ComfyUI checkout to test against: ``$COMFYUI_PATH`` or None."""
    path = os.environ.get(ENV_VAR, "").strip()
    return path or None


def comfyui_version(path: str | None = None) -> str | None:
    """Version string of a checkout (from its comfyui_version.py), or None."""
    path = path or comfyui_path()
    if not path:
        return None
    fn = os.path.join(path, "comfyui_version.py")
    try:
        with open(fn, encoding="utf-8") as f:
            for line in f:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        return None
    return None


def latent_grid(latent_shape, patch_size=PATCH_SIZE) -> tuple[int, int, int]:
    """(frames, rows, cols) token grid Wan builds from a latent [B,C,T,H,W]."""
    t, h, w = latent_shape[-3:]
    pt, ph, pw = patch_size
    return (math.ceil(t / pt), math.ceil(h / ph), math.ceil(w / pw))


def token_count(latent_shape, patch_size=PATCH_SIZE) -> int:
    """Number of video self-attention tokens for a latent shape."""
    return math.prod(latent_grid(latent_shape, patch_size))


# --------------------------------------------------------------------------
# Importing ComfyUI
# --------------------------------------------------------------------------


class _Unavailable:
    """Placeholder for stubbed package attributes: fails only when used."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self._name}.{item}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"{self._name} is unavailable: stubbed by the sparse_vdit test harness"
        )

    def __repr__(self):
        return f"<stub {self._name}>"


def _make_stub_module(name):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    mod.__path__ = []
    mod.__file__ = None
    mod.__sparse_vdit_stub__ = True

    def __getattr__(item, _name=name):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{_name}.{item}")

    mod.__getattr__ = __getattr__
    return mod


# Packages that do not import beside the CPU torch here, stubbed with the
# submodules ComfyUI names at import time. torchvision: PyPI's build fails
# ("operator torchvision::nms does not exist"); ComfyUI needs its names only
# at import (cosmos, cascade, ace). torchaudio (imported at load by ComfyUI
# >= 0.2x: audio VAEs, audio nodes): no build matches this torch; no video
# model the pack serves uses it.
_STUBBED_SUBMODULES = {
    "torchvision": ("transforms", "transforms.functional", "models", "ops", "io", "utils"),
    "torchaudio": ("functional", "transforms", "compliance", "compliance.kaldi", "io", "utils"),
}


def _ensure_importable(package: str) -> bool:
    """Import `package`, or install a stub if it cannot be imported.
    Returns True if the stub was installed."""
    existing = sys.modules.get(package)
    if existing is not None:
        return bool(getattr(existing, "__sparse_vdit_stub__", False))
    try:
        importlib.import_module(package)
        return False
    except Exception:  # ImportError, RuntimeError from the ops registry, ...
        for name in list(sys.modules):
            if name == package or name.startswith(package + "."):
                del sys.modules[name]
    root = _make_stub_module(package)
    for sub in _STUBBED_SUBMODULES[package]:
        full = f"{package}.{sub}"
        mod = _make_stub_module(full)
        sys.modules[full] = mod
        parent_name, _, leaf = full.rpartition(".")
        setattr(sys.modules[parent_name] if parent_name != package else root, leaf, mod)
    sys.modules[package] = root
    if package == "torchvision":
        root.transforms.InterpolationMode = types.SimpleNamespace(
            NEAREST="nearest", BILINEAR="bilinear", BICUBIC="bicubic"
        )
    return True


def stub_unimportable_packages() -> dict[str, bool]:
    """Stub each package of _STUBBED_SUBMODULES that does not import here
    (ComfyUI imports them at load); returns package -> whether stubbed."""
    return {package: _ensure_importable(package) for package in _STUBBED_SUBMODULES}


def import_comfy(path: str | None = None, attention: str = "pytorch") -> types.SimpleNamespace:
    """Import ComfyUI headless, CPU only, from a checkout; returns a namespace.

    ``path`` defaults to ``$COMFYUI_PATH``. ``attention="pytorch"`` makes
    ComfyUI pick ``attention_pytorch`` (SDPA) as ``optimized_attention``, the
    function GPU users get; ``"default"`` keeps ComfyUI's own CPU choice
    (sub-quadratic attention). Only one checkout per process: a second call
    with another path raises RuntimeError; the same path returns the cached
    namespace.

    The namespace holds: path, version, torchvision_stubbed, cpu (a
    torch.device), and the modules comfy, model_management, sample, samplers,
    model_patcher, supported_models, model_base, patcher_extension,
    attention (comfy.ldm.modules.attention), folder_paths.
    """
    global _NAMESPACE
    path = path or comfyui_path()
    if not path:
        raise RuntimeError(f"set {ENV_VAR} to a ComfyUI checkout to run integration tests")
    path = os.path.abspath(path)
    if _NAMESPACE is not None:
        if _NAMESPACE.path != path:
            raise RuntimeError(
                f"ComfyUI already imported from {_NAMESPACE.path}; cannot also import {path} in one process"
            )
        return _NAMESPACE
    if not os.path.isfile(os.path.join(path, "comfy", "model_management.py")):
        raise RuntimeError(f"{ENV_VAR}={path} is not a ComfyUI checkout (no comfy/model_management.py)")
    loaded = sys.modules.get("comfy")
    if loaded is not None:
        # comfy is a namespace package in some versions: no __file__, use __path__
        where = [os.path.dirname(os.path.abspath(p)) for p in getattr(loaded, "__path__", [])]
        if path not in where:
            raise RuntimeError(f"a different 'comfy' package is already imported (from {where})")

    if sys.path[:1] != [path]:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)

    stubbed = stub_unimportable_packages()

    import comfy.options  # noqa: F401  (args parsing stays off: parse_args([]))
    import comfy.cli_args

    args = comfy.cli_args.args
    args.cpu = True
    args.disable_smart_memory = True
    args.disable_xformers = True
    if hasattr(args, "disable_pinned_memory"):
        args.disable_pinned_memory = True
    if attention == "pytorch":
        args.use_pytorch_cross_attention = True
    elif attention != "default":
        raise ValueError(f"attention must be 'pytorch' or 'default', not {attention!r}")

    import comfy.model_management as model_management
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.sample
    import comfy.samplers
    import comfy.model_patcher
    import comfy.model_base
    import comfy.supported_models
    import comfy.patcher_extension
    import comfy.utils
    import folder_paths

    comfy.utils.PROGRESS_BAR_ENABLED = False

    _NAMESPACE = types.SimpleNamespace(
        path=path,
        version=comfyui_version(path),
        torchvision_stubbed=stubbed["torchvision"],
        torchaudio_stubbed=stubbed["torchaudio"],
        cpu=torch.device("cpu"),
        comfy=sys.modules["comfy"],
        model_management=model_management,
        attention=comfy_attention,
        sample=comfy.sample,
        samplers=comfy.samplers,
        model_patcher=comfy.model_patcher,
        model_base=comfy.model_base,
        supported_models=comfy.supported_models,
        patcher_extension=comfy.patcher_extension,
        utils=comfy.utils,
        folder_paths=folder_paths,
    )
    return _NAMESPACE


def _ns() -> types.SimpleNamespace:
    return _NAMESPACE if _NAMESPACE is not None else import_comfy()


def version_tuple(version: str | None = None) -> tuple[int, ...]:
    """ComfyUI version as a tuple of ints, e.g. (0, 8, 0)."""
    v = version if version is not None else _ns().version
    out = []
    for part in (v or "0").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def has_block_index(version: str | None = None) -> bool:
    """Whether Wan puts ``block_index`` into transformer_options (ComfyUI >= 0.5.0)."""
    return version_tuple(version) >= (0, 5, 0)


# --------------------------------------------------------------------------
# The tiny Wan2.1 model
# --------------------------------------------------------------------------


def wan_unet_config(
    num_layers: int = 2,
    num_heads: int = 4,
    head_dim: int = 16,
    ffn_mult: int = 2,
    text_dim: int = TEXT_DIM,
    text_len: int = TEXT_LEN,
    freq_dim: int = 32,
) -> dict:
    """A tiny Wan2.1 T2V unet_config with the keys model_detection produces."""
    dim = num_heads * head_dim
    return {
        "image_model": "wan2.1",
        "model_type": "t2v",
        "dim": dim,
        "ffn_dim": dim * ffn_mult,
        "freq_dim": freq_dim,
        "num_heads": num_heads,
        "num_layers": num_layers,
        "in_dim": LATENT_CHANNELS,
        "out_dim": LATENT_CHANNELS,
        "text_dim": text_dim,
        "text_len": text_len,
        "patch_size": PATCH_SIZE,
        "window_size": (-1, -1),
        "qk_norm": True,
        "cross_attn_norm": True,
        "eps": 1e-6,
    }


@torch.no_grad()
def init_weights(module: torch.nn.Module, seed: int = 0, gain: float = 1.0, qk_scale: float = 2.0) -> None:
    """Deterministic, non-trivial weights for every parameter of a Wan model.

    Linear / Conv weights ~ N(0, gain / sqrt(fan_in)); biases ~ N(0, 0.02);
    norm weights 1 (+ small noise) except the q/k RMSNorm weights, which are
    ``qk_scale`` so attention logits have std about qk_scale**2 (softmax far
    from uniform); modulation tables ~ N(0, 0.1). Parameters are visited in
    name order from one generator seeded by ``seed``.
    """
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    owners = {}
    for mname, mod in module.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = (mname, mod)
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        mname, mod = owners[name]
        cls = type(mod).__name__.lower()
        leaf = name.rsplit(".", 1)[-1]

        def randn(std, _p=p):
            return torch.randn(_p.shape, generator=g, dtype=torch.float32) * std

        if "norm" in cls:
            if leaf == "weight":
                if mname.endswith("norm_q") or mname.endswith("norm_k") or mname.endswith("norm_k_img"):
                    val = torch.full(p.shape, float(qk_scale)) + randn(0.05)
                else:
                    val = 1.0 + randn(0.05)
            else:
                val = randn(0.02)
        elif leaf == "modulation":
            val = randn(0.1)
        elif leaf == "bias":
            val = randn(0.02)
        elif p.dim() >= 2:
            fan_in = p[0].numel()
            val = randn(gain / math.sqrt(fan_in))
        else:
            val = randn(0.1)
        p.copy_(val.to(p.dtype))


def tiny_model(config_class: str, unet_config: dict, seed: int = 0, dtype: torch.dtype = torch.float32,
               gain: float = 1.0, qk_scale: float = 2.0):
    """Any model ComfyUI supports, tiny, in a ModelPatcher on CPU: built like
    ComfyUI's loader does (``supported_models.<config_class>(unet_config)``,
    ``set_inference_dtype``, ``get_model``), weights from :func:`init_weights`."""
    ns = _ns()
    model_config = getattr(ns.supported_models, config_class)(unet_config)
    model_config.set_inference_dtype(dtype, None)
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))  # model_base logs at INFO
    try:
        model = model_config.get_model({}, device=ns.cpu)
    finally:
        logger.setLevel(level)
    init_weights(model.diffusion_model, seed=seed, gain=gain, qk_scale=qk_scale)
    model.diffusion_model.to(dtype=dtype)
    model.eval()
    return ns.model_patcher.ModelPatcher(model, load_device=ns.cpu, offload_device=ns.cpu)


def tiny_wan_model(
    seed: int = 0,
    num_layers: int = 2,
    num_heads: int = 4,
    head_dim: int = 16,
    ffn_mult: int = 2,
    text_dim: int = TEXT_DIM,
    text_len: int = TEXT_LEN,
    qk_scale: float = 2.0,
    gain: float = 1.0,
    dtype: torch.dtype = torch.float32,
    config_class: str = "WAN21_T2V",
    extra_config: dict | None = None,
):
    """A real ``model_base.WAN21`` (tiny, random weights) in a ModelPatcher on CPU.

    ``config_class`` names another class of ``comfy.supported_models`` (e.g.
    ``WAN21_Vace``) and ``extra_config`` adds unet_config keys (e.g.
    ``{"model_type": "vace", "vace_layers": 1, "vace_in_dim": 96}`` or
    ``{"in_dim_ref_conv": 16}`` for Fun-style reference tokens).

    Built like ComfyUI's loader does: ``supported_models.WAN21_T2V(unet_config)``,
    ``set_inference_dtype``, ``get_model({}, device=cpu)``; weights from
    :func:`init_weights` (deterministic in ``seed``). Defaults: dim 64,
    4 heads x 16, 2 layers, ffn 128, text_dim 32. The returned patcher's
    ``model.diffusion_model`` is ``comfy.ldm.wan.model.WanModel``.
    """
    cfg = wan_unet_config(num_layers, num_heads, head_dim, ffn_mult, text_dim, text_len)
    cfg.update(extra_config or {})
    patcher = tiny_model(config_class, cfg, seed=seed, dtype=dtype, gain=gain, qk_scale=qk_scale)
    # the patch embedding is kept in fp32 by Wan itself
    patcher.model.diffusion_model.patch_embedding.to(torch.float32)
    return patcher


def model_text_dim(model_patcher) -> int:
    """The text embedding width of a Wan ModelPatcher (or model)."""
    model = getattr(model_patcher, "model", model_patcher)
    return model.diffusion_model.text_embedding[0].weight.shape[1]


def make_conds(model_patcher, seed: int = 0, text_len: int = TEXT_LEN, batch: int = 1, scale: float = 1.0):
    """(positive, negative) conditioning as samplers expect: ``[[context, {}]]``.

    Each context is random N(0, scale) of shape [batch, text_len, text_dim]
    (deterministic in ``seed``); positive and negative differ.
    """
    dim = model_text_dim(model_patcher)
    g = torch.Generator(device="cpu").manual_seed(int(seed) + 1_000_003)
    pos = torch.randn((batch, text_len, dim), generator=g) * scale
    neg = torch.randn((batch, text_len, dim), generator=g) * scale
    return [[pos, {}]], [[neg, {}]]


def empty_latent(batch: int = 1, frames: int = 4, height: int = 20, width: int = 22) -> torch.Tensor:
    """A zero latent [batch, 16, frames, height, width] (EmptyHunyuanLatentVideo-like).

    Defaults give the 4 x 10 x 11 = 440-token grid (see module docstring).
    """
    return torch.zeros((batch, LATENT_CHANNELS, frames, height, width), dtype=torch.float32)


def sample(
    model_patcher,
    positive,
    negative,
    latent=None,
    seed: int = 0,
    steps: int = 3,
    cfg: float = 5.0,
    sampler: str = "euler",
    scheduler: str = "simple",
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step=None,
    last_step=None,
    force_full_denoise: bool = False,
) -> torch.Tensor:
    """Sample like ``nodes.common_ksampler`` (CPU); returns the output latent.

    ``latent`` is a tensor [B, 16, T, H, W] or a LATENT dict ({"samples": ...});
    None means :func:`empty_latent`. With cfg != 1 ComfyUI evaluates cond and
    uncond (batched into one B=2 call when memory allows); cfg == 1 skips
    uncond.
    """
    ns = _ns()
    if latent is None:
        latent = empty_latent()
    if isinstance(latent, dict):
        latent_dict = latent
    else:
        latent_dict = {"samples": latent}
    latent_image = latent_dict["samples"]
    latent_image = ns.sample.fix_empty_latent_channels(model_patcher, latent_image)
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    else:
        batch_inds = latent_dict.get("batch_index")
        noise = ns.sample.prepare_noise(latent_image, seed, batch_inds)
    noise_mask = latent_dict.get("noise_mask")
    return ns.sample.sample(
        model_patcher,
        noise,
        steps,
        cfg,
        sampler,
        scheduler,
        positive,
        negative,
        latent_image,
        denoise=denoise,
        disable_noise=disable_noise,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
        noise_mask=noise_mask,
        callback=None,
        disable_pbar=True,
        seed=seed,
    )


# --------------------------------------------------------------------------
# Recording what the model sends to attention
# --------------------------------------------------------------------------

_TO_KEYS = ("block_index", "block_type", "total_blocks", "cond_or_uncond")


@dataclass
class AttentionCall:
    """One call that reached ``optimized_attention_override``."""

    index: int
    func_name: str
    q_shape: tuple
    k_shape: tuple
    v_shape: tuple
    dtype: torch.dtype
    heads: Any
    heads_positional: bool
    skip_reshape: bool
    skip_output_reshape: bool
    has_mask: bool
    kwargs_keys: tuple
    has_transformer_options: bool
    transformer_options_keys: tuple
    block_index: Any = None  # None when the model does not set it
    block_type: Any = None
    total_blocks: Any = None
    cond_or_uncond: Any = None
    sigma: Any = None  # first entry of transformer_options["sigmas"]
    out_shape: tuple | None = None
    q: torch.Tensor | None = field(default=None, repr=False)
    k: torch.Tensor | None = field(default=None, repr=False)
    v: torch.Tensor | None = field(default=None, repr=False)
    out: torch.Tensor | None = field(default=None, repr=False)

    @property
    def q_len(self) -> int:
        return self.q_shape[2] if self.skip_reshape else self.q_shape[1]

    @property
    def k_len(self) -> int:
        return self.k_shape[2] if self.skip_reshape else self.k_shape[1]

    @property
    def batch(self) -> int:
        return self.q_shape[0]


class AttentionRecorder:
    """Holds ``model`` (a clone with the recording override) and ``calls``.

    The override is a plain closure (ModelPatcher.clone deep-copies
    model_options; functions survive deepcopy as themselves), so clones of
    ``model`` keep recording into the same list. The recorder itself is not
    deep-copied either (``__deepcopy__`` returns self).
    """

    def __init__(self, model, keep_tensors: bool = False):
        self.model = model
        self.keep_tensors = keep_tensors
        self.calls: list[AttentionCall] = []
        self.enabled = True

    def __deepcopy__(self, memo):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.enabled = False
        return False

    def __len__(self):
        return len(self.calls)

    def clear(self) -> None:
        self.calls.clear()

    def self_attention(self, tokens: int | None = None) -> list[AttentionCall]:
        """Calls with q length == k length (== ``tokens`` if given)."""
        return [c for c in self.calls if c.q_len == c.k_len and (tokens is None or c.q_len == tokens)]

    def cross_attention(self) -> list[AttentionCall]:
        """Calls with q length != k length."""
        return [c for c in self.calls if c.q_len != c.k_len]

    def summary(self) -> list[dict]:
        """Distinct call signatures with counts (for printing in reports)."""
        seen: dict = {}
        for c in self.calls:
            key = (c.func_name, c.q_shape, c.k_shape, c.heads, c.heads_positional, c.skip_reshape,
                   c.has_mask, c.kwargs_keys, c.block_index is not None)
            seen[key] = seen.get(key, 0) + 1
        return [
            dict(func=k[0], q=k[1], k=k[2], heads=k[3], heads_positional=k[4], skip_reshape=k[5],
                 mask=k[6], kwargs=k[7], block_index=k[8], count=n)
            for k, n in seen.items()
        ]

    def _record(self, func, args, kwargs):
        q, k, v = args[0], args[1], args[2]
        heads_positional = len(args) > 3
        heads = args[3] if heads_positional else kwargs.get("heads")
        to = kwargs.get("transformer_options")
        to_dict = to if isinstance(to, dict) else {}
        sigmas = to_dict.get("sigmas")
        sigma = None
        if isinstance(sigmas, torch.Tensor) and sigmas.numel() > 0:
            sigma = float(sigmas.flatten()[0])
        cou = to_dict.get("cond_or_uncond")
        call = AttentionCall(
            index=len(self.calls),
            func_name=getattr(func, "__name__", repr(func)),
            q_shape=tuple(q.shape),
            k_shape=tuple(k.shape),
            v_shape=tuple(v.shape),
            dtype=q.dtype,
            heads=heads,
            heads_positional=heads_positional,
            skip_reshape=bool(kwargs.get("skip_reshape", False)),
            skip_output_reshape=bool(kwargs.get("skip_output_reshape", False)),
            has_mask=kwargs.get("mask") is not None,
            kwargs_keys=tuple(sorted(kwargs)),
            has_transformer_options=to is not None,
            transformer_options_keys=tuple(sorted(to_dict)),
            block_index=to_dict.get("block_index"),
            block_type=to_dict.get("block_type"),
            total_blocks=to_dict.get("total_blocks"),
            cond_or_uncond=list(cou) if cou is not None else None,
            sigma=sigma,
        )
        if self.keep_tensors:
            call.q, call.k, call.v = (t.detach().clone() for t in (q, k, v))
        self.calls.append(call)
        return call


def record_attention_calls(model_patcher, keep_tensors: bool = False) -> AttentionRecorder:
    """Clone ``model_patcher`` and install a recording attention override.

    Returns an :class:`AttentionRecorder`; sample ``recorder.model``. The
    original patcher is never modified. Each call is recorded (shapes, heads,
    kwargs keys, mask, skip_reshape, block_index / block_type / total_blocks /
    cond_or_uncond / sigma at call time, and with ``keep_tensors`` the q/k/v
    and output tensors) and then passed on: to the override that was already
    installed on the model, if any, else to ``func`` (ComfyUI's attention).
    """
    clone = model_patcher.clone()
    to = dict(clone.model_options.get("transformer_options", {}))
    previous = to.get("optimized_attention_override")
    recorder = AttentionRecorder(clone, keep_tensors=keep_tensors)

    def record_attention_override(func, *args, **kwargs):
        call = recorder._record(func, args, kwargs) if recorder.enabled else None
        if previous is not None:
            out = previous(func, *args, **kwargs)
        else:
            out = func(*args, **kwargs)
        if call is not None:
            call.out_shape = tuple(out.shape)
            if recorder.keep_tensors:
                call.out = out.detach().clone()
        return out

    to["optimized_attention_override"] = record_attention_override
    clone.model_options["transformer_options"] = to
    return recorder


def install_attention_override(model_patcher, override):
    """Clone ``model_patcher`` and set ``override`` as its attention override.

    Returns the clone. Useful for tests: e.g. an override that zeroes
    self-attention to show attention matters, or a stand-in for a prior
    patch (Sage attention) that a sparse patch must chain.
    """
    clone = model_patcher.clone()
    to = dict(clone.model_options.get("transformer_options", {}))
    to["optimized_attention_override"] = override
    clone.model_options["transformer_options"] = to
    return clone


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-30))

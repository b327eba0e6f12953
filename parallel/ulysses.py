"""Wan self-attention under Ulysses sequence parallelism, with the plan.

Each Wan block's `self_attn.forward` is wrapped: q, k, v and RoPE are
computed by ComfyUI's own WanSelfAttention.forward on this rank's tokens,
whose attention call goes to `_attend` here instead of ComfyUI's:

  1. one all-to-all (q, k, v together): the whole padded sequence, this
     rank's heads (a contiguous block of the layer's head order; the order
     is the identity, or a balancing permutation where the `balance` mode
     takes it: balance.py; a permutation costs no extra copy: comm.py);
  2. local attention over the real tokens only: this rank's slice of the
     layer's pattern (compiled and cached per slice), full heads on the
     model's dense attention, skipped heads zero; or all heads dense when
     the step or layer is dense, the kernel cannot serve, or it fails;
     queries of padded tokens get zeros (they are discarded), padded keys
     are never attended;
  3. one all-to-all back, heads in model order.

Both all-to-alls run on every rank whatever the rank decided in step 2,
so a fallback on one rank cannot hang the others. What only the whole
group can decide (Ulysses group, ring degree 1, heads divisible by the
ranks, token count that fits the grid) is decided from facts every rank
shares; when it does not hold the wrapped forward (Raylight's own path)
runs, with one log line.
"""
from __future__ import annotations

import contextlib
import logging
import math
import types
from dataclasses import dataclass, field

import torch

from ..integration.forward_info import KEY as FORWARD_KEY
from ..integration.sparse_patch import SparsePatch
from ..integration.video_hook import ARG_NAMES, OVERRIDE_KEY
from ..kernels import triton_backend
from ..kernels.dispatch import layer_attention
from ..patterns import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, LayerPattern, compile_layer
from . import comm
from .balance import DEFAULT_COST_MODEL, CallShape, CostModel, balance_mode, layer_order, rank_heads, slice_layer

log = logging.getLogger("sparse_vdit")
STATE_ATTR = "_sparse_vdit_ulysses"

# Optional timing hook for benchmarks: a callable name -> context manager.
PROFILER = None


def _span(name: str):
    return PROFILER(name) if PROFILER is not None else contextlib.nullcontext()


def yunchang_groups():
    """(Ulysses group, ring degree) as xfuser/yunchang set them up, or (None, 1)."""
    try:
        from yunchang.globals import PROCESS_GROUP
    except Exception:  # yunchang not installed: no Raylight USP here
        return None, 1
    ring = PROCESS_GROUP.RING_PG
    ring_degree = torch.distributed.get_world_size(ring) if ring is not None else 1
    return PROCESS_GROUP.ULYSSES_PG, ring_degree


@dataclass(eq=False)
class UlyssesState:
    """Per self-attention module: what it wraps and how it serves."""
    previous: object                    # the forward it replaced (Raylight's)
    group: object = None                # None: yunchang's Ulysses group at call time
    balance: str = "auto"               # "auto", "on", "off" (balance.py)
    sparse_cost: float = 1.0            # sparse kernel time per pair / dense time per pair
    block_m: int = DEFAULT_BLOCK_M
    block_n: int = DEFAULT_BLOCK_N
    cost_model: CostModel = DEFAULT_COST_MODEL  # what auto weighs
    logged: set = field(default_factory=set)
    counts: dict = field(default_factory=dict)
    orders: dict = field(default_factory=dict, repr=False)

    def log_once(self, key: str, message: str, *args, level=logging.INFO) -> None:
        if key not in self.logged:
            self.logged.add(key)
            log.log(level, "Sparse-vDiT Ulysses: " + message, *args)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def order_tensor(self, order, device):
        """The head order on the device (None for the identity), made once per order."""
        if order is None or order == tuple(range(len(order))):
            return None
        key = (order, str(device))
        if key not in self.orders:
            self.orders[key] = torch.tensor(order, dtype=torch.long, device=device)
        return self.orders[key]

    def resolve_group(self):
        if self.group is not None:
            return self.group, 1
        return yunchang_groups()


def _why_not(state: UlyssesState, module, x: torch.Tensor, options: dict):
    """(group, None) when the group can serve this call, else (None, reason).
    Only facts every rank of the group shares."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None, "torch.distributed is not initialised"
    group, ring = state.resolve_group()
    if group is None:
        return None, "no Ulysses process group"
    if ring > 1:
        return None, f"ring degree {ring} (only Ulysses is served)"
    world = comm.group_size(group)
    if world == 1:
        return None, "a Ulysses group of one"
    if module.num_heads % world:
        return None, f"{module.num_heads} heads do not split over {world} ranks"
    info = options.get(FORWARD_KEY)
    if info is None:
        return None, "no latent grid for this forward (no Sparse-vDiT patch on the model)"
    if math.ceil(info.geometry.seq_len / world) != x.shape[1]:
        return None, (f"{x.shape[1]} tokens per rank do not fit the grid {info.geometry.describe()} "
                      f"over {world} ranks")
    return group, None


def ulysses_self_attn_forward(self, x, freqs, transformer_options={}, **kwargs):
    """Replaces a Wan block's self_attn.forward (bound to the module)."""
    state: UlyssesState = getattr(self, STATE_ATTR)
    group, reason = _why_not(state, self, x, transformer_options)
    if group is None:
        state.log_once("why:" + reason.split(" ")[0], "%s: Raylight's own attention serves these calls.", reason)
        state.count("previous")
        return state.previous(x, freqs, transformer_options=transformer_options, **kwargs)
    options = dict(transformer_options)
    layer = transformer_options.get("block_index")
    info = transformer_options[FORWARD_KEY]
    if layer is None and info.countable:  # ComfyUI before 0.5.0: the n-th self-attention call is layer n
        layer = info.self_attention_calls
    info.self_attention_calls += 1

    def attend(func, *args, **call_kwargs):
        return _attend(state, group, layer, transformer_options, func, *args, **call_kwargs)

    options[OVERRIDE_KEY] = attend
    # ComfyUI's own forward of this class: its q/k/v, RoPE and output projection.
    return type(self).forward(self, x, freqs, transformer_options=options, **kwargs)


def _plan_pattern(state: UlyssesState, hook, layer, info) -> LayerPattern | None:
    """This layer's pattern at this step, or None where the step/layer runs dense.
    The same answer on every rank (plan, step, layer)."""
    if not isinstance(hook, SparsePatch) or layer is None:
        return None
    plan_for = getattr(hook, "use_plan_for", None)
    if plan_for is not None and plan_for(info.geometry) is None:  # auto: serves a saved plan only
        state.log_once("auto", "auto has no plan for %s yet and cannot calibrate under Ulysses "
                       "(calibrate on one GPU or in CFG/data-parallel mode); it runs dense.",
                       info.geometry.describe())
        return None
    return hook.pattern_for(layer, info)


def _dense_fn(func, kwargs: dict):
    passed_on = {k: v for k, v in kwargs.items() if k not in ARG_NAMES}

    def dense(q, k, v):  # [B, h, L, D] -> [B, h, L, D]
        return func(q, k, v, heads=q.shape[1], skip_reshape=True, skip_output_reshape=True, **passed_on)
    return dense


def _attend(state: UlyssesState, group, layer, options: dict, func, q, k, v, heads=None, **kwargs):
    """The attention call of ComfyUI's forward: q, k, v [B, s, H*D] of this rank's tokens."""
    if heads is None or kwargs.get("skip_reshape") or kwargs.get("mask") is not None or q.shape[1] != k.shape[1]:
        raise RuntimeError("Sparse-vDiT Ulysses: unexpected self-attention call layout")
    info = options[FORWARD_KEY]
    hook = options.get(OVERRIDE_KEY)
    world, rank = comm.group_size(group), comm.group_rank(group)
    batch, chunk, width = q.shape
    head_dim = width // heads
    geometry = info.geometry
    seq_len = geometry.seq_len
    try:  # deterministic from the plan: every rank reaches the same answer
        pattern = _plan_pattern(state, hook, layer, info)
        call = CallShape(batch, head_dim, q.element_size())
        order = (layer_order(pattern, geometry, world, state.balance, state.sparse_cost, state.block_m, state.block_n,
                             call, state.cost_model) if pattern is not None else None)
    except Exception as error:  # never skip the collectives below
        state.log_once(f"plan:{type(error).__name__}", "could not read the plan for this layer (%s: %s); it runs dense.",
                       type(error).__name__, error, level=logging.WARNING)
        pattern = order = None
    order_t = state.order_tensor(order, q.device)
    if order_t is not None:
        state.count("permuted")

    with _span("all_to_all"):
        local = comm.seq_to_heads([x.view(batch, chunk, heads, head_dim) for x in (q, k, v)], group, order_t)
    h = heads // world
    out = torch.empty((batch, world * chunk, h, head_dim), dtype=q.dtype, device=q.device)
    out[:, seq_len:] = 0  # padded queries: discarded by the caller
    real = [x[:, :seq_len] for x in local]  # padded keys are never attended
    dense = _dense_fn(func, kwargs)
    with _span("attention"):
        served = False
        if pattern is not None:
            mine = slice_layer(pattern, rank_heads(order, world, rank))
            served = _sparse_local(state, hook, real, mine, geometry, dense, out, h, head_dim)
        if not served:
            result = dense(*(x.transpose(1, 2) for x in real))
            out[:, :seq_len] = result.transpose(1, 2)
            state.count("dense")
        else:
            state.count("sparse")
        if hook is not None and hasattr(hook, "count"):
            hook.count("ulysses:sparse" if served else "ulysses:dense")
    with _span("all_to_all"):
        back = comm.heads_to_seq(out, group, order_t)
    return back.reshape(batch, chunk, width)


def _sparse_local(state, hook, real, mine: LayerPattern, geometry, dense, out, h, head_dim) -> bool:
    """This rank's heads by its slice of the pattern; False to run them dense."""
    if mine.is_dense:
        return False
    backend = getattr(hook, "backend", "auto")
    q = real[0]
    if backend == "auto" and not triton_backend.can_serve(q):
        state.log_once(f"no-kernel:{q.device.type}", "no sparse kernel for %s %s q; this rank runs dense.",
                       q.device.type, str(q.dtype).replace("torch.", ""))
        return False
    batch, seq_len = q.shape[:2]
    try:
        compiled = compile_layer(mine, geometry, str(q.device), state.block_m, state.block_n)
        flat = [x.reshape(batch, seq_len, h * head_dim) for x in real]
        result = layer_attention(*flat, compiled, heads=h, layout="flat", dense_fn=dense,
                                 backend="triton" if backend == "auto" else backend)
    except Exception as error:  # never fail a generation, never skip the collectives
        state.log_once(f"error:{type(error).__name__}", "sparse attention failed on this rank (%s: %s); "
                       "its heads run dense.", type(error).__name__, error, level=logging.WARNING)
        state.count("dense:error")
        return False
    out[:, :seq_len] = result.view(batch, seq_len, h, head_dim)
    return True


def is_wan_self_attention(module) -> bool:
    return all(hasattr(module, a) for a in ("q", "k", "v", "o", "norm_q", "norm_k", "num_heads", "head_dim"))


def install(diffusion_model, group=None, balance="auto", sparse_cost: float = 1.0,
            block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N, only=None,
            cost_model: CostModel = DEFAULT_COST_MODEL) -> int:
    """Wrap the self-attention of every Wan block of `diffusion_model.blocks`
    (whose current forward passes `only`, when given). Settings of an earlier
    install are replaced, not stacked. Returns how many were wrapped."""
    balance = balance_mode(balance)  # a bad setting fails here, before anything is wrapped
    wrapped = 0
    for block in getattr(diffusion_model, "blocks", ()):
        attn = getattr(block, "self_attn", None)
        if attn is None or not is_wan_self_attention(attn):
            continue
        current = attn.__dict__.get("forward")
        previous = current if current is not None else types.MethodType(type(attn).forward, attn)
        old = getattr(attn, STATE_ATTR, None)
        if old is not None and getattr(current, "__func__", None) is ulysses_self_attn_forward:
            previous = old.previous
        if only is not None and not only(previous):
            continue
        setattr(attn, STATE_ATTR, UlyssesState(previous, group, balance, sparse_cost, block_m, block_n, cost_model))
        attn.forward = types.MethodType(ulysses_self_attn_forward, attn)
        wrapped += 1
    return wrapped


def uninstall(diffusion_model) -> None:
    for block in getattr(diffusion_model, "blocks", ()):
        attn = getattr(block, "self_attn", None)
        state = getattr(attn, STATE_ATTR, None)
        if state is None:
            continue
        if getattr(attn.__dict__.get("forward"), "__func__", None) is ulysses_self_attn_forward:
            if getattr(state.previous, "__func__", None) is type(attn).forward:
                del attn.forward
            else:
                attn.forward = state.previous
        delattr(attn, STATE_ATTR)


def states(diffusion_model) -> list[UlyssesState]:
    return [getattr(b.self_attn, STATE_ATTR) for b in getattr(diffusion_model, "blocks", ())
            if hasattr(getattr(b, "self_attn", None), STATE_ATTR)]

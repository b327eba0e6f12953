"""End-to-end: one denoising step of ComfyUI's own Wan2.1 diffusion model,
cond and uncond batched (B = 2), through the attention hook a workflow uses.

Builds comfy.ldm.wan.model.WanModel at the real 1.3B / 14B configurations
(random weights: speed does not depend on them) in bf16 on one GPU, and
times, in one run on one card:
  - dense: ComfyUI's default attention, and cuDNN SDPA forced;
  - this pack: benchmark mixes of density ~0.5 / 0.35 / 0.3 / 0.2 through
    SparsePatch (full heads on cuDNN), and an all-full plan (the hook's own
    overhead: it routes every call straight down the chain);
  - SageAttention 1.0.6 dense on every call, where it is installed;
  - ComfyUI core's Sol-Attn kernel (comfy-kitchen) at tau 1.3 where it loads.
Reports step time, attention share, peak memory, and the projected 50-step
time with a 20% dense warm-up. Then, attention alone on the same q/k/v
(captured from a real forward, and video-like synthetic inputs with planted
patterns): relative error versus time for plans calibrated at several
epsilons and for Sol-Attn at tau 1.0 / 1.3 / 2.0.

Run on the device machine:
  python benchmarks/bench_e2e.py --comfyui PATH [--kitchen PATH] --out DIR [--configs 1.3b,14b]
`--smoke` runs a tiny model on the CPU to check the script itself.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import platform
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CONFIGS = {  # Wan2.1 configurations (ComfyUI's model_detection values)
    "1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, latent=(21, 60, 104)),   # 480p, 81 frames
    "14b": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, latent=(21, 90, 160)),   # 720p, 81 frames
    "smoke": dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2, latent=(3, 12, 16)),
}
DENSITIES = (0.5, 0.35, 0.3, 0.2)
WARMUP_SHARE, STEPS = 0.2, 50


def import_comfy(path: str, cpu: bool):
    sys.path.insert(0, path)
    import comfy.options  # noqa: F401
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.disable_smart_memory = True
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.wan.model as wan
    import comfy.ops
    return wan, attention, comfy.ops


def build_model(wan, ops, config: dict, device, dtype):
    torch.manual_seed(0)
    model = wan.WanModel(model_type="t2v", dim=config["dim"], ffn_dim=config["ffn_dim"], num_heads=config["num_heads"],
                         num_layers=config["num_layers"], text_dim=4096, freq_dim=256, in_dim=16, out_dim=16,
                         eps=1e-6, device=device, dtype=dtype, operations=ops.disable_weight_init)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.eval()


class Timed:
    """An override that times every attention call (events, no syncs inside)."""
    def __init__(self, inner=None):
        self.inner, self.events = inner, []

    def __call__(self, func, *args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = func(*args, **kwargs) if self.inner is None else self.inner(func, *args, **kwargs)
        end.record()
        self.events.append((start, end))
        return out

    def total_ms(self) -> float:
        torch.cuda.synchronize()
        return sum(s.elapsed_time(e) for s, e in self.events)


def cudnn_override(func, *args, **kwargs):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                      SDPBackend.MATH], set_priority=True):
        return func(*args, **kwargs)


def sol_override(kitchen, tau: float, tokens: int):
    def override(func, q, k, v, heads=None, **kwargs):
        if q.shape[1] == k.shape[1] == tokens and not kwargs.get("skip_reshape") and kwargs.get("mask") is None:
            b, n, width = q.shape
            shape = (b, n, heads, width // heads)
            return kitchen.sol_attn(q.view(shape), k.view(shape), v.view(shape), tau=tau).reshape(b, n, width)
        return cudnn_override(func, q, k, v, heads=heads, **kwargs)
    return override


def sage_override(func, q, k, v, heads=None, mask=None, **kwargs):
    """SageAttention 1.0.6 dense on every unmasked call in ComfyUI's flat layout
    (what a Sage user runs); anything else on cuDNN."""
    if mask is not None or kwargs.get("skip_reshape") or kwargs.get("skip_output_reshape"):
        return cudnn_override(func, q, k, v, heads=heads, mask=mask, **kwargs)
    from sageattention import sageattn
    b, n, width = q.shape
    q4, k4, v4 = (x.view(b, x.shape[1], heads, width // heads) for x in (q, k, v))
    return sageattn(q4, k4, v4, tensor_layout="NHD").reshape(b, n, width)


def sage_available() -> bool:
    return importlib.util.find_spec("sageattention") is not None


def flex_patch_class():
    """SparsePatch with FlexAttention serving the sparse heads: the same plan,
    tables and routing (full heads on cuDNN, skipped heads zero), another kernel."""
    from flex_tables import FlexTableAttention

    from sparse_vdit.integration.sparse_patch import SparsePatch
    from sparse_vdit.integration.video_hook import call_layout
    from sparse_vdit.kernels.dispatch import as_blhd
    from sparse_vdit.patterns import compile_layer

    class FlexPatch(SparsePatch):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.flex = {}  # one BlockMask per distinct compiled layer

        def _sparse(self, func, call, index, info, kwargs):
            geometry, qkv = self.kept_tokens(call)
            heads = int(call["heads"])
            q4, k4, v4 = (as_blhd(x, call_layout(call), heads) for x in qkv)
            if call.get("skip_output_reshape") or geometry.seq_len != call["geometry"].seq_len:
                raise NotImplementedError("benchmark FlexPatch serves Wan's flat layout only")
            compiled = compile_layer(self.plan.layers[index], geometry, str(q4.device))
            batch, seq_len, _, head_dim = q4.shape
            out = torch.empty(batch, seq_len, heads * head_dim, dtype=q4.dtype, device=q4.device)
            out4 = out.view(batch, seq_len, heads, head_dim)
            out4[:, :, list(compiled.skip_heads)] = 0
            dense = self.dense_heads_fn(func, kwargs, info)
            for group, kernel in ((compiled.full_heads, dense), (compiled.sparse_heads, None)):
                if not group:
                    continue
                if kernel is None:
                    key = id(compiled.table)
                    if key not in self.flex:
                        self.flex[key] = FlexTableAttention(compiled.table, q4.device)
                    kernel = self.flex[key]
                sel = list(group)
                out4[:, :, sel] = kernel(*(x[:, :, sel].transpose(1, 2) for x in (q4, k4, v4))).transpose(1, 2)
            return out

    return FlexPatch


@contextlib.contextmanager
def count_8bit_launches():
    """Counts the 8-bit kernel's launches (kernels/triton_backend.run8), so a
    row labelled 8-bit that ran bf16 shows it (the rows until 2026-11-30
    forced the precision by patching layer_attention, which the patch's own
    precision argument silently overrode)."""
    import sparse_vdit.kernels.triton_backend as backend
    original, counter = backend.run8, {"launches": 0}

    def counted(*args, **kwargs):
        counter["launches"] += 1
        return original(*args, **kwargs)
    backend.run8 = counted
    try:
        yield counter
    finally:
        backend.run8 = original


def step_options(override=None, wrapper=None, sigma: float = 0.5) -> dict:
    """Options of one forward at `sigma` of a STEPS-step schedule (0.5: step 25)."""
    options = {"sigmas": torch.tensor([sigma, sigma]), "sample_sigmas": torch.linspace(1, 0, STEPS + 1)}
    if override is not None:
        options["optimized_attention_override"] = override
    if wrapper is not None:
        options["wrappers"] = {"diffusion_model": {"sparse_vdit": [wrapper]}}
    return options


def time_step(model, inputs, make_options, repeats: int, device, warmups: int = 1) -> tuple[float, float]:
    """(median ms of one forward, peak GB)."""
    x, t, context = inputs
    with torch.no_grad():
        for _ in range(warmups):  # kernels, tables (of every step range)
            model(x, t, context, transformer_options=make_options())
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, t, context, transformer_options=make_options())
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return sorted(times)[len(times) // 2], peak


def run_e2e(name: str, config: dict, wan, attention, ops, kitchen, device, dtype, repeats: int,
            densities=DENSITIES, rows: dict | None = None, save=lambda: None, only: tuple[str, ...] = ()) -> dict:
    """only: run just the rows whose label starts with one of these (the
    cuDNN baseline always runs: every ratio is against it, same run)."""
    from mixes import mixed_plan

    from sparse_vdit.integration.model_info import describe_diffusion_model
    from sparse_vdit.integration.sparse_patch import SparsePatch
    from sparse_vdit.integration.models.base import grid_geometry
    from sparse_vdit.patterns import Full, LayerPattern, compile_layer
    from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan

    model = build_model(wan, ops, config, device, dtype)
    info = describe_diffusion_model(model)
    frames, height, width = config["latent"]
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(2, 16, frames, height, width, device=device, dtype=dtype, generator=g)
    inputs = (x, torch.tensor([500.0, 500.0], device=device), torch.randn(2, 512, 4096, device=device, dtype=dtype, generator=g))
    geometry = grid_geometry(x, info.patch_size)  # text-to-video: the padded video grid, no extra tokens
    backend = "auto" if device.type == "cuda" else "reference"
    rows = {} if rows is None else rows

    def record(label, make_options, warmups: int = 1, **extra):
        if only and label != "cudnn-sdpa" and not label.startswith(only):
            return
        ms, peak = time_step(model, inputs, make_options, repeats, device, warmups)
        rows[label] = {"step_ms": ms, "peak_gb": peak, **extra}
        print(f"  {name} {label:<26} {ms:10.1f} ms  peak {peak:6.2f} GB", flush=True)
        save()

    record("comfyui-default", lambda: step_options())
    if device.type == "cuda":
        record("cudnn-sdpa", lambda: step_options(cudnn_override))
        timed = Timed(cudnn_override)
        with torch.no_grad():
            model(*inputs[:3], transformer_options=step_options(timed))
        rows["cudnn-sdpa"]["attention_ms"] = timed.total_ms()
        rows["cudnn-sdpa"]["attention_share"] = rows["cudnn-sdpa"]["attention_ms"] / rows["cudnn-sdpa"]["step_ms"]

    shape = ModelShape("wan2.1", info.layers, info.heads, info.head_dim)
    plans = {"all-full (hook overhead)": Plan("all full", shape, (LayerPattern((Full(),) * info.heads),) * info.layers)}
    for density in densities:
        plan = mixed_plan(info.layers, info.heads, info.head_dim, geometry, density)
        plans[f"sparse d={density}"] = plan
    if densities:  # a plan with two step ranges of equal density: what switching per step costs
        plans[f"ranged d={densities[0]}"] = ranged_plan(plans[f"sparse d={densities[0]}"])
    for label, plan in plans.items():
        patch = SparsePatch(plan, info, DenseSchedule(0.0), previous=cudnn_override if device.type == "cuda" else None,
                            backend=backend)
        density = sum(compile_layer(layer, geometry).density() for layer in plan.layers) / len(plan.layers)
        # steps 10 and 40 of 50 in turn: the first range, then the later one
        sigmas = itertools.cycle((0.8, 0.2) if plan.later_ranges else (0.5,))
        record(label, lambda: step_options(patch, patch.wrap_forward, next(sigmas)), warmups=1 + len(plan.later_ranges),
               plan_name=plan.name, density=density)
        if label in rows:
            rows[label]["calls"] = dict(patch.counts)
        if device.type == "cuda" and label.startswith("sparse"):  # the same plan on FlexAttention
            flex = flex_patch_class()(plan, info, DenseSchedule(0.0), previous=cudnn_override, backend="triton")
            record("flex " + label[len("sparse "):], lambda: step_options(flex, flex.wrap_forward),
                   plan_name=plan.name, density=density)
            if "flex " + label[len("sparse "):] in rows:
                rows["flex " + label[len("sparse "):]].update(calls=dict(flex.counts), note=next(
                    (f.note for f in flex.flex.values()), None))
    if device.type == "cuda":  # the same plans at the patch's precision "8-bit" (kernels/triton_sparse8.py)
        for density in densities:
            plan = plans[f"sparse d={density}"]
            # Nothing chained before the patch: full heads join the 8-bit launch (the
            # rest of the model's attention runs on ComfyUI's default); cuDNN chained:
            # full heads stay on it.
            for label, previous in ((f"8bit d={density}", None), (f"8bit-full-on-cudnn d={density}", cudnn_override)):
                patch = SparsePatch(plan, info, DenseSchedule(0.0), previous=previous, backend=backend,
                                    precision="8-bit")
                with count_8bit_launches() as launched:
                    record(label, lambda: step_options(patch, patch.wrap_forward), plan_name=plan.name,
                           density=rows.get(f"sparse d={density}", {}).get("density"),
                           full_heads_8bit=previous is None)
                if label in rows:
                    rows[label].update(calls=dict(patch.counts), launches_8bit=launched["launches"])
    if device.type == "cuda" and sage_available():
        record("sage-1.0.6 dense", lambda: step_options(sage_override))
    if kitchen is not None:
        record("sol-attn tau=1.3", lambda: step_options(sol_override(kitchen, 1.3, geometry.seq_len)))

    dense_ms = (rows.get("cudnn-sdpa") or rows["comfyui-default"])["step_ms"]
    for label, row in rows.items():
        row["speedup_vs_cudnn_step"] = dense_ms / row["step_ms"]
        warm = round(WARMUP_SHARE * STEPS)
        row["projected_50_steps_s"] = (warm * dense_ms + (STEPS - warm) * row["step_ms"]) / 1e3
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"geometry": geometry.describe(), "layers": info.layers, "heads": info.heads, "rows": rows,
            "captured": None}


def ranged_plan(plan):
    """The plan, plus a later range from half-way whose layers give each
    head its neighbour's pattern: the same density, different tables."""
    from dataclasses import replace

    from sparse_vdit.patterns import LayerPattern
    from sparse_vdit.plans.format import StepRange

    rotated = tuple(LayerPattern(layer.heads[1:] + layer.heads[:1]) for layer in plan.layers)
    return replace(plan, name=plan.name + " + rotated range", later_ranges=(StepRange(0.5, rotated),))


def capture_layer_qkv(wan, ops, config, device, dtype):
    """q, k, v of the middle layer's self-attention from a real forward."""
    model = build_model(wan, ops, config, device, dtype)
    frames, height, width = config["latent"]
    g = torch.Generator(device=device).manual_seed(2)
    x = torch.randn(1, 16, frames, height, width, device=device, dtype=dtype, generator=g)
    context = torch.randn(1, 512, 4096, device=device, dtype=dtype, generator=g)
    tokens = frames * (height // 2) * (width // 2)
    captured = {}

    def grab(func, q, k, v, heads=None, **kwargs):
        if q.shape[1] == k.shape[1] == tokens and kwargs["transformer_options"].get("block_index") == config["num_layers"] // 2:
            captured["qkv"] = tuple(t.detach().clone() for t in (q, k, v))
        return func(q, k, v, heads=heads, **kwargs)
    with torch.no_grad():
        model(x, torch.tensor([500.0], device=device), context, transformer_options={"optimized_attention_override": grab})
    del model
    return captured["qkv"]


def run_attention_curve(name: str, config: dict, qkv, geometry, kitchen, device, source: str) -> list[dict]:
    """Relative error vs time: calibrated plans at several epsilons, Sol-Attn at several taus."""
    from sparse_vdit.kernels.dense import dense_attention
    from sparse_vdit.kernels.dispatch import as_blhd, layer_attention
    from sparse_vdit.patterns import compile_layer
    from sparse_vdit.plans.calibrator import Calibrator
    from sparse_vdit.plans.candidates import MENUS
    from sparse_vdit.plans.cost import candidate_costs
    from sparse_vdit.plans.format import ModelShape
    from sparse_vdit.plans.search import solve_plan

    heads = config["num_heads"]
    q, k, v = qkv
    head_dim = q.shape[-1] // heads
    q4, k4, v4 = (as_blhd(x, "flat", heads) for x in (q, k, v))

    def bench(fn) -> float:
        fn()
        if device.type != "cuda":
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    dense = dense_attention(*(x.transpose(1, 2) for x in (q4, k4, v4))).transpose(1, 2).float()
    dense_ms = bench(lambda: dense_attention(*(x.transpose(1, 2) for x in (q4, k4, v4))))

    def rel(out4) -> float:
        return float((out4.float() - dense).norm() / dense.norm())

    points = [{"method": "cudnn dense", "setting": "-", "ms": dense_ms, "rel_err": 0.0, "density": 1.0}]
    calibrator = Calibrator(ModelShape("wan2.1", 1, heads, head_dim), MENUS["standard"], 1, 0.05, 0.0)
    calibrator.probe_index(0, 1)
    calibrator.accepts(geometry)
    calibrator.record(0, 0, q4, k4, v4)
    cost, cost_source = candidate_costs(calibrator.candidates, geometry, heads, head_dim, device, q.dtype)
    stats = calibrator.statistics(cost, cost_source)
    backend = "triton" if device.type == "cuda" else "reference"
    for eps in (0.25, 1.0, 4.0, 16.0, 64.0):
        layer = solve_plan(stats, 0.5, eps).layers[0]
        compiled = compile_layer(layer, geometry, str(device))
        out = layer_attention(q, k, v, compiled, heads=heads, backend=backend)
        ms = bench(lambda: layer_attention(q, k, v, compiled, heads=heads, backend=backend))
        points.append({"method": "sparse-vdit", "setting": f"epsilon={eps}", "ms": ms, "rel_err": rel(as_blhd(out, "flat", heads)),
                       "density": compiled.density()})
    if kitchen is not None:
        for tau in (1.0, 1.3, 2.0):
            out = kitchen.sol_attn(q4, k4, v4, tau=tau)
            ms = bench(lambda: kitchen.sol_attn(q4, k4, v4, tau=tau))
            points.append({"method": "sol-attn", "setting": f"tau={tau}", "ms": ms, "rel_err": rel(out), "density": None})
    for p in points:
        p["speedup_vs_cudnn"] = dense_ms / p["ms"]
        print(f"  {name} {source:<10} {p['method']:<12} {p['setting']:<14} {p['ms']:9.2f} ms  "
              f"{p['speedup_vs_cudnn']:5.2f}x  rel err {p['rel_err']:.4f}", flush=True)
    return points


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--kitchen", default=None, help="folder holding the unpacked comfy_kitchen package")
    parser.add_argument("--kitchen-version", default=None, help="its version, when the unpacked package lacks metadata")
    parser.add_argument("--out", default=".")
    parser.add_argument("--configs", default="1.3b,14b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--densities", default=",".join(str(d) for d in DENSITIES))
    parser.add_argument("--parts", default="e2e,attention", help="e2e and/or attention")
    parser.add_argument("--rows", default="", help="comma-separated label prefixes to run (cuDNN always runs)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    wan, attention, ops = import_comfy(args.comfyui, cpu=args.smoke)
    kitchen, kitchen_version = None, None
    if args.kitchen and not args.smoke:
        sys.path.insert(0, args.kitchen)
        try:
            import comfy_kitchen as kitchen
            kitchen_version = getattr(kitchen, "__version__", None) or args.kitchen_version or "unknown"
            if not kitchen.sol_attn_is_available(device):
                print("comfy-kitchen loaded but Sol-Attn is not available on this card")
                kitchen = None
        except Exception as error:  # report and go on without it
            print(f"comfy-kitchen did not load: {error}")
            kitchen = None
    import triton
    from synthetic_inputs import video_like_layer
    from sparse_vdit.patterns import Geometry

    results = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "triton": triton.__version__, "comfy_kitchen": kitchen_version,
               "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
               "comfyui_attention_default": attention.optimized_attention.__name__, "configs": {}}
    names = ["smoke"] if args.smoke else args.configs.split(",")
    parts = args.parts.split(",")
    densities = [float(d) for d in args.densities.split(",") if d]
    os.makedirs(args.out, exist_ok=True)

    def save():
        with open(os.path.join(args.out, "e2e.json"), "w") as handle:
            json.dump(results, handle, indent=1, default=str)

    for name in names:
        config = CONFIGS[name]
        entry = results["configs"].setdefault(name, {"rows": {}})
        if "e2e" in parts:
            print(f"== {name}: end to end, B=2", flush=True)
            entry.update(run_e2e(name, config, wan, attention, ops, kitchen, device, dtype,
                                 1 if args.smoke else args.repeats, densities, entry["rows"], save,
                                 tuple(r for r in args.rows.split(",") if r)))
        frames, height, width = config["latent"]
        geometry = Geometry(frames, height // 2, width // 2)
        if "attention" in parts:
            print(f"== {name}: attention alone", flush=True)
            captured = capture_layer_qkv(wan, ops, config, device, dtype)
            entry["attention_captured"] = run_attention_curve(name, config, captured, geometry, kitchen, device, "captured")
            del captured
            save()
            synthetic = video_like_layer(geometry, config["num_heads"], device, dtype)
            entry["attention_synthetic"] = run_attention_curve(name, config, synthetic, geometry, kitchen, device,
                                                               "synthetic")
            del synthetic
        save()
    print(json.dumps({n: {k: round(v["step_ms"], 1) for k, v in e["rows"].items()} for n, e in results["configs"].items()}))


if __name__ == "__main__":
    main()

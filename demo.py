"""`python -m sparse_vdit demo`: the pack's main job on a built-in example.

Builds one attention layer of a Wan-like geometry whose heads carry known
(planted) patterns, searches a plan for it the way calibration does (score
every candidate against dense, then the Judger), reports what the search
found against the planted truth, applies the plan, and prints per head the
density and the error against dense attention, then the layer's time
against dense. Runs on a GPU (Triton kernel) or on the CPU (reference path),
no model weights needed.
"""
from __future__ import annotations

import argparse
import time

import torch

from .kernels.dense import dense_attention
from .kernels.dispatch import as_blhd, layer_attention
from .patterns import Geometry, compile_layer
from .plans.calibrator import Calibrator
from .plans.candidates import MENUS
from .plans.cost import candidate_costs
from .plans.format import ModelShape
from .plans.search import solve_plan
from .synthetic import planted_layer

# The mode a head with each planted shape should get.
EXPECTED_MODE = {"diagonal": "diagonal", "multi_diagonal": "multi_diagonal", "vertical_stripe": "vertical_stripe",
                 "uniform": "full", "negligible": "skip"}
DEMO_MODES = ["diagonal", "multi_diagonal", "diagonal", "multi_diagonal", "vertical_stripe", "diagonal",
              "multi_diagonal", "uniform", "diagonal", "multi_diagonal", "negligible", "diagonal"]  # 12 heads, like Wan 1.3B


def _timed(fn, device: torch.device, repeats: int) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":  # warm-up: kernel compilation stays out of the time
        fn()
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats * 1e3


def normalised_error(out: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Per head: RMS of (out - dense) over the RMS of the whole layer's dense
    output, so a head whose output is negligible scores ~0 when skipped."""
    scale = dense.double().pow(2).mean().sqrt()
    return (out.double() - dense.double()).pow(2).mean(dim=(0, 1, 3)).sqrt() / scale


def run_demo(device: str = "auto", geometry: Geometry | None = None, repeats: int | None = None) -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    on_gpu = dev.type == "cuda"
    geometry = geometry or (Geometry(21, 30, 52) if on_gpu else Geometry(4, 30, 52))
    repeats = repeats or (20 if on_gpu else 1)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    heads = len(DEMO_MODES)
    q, k, v = planted_layer(DEMO_MODES, geometry, head_dim=128, dtype=dtype, device=dev)
    layer, search_s = search_layer(q, k, v, geometry, heads, dev, dtype)
    compiled = compile_layer(layer, geometry, str(dev))

    dense, dense_ms = _timed(lambda: dense_attention(*(as_blhd(x, "flat", heads).transpose(1, 2) for x in (q, k, v))), dev, repeats)
    sparse, sparse_ms = _timed(lambda: layer_attention(q, k, v, compiled, heads=heads), dev, repeats)
    errors = normalised_error(as_blhd(sparse, "flat", heads), dense.transpose(1, 2))

    table = compiled.table
    pairs = dict(zip(table.heads, table.computed_pairs().tolist())) if table is not None else {}
    total = float(geometry.seq_len) ** 2
    rows = []
    for h, planted in enumerate(DEMO_MODES):
        density = 1.0 if h in compiled.full_heads else 0.0 if h in compiled.skip_heads else pairs[h] / total
        rows.append((h, planted, layer.heads[h].label(), density, float(errors[h]),
                     layer.heads[h].name == EXPECTED_MODE[planted]))
    backend = "Triton kernel" if on_gpu else "reference path (CPU: correctness, not speed)"
    print(f"Sparse-vDiT demo on {torch.cuda.get_device_name(dev) if on_gpu else 'CPU'}: "
          f"one layer, {heads} heads x 128, {geometry.describe()}, {str(dtype).replace('torch.', '')}")
    hits = sum(r[-1] for r in rows)
    print(f"search: {search_s:.1f} s, found the planted mode for {hits} of {heads} heads")
    print(f"{'head':>4}  {'planted':<16}{'found':<36}{'density':>8}  {'error vs dense':>15}")
    for h, planted, label, density, error, hit in rows:
        print(f"{h:>4}  {planted:<16}{label + ('' if hit else ' (!)'):<36}{density:>8.3f}  {error:>15.2e}")
    print(f"layer density {compiled.density():.3f}; dense {dense_ms:.2f} ms, sparse {sparse_ms:.2f} ms "
          f"({dense_ms / sparse_ms:.2f}x) on the {backend}")
    return {"rows": rows, "density": compiled.density(), "dense_ms": dense_ms, "sparse_ms": sparse_ms, "hits": hits}


def search_layer(q, k, v, geometry: Geometry, heads: int, device: torch.device, dtype):
    """Calibration's search on one layer: score, cost, Judger (lambda 0.5, epsilon 1)."""
    start = time.perf_counter()
    head_dim = q.shape[-1] // heads
    calibrator = Calibrator(ModelShape("demo", 1, heads, head_dim), MENUS["standard"], probe_count=1,
                            query_fraction=0.1, warmup=0.0)
    calibrator.probe_index(0, 1)
    calibrator.accepts(geometry)
    calibrator.record(0, 0, *(as_blhd(x, "flat", heads) for x in (q, k, v)))
    cost, source = candidate_costs(calibrator.candidates, geometry, heads, head_dim, device, dtype)
    plan = solve_plan(calibrator.statistics(cost, source), lam=0.5, eps=1.0, name="demo")
    return plan.layers[0], time.perf_counter() - start


def load_yardstick_demo():
    """yardstick/yardstick_demo.py (a plain folder beside the package), or None."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "yardstick", "yardstick_demo.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("sparse_vdit_yardstick_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sparse_vdit demo", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu or cuda")
    parser.add_argument("--planted", action="store_true",
                        help="the planted-shapes layer demo even where the trained yardstick could run")
    parser.add_argument("--comfyui", default=None, help="a ComfyUI checkout for the yardstick demo (default $COMFYUI_PATH)")
    parser.add_argument("--out", default=".", help="where the yardstick demo saves its image strip")
    parser.add_argument("--grid", default=None, help="planted demo: frames,rows,cols (default: 21,30,52 on GPU, 4,30,52 on CPU)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.planted:
        # Default: the trained yardstick model, dense against sparse from one
        # seed. It needs ComfyUI's WanModel (never copied here), so without a
        # checkout the planted-shapes demo runs instead.
        yardstick = load_yardstick_demo()
        ok, why = yardstick.available(args.comfyui) if yardstick else (False, "the yardstick folder is missing")
        if ok:
            yardstick.run_yardstick_demo(args.comfyui, args.device, args.out)
            return
        print(f"(trained yardstick demo unavailable: {why}; running the planted-shapes demo)")
    geometry = Geometry(*(int(x) for x in args.grid.split(","))) if args.grid else None
    run_demo(args.device, geometry, args.repeats)

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

if __name__ == "__main__" and not __package__:  # `python demo.py` in a checkout (custom_nodes/<any folder name>)
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _root]  # its nodes/ would hide ComfyUI's nodes.py
    _spec = importlib.util.spec_from_file_location("sparse_vdit", os.path.join(_root, "__init__.py"),
                                                   submodule_search_locations=[_root])
    sys.modules["sparse_vdit"] = _package = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_package)
    from sparse_vdit.demo import main as _main

    sys.exit(_main())

import argparse
import os
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
from . import demo_setup
from .demo_setup import DemoError

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


def run_demo(device: str = "auto", geometry: Geometry | None = None, repeats: int | None = None,
             out: str | None = None) -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    on_gpu = dev.type == "cuda"
    geometry = geometry or (Geometry(21, 30, 52) if on_gpu else Geometry(4, 30, 52))
    repeats = repeats or (20 if on_gpu else 1)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    heads = len(DEMO_MODES)
    q, k, v = planted_layer(DEMO_MODES, geometry, head_dim=128, dtype=dtype, device=dev)
    plan, search_s = search_layer(q, k, v, geometry, heads, dev, dtype)
    layer = plan.layers[0]
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
    result = {"rows": rows, "density": compiled.density(), "dense_ms": dense_ms, "sparse_ms": sparse_ms, "hits": hits}
    if out:
        result["image"] = save_plan_picture(plan, out)
        print(f"image: {out} (the plan the search found: one layer, its heads coloured by mode)")
    return result


def save_plan_picture(plan, path: str) -> str:
    from .plans.preview import render_plan

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    render_plan(plan).save(path)
    return path


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
    plan = solve_plan(calibrator.statistics(cost, source), lam=0.5, eps=1.0, name="demo: planted shapes")
    return plan, time.perf_counter() - start


def load_yardstick_demo():
    """yardstick/yardstick_demo.py (a plain folder beside the package), or None."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "yardstick", "yardstick_demo.py")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(os.path.dirname(path), "wan_tiny_yardstick.safetensors")):
        return None
    spec = importlib.util.spec_from_file_location("sparse_vdit_yardstick_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_vdit demo", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu or cuda")
    parser.add_argument("--planted", action="store_true",
                        help="the planted-shapes layer demo even where the trained yardstick could run")
    parser.add_argument("--comfyui", default=None,
                        help="a ComfyUI checkout for the yardstick demo (default $COMFYUI_PATH, else the ComfyUI "
                             "whose custom_nodes folder holds this pack)")
    parser.add_argument("--out", default=None,
                        help="the image file to write (default: output/ in the current folder; run from inside the "
                             "pack, the output folder of its ComfyUI)")
    parser.add_argument("--grid", default=None, help="planted demo: frames,rows,cols (default: 21,30,52 on GPU, 4,30,52 on CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="planted demo: timed repeats (at least 1)")
    args = parser.parse_args(argv)
    try:
        device = demo_setup.check_device(args.device)
        geometry = demo_setup.parse_grid(args.grid)
        if args.repeats is not None and args.repeats < 1:
            raise DemoError(f"--repeats {args.repeats}: at least 1")
        comfyui = demo_setup.find_comfyui(args.comfyui)  # a path named but wrong is an error even with --planted
        yardstick = load_yardstick_demo() if comfyui and not args.planted else None
        if comfyui and yardstick:
            missing = demo_setup.missing_packages()
            if missing:
                raise demo_setup.missing_packages_error(comfyui, missing)
            out = demo_setup.out_path(args.out, "sparse_vdit_yardstick_demo.png")
        else:
            out = demo_setup.out_path(args.out, "sparse_vdit_planted_demo.png")
    except DemoError as error:
        parser.error(str(error))  # exits 2 with the usage line
    if comfyui and yardstick:
        # The trained yardstick model, dense against sparse from one seed. It
        # needs ComfyUI's WanModel (never copied here).
        try:
            yardstick.run_yardstick_demo(comfyui, device, out)
        except ModuleNotFoundError as error:  # a package the check above does not know of
            parser.exit(2, f"{parser.prog}: error: {demo_setup.missing_packages_error(comfyui, [error.name])}\n")
        return 0
    if not args.planted:
        why = "the yardstick folder or its weights are missing" if comfyui else \
            "no ComfyUI found (give --comfyui PATH, set COMFYUI_PATH, or run from ComfyUI/custom_nodes)"
        print(f"(trained yardstick demo unavailable: {why}; running the planted-shapes demo)")
    run_demo(device, geometry, args.repeats, out)
    return 0

"""Check and time the block-sparse kernel against dense and FlexAttention.

One run on one GPU, bf16, B=1, Wan2.1 shapes:
  1.3B 480p: 12 heads x 128, Geometry(21, 30, 52) = 32,760 tokens
  14B 720p:  40 heads x 128, Geometry(21, 45, 80) = 75,600 tokens
Backends: dense cuDNN SDPA, dense flash SDPA, FlexAttention (compiled, built
from the same block tables with BlockMask.from_kv_blocks and a table-lookup
mask_mod, so it computes the same function), and our Triton kernel.
Plans: all heads diagonal / multi-diagonal / vertical-stripe, mixed plans at
densities about 0.5 / 0.35 / 0.2, and a "dense table" (every block listed:
same work as dense, the kernel's per-block efficiency with no sparsity).

Columns: ms (median, triton.testing.do_bench), TFLOP/s per computed block
(4 * B * D * computed pairs / time), ratio of that to cuDNN dense from the
same run, speed-up over cuDNN dense, and max relative error (per row,
||o - ref|| / ||ref||) on sampled query rows against an fp32 reference
computed on the GPU for those rows.

Usage: python benchmarks/bench_kernels.py [--out DIR] [--shapes 1.3b,14b]
       [--sweep] (also time kernel config variants on two plans)
Writes DIR/kernels_<gpu>.json and .md (DIR defaults to $OUT or
benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import sparse_vdit  # noqa: F401  (installed, e.g. editable)
except ImportError:  # a bare checkout: the repo root is the package, link it under its name
    import tempfile
    shim = tempfile.mkdtemp(prefix="sparse_vdit_path_")
    os.symlink(os.path.dirname(HERE), os.path.join(shim, "sparse_vdit"))
    sys.path.insert(0, shim)

from sparse_vdit.kernels import triton_sparse as ts  # noqa: E402
from sparse_vdit.patterns import (Diagonal, Geometry, LayerPattern, MultiDiagonal,  # noqa: E402
                                  VerticalStripe, compile_layer)
from sparse_vdit.patterns.tables import BlockTable  # noqa: E402
from flex_tables import FlexTableAttention  # noqa: E402

SHAPES = {
    "wan1.3b-480p": dict(heads=12, geometry=Geometry(21, 30, 52)),
    "wan14b-720p": dict(heads=40, geometry=Geometry(21, 45, 80)),
}
SHAPE_ALIASES = {"1.3b": "wan1.3b-480p", "14b": "wan14b-720p"}
HEAD_DIM = 128


def _stripe(frames):
    return VerticalStripe(tuple(frames))


# Mixed plans: heads cycle through [MultiDiagonal(r1), VerticalStripe(...),
# Diagonal(2), MultiDiagonal(r2)]; parameters solved offline (per-head
# densities) to hit 0.5 / 0.35 / 0.2 at each shape.
MIXED = {
    "wan1.3b-480p": {
        0.5: (2, 23, (0, 1, 3, 4, 6, 7, 9, 10, 11, 13, 14, 16, 17, 19, 20)),
        0.35: (4, 5, tuple(range(0, 21, 2))),
        0.2: (0, 4, (0, 5, 10, 15, 20)),
    },
    "wan14b-720p": {
        0.5: (17, 22, tuple(range(0, 21, 2))),
        0.35: (10, 22, (0, 10, 20)),
        0.2: (1, 2, tuple(range(0, 21, 2))),
    },
}


def plans_for(shape: str, heads: int) -> dict[str, LayerPattern]:
    plans = {
        "diagonal(2)": LayerPattern((Diagonal(2),) * heads),
        "multi_diagonal(2)": LayerPattern((MultiDiagonal(2),) * heads),
        "vertical_stripe(0)": LayerPattern((VerticalStripe((0,)),) * heads),
    }
    for density, (r1, r2, frames) in MIXED[shape].items():
        cycle = (MultiDiagonal(r1), _stripe(frames), Diagonal(2), MultiDiagonal(r2))
        plans[f"mixed~{density}"] = LayerPattern(tuple(cycle[i % 4] for i in range(heads)))
    return plans


def dense_table(heads: int, seq_len: int, block_m: int, block_n: int, device) -> BlockTable:
    nq, nk = -(-seq_len // block_m), -(-seq_len // block_n)
    offsets = torch.arange(heads * nq + 1, dtype=torch.int32) * nk
    indices = torch.arange(nk, dtype=torch.int32).repeat(heads * nq)
    return BlockTable(tuple(range(heads)), seq_len, block_m, block_n, offsets.to(device), indices.to(device), nk)


# --------------------------------------------------------------------------
def bench(fn, est_runs: int = 20) -> float:
    import triton.testing
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = (time.perf_counter() - t0) * 1e3
    rep = max(100.0, once * est_runs)
    warm = max(25.0, once * 3)
    return float(triton.testing.do_bench(fn, warmup=warm, rep=rep, return_mode="median"))


def sample_rows(seq_len: int, n: int, gen) -> torch.Tensor:
    rows = torch.randint(0, seq_len, (n,), generator=gen)
    extra = torch.tensor([0, seq_len - 1])  # first and ragged-last rows always
    return torch.cat([rows, extra]).unique()


def sampled_error(out4, q4, k4, v4, heads, rows, allowed_fn, scale) -> float:
    """Max over sampled (head, row) of ||o - ref|| / ||ref||, fp32 reference."""
    worst = 0.0
    rows_d = rows.to(q4.device)
    for slot, h in enumerate(heads):
        qs = q4[0, rows_d, h].float()
        kh = k4[0, :, h].float()
        vh = v4[0, :, h].float()
        s = (qs @ kh.T) * scale
        allowed = allowed_fn(slot, rows_d)
        if allowed is not None:
            s = s.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        ref = p @ vh
        o = out4[0, rows_d, h].float()
        if not torch.isfinite(o).all():
            return float("nan")
        err = ((o - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)).max().item()
        worst = max(worst, err)
    return worst


def table_allowed_fn(table: BlockTable, device="cuda"):
    mask = table.block_mask().to(device)  # [h, nq, nk]
    seq_len, bm, bn = table.seq_len, table.block_m, table.block_n
    cols = torch.arange(seq_len, device=device)

    def allowed(slot, rows):
        return mask[slot][rows // bm][:, cols // bn]
    return allowed


# --------------------------------------------------------------------------
def flex_runner(table: BlockTable, q4, k4, v4, scale, compiled: bool = True):
    """FlexAttention with the same table (flex_tables.py). Returns (fn, state, note)."""
    attention = FlexTableAttention(table, q4.device, scale, compiled)
    sel = list(table.heads)
    qh, kh, vh = (x[:, :, sel].transpose(1, 2) for x in (q4, k4, v4))  # [1, h, L, D]
    state = {}

    def fn():
        state["out"] = attention(qh, kh, vh)
        return state["out"]
    fn()
    return fn, state, attention.note


# --------------------------------------------------------------------------
def env_info() -> dict:
    import triton
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "sms": props.multi_processor_count,
        "capability": list(torch.cuda.get_device_capability(0)),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_shape(shape: str, args, results: list, log, sweep: bool = False) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    spec = SHAPES[shape]
    heads, geometry = spec["heads"], spec["geometry"]
    seq_len, batch, d = geometry.seq_len, 1, HEAD_DIM
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    # ComfyUI's layout: [B, L, H*D], viewed as [B, L, H, D] (no copies).
    qkv = [torch.randn(batch, seq_len, heads * d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    q4, k4, v4 = (x.view(batch, seq_len, heads, d) for x in qkv)
    scale = d ** -0.5
    rows = sample_rows(seq_len, args.sample_rows, gen)
    dense_flops = 4.0 * batch * heads * seq_len * seq_len * d

    def record(**row):
        row.update(shape=shape, seq_len=seq_len, heads=heads)
        results.append(row)
        log(json.dumps(row))

    # ---- dense baselines
    base = {}
    dense_backends = [("cudnn", SDPBackend.CUDNN_ATTENTION)]
    if not sweep:
        dense_backends.append(("flash", SDPBackend.FLASH_ATTENTION))
    for name, backend in dense_backends:
        qt, kt, vt = (x.transpose(1, 2) for x in (q4, k4, v4))
        state = {}

        def fn():
            with sdpa_kernel(backend):
                state["o"] = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, scale=scale)
        try:
            ms = bench(fn)
            err = sampled_error(state["o"].transpose(1, 2), q4, k4, v4, list(range(heads)), rows, lambda s, r: None, scale)
            base[name] = ms
            record(plan="dense", backend=f"sdpa-{name}", density=1.0, ms=ms, tflops=dense_flops / ms * 1e-9,
                   err=err)
        except Exception as error:
            record(plan="dense", backend=f"sdpa-{name}", error=repr(error)[:300])
        del state
    cudnn_ms = base.get("cudnn")
    cudnn_tflops = dense_flops / cudnn_ms * 1e-9 if cudnn_ms else None
    torch.cuda.empty_cache()

    def run_ours(label, table, density, cfg=None, variant="default", check=True, runs=20):
        ts.prepare_table(table)
        out = torch.full_like(q4, float("nan"))

        order = ts.row_order(table, (cfg or {}).get("order", ts.DEFAULT_ORDER))

        def fn():
            ts._launch(q4, k4, v4, out, table.kv_offsets, table.kv_indices, table.derived["triton_heads"],
                       order, seq_len, table.block_m, table.block_n, scale, cfg)
        flops = 4.0 * batch * d * float(table.computed_pairs().sum())
        try:
            fn()
            torch.cuda.synchronize()
            written = bool(torch.isfinite(out[:, :, list(table.heads)]).all().item())
            err = sampled_error(out, q4, k4, v4, list(table.heads), rows, table_allowed_fn(table), scale) if check else None
            ms = bench(fn, runs)
            tf = flops / ms * 1e-9
            record(plan=label, backend="triton", variant=variant, config=cfg or ts.default_config(
                q4.device, q4.dtype, d, table.block_m, table.block_n), block=[table.block_m, table.block_n],
                density=density, ms=ms, tflops=tf, eff_vs_cudnn=tf / cudnn_tflops if cudnn_tflops else None,
                speedup_vs_cudnn=cudnn_ms / ms if cudnn_ms else None, err=err, all_written=written)
            return ms
        except Exception as error:
            record(plan=label, backend="triton", variant=variant, config=cfg, error=repr(error)[:400])
            log(traceback.format_exc())
            return None
        finally:
            del out

    def run_flex(label, table, density):
        flops = 4.0 * batch * d * float(table.computed_pairs().sum())
        try:
            t0 = time.perf_counter()
            fn, state, note = flex_runner(table, q4, k4, v4, scale)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            out = state["out"].transpose(1, 2)  # [1, L, h, D] in table slot order
            full = torch.zeros_like(q4)
            full[:, :, list(table.heads)] = out
            err = sampled_error(full, q4, k4, v4, list(table.heads), rows, table_allowed_fn(table), scale)
            del full, out
            ms = bench(fn)
            tf = flops / ms * 1e-9
            record(plan=label, backend="flex", block=[table.block_m, table.block_n], density=density, ms=ms,
                   tflops=tf, eff_vs_cudnn=tf / cudnn_tflops if cudnn_tflops else None,
                   speedup_vs_cudnn=cudnn_ms / ms if cudnn_ms else None, err=err, note=note,
                   first_call_s=compile_s)
            return ms
        except Exception as error:
            record(plan=label, backend="flex", error=repr(error)[:400])
            log(traceback.format_exc())
            return None

    if sweep:  # config variants on the dense table and two plans
        plans = plans_for(shape, heads)
        for bm, bn in args.blocks:
            tables = [("dense-table", dense_table(heads, seq_len, bm, bn, "cuda"), 1.0)]
            for label in ("mixed~0.35", "diagonal(2)"):
                compiled = compile_layer(plans[label], geometry, "cuda", bm, bn)
                tables.append((label, compiled.table, compiled.density()))
            configs = [c for c in sweep_configs(bm, bn) if args.ws == "yes" or (c[1]["ws"] == (args.ws == "only"))]
            for name, cfg in configs:  # warp-specialized variants last (a compiler crash loses least)
                for label, table, density in tables:
                    run_ours(label, table, density, cfg=cfg, variant=f"{name}-{bm}x{bn}", check=False, runs=8)
            del tables
            torch.cuda.empty_cache()
        return

    # ---- dense table: our kernel doing dense work (per-block efficiency ceiling)
    for bm, bn in args.blocks:
        t = dense_table(heads, seq_len, bm, bn, "cuda")
        run_ours("dense-table", t, 1.0, variant=f"default-{bm}x{bn}")
        del t
        torch.cuda.empty_cache()

    # ---- plans
    for label, layer in plans_for(shape, heads).items():
        for bm, bn in args.blocks:
            compiled = compile_layer(layer, geometry, "cuda", bm, bn)
            density = compiled.density()
            table = compiled.table
            run_ours(label, table, density, variant=f"default-{bm}x{bn}")
            if not args.no_flex and (bm, bn) == tuple(args.flex_block):
                run_flex(label, table, density)
            torch.cuda.empty_cache()


def sweep_configs(bm, bn):
    """Kernel variants: (name, config). Round 1 (H200) swept tma/ptr x warps
    4/8 x stages 2/3/4 x lpt/natural order; round 2 narrows to the winners
    plus row orders and Triton's warp specialization."""
    if bn == 64:  # round 2; tma-w4-s2-natural is the default, timed in the main pass
        grid = [("tma", 4, 2, "heads", False), ("tma", 4, 2, "lpt", False), ("tma", 4, 3, "natural", False),
                ("ptr", 4, 2, "natural", False), ("tma", 4, 2, "natural", True), ("tma", 8, 2, "natural", True)]
    else:
        grid = [("tma", 8, 3, "natural", False), ("tma", 8, 2, "natural", True), ("tma", 8, 3, "heads", False)]
    out = []
    for path, warps, stages, order, ws in grid:
        name = f"{path}-w{warps}-s{stages}-{order}{'-ws' if ws else ''}"
        out.append((name, {"tma": path == "tma", "num_warps": warps, "num_stages": stages, "order": order,
                           "ws": ws}))
    return out


def write_outputs(info, results, out_dir, tag):
    os.makedirs(out_dir, exist_ok=True)
    gpu = info["gpu"].replace(" ", "_").replace("/", "_")
    stem = os.path.join(out_dir, f"kernels_{gpu}{tag}")
    with open(stem + ".json", "w") as f:
        json.dump({"env": info, "results": results}, f, indent=1)
    lines = [f"# Kernel benchmark: {info['gpu']}", "",
             f"torch {info['torch']}, triton {info['triton']}, cuDNN {info['cudnn']}, CUDA {info['cuda']}, "
             f"{info['date']}. bf16, B=1, head_dim 128. ms = median (triton.testing.do_bench); TFLOP/s per "
             f"computed block = 4*B*D*computed_pairs/time; eff = that / cuDNN dense TFLOP/s (same run); "
             f"speed-up = cuDNN dense ms / ms; err = max relative row error on sampled rows vs fp32.", "",
             "| shape | plan | backend | variant | block | density | ms | TFLOP/s | eff vs cuDNN | speed-up vs cuDNN | err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['plan']} | {r['backend']} | {r.get('variant', '')} | | | failed: "
                         f"{r['error'][:80]} | | | | |")
            continue

        def f(x, fmt):
            return "" if x is None else format(x, fmt)
        block = "x".join(str(b) for b in r.get("block", [])) if r.get("block") else ""
        lines.append(f"| {r['shape']} | {r['plan']} | {r['backend']} | {r.get('variant', '')} | {block} | "
                     f"{r['density']:.3f} | {r['ms']:.3f} | {r['tflops']:.0f} | {f(r.get('eff_vs_cudnn'), '.3f')} | "
                     f"{f(r.get('speedup_vs_cudnn'), '.2f')} | {f(r.get('err'), '.2e')} |")
    lines += ["", "## Summary (default kernel config vs cuDNN dense and FlexAttention, same run)", "",
              "| shape | plan | density | ours ms | eff vs cuDNN | speed-up vs cuDNN | target 0.9/d | Flex ms | ours vs Flex |",
              "|---|---|---|---|---|---|---|---|---|"]
    ok = [r for r in results if "error" not in r]
    for r in ok:
        if r["backend"] != "triton" or not str(r.get("variant", "")).startswith("default"):
            continue
        flex = [x for x in ok if x["backend"] == "flex" and x["shape"] == r["shape"] and x["plan"] == r["plan"]
                and x.get("block") == r.get("block")]
        flex_ms = flex[-1]["ms"] if flex else None
        target = f"{0.9 / r['density']:.2f}" if r["plan"] != "dense-table" else ""
        lines.append(f"| {r['shape']} | {r['plan']} ({'x'.join(map(str, r['block']))}) | {r['density']:.3f} | "
                     f"{r['ms']:.3f} | {r['eff_vs_cudnn']:.3f} | {r['speedup_vs_cudnn']:.2f} | {target} | "
                     f"{'' if flex_ms is None else format(flex_ms, '.3f')} | "
                     f"{'' if flex_ms is None else format(flex_ms / r['ms'], '.2f') + 'x'} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return stem


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "results"))
    parser.add_argument("--shapes", default="1.3b,14b")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--only-sweep", action="store_true")
    parser.add_argument("--ws", default="yes", choices=("yes", "no", "only"),
                        help="include Triton warp-specialized variants in the sweep")
    parser.add_argument("--blocks", default="128x64", help="table block sizes, e.g. 128x64,128x128")
    parser.add_argument("--flex-block", default="128x64")
    parser.add_argument("--sample-rows", type=int, default=24)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    args.blocks = [tuple(int(x) for x in b.split("x")) for b in args.blocks.split(",")]
    args.flex_block = [int(x) for x in args.flex_block.split("x")]
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    info = env_info()
    print(json.dumps(info))
    results: list = []
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, f"bench_log{args.tag}.txt"), "a")

    def log(msg):
        logf.write(msg + "\n")
        logf.flush()
    t0 = time.perf_counter()
    shapes = [SHAPE_ALIASES.get(s, s) for s in args.shapes.split(",")]
    passes = [] if args.only_sweep else [(s, False) for s in shapes]
    passes += [(s, True) for s in shapes] if (args.sweep or args.only_sweep) else []
    for s, sweep in passes:
        run_shape(s, args, results, log, sweep=sweep)
        write_outputs(info, results, args.out, args.tag)
        print(f"[{s}{' sweep' if sweep else ''} done at {time.perf_counter() - t0:.0f}s]", flush=True)
    stem = write_outputs(info, results, args.out, args.tag)
    print(open(stem + ".md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())

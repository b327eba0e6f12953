"""Routed heads per layer call against Sol-Attn and cuDNN dense, same q/k/v.

Per shape (Wan 1.3B 480p: B 2, 12 heads, 21x30x52; Wan 14B 720p: B 1,
40 heads, 21x45x80; head_dim 128, bf16, video-like planted inputs from
synthetic_inputs.py) one layer call of:
  - cuDNN dense SDPA (the baseline),
  - every head routed at 5 / 10 / 20% of the key blocks, routing included
    (layer_attention: pooled means, scores, selection, table write, kernel);
    the routing pass and the kernel are also timed apart,
  - the same with the pooled tail (GPU only: routing, the tail's block
    means and listed flags, the 16-bit kernel's tail branch; "routing ms"
    is then routing + tail building),
  - comfy-kitchen's Sol-Attn with topk_ratio at the same share, and at the
    tau its tooltip maps to that share (tau 1.0 keeps about 16%, 2.0 about
    2.7%). Its kernel reports no block count, so the share it really keeps
    is inferred from its time: a line through its topk_ratio points
    (time = a + b * share), read back at each tau's time.
Relative L2 error against dense for every row.

Usage: python benchmarks/bench_routed.py --kitchen PATH_TO_COMFY_KITCHEN [--out DIR] [--shapes 1.3b,14b]
       python benchmarks/bench_routed.py --smoke --out DIR   (CPU, tiny shapes, reference path)
Writes DIR/routed_<gpu>.json and prints a table last. Under 4 minutes on an H100.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
try:
    import sparse_vdit  # noqa: F401  (installed, e.g. editable)
except ImportError:  # a bare checkout: the repo root is the package, link it under its name
    import tempfile
    shim = tempfile.mkdtemp(prefix="sparse_vdit_path_")
    os.symlink(os.path.dirname(HERE), os.path.join(shim, "sparse_vdit"))
    sys.path.insert(0, shim)

from sparse_vdit.kernels import routing  # noqa: E402
from sparse_vdit.kernels.dense import dense_attention  # noqa: E402
from sparse_vdit.kernels.dispatch import as_blhd, layer_attention  # noqa: E402
from sparse_vdit.patterns import Geometry, LayerPattern, Routed, compile_layer  # noqa: E402
from synthetic_inputs import video_like_layer  # noqa: E402

SHAPES = {
    "wan1.3b-480p": dict(batch=2, heads=12, geometry=Geometry(21, 30, 52)),
    "wan14b-720p": dict(batch=1, heads=40, geometry=Geometry(21, 45, 80)),
}
SMOKE_SHAPES = {"smoke": dict(batch=2, heads=2, geometry=Geometry(4, 16, 16))}
SHARES = (0.05, 0.10, 0.20)


def tau_for_share(share: float) -> float:
    """Sol-Attn's tooltip: tau 1.0 keeps about 16% of key blocks, 2.0 about
    2.7%; log-linear between (and beyond) those two points."""
    return 1.0 + math.log(share / 0.16) / math.log(0.027 / 0.16)


def cpu_ms(fn) -> float:
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def layer_inputs(spec: dict, device, dtype):
    """q, k, v [B, L, H*D]: the planted video-like mix, one sample per batch element."""
    q, k, v = video_like_layer(spec["geometry"], spec["heads"], device, dtype)
    if spec["batch"] > 1:  # a CFG-like pair: the same layout, a little apart
        g = torch.Generator(device=device).manual_seed(1)
        q, k, v = (torch.cat([x] + [x + 0.1 * x.std() * torch.randn(x.shape, generator=g, device=device, dtype=dtype)
                                    for _ in range(spec["batch"] - 1)]) for x in (q, k, v))
    return q, k, v


def run_shape(name: str, spec: dict, kitchen, device, timer, log) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    heads, geometry = spec["heads"], spec["geometry"]
    q, k, v = layer_inputs(spec, device, dtype)
    q4, k4, v4 = (as_blhd(x, "flat", heads) for x in (q, k, v))
    bhld = [x.transpose(1, 2) for x in (q4, k4, v4)]
    dense = dense_attention(*bhld).transpose(1, 2).float()
    backend = "triton" if device.type == "cuda" else "reference"
    rows = []

    def record(method: str, setting: str, ms: float, out4, share, **extra):
        err = float((out4.float() - dense).norm() / dense.norm())
        row = dict(shape=name, method=method, setting=setting, ms=ms, rel_err=err, kept_share=share, **extra)
        rows.append(row)
        log(json.dumps(row))

    record("cudnn dense", "-", timer(lambda: dense_attention(*bhld)), dense, 1.0)
    for share in SHARES:
        compiled = compile_layer(LayerPattern((Routed(share),) * heads), geometry, str(device))
        kept = float(compiled.table.computed_pairs().sum()) / (heads * geometry.seq_len ** 2)
        out = layer_attention(q, k, v, compiled, heads=heads, backend=backend)
        total = timer(lambda: layer_attention(q, k, v, compiled, heads=heads, backend=backend))
        route_ms = timer(lambda: routing.route(q4, k4, compiled))
        record("routed (ours)", f"share={share:g}", total, as_blhd(out, "flat", heads), kept,
               routing_ms=route_ms, blocks_per_row=compiled.routing[0].k, n_k_blocks=compiled.table.n_k_blocks)
        if device.type == "cuda":  # the pooled tail (a plan's tail=True): the 16-bit kernel's HAS_TAIL branch
            tailed = compile_layer(LayerPattern((Routed(share, tail=True),) * heads), geometry, str(device))
            out = layer_attention(q, k, v, tailed, heads=heads, backend=backend)
            record("routed + tail (ours)", f"share={share:g}",
                   timer(lambda: layer_attention(q, k, v, tailed, heads=heads, backend=backend)),
                   as_blhd(out, "flat", heads), kept,
                   routing_ms=timer(lambda: (routing.route(q4, k4, tailed), routing.pooled_tail(k4, v4, tailed))),
                   blocks_per_row=tailed.routing[0].k, n_k_blocks=tailed.table.n_k_blocks)
    if kitchen is None:
        return rows

    def sol(setting: str, **kwargs):
        """(ms, out) of one Sol-Attn setting; None (logged) if the call fails."""
        try:
            out = kitchen.sol_attn(q4, k4, v4, **kwargs)
            return timer(lambda: kitchen.sol_attn(q4, k4, v4, **kwargs)), out
        except Exception as error:  # an API change must not lose the rows above
            log(json.dumps({"shape": name, "method": "sol-attn", "setting": setting, "error": repr(error)[:300]}))
            return None

    timed = []
    for share in SHARES:  # topk_ratio: the same share of key blocks by Sol-Attn's own rule
        got = sol(f"topk_ratio={share:g}", topk_ratio=share)
        if got:
            timed.append((share, got[0]))
            record("sol-attn", f"topk_ratio={share:g}", got[0], got[1], share, kept_share_source="asked")
    slope, offset = _fit(timed) if len(timed) > 1 else (0.0, 0.0)
    for share in SHARES:
        tau = tau_for_share(share)
        got = sol(f"tau={tau:.2f}", tau=tau)
        if got:
            inferred = (got[0] - offset) / slope if slope > 0 else None
            record("sol-attn", f"tau={tau:.2f}", got[0], got[1], inferred, share_target=share,
                   kept_share_source="inferred from time")
    return rows


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line ms = offset + slope * share."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return slope, my - slope * mx


def load_kitchen(path: str | None, device):
    if not path or device.type != "cuda":
        return None, None
    sys.path.insert(0, path)
    try:
        import comfy_kitchen as kitchen
    except Exception as error:  # report and go on without it
        print(f"comfy-kitchen did not load: {error}")
        return None, None
    if not kitchen.sol_attn_is_available(device):
        print("comfy-kitchen loaded but Sol-Attn is not available on this card")
        return None, None
    return kitchen, {"version": getattr(kitchen, "__version__", "unknown"),
                     "sol_attn_signature": str(inspect.signature(kitchen.sol_attn))}


def table(rows: list[dict]) -> str:
    lines = ["| shape | method | setting | ms | vs cuDNN | kept share | routing ms | rel err |",
             "|---|---|---|---|---|---|---|---|"]
    dense = {r["shape"]: r["ms"] for r in rows if r["method"] == "cudnn dense"}
    for r in rows:
        share = "?" if r["kept_share"] is None else f"{100 * r['kept_share']:.1f}%"
        if r.get("kept_share_source"):
            share += f" ({r['kept_share_source']})"
        routing_ms = f"{r['routing_ms']:.3f}" if "routing_ms" in r else "-"
        lines.append(f"| {r['shape']} | {r['method']} | {r['setting']} | {r['ms']:.3f} | "
                     f"{dense[r['shape']] / r['ms']:.2f}x | {share} | {routing_ms} | {r['rel_err']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "results"))
    ap.add_argument("--shapes", default="1.3b,14b")
    ap.add_argument("--kitchen", default=None, help="folder holding the unpacked comfy_kitchen package")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, reference path (a test)")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if args.smoke:
        shapes, timer = SMOKE_SHAPES, cpu_ms
    else:
        from bench_kernels import bench, env_info
        wanted = {"1.3b": "wan1.3b-480p", "14b": "wan14b-720p"}
        shapes, timer = {wanted[s]: SHAPES[wanted[s]] for s in args.shapes.split(",")}, bench
    kitchen, kitchen_info = load_kitchen(args.kitchen, device)
    info = {"smoke": True} if args.smoke else env_info()
    info["comfy_kitchen"] = kitchen_info
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name, spec in shapes.items():
        rows += run_shape(name, spec, kitchen, device, timer, lambda line: print(line, flush=True))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    tag = "smoke" if args.smoke else torch.cuda.get_device_name(0).replace(" ", "_")
    result = {"info": info, "rows": rows}
    with open(os.path.join(args.out, f"routed_{tag}.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    print(table(rows))
    return result


if __name__ == "__main__":
    main()

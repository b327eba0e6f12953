"""8-bit pattern kernel: timing and error beside cuDNN bf16, our bf16 kernel
and SageAttention 1.0.6 dense, in one run on one GPU.

Shapes (B=1, head_dim 128, ComfyUI's [B, L, H*D] layout): Wan 1.3B 480p
(12 heads, 32,760 tokens) and Wan 14B 720p (40 heads, 75,600 tokens).
Tables: the dense table (every block: per-block efficiency with no
sparsity), every single-pattern plan and the mixed plans d = 0.5 / 0.35 / 0.2
of bench_kernels.py.

Timing: median ms (triton.testing.do_bench). TFLOP/s per computed block =
bf16-equivalent FLOPs (4 * B * D * computed pairs) / time. For 8-bit the
time includes the quantization pre-pass ("8-bit"); the kernel alone and
the pre-pass alone are also shown. eff = TFLOP/s / cuDNN dense TFLOP/s.

Error per head on sampled query rows (fp32 reference over the same table):
min cosine similarity and max relative L1 over heads, on random q/k/v and
on channel-biased q/k/v (K with a per-channel bias of 4 sigma, V with a
few 30x channels). Also 8-bit vs our bf16 on the same table.

A short config sweep on the dense table and one mixed plan comes first;
its winner serves the rest of the run (recorded). The FP8 dot's TTGIR is
written beside the results so two-level accumulation can be checked.

Usage: python benchmarks/bench_kernels8.py [--out DIR] [--shapes 1.3b,14b]
Writes DIR/kernels8_<gpu><tag>.json / .md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from bench_kernels import (HEAD_DIM, SHAPE_ALIASES, SHAPES, bench, dense_table, env_info,  # noqa: E402
                           plans_for, sample_rows, table_allowed_fn)

from sparse_vdit.kernels import quant8, triton_sparse as ts, triton_sparse8 as t8  # noqa: E402
from sparse_vdit.patterns import compile_layer  # noqa: E402

SWEEP = [  # (name, config, block_n): 8-bit kernel variants; round 1 (tile_m 128 with 8 warps,
    # 4 warps, pointer loads) lost to tile_m 64 / 4 warps / 3 stages by 12-30%; round 2: exp2 in
    # f16x2 (ex2.approx.f16x2) lost 6%, 4 stages tied 3, 128x128 tables +6% per block
    ("tma-w4-s3-m64", dict(tma=True, num_warps=4, num_stages=3, tile_m=64), 64),
    ("tma-w4-s2-m64", dict(tma=True, num_warps=4, num_stages=2, tile_m=64), 64),
    ("tma-w8-s2-m128", dict(tma=True, num_warps=8, num_stages=2, tile_m=128), 64),
    ("tma-w4-s3-m64-bn128", dict(tma=True, num_warps=4, num_stages=3, tile_m=64), 128),
    ("tma-w8-s3-m128-bn128", dict(tma=True, num_warps=8, num_stages=3, tile_m=128), 128),
]


def head_metrics(out, ref):
    """out, ref: [R, h, D] on sampled rows. (min cosine, max rel L1) over heads."""
    o, r = out.double(), ref.double()
    cos = torch.nn.functional.cosine_similarity(o.transpose(0, 1).flatten(1), r.transpose(0, 1).flatten(1), dim=1)
    l1 = (o - r).abs().sum((0, 2)) / r.abs().sum((0, 2)).clamp_min(1e-30)
    return float(cos.min()), float(l1.max())


def reference_rows(q4, k4, v4, table, rows, scale):
    """fp32 masked attention for sampled rows of every table head: [R, h, D]."""
    allowed = table_allowed_fn(table) if table is not None else None
    outs = []
    for slot, h in enumerate(table.heads):
        s = (q4[0, rows, h].float() @ k4[0, :, h].float().T) * scale
        if allowed is not None:
            s = s.masked_fill(~allowed(slot, rows), float("-inf"))
        outs.append(torch.softmax(s, -1).nan_to_num(0.0) @ v4[0, :, h].float())
    return torch.stack(outs, 1)


def make_inputs(heads, seq_len, kind, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = [torch.randn(1, seq_len, heads * HEAD_DIM, device="cuda", generator=gen).to(torch.bfloat16)
           for _ in range(3)]
    q4, k4, v4 = (x.view(1, seq_len, heads, HEAD_DIM) for x in qkv)
    if kind == "biased":
        k4 += 4.0 * torch.randn(heads, HEAD_DIM, device="cuda", generator=gen).to(torch.bfloat16)
        q4 += 1.0 * torch.randn(heads, HEAD_DIM, device="cuda", generator=gen).to(torch.bfloat16)
        v4[..., :4] *= 30.0
    return q4, k4, v4


def run_shape(shape, args, results, log, state):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    spec = SHAPES[shape]
    heads, geometry = spec["heads"], spec["geometry"]
    seq_len, d = geometry.seq_len, HEAD_DIM
    scale = d ** -0.5
    q4, k4, v4 = make_inputs(heads, seq_len, "random")
    rows = sample_rows(seq_len, args.sample_rows, torch.Generator().manual_seed(1)).cuda()
    dense_flops = 4.0 * heads * seq_len * seq_len * d

    def record(**row):
        row.update(shape=shape, seq_len=seq_len, heads=heads)
        results.append(row)
        log(json.dumps(row))

    # ---- dense baselines: cuDNN bf16, SageAttention 1.0.6
    qt, kt, vt = (x.transpose(1, 2) for x in (q4, k4, v4))

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, scale=scale)
    cudnn_ms = bench(cudnn)
    cudnn_tf = dense_flops / cudnn_ms * 1e-9
    full = dense_table(heads, seq_len, 128, 64, "cuda")
    ref = reference_rows(q4, k4, v4, full, rows, scale)
    record(plan="dense", backend="cudnn-bf16", density=1.0, ms=cudnn_ms, tflops=cudnn_tf, eff=1.0,
           metrics=head_metrics(cudnn().transpose(1, 2)[0, rows], ref))
    try:
        from sageattention import sageattn

        def sage():
            return sageattn(q4, k4, v4, tensor_layout="NHD", sm_scale=scale)
        ms = bench(sage)
        record(plan="dense", backend="sage-1.0.6", density=1.0, ms=ms, tflops=dense_flops / ms * 1e-9,
               eff=cudnn_ms / ms, metrics=head_metrics(sage()[0, rows], ref))
    except Exception as error:
        record(plan="dense", backend="sage-1.0.6", error=repr(error)[:300])

    # ---- config sweep (8-bit) on the dense table and mixed~0.35
    plans = plans_for(shape, heads)
    tables = {"dense-table": (full, 1.0)}
    for label, layer in plans.items():
        compiled = compile_layer(layer, geometry, "cuda", 128, 64)
        tables[label] = (compiled.table, compiled.density())
    for table, _ in tables.values():
        t8.prepare_table(table)
        ts.prepare_table(table)
    if args.sweep and "config" not in state:
        best = None
        for name, cfg, bn in SWEEP:
            for label in ("dense-table", "mixed~0.35"):
                if bn == 64:
                    table, density = tables[label]
                elif label == "dense-table":
                    table, density = dense_table(heads, seq_len, 128, bn, "cuda"), 1.0
                else:
                    compiled = compile_layer(plans[label], geometry, "cuda", 128, bn)
                    table, density = compiled.table, compiled.density()
                t8.prepare_table(table)
                flops = 4.0 * d * float(table.computed_pairs().sum())
                try:
                    heads_t = table.derived["triton_heads"]
                    qz = quant8.quantize_triton(q4, k4, v4, heads_t, bn, scale, True)
                    out = torch.empty_like(q4)
                    ms = bench(lambda: t8.launch8(qz, v4, out, table.kv_offsets, table.kv_indices, heads_t,
                                                  128, bn, cfg), 8)
                    del qz, out
                    record(plan=label, backend="8-bit-kernel", variant=f"sweep-{name}", density=density, ms=ms,
                           tflops=flops / ms * 1e-9, eff=flops / ms * 1e-9 / cudnn_tf, config=cfg)
                    if label == "dense-table" and bn == 64 and (best is None or ms < best[0]):
                        best = (ms, cfg)
                except Exception as error:
                    record(plan=label, backend="8-bit-kernel", variant=f"sweep-{name}", error=repr(error)[:400])
                    log(traceback.format_exc())
        state["config"] = best[1] if best else None
        log(f"sweep winner: {state['config']}")
    cfg = state.get("config")

    # ---- every table: our bf16, our 8-bit (pre-pass included), kernel alone, pre-pass alone
    for label, (table, density) in tables.items():
        flops = 4.0 * d * float(table.computed_pairs().sum())
        heads_t = table.derived["triton_heads"]
        sel = list(table.heads)
        try:
            ob = torch.full_like(q4, float("nan"))
            ob2 = torch.full_like(q4, float("nan"))
            bf = lambda: ts.sparse_attention_triton(q4, k4, v4, ob, table, scale)  # noqa: E731
            ms_b = bench(bf)
            o8 = torch.full_like(q4, float("nan"))
            run8 = lambda: t8.sparse_attention8_triton(q4, k4, v4, o8, table, scale, config=cfg)  # noqa: E731
            ms_8 = bench(run8)
            qz = quant8.quantize_triton(q4, k4, v4, heads_t, 64, scale, True)
            ms_pre = bench(lambda: quant8.quantize_triton(q4, k4, v4, heads_t, 64, scale, True))
            ok = torch.empty_like(q4)
            ms_k = bench(lambda: t8.launch8(qz, v4, ok, table.kv_offsets, table.kv_indices, heads_t, 128, 64, cfg))
            del qz, ok
            bf()
            run8()
            written = bool(torch.isfinite(o8[:, :, sel]).all())
            refp = reference_rows(q4, k4, v4, table, rows, scale)
            m_b = head_metrics(ob[0, rows][:, sel], refp)
            m_8 = head_metrics(o8[0, rows][:, sel], refp)
            m_8b = head_metrics(o8[0, rows][:, sel], ob[0, rows][:, sel].float())
            for backend, ms, extra in (("ours-bf16", ms_b, dict(metrics=m_b)),
                                       ("ours-8bit", ms_8, dict(metrics=m_8, vs_bf16=m_8b, all_written=written)),
                                       ("8-bit-kernel", ms_k, {}), ("8-bit-prepass", ms_pre, {})):
                tf = flops / ms * 1e-9 if backend != "8-bit-prepass" else None
                record(plan=label, backend=backend, density=density, ms=ms, tflops=tf,
                       eff=tf / cudnn_tf if tf else None, speedup=cudnn_ms / ms, **extra)
            if label in ("diagonal(2)", "vertical_stripe(0)", "mixed~0.2"):  # short rows: bf16 with 64-row tiles
                order = ts.row_order(table, ts.DEFAULT_ORDER)
                ms64 = bench(lambda: ts._launch(q4, k4, v4, ob2, table.kv_offsets, table.kv_indices, heads_t, order,
                                                seq_len, 128, 64, scale, {"tile_m": 64}))
                record(plan=label, backend="ours-bf16", variant="tile64", density=density, ms=ms64,
                       tflops=flops / ms64 * 1e-9, eff=flops / ms64 * 1e-9 / cudnn_tf, speedup=cudnn_ms / ms64,
                       metrics=head_metrics(ob2[0, rows][:, sel], refp))
                for per_program in (2, 4):  # several rows per program (kernels/triton_sparse_rows.py)
                    cfg_rows = {"rows_per_program": per_program}
                    ob2.fill_(float("nan"))
                    msr = bench(lambda: ts._launch(q4, k4, v4, ob2, table.kv_offsets, table.kv_indices, heads_t,
                                                   None, seq_len, 128, 64, scale, cfg_rows))
                    record(plan=label, backend="ours-bf16", variant=f"rows{per_program}", density=density, ms=msr,
                           tflops=flops / msr * 1e-9, eff=flops / msr * 1e-9 / cudnn_tf, speedup=cudnn_ms / msr,
                           metrics=head_metrics(ob2[0, rows][:, sel], refp))
            if label in ("dense-table", "mixed~0.35", "diagonal(2)"):  # 16-bit PV variant (pre-sm_89 path)
                o16 = torch.full_like(q4, float("nan"))
                ms16 = bench(lambda: t8.sparse_attention8_triton(q4, k4, v4, o16, table, scale, pv_fp8=False))
                record(plan=label, backend="ours-int8qk-bf16pv", density=density, ms=ms16,
                       tflops=flops / ms16 * 1e-9, eff=flops / ms16 * 1e-9 / cudnn_tf, speedup=cudnn_ms / ms16,
                       metrics=head_metrics(o16[0, rows][:, sel], refp))
                del o16
            del ob, o8, ob2
        except Exception as error:
            record(plan=label, backend="ours-8bit", error=repr(error)[:400])
            log(traceback.format_exc())
        torch.cuda.empty_cache()

    # ---- errors on channel-biased inputs (dense table and mixed~0.35), vs Sage on the same tensors
    qb4, kb4, vb4 = make_inputs(heads, seq_len, "biased", seed=3)
    for label in ("dense-table", "mixed~0.35"):
        table, density = tables[label]
        sel = list(table.heads)
        refp = reference_rows(qb4, kb4, vb4, table, rows, scale)
        ob, o8 = torch.empty_like(qb4), torch.empty_like(qb4)
        ts.sparse_attention_triton(qb4, kb4, vb4, ob, table, scale)
        t8.sparse_attention8_triton(qb4, kb4, vb4, o8, table, scale, config=cfg)
        record(plan=label, backend="ours-8bit", inputs="biased", density=density,
               metrics=head_metrics(o8[0, rows][:, sel], refp),
               vs_bf16=head_metrics(o8[0, rows][:, sel], ob[0, rows][:, sel].float()))
        if label == "dense-table":
            try:
                from sageattention import sageattn
                so = sageattn(qb4, kb4, vb4, tensor_layout="NHD", sm_scale=scale)
                record(plan="dense", backend="sage-1.0.6", inputs="biased", density=1.0,
                       metrics=head_metrics(so[0, rows], refp))
            except Exception as error:
                record(plan="dense", backend="sage-1.0.6", inputs="biased", error=repr(error)[:300])
        del ob, o8
    del qb4, kb4, vb4
    torch.cuda.empty_cache()


def dump_ttgir(out_dir):
    """Write the FP8 variant's TTGIR; return its FP8 dots with their accumulator operand."""
    from test_quant8 import fp8_dot_accumulators, fp8_ttgir
    texts = fp8_ttgir(t8._sparse_attn8_fwd)
    if not texts:
        return []
    with open(os.path.join(out_dir, "kernel8_fp8.ttgir"), "w") as fh:
        fh.write(texts[0])
    return [f"acc={acc} :: {line[:160]}" for line, acc in fp8_dot_accumulators(texts[0])]


def write_md(info, results, stem):
    def f(x, fmt):
        return "" if x is None else format(x, fmt)
    lines = [f"# 8-bit kernel benchmark: {info['gpu']}", "",
             f"torch {info['torch']}, triton {info['triton']}, cuDNN {info['cudnn']}, CUDA {info['cuda']}, "
             f"{info['date']}. bf16 inputs, B=1, head_dim 128. TFLOP/s per computed block = bf16-equivalent "
             "FLOPs / time; '8-bit' includes the quantization pre-pass; eff = TFLOP/s / cuDNN dense TFLOP/s "
             "(same run). Errors per head on sampled rows vs fp32 over the same table: min cosine, max relative L1.",
             "", "| shape | plan | inputs | backend | variant | density | ms | TFLOP/s | eff vs cuDNN | speed-up | "
             "cos min | rel L1 max | vs our bf16 (cos, L1) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['plan']} | {r.get('inputs', 'random')} | {r['backend']} | "
                         f"{r.get('variant', '')} | | failed: {r['error'][:90]} | | | | | | |")
            continue
        m = r.get("metrics") or (None, None)
        vb = r.get("vs_bf16")
        lines.append(f"| {r['shape']} | {r['plan']} | {r.get('inputs', 'random')} | {r['backend']} | "
                     f"{r.get('variant', '')} | {r['density']:.3f} | {f(r.get('ms'), '.3f')} | "
                     f"{f(r.get('tflops'), '.0f')} | {f(r.get('eff'), '.3f')} | {f(r.get('speedup'), '.2f')} | "
                     f"{f(m[0], '.5f')} | {f(m[1], '.4f')} | "
                     f"{'' if not vb else format(vb[0], '.5f') + ', ' + format(vb[1], '.4f')} |")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


def summary(results):
    """Short table: per shape and plan, eff of bf16 / 8-bit / kernel alone."""
    rows = ["shape | plan | d | cuDNN-rel eff: bf16 / 8-bit (pre-pass incl.) / 8-bit kernel | cos8 | L1_8"]
    for r in results:
        if r.get("backend") != "ours-8bit" or "error" in r or r.get("inputs"):
            continue
        same = {x["backend"]: x for x in results if x.get("plan") == r["plan"] and x.get("shape") == r["shape"]
                and not x.get("inputs") and not x.get("variant") and "error" not in x}
        eb = same.get("ours-bf16", {}).get("eff")
        ek = same.get("8-bit-kernel", {}).get("eff")
        rows.append(f"{r['shape']} | {r['plan']} | {r['density']:.2f} | {eb or 0:.3f} / {r['eff']:.3f} / "
                    f"{ek or 0:.3f} | {r['metrics'][0]:.5f} | {r['metrics'][1]:.4f}")
    for r in results:
        if r.get("variant") in ("tile64", "rows2", "rows4") and "error" not in r:
            rows.append(f"{r['shape']} | {r['plan']} | bf16 {r['variant']} eff {r['eff']:.3f} "
                        f"(cos {r['metrics'][0]:.5f})")
    for r in results:
        if r.get("backend") in ("cudnn-bf16", "sage-1.0.6") and "error" not in r:
            rows.append(f"{r['shape']} | {r['backend']} {r.get('inputs', 'random')} | ms {r.get('ms') or 0:.2f} | "
                        f"eff {r.get('eff') or 0:.3f} | cos {r['metrics'][0]:.5f} | L1 {r['metrics'][1]:.4f}")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "results"))
    parser.add_argument("--shapes", default="1.3b,14b")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false")
    parser.add_argument("--sample-rows", type=int, default=48)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    info = env_info()
    print(json.dumps(info), flush=True)
    results: list = []
    state: dict = {}
    os.makedirs(args.out, exist_ok=True)
    gpu = info["gpu"].replace(" ", "_").replace("/", "_")
    stem = os.path.join(args.out, f"kernels8_{gpu}{args.tag}")
    logf = open(stem + "_log.txt", "a")

    def log(msg):
        logf.write(msg + "\n")
        logf.flush()
    t0 = time.perf_counter()
    for s in args.shapes.split(","):
        run_shape(SHAPE_ALIASES.get(s, s), args, results, log, state)
        info["config8"] = state.get("config")
        info["ttgir_fp8_dots"] = dump_ttgir(args.out)
        with open(stem + ".json", "w") as fh:
            json.dump({"env": info, "results": results}, fh, indent=1)
        write_md(info, results, stem)
        print(f"[{s} done at {time.perf_counter() - t0:.0f}s]", flush=True)
    print("config:", state.get("config"))
    print("fp8 dots in TTGIR:", *info.get("ttgir_fp8_dots", []), sep="\n  ")
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

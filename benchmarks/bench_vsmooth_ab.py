"""A/B on one card, one process: what V smoothing costs the 8-bit kernel.

Times the 8-bit kernel (pre-pass apart) on the dense table at Wan 1.3B
480p with random bf16 q/k/v, interleaved rounds:
  per-channel   this tree: V offsets only where a channel's mean is large
                against its range (none, on random V)
  always        this tree with every channel smoothed (the rule forced)
  old           another tree's kernel (--old: a folder holding a package
                named sparse_vdit_old, e.g. `git archive dc3a8df`), which
                had no V offsets at all
and each one's error on sampled rows against fp32.

    python benchmarks/bench_vsmooth_ab.py --old FOLDER
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_kernels import SHAPES, bench, dense_table, env_info, sample_rows  # noqa: E402
from bench_kernels8 import head_metrics, make_inputs, reference_rows  # noqa: E402

from sparse_vdit.kernels import quant8, triton_sparse8 as t8  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default=None)
    ap.add_argument("--shape", default="wan1.3b-480p")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    spec = SHAPES[args.shape]
    heads, seq_len = spec["heads"], spec["geometry"].seq_len
    scale = 128 ** -0.5
    q4, k4, v4 = make_inputs(heads, seq_len, "random")
    table = dense_table(heads, seq_len, 128, 64, "cuda")
    t8.prepare_table(table)
    heads_t = table.derived["triton_heads"]
    rows = sample_rows(seq_len, 48, torch.Generator().manual_seed(1)).cuda()
    ref = reference_rows(q4, k4, v4, table, rows, scale)
    flops = 4.0 * 128 * float(table.computed_pairs().sum())

    kernels = {}
    kernels["per-channel"] = (quant8, t8)
    kernels["always"] = (quant8, t8)
    if args.old:
        sys.path.insert(0, args.old)
        kernels["old"] = (importlib.import_module("sparse_vdit_old.kernels.quant8"),
                          importlib.import_module("sparse_vdit_old.kernels.triton_sparse8"))
    ratio = quant8.SMOOTH_RANGE_RATIO
    results = {name: {"ms": []} for name in kernels}
    for _ in range(args.rounds):
        for name, (qmod, kmod) in kernels.items():
            quant8.SMOOTH_RANGE_RATIO = 1e30 if name == "always" else ratio
            qz = qmod.quantize_triton(q4, k4, v4, heads_t, 64, scale, True)
            out = torch.full_like(q4, float("nan"))
            run = lambda: kmod.launch8(qz, v4, out, table.kv_offsets, table.kv_indices, heads_t, 128, 64)  # noqa: E731
            results[name]["ms"].append(bench(run))
            run()
            results[name]["metrics"] = head_metrics(out[0, rows], ref)
            results[name]["smoothed_channels"] = (int((qz.vmean != 0).sum()) if hasattr(qz, "vmean") else 0)
    quant8.SMOOTH_RANGE_RATIO = ratio
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q4, k4, v4)),
                                                                    scale=scale)
    cudnn_ms = bench(cudnn)
    cudnn_tflops = 4.0 * heads * seq_len * seq_len * 128 / cudnn_ms * 1e-9
    summary = {"env": env_info(), "shape": args.shape, "cudnn_ms": cudnn_ms, "rows": {}}
    print(f"cuDNN dense {cudnn_ms:.3f} ms")
    print(f"{'kernel':12s} {'ms per round':28s} {'eff vs cuDNN':>12s} {'cos min':>8s} {'L1 max':>7s} smoothed")
    for name, r in results.items():
        eff = flops / min(r["ms"]) * 1e-9 / cudnn_tflops  # per computed block, as bench_kernels8
        summary["rows"][name] = dict(r, eff=eff)
        print(f"{name:12s} {' '.join(f'{x:8.3f}' for x in r['ms']):28s} {eff:12.3f} "
              f"{r['metrics'][0]:8.5f} {r['metrics'][1]:7.4f} {r['smoothed_channels']}")
    if args.out:
        with open(os.path.join(args.out, "vsmooth_ab.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

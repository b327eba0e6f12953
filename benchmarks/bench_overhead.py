"""Per-call overhead of the patch itself (routing, table lookup, head
gather/scatter, output assembly) at Wan shapes, bf16, B = 2, one GPU.

Times one layer call through SparsePatch exactly as ComfyUI makes it, and
the same work done bare: the Triton launch on the cached table plus cuDNN on
the full heads. The difference is the overhead.

  python benchmarks/bench_overhead.py --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mixes import mixed_plan  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    import triton
    import triton.testing

    from sparse_vdit.integration.forward_info import KEY, ForwardInfo
    from sparse_vdit.integration.model_info import ModelInfo
    from sparse_vdit.integration.sparse_patch import SparsePatch
    from sparse_vdit.kernels import triton_sparse as ts
    from sparse_vdit.kernels.dense import dense_attention
    from sparse_vdit.patterns import Geometry, compile_layer
    from sparse_vdit.plans.format import DenseSchedule

    def comfy_attention(q, k, v, heads=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
        """ComfyUI's attention_pytorch in miniature: what the chain ends in."""
        if not skip_reshape:
            b, n, width = q.shape
            q, k, v = (x.view(b, n, heads, width // heads).transpose(1, 2) for x in (q, k, v))
        out = dense_attention(q, k, v)
        return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])

    device = torch.device("cuda")
    rows = []
    for name, heads, geometry in (("1.3b", 12, Geometry(21, 30, 52)), ("14b", 40, Geometry(21, 45, 80))):
        plan = mixed_plan(1, heads, 128, geometry, 0.3)
        layer = plan.layers[0]
        compiled = compile_layer(layer, geometry, str(device))
        info = ModelInfo("wan2.1", 1, heads, 128, (1, 2, 2))
        patch = SparsePatch(plan, info, DenseSchedule(0.0))
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(2, geometry.seq_len, heads * 128, device=device, dtype=torch.bfloat16, generator=g)
                   for _ in range(3))
        options = {KEY: ForwardInfo(geometry, 25, 50, 0.5), "block_index": 0}

        def through_patch():
            options[KEY].self_attention_calls = 0
            return patch(comfy_attention, q, k, v, heads=heads, transformer_options=options)

        q4, k4, v4 = (x.view(2, geometry.seq_len, heads, 128) for x in (q, k, v))
        out = torch.empty_like(q4)
        full = list(compiled.full_heads)
        table = compiled.table
        ts.prepare_table(table)

        def bare():
            ts.sparse_attention_triton(q4, k4, v4, out, table)
            if full:
                a, b = full[0], full[-1] + 1  # the benchmark mix keeps full heads contiguous
                out[:, :, a:b] = dense_attention(*(x[:, :, a:b].transpose(1, 2) for x in (q4, k4, v4))).transpose(1, 2)
            return out

        through_patch()
        bare()
        patched_ms = triton.testing.do_bench(through_patch, warmup=50, rep=500, return_mode="median")
        bare_ms = triton.testing.do_bench(bare, warmup=50, rep=500, return_mode="median")
        rows.append({"shape": name, "tokens": geometry.seq_len, "heads": heads, "density": compiled.density(),
                     "through_patch_ms": patched_ms, "bare_ms": bare_ms,
                     "overhead_share": (patched_ms - bare_ms) / patched_ms, "served": dict(patch.counts)})
        print(f"{name}: through the patch {patched_ms:.3f} ms, bare kernel + cuDNN {bare_ms:.3f} ms, "
              f"overhead {100 * (patched_ms - bare_ms) / patched_ms:.2f}%")
    result = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "triton": triton.__version__,
              "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "overhead.json"), "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()

"""What a head permutation costs the Ulysses all-to-alls' copies, on one GPU.

The collectives move the same bytes whatever the head order; what a
permutation can cost is in the copies around them (parallel/comm.py): the
packing of q, k, v into the send buffer and the unpacking of the returned
output. This times, per layer call of one rank (Wan 1.3B 480p and 14B
720p, B = 2, bf16, P ranks' shares):
  identity   plain strided copies (no balancing)
  folded     the permutation as one indexed copy each way (what runs now)
  unfolded   index_select before the packing and index_copy after the
             unpacking (what ran before the fold)
and derives the cost model's `permute_passes` (balance.CostModel: extra
passes a permuted layout costs over the identity's) from folded - identity.
Every permuted result is checked equal to the unfolded one.

  python benchmarks/bench_ulysses_layout.py [--out DIR] [--world 2] [--smoke]
Results: DIR/ulysses_layout.json; the table is printed last.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import torch

SHAPES = {  # tokens = the latent grid after patchify, heads, head_dim, layers
    "1.3b": dict(tokens=21 * 30 * 52, heads=12, head_dim=128, layers=30),
    "14b": dict(tokens=21 * 45 * 80, heads=40, head_dim=128, layers=40),
    "smoke": dict(tokens=105, heads=4, head_dim=8, layers=2),
}


def unfolded_pack(tensors, world, order):
    from sparse_vdit.parallel import comm

    return comm.pack_for_heads([x.index_select(2, order) for x in tensors], world)


def unfolded_unpack(recv, order):
    from sparse_vdit.parallel import comm

    out = comm.unpack_seq(recv)
    restored = torch.empty_like(out)
    restored.index_copy_(2, order, out)  # position i of the sent order is model head order[i]
    return restored


def timed_ms(fn, device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            import time
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def run_shape(name: str, shape: dict, world: int, device, dtype, repeats: int) -> dict:
    from sparse_vdit.parallel import comm

    heads, head_dim = shape["heads"], shape["head_dim"]
    chunk = -(-shape["tokens"] // world)
    g = torch.Generator(device=device).manual_seed(0)
    qkv = [torch.randn(2, chunk, heads, head_dim, device=device, dtype=dtype, generator=g) for _ in range(3)]
    # what heads_to_seq receives: [P, B, s, h, D]
    recv = torch.randn(world, 2, chunk, heads // world, head_dim, device=device, dtype=dtype, generator=g)
    order = torch.randperm(heads, generator=torch.Generator().manual_seed(1)).to(device)
    ways = {
        "identity": (lambda: comm.pack_for_heads(qkv, world), lambda: comm.unpack_seq(recv)),
        "folded": (lambda: comm.pack_for_heads(qkv, world, order), lambda: comm.unpack_seq(recv, order)),
        "unfolded": (lambda: unfolded_pack(qkv, world, order), lambda: unfolded_unpack(recv, order)),
    }
    equal = (torch.equal(ways["folded"][0](), ways["unfolded"][0]())
             and torch.equal(ways["folded"][1](), ways["unfolded"][1]()))
    row = {"world": world, "tokens_per_rank": chunk, "heads": heads, "equal": equal}
    for way, (pack, unpack) in ways.items():
        row[way] = {"pack_ms": timed_ms(pack, device, repeats), "unpack_ms": timed_ms(unpack, device, repeats)}
        row[way]["total_ms"] = row[way]["pack_ms"] + row[way]["unpack_ms"]
    identity = row["identity"]["total_ms"]
    for way in ("folded", "unfolded"):
        extra = row[way]["total_ms"] - identity
        row[way]["extra_ms_per_step"] = extra * shape["layers"]
        row[way]["permute_passes"] = extra / identity if identity > 0 else None  # the identity is one pass
    return row


def table(results: dict) -> str:
    lines = ["| config | ranks | way | pack ms | unpack ms | extra ms per layer | extra ms per step | passes |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, row in results["shapes"].items():
        identity = row["identity"]["total_ms"]
        for way in ("identity", "folded", "unfolded"):
            r = row[way]
            extra = f"{r['total_ms'] - identity:.3f}" if way != "identity" else ""
            step = f"{r['extra_ms_per_step']:.1f}" if way != "identity" else ""
            passes = f"{r['permute_passes']:.2f}" if r.get("permute_passes") is not None else ""
            lines.append(f"| {name} | {row['world']} | {way}{'' if row['equal'] else ' NOT EQUAL'} | "
                         f"{r['pack_ms']:.3f} | {r['unpack_ms']:.3f} | {extra} | {step} | {passes} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--configs", default="1.3b,14b")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = parser.parse_args()
    if args.world < 2:
        raise SystemExit("--world must be at least 2")
    smoke = args.smoke or not torch.cuda.is_available()
    device = torch.device("cpu") if smoke else torch.device("cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    names = ["smoke"] if smoke else args.configs.split(",")
    for name in names:
        if SHAPES[name]["heads"] % args.world:
            raise SystemExit(f"{name}: {SHAPES[name]['heads']} heads do not split over {args.world} ranks")
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "dtype": str(dtype), "shapes": {}}
    for name in names:
        results["shapes"][name] = run_shape(name, SHAPES[name], args.world, device, dtype,
                                            5 if smoke else args.repeats)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ulysses_layout.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    print(f"{results['device']}, torch {results['torch']}, {results['dtype']}\n\n{table(results)}", flush=True)
    if not all(row["equal"] for row in results["shapes"].values()):
        raise SystemExit("a folded permutation differs from the unfolded one")


if __name__ == "__main__":
    main()

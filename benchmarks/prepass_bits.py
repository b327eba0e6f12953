"""Why the 8-bit pre-pass and its torch emulation once differed on the GPU
(issue 21), counted on the device at hand. One command, table last:

    python benchmarks/prepass_bits.py [--seq-len 32760] [--heads 12]

1. torch on CUDA divides by a Python number as a multiplication by its
   reciprocal (not IEEE division): how many of the pre-pass's scales come
   out different that way (amax / 127, max |v - offset| / 448, sum / L).
2. Sums over all tokens depend on the order of addition: how many of K's
   channel means and V's offsets differ in any bit between the Triton
   pre-pass and torch's sum, and how many int8 codes of K that changes.
3. With the pre-pass's own means handed to the emulation (what the test
   compares), the count of differing outputs: all zero when the pre-pass's
   element-wise arithmetic is the emulation's.
"""
from __future__ import annotations

import argparse

import torch

from sparse_vdit.kernels import quant8


def differing(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{int((a != b).sum())} / {a.numel()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=32760)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.seq_len, args.heads, 128)
    q, k, v = (torch.randn(shape, generator=gen).to(dev, torch.bfloat16) for _ in range(3))
    v[..., :64] += (3.0 * torch.randn(64, generator=gen)).to(dev, torch.bfloat16)  # offsets to smooth
    heads = tuple(range(args.heads))
    heads_t = torch.tensor(heads, dtype=torch.int32, device=dev)
    rows = []

    amax = q.float().abs().amax(-1)
    rows.append(("amax / 127: Python number vs tensor divisor", differing(amax / 127.0, quant8._div(amax, 127.0))))
    vmax = v.float().amax(1)
    rows.append(("max / 448: Python number vs tensor divisor", differing(vmax / 448.0, quant8._div(vmax, 448.0))))
    total = k.float().sum(1)
    rows.append(("sum / L: Python number vs tensor divisor",
                 differing(total / args.seq_len, quant8._div(total, args.seq_len))))

    if quant8.triton is not None and dev.type == "cuda":
        a = quant8.quantize_triton(q, k, v, heads_t, 64, 128 ** -0.5, True)
        own = quant8.quantize_torch(q, k, v, heads, 64, 128 ** -0.5, True)
        rows.append(("K means: pre-pass vs torch sum (any bit)", differing(a.kmean, own.kmean)))
        rows.append(("V offsets: pre-pass vs torch sum (any bit)", differing(a.vmean, own.vmean)))
        rows.append(("K int8 codes from those means", differing(a.k8, own.k8)))
        given = quant8.quantize_torch(q, k, v, heads, 64, 128 ** -0.5, True, means=(a.kmean, a.vmean))
        for name in ("q8", "qs", "k8", "ks", "vs", "voff"):
            rows.append((f"{name}: pre-pass vs emulation given its means", differing(getattr(a, name),
                                                                                     getattr(given, name))))
        rows.append(("vt8: pre-pass vs emulation given its means",
                     differing(a.vt8.view(torch.uint8), given.vt8.view(torch.uint8))))
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"\n{name}, torch {torch.__version__}, triton {getattr(quant8.triton, '__version__', None)}, "
          f"B={args.batch} L={args.seq_len} heads={args.heads}")
    print("| what | elements differing |\n|---|---|")
    for what, count in rows:
        print(f"| {what} | {count} |")


if __name__ == "__main__":
    main()

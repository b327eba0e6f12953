"""Compile every kernel variant the host code can launch for each card class,
with the launch parameters kernels/launch_table.py gives that class, and
read the resources from the compiled artefacts (no GPU needed: Triton's CUDA
backend compiles on the CPU).

Per variant: shared memory per block (Triton's metadata) against the card's
per-block limit, registers and spill stores (ptxas -v on Triton's PTX), the
tensor-core instructions in the PTX, and the resident programs per SM that
registers, shared memory and warps allow.

    python benchmarks/compile_cards.py [--arch 89 120] [--out docs/cards_compile.md]

prints the table and writes it as Markdown (the pack importable as
sparse_vdit, e.g. after `pip install -e .`); tests/test_cards_compile.py
runs the same variants and asserts the limits.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

ARCHS = (80, 86, 89, 90, 100, 120)


@dataclass(frozen=True)
class SM:
    """Per-SM limits (CUDA C Programming Guide, compute capability tables)."""
    block_smem: int      # bytes of shared memory one block may opt into
    sm_smem: int         # bytes per SM (each resident block also reserves 1 KB)
    max_warps: int
    max_blocks: int
    regs: int = 65536


LIMITS = {
    80: SM(163 * 1024, 164 * 1024, 64, 32),
    86: SM(99 * 1024, 100 * 1024, 48, 16),
    89: SM(99 * 1024, 100 * 1024, 48, 24),
    90: SM(227 * 1024, 228 * 1024, 64, 32),
    100: SM(227 * 1024, 228 * 1024, 64, 32),
    120: SM(99 * 1024, 100 * 1024, 48, 32),
}

# Tensor-core instructions in the PTX, per arch: 16-bit (bf16 in, fp32
# accumulate), INT8 and FP8 e4m3.
MMA16 = {90: r"wgmma\.mma_async\S*\.bf16\.bf16", 100: r"tcgen05\.mma\S*kind::f16"}
MMA_I8 = {90: r"wgmma\.mma_async\S*\.s32\.s8\.s8", 100: r"tcgen05\.mma\S*kind::i8"}
MMA_F8 = {90: r"wgmma\.mma_async\S*\.e4m3\.e4m3", 100: r"tcgen05\.mma\S*kind::f8f6f4"}
SYNC16, SYNC_I8, SYNC_F8 = (r"mma\.sync\S*\.f32\.bf16\.bf16\.f32", r"mma\.sync\S*\.s32\.s8\.s8\.s32",
                            r"mma\.sync\S*\.f32\.e4m3\.e4m3\.f32")


def mma_patterns(arch: int, kind: str) -> str:
    table = {"16": MMA16, "i8": MMA_I8, "f8": MMA_F8}[kind]
    return table.get(arch, {"16": SYNC16, "i8": SYNC_I8, "f8": SYNC_F8}[kind])


@dataclass(frozen=True)
class Variant:
    kernel: str                 # "bf16", "bf16-rows", "8-bit", "pre-pass"
    fn: str                     # module:function
    label: str
    signature: tuple            # ((name, type), ...)
    constexprs: tuple           # ((name, value), ...)
    num_warps: int
    num_stages: int
    needs: tuple = ()           # MMA kinds the PTX must show ("16", "i8", "f8")
    forbids: tuple = ()         # MMA kinds it must not show
    fp8_two_level: bool = False  # FP8 P.V dots must start from zero (TTGIR)


@dataclass
class Result:
    arch: int
    variant: Variant
    shared: int = 0
    regs: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    mma: list = field(default_factory=list)
    chained_fp8: list = field(default_factory=list)  # FP8 dots accumulating in the MMA
    error: str = ""

    @property
    def programs_per_sm(self) -> int:
        return occupancy(self.arch, self.regs, self.shared, self.variant.num_warps)

    def problems(self) -> list[str]:
        """Every limit this variant breaks (empty: fine)."""
        if self.error:
            return [f"does not compile: {self.error}"]
        limits, out, v = LIMITS[self.arch], [], self.variant
        if self.shared > limits.block_smem:
            out.append(f"shared memory {self.shared} B > {limits.block_smem} B per block")
        if self.spill_stores or self.spill_loads:
            out.append(f"spills: {self.spill_stores} B stores, {self.spill_loads} B loads ({self.regs} registers)")
        for kind in v.needs:
            if not any(re.fullmatch(mma_patterns(self.arch, kind), m) for m in self.mma):
                out.append(f"no {kind} MMA ({mma_patterns(self.arch, kind)}) in the PTX: {self.mma}")
        for kind in v.forbids:
            if any(re.fullmatch(mma_patterns(self.arch, kind), m) for m in self.mma):
                out.append(f"unexpected {kind} MMA in the PTX: {self.mma}")
        if self.chained_fp8:
            out.append(f"FP8 P.V accumulates in the MMA (no two-level accumulation): {self.chained_fp8}")
        if self.programs_per_sm < 1:
            out.append("no program fits on an SM")
        return out


def occupancy(arch: int, regs: int, shared: int, warps: int) -> int:
    """Resident programs per SM: registers (allocated per warp in units of
    256), shared memory (plus 1 KB reserved per block), warps, blocks."""
    limits = LIMITS[arch]
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = (limits.regs // per_warp) // warps
    by_smem = limits.sm_smem // (shared + 1024)
    return min(by_regs, by_smem, limits.max_warps // warps, limits.max_blocks)


# --------------------------------------------------------------------------
# The variants, with the table's launch parameters
# --------------------------------------------------------------------------
_I32 = "i32"
# Arguments Triton's launcher specialises as multiples of 16 at Wan 2.1
# 1.3B 480p (32,760 tokens, 12 heads of 128, [B, L, H*D]): every pointer, the
# strides, the padded length and the block counts (seq_len is not).
ALIGNED_INTS = frozenset(("sqb", "sql", "sqh", "skb", "skl", "skh", "svb", "svl", "svh", "sob", "sol", "soh",
                          "l_pad", "n_q_blocks", "n_k_blocks", "k_ch", "v_ch"))


def _sig16(dtype: str, tma: bool, head_dim: int, block_n: int, rows: bool) -> tuple:
    sig = {name: f"*{dtype}" for name in ("Q", "K", "V", "O")}
    shape = f"1, 1, {block_n}, {head_dim}" if rows else f"{block_n}, {head_dim}"
    desc = f"tensordesc<{dtype}[{shape}]>"
    sig["k_desc"] = sig["v_desc"] = desc if tma else f"*{dtype}"
    ptrs = ("kv_offsets", "kv_indices", "entry_rows", "heads_ptr") if rows else ("kv_offsets", "kv_indices",
                                                                               "heads_ptr", "row_order")
    sig.update({name: "*i32" for name in ptrs})
    ints = ["seq_len", "n_rows", "n_q_blocks", "n_k_blocks"] if rows else ["seq_len", "n_q_blocks", "n_k_blocks"]
    sig.update({name: _I32 for name in ints})
    sig["qk_scale"] = "fp32"
    sig.update({name: _I32 for name in ("sqb", "sql", "sqh", "skb", "skl", "skh", "svb", "svl", "svh", "sob",
                                        "sol", "soh")})
    if not rows:
        sig.update({name: _I32 for name in ("k_rb", "k_rh", "k_ch", "v_rb", "v_rh", "v_ch")})
        sig.update(tail_signature(dtype))
    return tuple(sig.items())


def tail_signature(dtype: str) -> dict:
    """The one-row kernel's pooled-tail arguments (routed rows; placeholders
    when HAS_TAIL is off)."""
    sig = {"KM": f"*{dtype}", "VM": f"*{dtype}", "tail_rows": "*i32", "tail_listed": "*u8"}
    sig.update({name: _I32 for name in ("skmb", "skml", "skmh", "svmb", "svml", "svmh", "tail_head0")})
    sig.update({"full_log2c": "fp32", "last_log2c": "fp32"})
    return sig


def _sig8(tma: bool, pv_fp8: bool, head_dim: int, block_n: int) -> tuple:
    v8 = "fp8e4nv" if pv_fp8 else "i8"
    sig = {"Q8": "*i8", "QS": "*fp32", "K8": "*i8", "KS": "*fp32", "VT8": f"*{v8}", "V": "*bf16", "VS": "*fp32",
           "VOFF": "*fp32", "O": "*bf16",
           "k_desc": f"tensordesc<i8[{block_n}, {head_dim}]>" if tma else "*i8",
           "v_desc": ((f"tensordesc<fp8e4nv[{head_dim}, {block_n}]>" if pv_fp8 else
                       f"tensordesc<i8[{block_n}, {head_dim}]>") if tma else "*i8"),
           "kv_offsets": "*i32", "kv_indices": "*i32", "heads_ptr": "*i32"}
    sig.update({name: _I32 for name in ("seq_len", "l_pad", "n_slots", "n_q_blocks", "n_k_blocks", "svb", "svl",
                                        "svh", "sob", "sol", "soh")})
    return tuple(sig.items())


def variants(arch: int) -> list[Variant]:
    """What the host code can launch on this card class, with the table's
    parameters: the bf16 kernel (default 128x64 tables at head_dim 128 and
    64, 128x128 tables; TMA where the row uses it, and the pointer path,
    which any call whose strides a descriptor cannot take falls back to),
    the rows-per-program kernel (opt-in), the 8-bit kernel in the row's
    recipe (128x64 and 128x128 tables) and the three pre-pass kernels.
    fp32 inputs (the bf16 kernel at full precision) are left out: one
    compile takes minutes on the CPU (see docs/cards.md)."""
    from sparse_vdit.kernels import quant8
    from sparse_vdit.kernels.launch_table import LAUNCH_TABLE
    from sparse_vdit.kernels.triton_sparse8 import _LOG2_FP8_MAX
    row = LAUNCH_TABLE[(arch // 10, arch % 10)]
    out = []
    paths = (True, False) if row.tma else (False,)
    for tma in paths:
        for head_dim, block_n in ((128, 64), (64, 64), (128, 128)):
            if not tma and row.tma and (head_dim, block_n) != (128, 64):
                continue  # Hopper's pointer fallback: the default shape is enough
            cfg = row.config16(head_dim, block_n)
            const = dict(HEAD_DIM=head_dim, BLOCK_M=128, BLOCK_N=block_n, USE_TMA=tma, USE_ORDER=False,
                         KV_TAIL=True, DOT_PREC="tf32", UPCAST=False, WARP_SPEC=False, TILE_M=128, HAS_TAIL=False)
            out.append(Variant("bf16", "sparse_vdit.kernels.triton_sparse:_sparse_attn_fwd",
                               f"bf16 {'TMA' if tma else 'pointer'} d{head_dim} 128x{block_n}",
                               _sig16("bf16", tma, head_dim, block_n, False), tuple(const.items()),
                               cfg["num_warps"], cfg["num_stages"], needs=("16",), forbids=("i8", "f8")))
        cfg = row.config16(128, 64)
        const = dict(HEAD_DIM=128, BLOCK_M=128, BLOCK_N=64, ROWS=4, USE_TMA=tma, KV_TAIL=True, DOT_PREC="tf32",
                     UPCAST=False)
        out.append(Variant("bf16-rows", "sparse_vdit.kernels.triton_sparse_rows:_sparse_attn_rows_fwd",
                           f"bf16 rows=4 {'TMA' if tma else 'pointer'} d128 128x64",
                           _sig16("bf16", tma, 128, 64, True), tuple(const.items()),
                           cfg["num_warps"], cfg["num_stages"], needs=("16",)))
    for head_dim, block_n in ((128, 64), (64, 64), (128, 128)):
        cfg8 = row.config8(128, block_n)
        const = dict(HEAD_DIM=head_dim, BLOCK_M=128, TILE_M=cfg8["tile_m"], BLOCK_N=block_n, USE_TMA=row.tma,
                     KV_TAIL=True, PV_FP8=row.pv_fp8, UPCAST=False, LOG2_PMAX=_LOG2_FP8_MAX,
                     PV_IMPRECISE=cfg8["pv_imprecise"])
        out.append(Variant("8-bit", "sparse_vdit.kernels.triton_sparse8:_sparse_attn8_fwd",
                           f"8-bit {row.recipe8} {'TMA' if row.tma else 'pointer'} d{head_dim} 128x{block_n}",
                           _sig8(row.tma, row.pv_fp8, head_dim, block_n), tuple(const.items()),
                           cfg8["num_warps"], cfg8["num_stages"],
                           needs=("i8", "f8") if row.pv_fp8 else ("i8", "16"),
                           forbids=() if row.pv_fp8 else ("f8",), fp8_two_level=row.pv_fp8))
    v8 = "*fp8e4nv" if row.pv_fp8 else "*i8"
    sig = dict({name: "*bf16" for name in ("Q", "K", "V")}, heads_ptr="*i32", KMEAN="*fp32", VMEAN="*fp32",
               VS="*fp32", Q8="*i8", QS="*fp32", K8="*i8", KS="*fp32", VT8=v8)
    sig.update({name: _I32 for name in ("seq_len", "l_pad", "n_slots", "sqb", "sql", "sqh", "skb", "skl", "skh",
                                        "svb", "svl", "svh")})
    sig["qk_scale"] = "fp32"
    # The pre-pass launches with Triton's default of 3 stages (quant8.quantize_triton).
    out.append(Variant("pre-pass", "sparse_vdit.kernels.quant8:_quantize", "pre-pass quantize d128",
                       tuple(sig.items()), (("HEAD_DIM", 128), ("BLOCK", 64), ("PV_FP8", row.pv_fp8),
                                            ("EMULATE_FP8", False)), 4, 3))
    sig = {"K": "*bf16", "V": "*bf16", "heads_ptr": "*i32", "KSUM": "*fp32", "VSUM": "*fp32", "VMAX": "*fp32",
           "VMIN": "*fp32"}
    sig.update({name: _I32 for name in ("seq_len", "n_slots", "n_chunks", "skb", "skl", "skh", "svb", "svl", "svh")})
    out.append(Variant("pre-pass", "sparse_vdit.kernels.quant8:_stats", "pre-pass stats d128", tuple(sig.items()),
                       (("HEAD_DIM", 128), ("CHUNK", quant8.STATS_CHUNK), ("SUB", 64), ("WANT_V", row.pv_fp8)),
                       4, 3))
    sig = {name: "*fp32" for name in ("KSUM", "VSUM", "VMAX", "VMIN", "KMEAN", "VMEAN", "VS", "VOFF")}
    sig.update(seq_len=_I32, n_chunks=_I32)
    out.append(Variant("pre-pass", "sparse_vdit.kernels.quant8:_finalize", "pre-pass finalize d128",
                       tuple(sig.items()),
                       (("HEAD_DIM", 128), ("WANT_V", row.pv_fp8), ("SMOOTH_RATIO", quant8.SMOOTH_RANGE_RATIO),
                        ("NEAR_CONSTANT", quant8.NEAR_CONSTANT_RATIO), ("TINY", quant8._TINY),
                        ("VMAX_FP8", quant8.FP8_MAX)), 1, 3))
    return out


# --------------------------------------------------------------------------
# Compiling and reading the artefacts
# --------------------------------------------------------------------------
def _ptxas_command(arch: int, ptx: str, cubin: str) -> list[str]:
    """ptxas as Triton runs it for this arch (its binary, its register
    allocation option), with -v."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    return [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
            f"--gpu-name={sm_arch_from_capability(arch)}", ptx, "-o", cubin]


def fp8_dot_accumulators(ttgir: str) -> list[tuple[str, str]]:
    """(line, accumulator operand) of each dot on FP8 operands in a TTGIR."""
    found = []
    for line in ttgir.splitlines():
        for op in ("ttng.warp_group_dot ", "tt.dot "):
            if op in line and "f8E4M3FN" in line:
                operands = line.split(op, 1)[1].split(" {")[0].split(" :")[0].split(", ")
                found.append((line.strip(), operands[2].strip() if len(operands) > 2 else "?"))
    return found


def _fp8_chained(ttir: str) -> list[str]:
    """FP8 dots whose accumulator is not a fresh zero constant, read in the
    TTIR, where Triton folds an add into a dot on every arch (later IRs turn
    sm_100's dots into tcgen05 MMAs); a variant with no FP8 dot at all is
    reported too."""
    dots = fp8_dot_accumulators(ttir)
    if not dots:
        return ["no FP8 dot in the TTIR"]
    return [line[:160] for line, acc in dots if not acc.startswith("%cst")]


def compile_variant(arch: int, variant: Variant) -> Result:
    """Compile one variant for one arch and read its resources."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    result = Result(arch, variant)
    module, name = variant.fn.split(":")
    fn = getattr(importlib.import_module(module), name)
    const = dict(variant.constexprs)
    sig = dict(dict(variant.signature), **{k: "constexpr" for k in const})
    aligned = [n for n, t in variant.signature if t.startswith("*") or n in ALIGNED_INTS]
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()},
                    attrs={(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
    except Exception as error:  # reported as a problem of this variant
        result.error = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        return result
    result.shared = int(compiled.metadata.shared)
    ptx = compiled.asm["ptx"]
    result.mma = sorted(set(re.findall(r"(?:mma\.sync|wgmma\.mma_async|tcgen05\.mma)[\w.:]*", ptx)))
    if variant.fp8_two_level:
        result.chained_fp8 = _fp8_chained(compiled.asm["ttir"])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run(_ptxas_command(arch, path, os.path.join(tmp, "k.cubin")),
                              capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        result.error = f"ptxas failed: {log[-300:]}"
        return result
    grab = lambda pattern: int(re.search(pattern, log).group(1)) if re.search(pattern, log) else 0  # noqa: E731
    result.regs = grab(r"Used (\d+) registers")
    result.spill_stores = grab(r"(\d+) bytes spill stores")
    result.spill_loads = grab(r"(\d+) bytes spill loads")
    result.stack = grab(r"(\d+) bytes stack frame")
    return result


def _compile_job(job):
    os.environ.pop("TRITON_INTERPRET", None)
    return compile_variant(*job)


def compile_all(archs=ARCHS, workers: int | None = None) -> list[Result]:
    """Every variant of every arch, compiled in parallel processes (spawned:
    no fork of a process holding torch's threads). Triton's on-disk cache
    makes a second run cheap."""
    import multiprocessing
    jobs = [(arch, v) for arch in archs for v in variants(arch)]
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1, 8))
    if workers == 1:
        return [_compile_job(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_job, jobs))


def markdown(results: list[Result]) -> str:
    import triton
    lines = [f"Compiled with Triton {triton.__version__} on the CPU (benchmarks/compile_cards.py); "
             "registers and spills from ptxas -v on Triton's PTX; programs per SM from registers, shared "
             "memory and warps. Launch parameters: kernels/launch_table.py.", "",
             "| arch | variant | warps | stages | shared memory (limit) | registers | spills | programs / SM "
             "| tensor-core instructions | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mma = ", ".join(m.replace("mma.sync.aligned.", "mma.sync.").replace("wgmma.mma_async.sync.aligned.", "wgmma.")
                        for m in r.mma) or "none"
        problems = r.problems()
        lines.append(f"| sm_{r.arch} | {r.variant.label} | {r.variant.num_warps} | {r.variant.num_stages} | "
                     f"{r.shared / 1024:.1f} KB ({LIMITS[r.arch].block_smem // 1024} KB) | {r.regs} | "
                     f"{r.spill_stores} B | {r.programs_per_sm if not r.error else '-'} | {mma} | "
                     f"{'yes' if not problems else 'NO: ' + '; '.join(problems)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="*", default=list(ARCHS))
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    results = compile_all(tuple(args.arch), args.workers)
    text = markdown(results)
    if args.out:
        from sparse_vdit.plans.atomic import atomic_write_text
        atomic_write_text(args.out, text)
    print(text)
    return 1 if any(r.problems() for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

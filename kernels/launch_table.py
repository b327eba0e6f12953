"""Launch parameters per GPU architecture: one row per card class.

Both Triton kernels (triton_sparse.py in 16 bits, triton_sparse8.py in
8 bits) take their tile, warps, stages and load path from here, and the
dispatcher's `auto` precision takes its threshold from here. Rows are keyed
by CUDA capability (major, minor); a capability not in the table runs the
safest variant (pointer loads, one stage, INT8 QK with 16-bit P.V, `auto`
stays 16-bit) with one log line per capability.

Only sm_90 was measured (H200, benchmarks/NOTES.md and
benchmarks/results/kernels*_NVIDIA_H200.md); every other row keeps the
parameters the kernels used before this table existed, except where the
compiled kernel spilled registers (tests/test_cards_compile.py checks every
variant's shared memory, spills and tensor-core instructions per card;
docs/cards.md and docs/cards_compile.md hold the tables). A row's `why`
says which.

`auto`: 8 bits where a layer's rows average at least `auto_min_keys` keys
per query. The break-even is where the kernel's saving per (query, key)
pair repays the quantisation pre-pass (about one pass over q/k/v, so memory
bound). Measured on the H200: 7,500 keys (8-bit kernel 15-20% faster per
block, pre-pass 0.43 ms at Wan 1.3B 480p). Another card scales it by
  (H200 bandwidth / card bandwidth)          the pre-pass is slower there
  x (card 16-bit rate / H200 16-bit rate)    a pair costs less there
  x (H200 saving / card saving)              8 bits save more there
where a card's saving is 1 - t8 / t16 from its published tensor rates (QK
and P.V the same FLOPs; P.V at the recipe's rate). That assumes the
kernel is bound by the tensor cores there: true of FA2 and Sage2 on RTX
cards, which reach their cards' peak fp32-accumulate rates, not of Hopper,
where the softmax's exp bounds it and 8 bits buy 15-20% instead of 2x.
The figures are the published dense (not sparse) rates of one reference
card per class, named in its row; MODELLED, not measured.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

log = logging.getLogger("sparse_vdit")


@dataclass(frozen=True)
class PublishedRates:
    """Dense tensor rates of a reference card (TFLOP/s or TOPS, no sparsity)."""
    card: str
    bf16: float        # 16-bit inputs, fp32 accumulate (what both kernels use)
    int8: float        # INT8 QK^T, int32 accumulate
    fp8: float         # FP8 e4m3 with fp32 accumulate (0: no FP8 tensor cores)
    bandwidth: float   # TB/s, DRAM
    source: str

    def pv_rate(self, pv_fp8: bool) -> float:
        return self.fp8 if pv_fp8 else self.bf16

    def saving8(self, pv_fp8: bool) -> float:
        """Share of the 16-bit kernel's time per block the 8-bit recipe saves
        when the tensor cores bound both: 1 - t8 / t16."""
        t16 = 2.0 / self.bf16
        t8 = 1.0 / self.int8 + 1.0 / self.pv_rate(pv_fp8)
        return 1.0 - t8 / t16


H200 = PublishedRates("H200", 989.0, 1979.0, 1979.0, 4.8, "NVIDIA H200 datasheet")
# H200's measured 8-bit saving per block (8-bit 15-20% faster: 1 - 1/1.175)
# and the threshold measured there (dispatch.py's history: 7,500 keys).
H200_SAVING8 = 1.0 - 1.0 / 1.175
H200_AUTO_MIN_KEYS = 7500

A100 = PublishedRates("A100 SXM 80GB", 312.0, 624.0, 0.0, 2.04, "NVIDIA A100 datasheet")
RTX3090 = PublishedRates("RTX 3090", 71.0, 284.0, 0.0, 0.936, "NVIDIA Ampere GA102 whitepaper, appendix")
RTX4090 = PublishedRates("RTX 4090", 165.2, 660.6, 330.3, 1.008, "NVIDIA Ada Lovelace whitepaper, appendix")
B200 = PublishedRates("B200", 2250.0, 4500.0, 4500.0, 8.0, "NVIDIA DGX B200 datasheet (per GPU)")
RTX5090 = PublishedRates("RTX 5090", 209.5, 838.0, 419.0, 1.792, "NVIDIA RTX Blackwell whitepaper, appendix")


def modelled_auto_min_keys(card: PublishedRates, pv_fp8: bool, saving: Optional[float] = None) -> int:
    """The H200's measured threshold carried to `card` (module docstring),
    rounded to 100 keys. saving: the card's 8-bit saving per block, when not
    the tensor-core bound one (a Hopper-like card)."""
    saving = card.saving8(pv_fp8) if saving is None else saving
    keys = (H200_AUTO_MIN_KEYS * (H200.bandwidth / card.bandwidth) * (card.bf16 / H200.bf16)
            * (H200_SAVING8 / saving))
    return int(round(keys / 100.0)) * 100


# bf16 kernel (warps, stages) by (head_dim, block_n) off Hopper: stages as
# every card used before the table (2 at head_dim 128, K and V double-
# buffered; 3 at head_dim 64). Warps: 8 at head_dim 128, where 4 warps hold
# Q, the fp32 accumulator and the scores of a 128-row tile in 255 registers
# and spill (1.0-1.2 KB per thread on sm_80/86/89/120, 156 B on sm_100); 8
# warps compile without spills in the same shared memory (64 KB, one
# program per SM on the 100 KB cards: twice the warps in flight). From the
# compiled kernels (benchmarks/compile_cards.py, Triton 3.9), not timed.
_POINTER16 = MappingProxyType({(128, 64): (8, 2), (64, 64): (4, 3), (128, 128): (8, 2), (64, 128): (4, 3)})
# Hopper, swept on an H200 (benchmarks/NOTES.md): 4 warps / 2 stages on
# 128x64 tables; 128x128 tables want two warpgroups at head_dim 128.
_HOPPER16 = MappingProxyType({(128, 64): (4, 2), (64, 64): (4, 2), (128, 128): (8, 3), (64, 128): (4, 3)})
_SAFE16 = MappingProxyType({key: (4, 1) for key in _POINTER16})


@dataclass(frozen=True)
class CardLaunch:
    """Launch parameters of one card class. The 16-bit kernel: TMA or
    pointer loads, (warps, stages) per (head_dim, block_n). The 8-bit kernel:
    query tile, warps, stages, TMA, and the recipe (QK^T always INT8; P.V in
    FP8 e4m3 where the card has FP8 tensor cores, else in the input's 16-bit
    type). auto_min_keys: keys per query from which `auto` runs 8 bits
    (None: never)."""
    arch: str
    cards: str
    tma: bool
    warps_stages16: Mapping[tuple[int, int], tuple[int, int]]
    tile_m8: int
    warps8: int
    stages8: int
    pv_fp8: bool
    auto_min_keys: Optional[int]
    why: str
    known: bool = True
    # Pass max_num_imprecise_acc = BLOCK_N to the FP8 P.V dot: with Triton's
    # default (0 off Hopper) it folds `acc * alpha + dot(p, v)` into the MMA's
    # accumulator, which is narrower than fp32 for FP8 (SageAttention2 on Ada).
    # Hopper's default (2**30) keeps the add apart already: False there, so its
    # measured kernel compiles as before.
    fresh_fp8_acc: bool = True

    def config16(self, head_dim: int, block_n: int) -> dict:
        warps, stages = self.warps_stages16.get((head_dim, block_n), (4, 1))
        return {"num_warps": warps, "num_stages": stages, "tma": self.tma, "ws": False}

    def config8(self, block_m: int, block_n: int) -> dict:
        return {"num_warps": self.warps8, "num_stages": self.stages8, "tma": self.tma,
                "tile_m": min(self.tile_m8, block_m), "pv_imprecise": block_n if self.fresh_fp8_acc else None}

    @property
    def recipe8(self) -> str:
        return "INT8 QK, FP8 P.V" if self.pv_fp8 else "INT8 QK, 16-bit P.V"


LAUNCH_TABLE: Mapping[tuple[int, int], CardLaunch] = MappingProxyType({
    (8, 0): CardLaunch(
        "sm_80", "A100, A800, A30", tma=False, warps_stages16=_POINTER16,
        tile_m8=64, warps8=4, stages8=2, pv_fp8=False,
        auto_min_keys=modelled_auto_min_keys(A100, pv_fp8=False),
        why="No TMA, no FP8: pointer loads; P.V in 16 bits. 8 bits save a quarter of each block "
            "(INT8 at 2x the 16-bit rate on QK only) but the pre-pass is cheap on HBM: modelled "
            "threshold. bf16 at head_dim 128 on 8 warps (no spills); otherwise as before the table "
            "(unmeasured; 163 KB of shared memory left unused)."),
    (8, 6): CardLaunch(
        "sm_86", "RTX 30 series, A10, A40, RTX A6000", tma=False, warps_stages16=_POINTER16,
        tile_m8=64, warps8=4, stages8=2, pv_fp8=False,
        auto_min_keys=modelled_auto_min_keys(RTX3090, pv_fp8=False),
        why="No TMA, no FP8: pointer loads; INT8 QK runs at 4x the fp32-accumulate 16-bit rate on "
            "GeForce, P.V stays 16-bit: 8 bits save about 3/8 of a block (modelled on the RTX 3090). "
            "bf16 at head_dim 128 on 8 warps (no spills); otherwise as before the table (unmeasured), "
            "within 99 KB."),
    (8, 9): CardLaunch(
        "sm_89", "RTX 40 series, L4, L40S, RTX 6000 Ada", tma=False, warps_stages16=_POINTER16,
        tile_m8=64, warps8=4, stages8=2, pv_fp8=True,
        auto_min_keys=modelled_auto_min_keys(RTX4090, pv_fp8=True),
        why="FP8 tensor cores (mma.sync e4m3), no TMA: pointer loads. On GeForce INT8 is 4x and FP8 "
            "(fp32 accumulate) 2x the 16-bit rate: 8 bits save about 5/8 of a block, so `auto` "
            "switches at far shorter rows than on the H200 (modelled on the RTX 4090). bf16 at head_dim "
            "128 on 8 warps (no spills); otherwise as before the table (unmeasured), within 99 KB."),
    (9, 0): CardLaunch(
        "sm_90", "H100, H200, GH200", tma=True, warps_stages16=_HOPPER16,
        tile_m8=64, warps8=4, stages8=3, pv_fp8=True,
        auto_min_keys=H200_AUTO_MIN_KEYS,
        why="MEASURED on an H200: TMA descriptors, bf16 128x64 / 4 warps / 2 stages (0.88-0.94 of "
            "cuDNN per block); 8-bit 64-row tiles / 4 warps / 3 stages (12-30% over 128 rows / 8 "
            "warps, three programs per SM); `auto` from 7,500 keys per query (every table above gained "
            "1.04-1.22x, every one below lost).", fresh_fp8_acc=False),
    (10, 0): CardLaunch(
        "sm_100", "B200, GB200", tma=False, warps_stages16=_POINTER16,
        tile_m8=64, warps8=4, stages8=2, pv_fp8=True,
        auto_min_keys=modelled_auto_min_keys(B200, pv_fp8=True, saving=H200_SAVING8),
        why="Unmeasured: the pointer path it ran before the table, bf16 at head_dim 128 on 8 warps "
            "(no spills; Triton emits tcgen05 MMAs either way; TMA is untimed here). 8-bit to "
            "16-bit is 2:1 as on Hopper and the softmax bounds it likewise, so the H200's measured "
            "saving is carried over, scaled by bandwidth and rate (modelled on the B200)."),
    (12, 0): CardLaunch(
        "sm_120", "RTX 50 series, RTX PRO Blackwell", tma=False, warps_stages16=_POINTER16,
        tile_m8=64, warps8=4, stages8=2, pv_fp8=True,
        auto_min_keys=modelled_auto_min_keys(RTX5090, pv_fp8=True),
        why="FP8 tensor cores through mma.sync (no wgmma / tcgen05), 99 KB of shared memory: the "
            "Ada parameters. INT8 4x, FP8 2x the 16-bit rate as on Ada: 8 bits save about 5/8 of a "
            "block (modelled on the RTX 5090). Unmeasured."),
})

SAFE_LAUNCH = CardLaunch(
    "unknown", "any card the table does not list", tma=False, warps_stages16=_SAFE16,
    tile_m8=64, warps8=4, stages8=1, pv_fp8=False, auto_min_keys=None,
    why="Nothing known: pointer loads and one stage (the least shared memory), INT8 QK with 16-bit "
        "P.V (INT8 MMA exists on every card since sm_80; FP8 is not assumed), `auto` stays 16-bit.",
    known=False)

# The CPU interpreter: no pipelining, no TMA; the 8-bit path emulates FP8.
INTERPRETER_LAUNCH = CardLaunch(
    "interpreter", "Triton's CPU interpreter (tests)", tma=False, warps_stages16=_SAFE16,
    tile_m8=64, warps8=4, stages8=1, pv_fp8=True, auto_min_keys=None,
    why="Runs Python: stages and TMA mean nothing there; FP8 is emulated.")

_logged_unknown: set[tuple[int, int]] = set()


def launch_for_capability(capability: tuple[int, int], name: str = "") -> CardLaunch:
    """The row for a CUDA capability; the safe row, logged once per
    capability, for one the table does not know."""
    capability = (int(capability[0]), int(capability[1]))
    row = LAUNCH_TABLE.get(capability)
    if row is not None:
        return row
    if capability not in _logged_unknown:
        _logged_unknown.add(capability)
        log.warning("sparse_vdit: no launch parameters for sm_%d%d%s; running the safest kernel variant "
                    "(pointer loads, one stage, 8 bits only when asked for, with 16-bit P.V).",
                    capability[0], capability[1], f" ({name})" if name else "")
    return SAFE_LAUNCH


def launch_for_device(device) -> CardLaunch:
    """The row for a torch device: its capability on CUDA, the interpreter
    row on the CPU."""
    import torch
    device = torch.device(device)
    if device.type != "cuda":
        return INTERPRETER_LAUNCH
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) in LAUNCH_TABLE:
        # Known card: no name needed. torch.compile cannot trace
        # get_device_name (it returns a str), and the kernels ask for the
        # row inside compiled graphs.
        return LAUNCH_TABLE[tuple(capability)]
    return launch_for_capability(capability, torch.cuda.get_device_name(device))

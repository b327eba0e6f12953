"""The candidate menu of the search: the patterns a head may be given.

Most candidates are fixed patterns. Vertical-stripe candidates are chosen
from data: "the k key frames with the most attention mass" for that head,
measured during calibration, so their frames are stored per head in the
statistics and the candidate only names k.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from ..patterns import Diagonal, MultiDiagonal, Pattern, Routed, Skip, VerticalStripe, Window3D


@dataclass(frozen=True)
class Candidate:
    mode: str
    rows: int | None = None
    frames: int | None = None      # multi_diagonal, window_3d: temporal reach (None = all)
    top_frames: int | None = None  # vertical_stripe: how many key frames
    cols: int | None = None        # window_3d: reach in latent columns
    share: float | None = None     # routed: key blocks kept per query block
    tail: bool = False             # routed: the dropped blocks pooled (patterns/routed.py)

    @property
    def label(self) -> str:
        if self.mode == "skip":
            return "skip"
        if self.mode == "vertical_stripe":
            return f"vertical_stripe(top{self.top_frames})"
        if self.mode == "routed":
            return f"routed(share={self.share:g}{',tail' if self.tail else ''})"
        if self.mode == "window_3d":
            return f"window_3d(frames={self.frames},rows={self.rows},cols={self.cols})"
        if self.mode == "multi_diagonal" and self.frames is not None:
            return f"multi_diagonal(rows={self.rows},frames={self.frames})"
        return f"{self.mode}(rows={self.rows})"

    def pattern(self, stripe_frames: Sequence[int] | None = None) -> Pattern:
        if self.mode == "skip":
            return Skip()
        if self.mode == "diagonal":
            return Diagonal(self.rows)
        if self.mode == "multi_diagonal":
            return MultiDiagonal(self.rows, self.frames)
        if self.mode == "window_3d":
            return Window3D(self.frames, self.rows, self.cols)
        if self.mode == "routed":
            return Routed(self.share, self.tail)
        if self.mode == "vertical_stripe":
            frames = tuple(int(f) for f in (stripe_frames if stripe_frames is not None else range(self.top_frames)))
            return VerticalStripe(tuple(sorted(frames[: self.top_frames])))
        raise ValueError(f"unknown candidate mode {self.mode!r}")

    def to_dict(self) -> dict:
        return {k: v for k, v in (("mode", self.mode), ("rows", self.rows), ("frames", self.frames),
                                  ("top_frames", self.top_frames), ("cols", self.cols), ("share", self.share),
                                  ("tail", self.tail or None))
                if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "Candidate":
        return cls(data["mode"], data.get("rows"), data.get("frames"), data.get("top_frames"), data.get("cols"),
                   data.get("share"), bool(data.get("tail", False)))


_PAPER_STANDARD = (
    Candidate("skip"),
    Candidate("diagonal", rows=1), Candidate("diagonal", rows=2), Candidate("diagonal", rows=4),
    Candidate("multi_diagonal", rows=0), Candidate("multi_diagonal", rows=1), Candidate("multi_diagonal", rows=2),
    Candidate("multi_diagonal", rows=1, frames=3),
    Candidate("vertical_stripe", top_frames=1), Candidate("vertical_stripe", top_frames=2),
)
_PAPER_WIDE = (
    Candidate("diagonal", rows=8), Candidate("multi_diagonal", rows=4), Candidate("multi_diagonal", rows=2, frames=3),
    Candidate("vertical_stripe", top_frames=4),
)
_NEW_STANDARD = (
    # 3-D windows (frames, latent rows, latent columns): about 5 / 11 / 18% of
    # the blocks at Wan 480p (21x30x52), 3 / 7 / 12% at 720p (21x45x80)
    Candidate("window_3d", rows=4, frames=1, cols=8), Candidate("window_3d", rows=6, frames=2, cols=12),
    Candidate("window_3d", rows=8, frames=3, cols=16),
    # routed per call (Sol-Attn-like top-k of pooled scores), at these shares of the key blocks, with
    # the pooled tail: on the video yardstick it lowered a routed head's error in 16 of 16 heads at
    # every share (benchmarks/results/routed_tail_video.md)
    Candidate("routed", share=0.05, tail=True), Candidate("routed", share=0.1, tail=True),
    Candidate("routed", share=0.2, tail=True),
)
_NEW_WIDE = (
    Candidate("window_3d", rows=2, frames=1, cols=4), Candidate("window_3d", rows=10, frames=2, cols=20),
    Candidate("window_3d", rows=8, frames=5, cols=16), Candidate("routed", share=0.3, tail=True),
)
# standard / wide: the paper's modes. The extended menus add 3-D windows and
# routed heads, opt-in until a measurement shows they pay: on the tiny
# yardstick (CPU, 8 steps, held-out prompt 4, plan for 1.5x) the wide menu
# with them gave 23.4 dB against 27.1 dB without, at the same predicted
# speedup (tests/test_yardstick.py): the calibration's error on sampled
# query blocks favoured them, the whole trajectory did not.
MENUS: dict[str, tuple[Candidate, ...]] = {
    "standard": _PAPER_STANDARD,
    "wide": _PAPER_STANDARD + _PAPER_WIDE,
    "extended": _PAPER_STANDARD + _NEW_STANDARD,
    "extended-wide": _PAPER_STANDARD + _PAPER_WIDE + _NEW_STANDARD + _NEW_WIDE,
}


# The paper's modes (Sparse-vDiT). Newer modes (3-D windows, routed heads:
# issue 23) are measured against a solve restricted to these
# (Statistics.with_modes), from one calibration.
PAPER_MODES = ("skip", "diagonal", "multi_diagonal", "vertical_stripe")


def for_precision(candidates: Sequence[Candidate], precision: str) -> tuple[Candidate, ...]:
    """The menu as a plan that runs at `precision` can use it. The 8-bit
    kernel has no pooled tail: a layer with a tailed routed head runs every
    head in 16 bits (kernels/dispatch.py), which the per-head costs cannot
    show, and on cards where 8-bit dense is about 3x bf16 that layer would
    cost more than planned. So at "8-bit" and "auto" routed heads come
    without the tail (the 8-bit kernel serves those); order kept, no repeats."""
    if precision == "bf16":
        return tuple(candidates)
    kept: list[Candidate] = []
    for candidate in candidates:
        candidate = replace(candidate, tail=False) if candidate.mode == "routed" else candidate
        if candidate not in kept:
            kept.append(candidate)
    return tuple(kept)


def max_top_frames(candidates: Sequence[Candidate]) -> int:
    return max((c.top_frames for c in candidates if c.mode == "vertical_stripe"), default=0)

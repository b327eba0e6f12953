"""The candidate menu of the search: the patterns a head may be given.

Most candidates are fixed patterns. Vertical-stripe candidates are chosen
from data: "the k key frames with the most attention mass" for that head,
measured during calibration, so their frames are stored per head in the
statistics and the candidate only names k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..patterns import Diagonal, MultiDiagonal, Pattern, Skip, VerticalStripe


@dataclass(frozen=True)
class Candidate:
    mode: str
    rows: int | None = None
    frames: int | None = None      # multi_diagonal: temporal reach (None = all)
    top_frames: int | None = None  # vertical_stripe: how many key frames

    @property
    def label(self) -> str:
        if self.mode == "skip":
            return "skip"
        if self.mode == "vertical_stripe":
            return f"vertical_stripe(top{self.top_frames})"
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
        if self.mode == "vertical_stripe":
            frames = tuple(int(f) for f in (stripe_frames if stripe_frames is not None else range(self.top_frames)))
            return VerticalStripe(tuple(sorted(frames[: self.top_frames])))
        raise ValueError(f"unknown candidate mode {self.mode!r}")

    def to_dict(self) -> dict:
        return {k: v for k, v in (("mode", self.mode), ("rows", self.rows), ("frames", self.frames),
                                  ("top_frames", self.top_frames)) if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "Candidate":
        return cls(data["mode"], data.get("rows"), data.get("frames"), data.get("top_frames"))


MENUS: dict[str, tuple[Candidate, ...]] = {
    "standard": (
        Candidate("skip"),
        Candidate("diagonal", rows=1), Candidate("diagonal", rows=2), Candidate("diagonal", rows=4),
        Candidate("multi_diagonal", rows=0), Candidate("multi_diagonal", rows=1), Candidate("multi_diagonal", rows=2),
        Candidate("multi_diagonal", rows=1, frames=3),
        Candidate("vertical_stripe", top_frames=1), Candidate("vertical_stripe", top_frames=2),
    ),
}
MENUS["wide"] = MENUS["standard"] + (
    Candidate("diagonal", rows=8), Candidate("multi_diagonal", rows=4), Candidate("multi_diagonal", rows=2, frames=3),
    Candidate("vertical_stripe", top_frames=4),
)


# The paper's modes (Sparse-vDiT). Newer modes (3-D windows, routed heads:
# issue 23) are measured against a solve restricted to these
# (Statistics.with_modes), from one calibration.
PAPER_MODES = ("skip", "diagonal", "multi_diagonal", "vertical_stripe")


def max_top_frames(candidates: Sequence[Candidate]) -> int:
    return max((c.top_frames for c in candidates if c.mode == "vertical_stripe"), default=0)

"""The token grid one attention call sees: video tokens in (frame, row, col)
order after patchify, with optional extra tokens before and after them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    frames: int
    rows: int
    cols: int
    prefix: int = 0  # extra tokens before the video (e.g. reference-image tokens)
    suffix: int = 0  # extra tokens after the video (e.g. text in joint attention)

    def __post_init__(self):
        for name in ("frames", "rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Geometry.{name} must be a positive int, got {value!r}")
        for name in ("prefix", "suffix"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"Geometry.{name} must be a non-negative int, got {value!r}")

    @property
    def tokens_per_frame(self) -> int:
        return self.rows * self.cols

    @property
    def video_tokens(self) -> int:
        return self.frames * self.rows * self.cols

    @property
    def seq_len(self) -> int:
        return self.prefix + self.video_tokens + self.suffix

    def describe(self) -> str:
        extra = ""
        if self.prefix or self.suffix:
            extra = f" (+{self.prefix} before, +{self.suffix} after)"
        return f"{self.frames}x{self.rows}x{self.cols}{extra} = {self.seq_len} tokens"

    def to_dict(self) -> dict:
        return {"frames": self.frames, "rows": self.rows, "cols": self.cols,
                "prefix": self.prefix, "suffix": self.suffix}

    @classmethod
    def from_dict(cls, data: dict) -> "Geometry":
        return cls(int(data["frames"]), int(data["rows"]), int(data["cols"]),
                   int(data.get("prefix", 0)), int(data.get("suffix", 0)))

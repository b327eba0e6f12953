"""Pattern names as they appear in plan files, and parsing of head entries."""
from __future__ import annotations

from dataclasses import fields

from .base import Pattern, PatternError
from .diagonal import Diagonal
from .full import Full
from .multi_diagonal import MultiDiagonal
from .skip import Skip
from .routed import Routed
from .vertical_stripe import VerticalStripe
from .window_3d import Window3D

PATTERNS: dict[str, type[Pattern]] = {
    cls.name: cls for cls in (Full, Skip, Diagonal, MultiDiagonal, VerticalStripe, Window3D, Routed)
}


def pattern_from_dict(entry: dict) -> Pattern:
    if not isinstance(entry, dict) or "mode" not in entry:
        raise PatternError(f"a head entry must be an object with a 'mode', got {entry!r}")
    name = entry["mode"]
    cls = PATTERNS.get(name)
    if cls is None:
        raise PatternError(f"unknown pattern {name!r}; known: {', '.join(PATTERNS)}")
    allowed = {f.name for f in fields(cls)}
    params = {k: v for k, v in entry.items() if k != "mode"}
    unknown = set(params) - allowed
    if unknown:
        raise PatternError(f"pattern {name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(allowed) or 'none'}")
    try:
        return cls(**params)
    except TypeError as error:  # e.g. a list where an int belongs
        raise PatternError(f"bad parameters for {name!r}: {error}") from None

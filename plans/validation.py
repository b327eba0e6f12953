"""Checks for everything the pack reads from disk: plans, statistics and
what a plan says about its own making (provenance).

Files are shared, downloaded and left half-written, so every value is
checked for type, range and size before anything uses it, and every failure
is a PlanError that names the file and the field. The limits below are far
above any real model (Wan2.1 14B: 40 layers x 40 heads; HunyuanVideo: 60 x
24) and keep a hostile file from costing minutes or gigabytes.
"""
from __future__ import annotations

import json
import math
import os
import re

PROVENANCE_KINDS = ("static-baseline", "calibrated")

MAX_PLAN_BYTES = 16 << 20          # a 14B plan with 4 step ranges is ~0.4 MB
MAX_STATS_BYTES = 1 << 30          # a 14B calibration with 50 probes is ~30 MB
MAX_LAYERS = 512
MAX_HEADS = 256
MAX_HEAD_DIM = 1024
MAX_STEP_RANGES = 16               # the search makes at most 4
MAX_HEAD_ENTRIES = 1 << 17         # layers x heads x step ranges (14B, 4 ranges: 6,400)
MAX_TEXT = 256                     # plan name, model family
MAX_STEPS = 10_000                 # sampling steps (the Calibrate node's own maximum)
MAX_PROBES = 64                    # probed steps (the Calibrate node offers 50)
MAX_CANDIDATES = 64
MAX_SPAN_VALUES = 1 << 26          # probe spans x layers x heads x candidates the search holds (float64)
MAX_FRAMES = 1024                  # latent frames (81 video frames are 21)
MAX_ROWS = MAX_COLS = 1024         # latent rows / columns (720p is 45 x 80)
MAX_GRID_ROWS = 16_384             # frames x rows
MAX_EXTRA_TOKENS = 1 << 16         # tokens before / after the video (text, references)
MAX_THUMB_SIDE = 256
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 18                # an integer literal longer than this is no count this pack uses
MAX_NAME_CHARS = 100               # a plan's file name, without .json

# Names Windows refuses as files, with or without an extension.
_RESERVED = {"con", "prn", "aux", "nul", "conin$", "conout$"} | {f"{p}{d}" for p in ("com", "lpt")
                                                                   for d in "0123456789¹²³"}


class PlanError(ValueError):
    """A plan (or statistics file) that cannot be used, with a message a user can act on."""


def short(value, limit: int = 60) -> str:
    """repr of a value, cut short: a field may hold a megabyte."""
    if isinstance(value, (dict, list)):  # never repr a container: it may be huge or deep
        return f"a JSON {'object' if isinstance(value, dict) else 'list'} of {len(value)} items"
    written = repr(value[:limit] if isinstance(value, str) else value)
    return written if len(written) <= limit else written[: limit - 3] + "..."


# ---------------------------------------------------------------- JSON text

def _checked_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _TooLong(text)
    return int(text)


class _TooLong(ValueError):
    pass


def _depth_exceeded(data) -> bool:
    """Nesting deeper than MAX_JSON_DEPTH, walked without recursion."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((item, depth + 1) for item in value)
    return False


def parse_json(text: str, source: str):
    """json.loads that never raises anything but PlanError."""
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(f"{source}: {len(text):,} characters, more than any plan holds (limit {MAX_PLAN_BYTES:,})")
    try:
        data = json.loads(text, parse_int=_checked_int)
    except _TooLong as error:
        raise PlanError(f"{source}: an integer of {len(str(error))} digits; no field takes more than "
                        f"{MAX_INT_DIGITS}") from None
    except json.JSONDecodeError as error:
        raise PlanError(f"{source}: not valid JSON (truncated or malformed?): {error}") from None
    except RecursionError:
        raise PlanError(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels; no plan field is") from None
    except (ValueError, TypeError) as error:
        raise PlanError(f"{source}: not valid JSON ({type(error).__name__}: {short(str(error))})") from None
    if _depth_exceeded(data):
        raise PlanError(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels; no plan field is")
    return data


def read_text(path: str, limit: int, what: str) -> str:
    """A file's text, refused before reading when it is larger than `limit`."""
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise PlanError(f"{what} {path}: {size:,} bytes, more than the {limit:,} any real one needs: "
                            "delete it or replace it")
        with open(path, encoding="utf-8") as handle:
            return handle.read(limit + 1)
    except OSError as error:
        raise PlanError(f"cannot read {what} {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not a text file (is it a {what}?)") from None


def file_size_limit(path: str, limit: int, what: str) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise PlanError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if size > limit:
        raise PlanError(f"{what} {path}: {size:,} bytes, more than the {limit:,} any real one needs")


# ---------------------------------------------------------------- values

def integer(value, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{where} must be an integer, got {short(value)}")
    if not low <= value <= high:
        raise PlanError(f"{where} must be between {low:,} and {high:,}, got {value:,}")
    return value


def number(value, low: float, high: float, where: str, *, open_low: bool = False, open_high: bool = False) -> float:
    """A finite JSON number in [low, high] (or open at either end)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{where} must be a number, got {short(value)}")
    value = float(value)  # ints are at most MAX_INT_DIGITS long: never overflows
    inside = (low < value if open_low else low <= value) and (value < high if open_high else value <= high)
    if not math.isfinite(value) or not inside:
        brackets = ("(" if open_low else "[") + f"{low:g}, {high:g}" + (")" if open_high else "]")
        raise PlanError(f"{where} must be a number in {brackets}, got {short(value)}")
    return value


def text(value, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise PlanError(f"{where} must be a string, got {short(value)}")
    if len(value) > limit:
        raise PlanError(f"{where} is {len(value):,} characters long (limit {limit})")
    return value


def json_object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise PlanError(f"{where} must be a JSON object, got {short(value)}")
    return value


def geometry(data, where: str):
    """A Geometry from a provenance or statistics entry, within the limits."""
    from ..patterns import Geometry

    data = json_object(data, where)
    unknown = set(data) - {"frames", "rows", "cols", "prefix", "suffix"}
    if unknown:
        raise PlanError(f"{where}: unknown field(s) {sorted(unknown)[:5]}")
    frames = integer(data.get("frames"), 1, MAX_FRAMES, f"{where}.frames")
    rows = integer(data.get("rows"), 1, MAX_ROWS, f"{where}.rows")
    cols = integer(data.get("cols"), 1, MAX_COLS, f"{where}.cols")
    prefix = integer(data.get("prefix", 0), 0, MAX_EXTRA_TOKENS, f"{where}.prefix")
    suffix = integer(data.get("suffix", 0), 0, MAX_EXTRA_TOKENS, f"{where}.suffix")
    if frames * rows > MAX_GRID_ROWS:
        raise PlanError(f"{where}: {frames} frames x {rows} rows is more than {MAX_GRID_ROWS:,} grid rows")
    return Geometry(frames, rows, cols, prefix, suffix)


def provenance(data, source: str) -> dict:
    """The fields of a plan's provenance that the pack reads; the rest is
    kept as written (bounded by the file's size and nesting limits)."""
    data = json_object(data, f"{source}: 'provenance'")
    kind = data.get("kind", "static-baseline")
    if kind not in PROVENANCE_KINDS:
        raise PlanError(f"{source}: provenance.kind must be one of {PROVENANCE_KINDS}, got {short(kind)}")
    if "geometry" in data and data["geometry"] is not None:
        geometry(data["geometry"], f"{source}: provenance.geometry")
    statistics = data.get("statistics")
    if statistics is not None:
        text(statistics, f"{source}: provenance.statistics", 4 * MAX_NAME_CHARS)
        parts = re.split(r"[/\\]", statistics)
        if statistics and not all(_PLAIN_NAME.fullmatch(p) and not p.startswith(".") for p in parts):
            raise PlanError(f"{source}: provenance.statistics must name a file in the plans folders "
                            f"(no '..', no absolute path), got {short(statistics)}")
    return dict(data)


# ---------------------------------------------------------------- file names

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\- ]+")


def check_plan_name(name, shipped: tuple[str, ...] | None = None) -> str:
    """A plan name that is a safe file name on every OS and takes no shipped
    plan's name (plans/static.py's, unless `shipped` is given). Returns it
    without '.json' and outer spaces."""
    if shipped is None:
        from .shipped import SHIPPED as shipped
    if not isinstance(name, str):
        raise PlanError(f"plan name must be text, got {short(name)}")
    name = name.strip()
    if name.lower().endswith(".json"):
        name = name[:-5].rstrip()
    rule = "a plain file name: letters, digits, space, . _ -, not starting with '.'"
    if not name or not _PLAIN_NAME.fullmatch(name) or name.startswith("."):
        raise PlanError(f"plan name {short(name)} must be {rule}")
    if len(name) > MAX_NAME_CHARS:
        raise PlanError(f"plan name is {len(name)} characters long; at most {MAX_NAME_CHARS} (with the "
                        f"statistics file's suffix it must stay a valid file name everywhere)")
    if name.endswith(".") or name.endswith(" "):
        raise PlanError(f"plan name {short(name)} may not end with '.' or a space (Windows drops them)")
    if name.split(".")[0].strip().lower() in _RESERVED:
        raise PlanError(f"plan name {short(name)} is a reserved device name on Windows (CON, NUL, COM1, ...)")
    if (name + ".json").lower() in {s.lower() for s in shipped}:
        raise PlanError(f"plan name {short(name)} is the name of a plan shipped with the pack; choose another")
    return name


# ---------------------------------------------------------------- statistics

_CANDIDATE_FIELDS = {"skip": set(), "diagonal": {"rows"}, "multi_diagonal": {"rows", "frames"},
                     "vertical_stripe": {"top_frames"}, "window_3d": {"frames", "rows", "cols"},
                     "routed": {"share", "tail"}}


def candidates(data, where: str) -> tuple:
    """The candidate menu a statistics file was scored with."""
    from .candidates import Candidate

    if not isinstance(data, list) or not 1 <= len(data) <= MAX_CANDIDATES:
        raise PlanError(f"{where} must be a list of 1 to {MAX_CANDIDATES} candidates, got {short(data)}")
    menu = []
    for index, entry in enumerate(data):
        at = f"{where}[{index}]"
        entry = json_object(entry, at)
        mode = entry.get("mode")
        if not isinstance(mode, str) or mode not in _CANDIDATE_FIELDS:
            raise PlanError(f"{at}.mode must be one of {sorted(_CANDIDATE_FIELDS)}, got {short(mode)}")
        extra = set(entry) - {"mode"} - _CANDIDATE_FIELDS[mode]
        if extra:
            raise PlanError(f"{at}: {mode} candidates take no {sorted(extra)[:3]}")
        window = mode == "window_3d"
        has_rows = mode in ("diagonal", "multi_diagonal") or window
        rows = integer(entry.get("rows"), 0, 4096, f"{at}.rows") if has_rows else None
        frames = entry.get("frames")
        if frames is not None or window:
            frames = integer(frames, 0 if window else 1, 4096, f"{at}.frames")
        top = integer(entry.get("top_frames"), 1, MAX_FRAMES, f"{at}.top_frames") if mode == "vertical_stripe" else None
        cols = integer(entry.get("cols"), 0, 4096, f"{at}.cols") if window else None
        share = number(entry.get("share"), 0.0, 1.0, f"{at}.share", open_low=True) if mode == "routed" else None
        tail = entry.get("tail", False)
        if not isinstance(tail, bool):
            raise PlanError(f"{at}.tail must be true or false, got {short(tail)}")
        menu.append(Candidate(mode, rows, frames, top, cols, share, tail))
    return tuple(menu)


def _tensor(tensors: dict, name: str, shape: tuple, kind: str, source: str):
    """A tensor of the right kind ('float' or 'int') and shape (None: any
    size there), converted to float64 / int64."""
    import torch

    if name not in tensors:
        raise PlanError(f"{source}: no '{name}' tensor (incomplete statistics)")
    value = tensors[name]
    allowed = ((torch.float16, torch.bfloat16, torch.float32, torch.float64) if kind == "float"
               else (torch.int16, torch.int32, torch.int64))
    if value.dtype not in allowed:
        raise PlanError(f"{source}: '{name}' is {value.dtype}; statistics hold it as "
                        f"{'a float' if kind == 'float' else 'an integer'} tensor")
    if value.dim() != len(shape) or any(want is not None and got != want for got, want in zip(value.shape, shape)):
        wanted = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
        raise PlanError(f"{source}: '{name}' has shape {list(value.shape)}, expected {wanted}")
    return value.to(torch.float64 if kind == "float" else torch.int64)


def _no_nan(value, name: str, source: str, *, finite: bool, low: float = 0.0) -> None:
    import torch

    bad = torch.isnan(value) | (value < low)
    if finite:
        bad |= torch.isinf(value)
    if bool(bad.any()):
        rule = "finite" if finite else "not NaN"
        raise PlanError(f"{source}: '{name}' holds {int(bad.sum())} value(s) that are not {rule} and >= {low:g}")


def statistics_info(data, layers: int, source: str) -> dict:
    """The sampling settings a calibration recorded; the fields the search reads are checked."""
    data = json_object(data, f"{source}: info")
    total = data.get("total_steps")
    if total is not None:
        integer(total, 1, MAX_STEPS, f"{source}: info.total_steps")
    if "warmup_fraction" in data:
        number(data["warmup_fraction"], 0.0, 1.0, f"{source}: info.warmup_fraction", open_high=True)
    probed = data.get("probed_layers", "all")
    if probed != "all":
        if not isinstance(probed, list) or not 1 <= len(probed) <= layers:
            raise PlanError(f"{source}: info.probed_layers must be 'all' or a list of layers, got {short(probed)}")
        for index, layer in enumerate(probed):
            integer(layer, 0, layers - 1, f"{source}: info.probed_layers[{index}]")
    if data.get("date") is not None:
        text(data["date"], f"{source}: info.date", 64)
    return dict(data)


def statistics_parts(metadata: dict, tensors: dict, source: str, model_shape_from_dict) -> dict:
    """Everything a Statistics holds, checked: the arguments to build it.
    model_shape_from_dict: the plan format's model parser (passed in: the
    format imports this module)."""
    fields = {}
    for key in ("model", "geometry", "candidates"):
        if not isinstance(metadata.get(key), str):
            raise PlanError(f"{source}: metadata has no '{key}' (incomplete statistics)")
        fields[key] = parse_json(metadata[key], f"{source}: metadata.{key}")
    info = parse_json(metadata["info"], f"{source}: metadata.info") if isinstance(metadata.get("info"), str) else {}
    model = model_shape_from_dict(fields["model"], f"{source}: model")
    grid = geometry(fields["geometry"], f"{source}: geometry")
    menu = candidates(fields["candidates"], f"{source}: candidates")
    L, H, C = model.layers, model.heads, len(menu)
    info = statistics_info(info, L, source)
    sq_err = _tensor(tensors, "sq_err", (None, L, H, C), "float", source)
    P = sq_err.shape[0]
    if not 1 <= P <= MAX_PROBES:
        raise PlanError(f"{source}: {P} probed steps; between 1 and {MAX_PROBES}")
    if P * (P + 1) // 2 * L * H * C > MAX_SPAN_VALUES:
        raise PlanError(f"{source}: {P} probed steps x {L} layers x {H} heads x {C} candidates is more than the "
                        "search can hold")
    _no_nan(sq_err, "sq_err", source, finite=False)  # +inf marks layers that were not scored
    power = _tensor(tensors, "power", (P, L), "float", source)
    _no_nan(power, "power", source, finite=True)
    cost = _tensor(tensors, "cost", (C + 1,), "float", source)
    _no_nan(cost, "cost", source, finite=True)
    if not float(cost[-1]) > 0 or float(cost.max()) > 1e6 * float(cost[-1]) or \
            bool(((cost > 0) & (cost < 1e-9 * cost[-1])).any()):
        raise PlanError(f"{source}: 'cost' must give full attention a positive cost and every candidate a cost of "
                        "0 or between 1e-9 and 1e6 times it")
    top = max((c.top_frames for c in menu if c.mode == "vertical_stripe"), default=0)
    stripe = _tensor(tensors, "stripe_frames", (L, H, None), "int", source)
    if stripe.shape[2] < top or stripe.numel() and (int(stripe.min()) < 0 or int(stripe.max()) >= grid.frames):
        raise PlanError(f"{source}: 'stripe_frames' must list at least {top} frame(s) in 0..{grid.frames - 1} per head")
    frame_mass = _tensor(tensors, "frame_mass", (L, H, None), "float", source)
    thumbnails = _tensor(tensors, "thumbnails", (L, H, None, None), "float", source)
    if any(not 1 <= side <= MAX_THUMB_SIDE for side in thumbnails.shape[2:]):
        raise PlanError(f"{source}: thumbnails of {list(thumbnails.shape[2:])} pixels; 1 to {MAX_THUMB_SIDE} a side")
    _no_nan(thumbnails, "thumbnails", source, finite=True)
    probe_steps = _tensor(tensors, "probe_steps", (P,), "int", source)
    steps = probe_steps.tolist()
    limit = (info.get("total_steps") or MAX_STEPS) - 1
    if any(not 0 <= s <= limit for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
        raise PlanError(f"{source}: 'probe_steps' must rise step by step within 0..{limit}, got {short(steps)}")
    cost_source = text(metadata.get("cost_source", "block-count"), f"{source}: cost_source", 64)
    return dict(model=model, geometry=grid, candidates=menu, sq_err=sq_err, power=power, cost=cost,
                stripe_frames=stripe, frame_mass=frame_mass.float(), thumbnails=thumbnails.half(),
                probe_steps=probe_steps, cost_source=cost_source, info=info)

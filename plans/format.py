"""The plan file: which pattern every head of every layer uses.

A plan is versioned, human-readable JSON:

    {
      "format": "sparse-vdit-plan", "version": 1,
      "name": "...",
      "model": {"family": "wan2.1", "layers": 30, "heads": 12, "head_dim": 128},
      "dense": {"warmup_fraction": 0.2, "sigma_above": null},
      "layers": [
        {"layer": 0, "heads": [{"mode": "diagonal", "rows": 2}, {"mode": "full"}, ...]},
        ...
      ],
      "provenance": {"kind": "static-baseline" | "calibrated", "geometry": {...},
                     "lambda": 0.5, "epsilon": 1.0, "software": "...", "date": "..."}
    }

A plan whose patterns change with the noise level (version 2) adds ranges of
steps that follow the first; "layers" then serves the sparse steps before
the first of them:

      "later_step_ranges": [
        {"from_step_fraction": 0.55, "layers": [...]},   # steps s with s / total >= 0.55
        ...
      ]

A plan with one range is written as version 1, which older packs read.

Version 3 adds head modes beyond the paper's (MODE_VERSIONS: 3-D windows,
routed heads); a plan is written with the lowest version that holds it, so
only plans that use them need a pack that knows them, and an older pack
refuses such a plan asking for an update. Version 4 adds the routed heads'
pooled tail (`{"mode": "routed", "share": 0.1, "tail": true}`;
FIELD_VERSIONS); a routed head without it is still written as version 3.

Every field is checked on load (validation.py: types, ranges, sizes), and
errors name the file and the field.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..patterns.base import PatternError
from ..patterns.layer import LayerPattern
from ..patterns.registry import pattern_from_dict
from . import validation as check
from .atomic import atomic_write_text
from .validation import PROVENANCE_KINDS, PlanError  # noqa: F401  (defined there; imported from here by most callers)

FORMAT_NAME = "sparse-vdit-plan"
FORMAT_VERSION = 4  # the newest this pack reads and writes; version 1 has no later step ranges
# Head modes that need a newer version than 1 (older packs do not know them).
MODE_VERSIONS = {"window_3d": 3, "routed": 3}
# Head fields that need a newer version than their mode: (mode, field) -> version.
FIELD_VERSIONS = {("routed", "tail"): 4}


def head_version(entry: dict) -> int:
    """The lowest format version that holds one head entry ({"mode": ..., ...})."""
    fields = [FIELD_VERSIONS.get((entry["mode"], name), 1) for name in entry if name != "mode"]
    return max([MODE_VERSIONS.get(entry["mode"], 1)] + fields)


@dataclass(frozen=True)
class ModelShape:
    family: str
    layers: int
    heads: int
    head_dim: int

    def describe(self) -> str:
        return f"{self.family}: {self.layers} layers x {self.heads} heads x head_dim {self.head_dim}"


@dataclass(frozen=True)
class DenseSchedule:
    """Steps kept dense: the first `warmup_fraction` of the steps, and any
    step whose sigma is above `sigma_above` (when set)."""
    warmup_fraction: float = 0.0
    sigma_above: float | None = None

    def first_sparse_step(self, total_steps: int) -> int:
        """The first step after the warm-up (the warm-up is rounded up)."""
        return math.ceil(self.warmup_fraction * total_steps - 1e-9)

    def is_dense(self, step: int, total_steps: int, sigma: float | None = None) -> bool:
        if step < self.first_sparse_step(total_steps):
            return True
        return self.sigma_above is not None and sigma is not None and sigma > self.sigma_above


@dataclass(frozen=True)
class StepRange:
    """The patterns of the steps s with s / total_steps >= start."""
    start: float
    layers: tuple[LayerPattern, ...]


@dataclass(frozen=True, eq=False)
class Plan:
    name: str
    model: ModelShape
    layers: tuple[LayerPattern, ...]  # every sparse step, or those before the first later range
    dense: DenseSchedule = DenseSchedule()
    provenance: dict = field(default_factory=dict)
    later_ranges: tuple[StepRange, ...] = ()  # ordered by start, each start in (0, 1)

    def layers_at(self, step: int | None, total_steps: int | None) -> tuple[LayerPattern, ...]:
        """The layer patterns of a step; the first range's when the step is unknown."""
        chosen = self.layers
        if step is None or not total_steps:
            return chosen
        for later in self.later_ranges:
            if step >= later.start * total_steps - 1e-9:
                chosen = later.layers
        return chosen

    @property
    def step_ranges(self) -> tuple[StepRange, ...]:
        """Every range, the first starting at 0."""
        return (StepRange(0.0, self.layers),) + self.later_ranges

    def describe_step_ranges(self) -> str:
        if not self.later_ranges:
            return "one pattern per head for every sparse step"
        starts = ", ".join(f"{100 * r.start:.0f}%" for r in self.later_ranges)
        return f"{len(self.step_ranges)} step ranges (new patterns from {starts} of the steps)"

    def check_model(self, layers: int, heads: int, head_dim: int, what: str = "the loaded model") -> None:
        """Raise PlanError naming both shapes when the plan does not fit."""
        if (self.model.layers, self.model.heads, self.model.head_dim) != (layers, heads, head_dim):
            raise PlanError(
                f"plan '{self.name}' is for {self.model.describe()}, but {what} has "
                f"{layers} layers x {heads} heads x head_dim {head_dim}")

    def density_summary(self, layers: tuple[LayerPattern, ...] | None = None) -> dict[str, int]:
        """Heads per mode, of the first step range unless given `layers`."""
        counts: dict[str, int] = {}
        for layer in self.layers if layers is None else layers:
            for pattern in layer.heads:
                counts[pattern.name] = counts.get(pattern.name, 0) + 1
        return counts


def _require(data: dict, key: str, kind, where: str):
    if key not in data:
        raise PlanError(f"{where}: missing '{key}'")
    value = data[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PlanError(f"{where}: '{key}' must be an integer, got {check.short(value)}")
    if kind is not int and not isinstance(value, kind):
        raise PlanError(f"{where}: '{key}' must be {kind.__name__}, got {check.short(value)}")
    return value


def _count(data: dict, key: str, high: int, where: str) -> int:
    value = _require(data, key, int, where)
    if not 1 <= value <= high:
        raise PlanError(f"{where}: '{key}' must be between 1 and {high:,}, got {value:,}")
    return value


def model_shape_from_dict(data, where: str) -> ModelShape:
    """The model a plan or statistics file is for, within the pack's limits."""
    data = check.json_object(data, where)
    return ModelShape(check.text(_require(data, "family", str, where), f"{where}.family"),
                      _count(data, "layers", check.MAX_LAYERS, where), _count(data, "heads", check.MAX_HEADS, where),
                      _count(data, "head_dim", check.MAX_HEAD_DIM, where))


def _dense_from_dict(data, where: str) -> DenseSchedule:
    if data is None:
        return DenseSchedule()
    if not isinstance(data, dict):
        raise PlanError(f"{where}: 'dense' must be an object")
    fraction = check.number(data.get("warmup_fraction", 0.0), 0.0, 1.0, f"{where}: dense.warmup_fraction")
    sigma = data.get("sigma_above")
    if sigma is not None:
        sigma = check.number(sigma, 0.0, 1e30, f"{where}: dense.sigma_above (null or)")
    return DenseSchedule(fraction, sigma)


def _layers_from_list(layer_list: list, model: ModelShape, source: str, version: int) -> tuple[LayerPattern, ...]:
    if len(layer_list) != model.layers:
        raise PlanError(f"{source}: model says {model.layers} layers but 'layers' lists {len(layer_list)}")
    layers = []
    for index, entry in enumerate(layer_list):
        where = f"{source}: layer {index}"
        if not isinstance(entry, dict):
            raise PlanError(f"{where}: must be an object with 'heads'")
        if entry.get("layer", index) != index:
            raise PlanError(f"{where}: entry says layer {check.short(entry.get('layer'))}; layers must be listed in order")
        heads = _require(entry, "heads", list, where)
        if len(heads) != model.heads:
            raise PlanError(f"{where}: lists {len(heads)} heads, model has {model.heads}")
        patterns = []
        for head, head_entry in enumerate(heads):
            if not isinstance(head_entry, dict) or not isinstance(head_entry.get("mode"), str):
                raise PlanError(f"{where}, head {head}: must be an object with a 'mode' name, got "
                                f"{check.short(head_entry)}")
            needs = head_version(head_entry)
            if version < needs:
                mode = head_entry["mode"]
                newer = sorted(name for name in head_entry if FIELD_VERSIONS.get((mode, name), 1) > version)
                what = f"mode {mode!r}" if MODE_VERSIONS.get(mode, 1) > version else f"{mode} field {newer}"
                raise PlanError(f"{where}, head {head}: {what} needs plan format version {needs}, "
                                f"the file says {version}")
            try:
                patterns.append(pattern_from_dict(head_entry))
            except PatternError as error:
                raise PlanError(f"{where}, head {head}: {error}") from None
        layers.append(LayerPattern(tuple(patterns)))
    return tuple(layers)


def _later_ranges_from_list(entries, version: int, model: ModelShape, source: str) -> tuple[StepRange, ...]:
    if entries is None:
        return ()
    if version < 2:
        raise PlanError(f"{source}: 'later_step_ranges' needs plan format version 2, the file says {version}")
    if not isinstance(entries, list):
        raise PlanError(f"{source}: 'later_step_ranges' must be a list")
    if len(entries) >= check.MAX_STEP_RANGES:
        raise PlanError(f"{source}: {len(entries):,} later step ranges; at most {check.MAX_STEP_RANGES - 1}")
    if model.layers * model.heads * (1 + len(entries)) > check.MAX_HEAD_ENTRIES:
        raise PlanError(f"{source}: {model.layers} layers x {model.heads} heads x {1 + len(entries)} step ranges is "
                        f"more than {check.MAX_HEAD_ENTRIES:,} head entries")
    ranges, previous = [], 0.0
    for index, entry in enumerate(entries):
        where = f"{source}: later_step_ranges[{index}]"
        if not isinstance(entry, dict):
            raise PlanError(f"{where}: must be an object with 'from_step_fraction' and 'layers'")
        start = check.number(entry.get("from_step_fraction"), previous, 1.0,
                             f"{where}: from_step_fraction (increasing from range to range)", open_low=True,
                             open_high=True)
        layers = _layers_from_list(_require(entry, "layers", list, where), model, where, version)
        ranges.append(StepRange(start, layers))
        previous = start
    return tuple(ranges)


def plan_from_dict(data, source: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a plan must be a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise PlanError(f"{source}: not a Sparse-vDiT plan (format is {check.short(data.get('format'))}, "
                        f"expected {FORMAT_NAME!r})")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PlanError(f"{source}: 'version' must be an integer, got {check.short(version)}")
    if not 1 <= version <= FORMAT_VERSION:
        newer = " (made by a newer Sparse-vDiT: update the pack)" if version > FORMAT_VERSION else ""
        raise PlanError(f"{source}: plan format version {version} is not supported; this pack reads version {FORMAT_VERSION}{newer}")
    model = model_shape_from_dict(_require(data, "model", dict, source), f"{source}: model")
    name = check.text(data.get("name", ""), f"{source}: 'name'")
    provenance = check.provenance(data.get("provenance", {}), source)
    dense = _dense_from_dict(data.get("dense"), source)
    later = _later_ranges_from_list(data.get("later_step_ranges"), version, model, source)
    layers = _layers_from_list(_require(data, "layers", list, source), model, source, version)
    return Plan(name, model, layers, dense, provenance, later)


def _layers_to_list(layers: tuple[LayerPattern, ...]) -> list[dict]:
    return [{"layer": i, "heads": [p.to_dict() for p in layer.heads]} for i, layer in enumerate(layers)]


def plan_version(plan: Plan) -> int:
    """The lowest format version that holds the plan (older packs read it)."""
    heads = {p for r in plan.step_ranges for layer in r.layers for p in layer.heads}
    return max([2 if plan.later_ranges else 1] + [head_version(p.to_dict()) for p in heads])


def plan_to_dict(plan: Plan) -> dict:
    data = {
        "format": FORMAT_NAME,
        "version": plan_version(plan),
        "name": plan.name,
        "model": {"family": plan.model.family, "layers": plan.model.layers,
                  "heads": plan.model.heads, "head_dim": plan.model.head_dim},
        "dense": {"warmup_fraction": plan.dense.warmup_fraction, "sigma_above": plan.dense.sigma_above},
        "layers": _layers_to_list(plan.layers),
        "provenance": plan.provenance,
    }
    if plan.later_ranges:
        data["later_step_ranges"] = [{"from_step_fraction": r.start, "layers": _layers_to_list(r.layers)}
                                     for r in plan.later_ranges]
    return data


def _layers_json(layers: list[dict], indent: str) -> str:
    """A layer list with one line per head."""
    blocks = []
    for layer in layers:
        heads = ",\n".join(f"{indent}    " + json.dumps(h) for h in layer["heads"])
        blocks.append(f'{indent}{{"layer": {layer["layer"]}, "heads": [\n{heads}\n{indent}]}}')
    return "[\n" + ",\n".join(blocks) + "\n" + indent[:-2] + "]"


def dumps_plan(plan: Plan) -> str:
    """JSON with one line per head, so a person can read and diff a plan."""
    data = plan_to_dict(plan)
    layers = data.pop("layers")
    later = data.pop("later_step_ranges", [])
    text = json.dumps(data, indent=2)[:-2]  # reopen the object to append the layer lists
    text += ',\n  "layers": ' + _layers_json(layers, "    ")
    if later:
        ranges = [f'    {{"from_step_fraction": {r["from_step_fraction"]!r}, "layers": {_layers_json(r["layers"], "        ")}}}'
                  for r in later]
        text += ',\n  "later_step_ranges": [\n' + ",\n".join(ranges) + "\n  ]"
    return text + "\n}\n"


def loads_plan(text: str, source: str = "plan") -> Plan:
    return plan_from_dict(check.parse_json(text, source), source)


def load_plan(path: str) -> Plan:
    return loads_plan(check.read_text(path, check.MAX_PLAN_BYTES, "plan file"), source=path)


def checked_text(plan: Plan, path: str) -> str:
    """The plan's file text, validated by reading it back as the loader will."""
    text = dumps_plan(plan)
    loads_plan(text, source=path)
    return text


def save_plan(plan: Plan, path: str) -> None:
    """Validate by round-trip, then write atomically."""
    atomic_write_text(path, checked_text(plan, path))

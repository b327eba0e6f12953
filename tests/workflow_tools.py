"""Helpers for the pack's example workflows (ComfyUI UI / litegraph format).

No ComfyUI import here: node definitions come in as plain data, so the
structural checks and the UI -> API prompt converter can be tested alone.

- :func:`workflow_paths` / :func:`load_workflow`: the JSON files in workflows/.
- :func:`structure_problems`: graph consistency of a UI workflow (ids, link
  table against the nodes' inputs/outputs, version 0.4).
- :func:`input_specs`: a node class's ``INPUT_TYPES()`` as an ordered list.
- :func:`map_widgets`: a node's ``widgets_values`` matched to its widget inputs
  in the order the frontend creates widgets (required then optional; one extra
  value after an input with ``control_after_generate``, and after an upload
  combo such as LoadImage's ``image``; a dynamic combo's chosen inputs right
  after it, named "<combo>.<input>"). Widgets past the saved values get their
  defaults, as the frontend gives them when a newer ComfyUI added inputs.
- :func:`widget_value_problems`: type, combo membership and min/max of values.
- :func:`workflow_to_prompt`: the API prompt the frontend would queue
  (``{id: {"class_type", "inputs"}}`` with links as ``[node_id_str, slot]``),
  skipping frontend-only nodes (Note, MarkdownNote), following Reroutes,
  taking PrimitiveNode values, dropping muted nodes and routing around bypassed
  ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS_DIR = os.path.join(PACK_ROOT, "workflows")

#: Node types that exist only in the web frontend (never in NODE_CLASS_MAPPINGS).
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
FRONTEND_ONLY = NOTE_TYPES | {"Reroute", "PrimitiveNode"}

#: A V3 combo whose chosen option brings its own inputs (ComfyUI >= 0.1x: SaveVideo's
#: format -> codec); the frontend names them "<combo>.<input>" and puts their widgets
#: right after the combo's.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
#: Input types the frontend turns into widgets (a list type is a combo too).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO})
#: Combo flags after which the frontend adds an upload button that stores a value.
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "model_upload")
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})

#: loader node type -> (widget index, models/ folder) for each model file it names
MODEL_LOADERS = {
    "UNETLoader": [(0, "diffusion_models")],
    "CLIPLoader": [(0, "text_encoders")],
    "DualCLIPLoader": [(0, "text_encoders"), (1, "text_encoders")],
    "VAELoader": [(0, "vae")],
    "CLIPVisionLoader": [(0, "clip_vision")],
}

MODE_ALWAYS = 0
MODE_NEVER = 2  # muted
MODE_BYPASS = 4


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def workflow_paths(directory: str = WORKFLOWS_DIR) -> list[str]:
    """Sorted paths of the *.json workflows in ``directory``."""
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".json"))


def load_workflow(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True)
class Link:
    id: int
    from_node: int
    from_slot: int
    to_node: int
    to_slot: int
    type: Any


def links_by_id(wf: dict) -> dict[int, Link]:
    out = {}
    for entry in wf.get("links", []):
        if isinstance(entry, dict):  # workflow schema 1.0 style
            link = Link(entry["id"], entry["origin_id"], entry["origin_slot"], entry["target_id"],
                        entry["target_slot"], entry.get("type"))
        else:
            link = Link(*entry[:6])
        out[link.id] = link
    return out


def nodes_by_id(wf: dict) -> dict[int, dict]:
    return {n["id"]: n for n in wf.get("nodes", [])}


def model_files(wf: dict) -> dict[str, list[str]]:
    """models/ folder -> the file names the workflow's loaders name (in node order)."""
    found: dict[str, list[str]] = {}
    for node in wf.get("nodes", []):
        for index, folder in MODEL_LOADERS.get(node["type"], []):
            found.setdefault(folder, []).append(node["widgets_values"][index])
    return found


def input_images(wf: dict) -> list[str]:
    """The input/ file names the workflow's LoadImage nodes name."""
    return [n["widgets_values"][0] for n in wf.get("nodes", []) if n["type"] == "LoadImage"]


def write_placeholder_inputs(base: str, workflows) -> None:
    """Empty model files and 1x1 PNG inputs named as in ``workflows``, under
    ``base``/models/<folder> and ``base``/input: what a user who has the models
    would have, so loaders offer the workflows' files."""
    from PIL import Image

    for wf in workflows:
        for folder, files in model_files(wf).items():
            os.makedirs(os.path.join(base, "models", folder), exist_ok=True)
            for name in files:
                open(os.path.join(base, "models", folder, name), "ab").close()
        os.makedirs(os.path.join(base, "input"), exist_ok=True)
        for name in input_images(wf):
            Image.new("RGB", (1, 1), (128, 128, 128)).save(os.path.join(base, "input", name))


def node_types(wf: dict) -> list[str]:
    return sorted({n["type"] for n in wf.get("nodes", [])})


def input_link(node: dict, name: str):
    """The link id on the input named ``name`` (None if absent or unlinked)."""
    for inp in node.get("inputs") or []:
        if inp.get("name") == name or (inp.get("widget") or {}).get("name") == name:
            return inp.get("link")
    return None


def upstream(wf: dict, node_id: int, input_name: str):
    """(source node, source slot) feeding ``input_name`` of ``node_id``, or None."""
    lid = input_link(nodes_by_id(wf)[node_id], input_name)
    if lid is None:
        return None
    link = links_by_id(wf)[lid]
    return nodes_by_id(wf)[link.from_node], link.from_slot


# --------------------------------------------------------------------------
# Structure (no node definitions needed)
# --------------------------------------------------------------------------


def structure_problems(wf: dict) -> list[str]:
    """Everything wrong with the graph bookkeeping of a UI workflow."""
    problems: list[str] = []
    if wf.get("version") != 0.4:
        problems.append(f"version is {wf.get('version')!r}, expected 0.4")
    for key in ("nodes", "links", "groups", "extra"):
        if key not in wf:
            problems.append(f"missing top-level key {key!r}")
    nodes = wf.get("nodes", [])
    ids = [n.get("id") for n in nodes]
    if len(set(ids)) != len(ids):
        problems.append(f"duplicate node ids: {sorted(i for i in ids if ids.count(i) > 1)}")
    by_id = nodes_by_id(wf)
    links = links_by_id(wf)
    if len(links) != len(wf.get("links", [])):
        problems.append("duplicate link ids")
    if ids and wf.get("last_node_id", -1) < max(ids):
        problems.append(f"last_node_id {wf.get('last_node_id')} < max node id {max(ids)}")
    if links and wf.get("last_link_id", -1) < max(links):
        problems.append(f"last_link_id {wf.get('last_link_id')} < max link id {max(links)}")
    for n in nodes:
        where = f"node {n.get('id')} ({n.get('type')})"
        for key in ("id", "type", "pos", "size", "mode"):
            if key not in n:
                problems.append(f"{where}: missing {key!r}")
        for k, inp in enumerate(n.get("inputs") or []):
            lid = inp.get("link")
            if lid is None:
                continue
            link = links.get(lid)
            if link is None:
                problems.append(f"{where}: input {inp.get('name')!r} names link {lid}, which does not exist")
            elif link.to_node != n["id"] or link.to_slot != k:
                problems.append(f"{where}: input {inp.get('name')!r} (slot {k}) names link {lid}, "
                                f"which goes to node {link.to_node} slot {link.to_slot}")
        for k, out in enumerate(n.get("outputs") or []):
            for lid in out.get("links") or []:
                link = links.get(lid)
                if link is None:
                    problems.append(f"{where}: output {out.get('name')!r} names link {lid}, which does not exist")
                elif link.from_node != n["id"] or link.from_slot != k:
                    problems.append(f"{where}: output {out.get('name')!r} (slot {k}) names link {lid}, "
                                    f"which comes from node {link.from_node} slot {link.from_slot}")
    for link in links.values():
        src, dst = by_id.get(link.from_node), by_id.get(link.to_node)
        if src is None or dst is None:
            problems.append(f"link {link.id}: node {link.from_node if src is None else link.to_node} does not exist")
            continue
        outs, ins = src.get("outputs") or [], dst.get("inputs") or []
        if link.from_slot >= len(outs):
            problems.append(f"link {link.id}: node {src['id']} has no output slot {link.from_slot}")
            continue
        if link.to_slot >= len(ins):
            problems.append(f"link {link.id}: node {dst['id']} has no input slot {link.to_slot}")
            continue
        if link.id not in (outs[link.from_slot].get("links") or []):
            problems.append(f"link {link.id}: not listed in node {src['id']} output {link.from_slot}")
        if ins[link.to_slot].get("link") != link.id:
            problems.append(f"link {link.id}: node {dst['id']} input {link.to_slot} holds link "
                            f"{ins[link.to_slot].get('link')}")
        if link.type != outs[link.from_slot].get("type") and link.type != "*":
            problems.append(f"link {link.id}: type {link.type!r} != source output type "
                            f"{outs[link.from_slot].get('type')!r}")
    return problems


# --------------------------------------------------------------------------
# Node definitions
# --------------------------------------------------------------------------


@dataclass
class InputSpec:
    name: str
    type: Any  # str, or a list of options (classic combo)
    extra: dict = field(default_factory=dict)
    required: bool = True

    @property
    def is_combo(self) -> bool:
        return isinstance(self.type, (list, tuple)) or self.type in ("COMBO", DYNAMIC_COMBO)

    @property
    def options(self) -> list:
        if isinstance(self.type, (list, tuple)):
            return list(self.type)
        if self.type == DYNAMIC_COMBO:
            return [o["key"] for o in self.extra.get("options") or []]
        return list(self.extra.get("options") or [])

    @property
    def default(self) -> Any:
        """The value the frontend gives a widget the workflow has no value for (None: none)."""
        if "default" in self.extra:
            return self.extra["default"]
        if self.is_combo and self.options:
            return self.options[0]
        return None

    def chosen_inputs(self, value: Any) -> list["InputSpec"]:
        """A dynamic combo's inputs for the option ``value``, named "<combo>.<input>"."""
        if self.type != DYNAMIC_COMBO:
            return []
        option = next((o for o in self.extra.get("options") or [] if o.get("key") == value), None)
        if option is None:
            return []
        inner = input_specs(option.get("inputs") or {})
        return [InputSpec(f"{self.name}.{i.name}", i.type, i.extra, i.required and self.required) for i in inner]

    @property
    def type_name(self) -> str:
        return "COMBO" if self.is_combo else str(self.type)

    @property
    def is_widget(self) -> bool:
        if self.extra.get("forceInput"):
            return False
        return self.is_combo or self.type in WIDGET_TYPES

    @property
    def has_control(self) -> bool:
        return bool(self.extra.get("control_after_generate"))

    @property
    def has_upload(self) -> bool:
        return self.is_combo and any(self.extra.get(flag) for flag in UPLOAD_FLAGS)


def input_specs(class_inputs: dict) -> list[InputSpec]:
    """``INPUT_TYPES()`` as ordered specs: required then optional (hidden left out)."""
    specs = []
    for category in ("required", "optional"):
        for name, value in (class_inputs.get(category) or {}).items():
            if not isinstance(value, (list, tuple)) or not value:
                continue
            extra = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            specs.append(InputSpec(name, value[0], dict(extra), category == "required"))
    return specs


def types_match(output_type: Any, input_type: Any) -> bool:
    """Link type compatibility as ComfyUI's validate_node_input sees it (simplified)."""
    if isinstance(input_type, (list, tuple)):
        input_type = "COMBO"
    if output_type == input_type or "*" in (output_type, input_type):
        return True
    if not isinstance(output_type, str) or not isinstance(input_type, str):
        return False
    a = {t.strip() for t in output_type.split(",")}
    b = {t.strip() for t in input_type.split(",")}
    return bool(a & b) and (a <= b or b <= a)


# --------------------------------------------------------------------------
# Widgets
# --------------------------------------------------------------------------


@dataclass
class WidgetMapping:
    values: dict[str, Any]  # input name -> widget value (frontend order)
    problems: list[str]
    expected_count: int
    #: widgets the workflow carries no value for, given their default as the frontend does
    #: (inputs a newer ComfyUI added after the workflow was saved)
    defaulted: list[str] = field(default_factory=list)
    #: input name -> spec of every widget mapped (a dynamic combo's chosen inputs included)
    widgets: dict[str, "InputSpec"] = field(default_factory=dict)


def map_widgets(node: dict, specs: Iterable[InputSpec]) -> WidgetMapping:
    """Match ``node["widgets_values"]`` to the node's widget inputs in order."""
    raw = node.get("widgets_values")
    where = f"node {node.get('id')} ({node.get('type')})"
    problems: list[str] = []
    if raw is None:
        raw = []
    if isinstance(raw, dict):  # some nodes save a name -> value dict
        specs = [s for s in specs if s.is_widget]
        vals = {s.name: raw[s.name] for s in specs if s.name in raw}
        missing = [s.name for s in specs if s.name not in raw and s.required]
        if missing:
            problems.append(f"{where}: widgets_values has no value for {missing}")
        return WidgetMapping(vals, problems, len(specs))
    values: dict[str, Any] = {}
    defaulted: list[str] = []
    widgets: dict[str, InputSpec] = {}
    pos = 0
    expected = 0
    pending = [s for s in specs if s.is_widget]
    while pending:
        spec = pending.pop(0)
        widgets[spec.name] = spec
        expected += 1 + int(spec.has_control)
        if pos >= len(raw):
            # the frontend gives a widget with no saved value its default
            if spec.default is None:
                problems.append(f"{where}: no widget value for {spec.name!r} (widgets_values has {len(raw)}) "
                                f"and it has no default")
            else:
                values[spec.name] = spec.default
                defaulted.append(spec.name)
                pending[:0] = [s for s in spec.chosen_inputs(spec.default) if s.is_widget]
            continue
        values[spec.name] = raw[pos]
        pos += 1
        if spec.has_control:
            if pos < len(raw) and raw[pos] in CONTROL_VALUES:
                pos += 1
            else:
                got = raw[pos] if pos < len(raw) else "nothing"
                problems.append(f"{where}: {spec.name!r} is followed by {got!r}, expected a control_after_generate "
                                f"value ({sorted(CONTROL_VALUES)})")
                pos += 1
        if spec.has_upload and pos < len(raw) and raw[pos] in ("image", "video", "audio", "model"):
            pos += 1
            expected += 1
        pending[:0] = [s for s in spec.chosen_inputs(values[spec.name]) if s.is_widget]
    if pos < len(raw):
        problems.append(f"{where}: {len(raw)} widget values for {expected} widgets: {raw!r}")
    return WidgetMapping(values, problems, expected, defaulted, widgets)


def widget_value_problems(node: dict, spec: InputSpec, value: Any) -> list[str]:
    """Type, combo membership and min/max of one widget value."""
    where = f"node {node.get('id')} ({node.get('type')}) input {spec.name!r}"
    if spec.is_combo:
        opts = spec.options
        if value not in opts:
            shown = opts if len(opts) <= 12 else f"{opts[:12]} ... ({len(opts)} options)"
            return [f"{where}: {value!r} is not one of {shown}"]
        return []
    t = spec.type
    if t == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{where}: {value!r} is not an INT"]
    elif t == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where}: {value!r} is not a FLOAT"]
    elif t == "STRING":
        if not isinstance(value, str):
            return [f"{where}: {value!r} is not a STRING"]
    elif t == "BOOLEAN":
        if not isinstance(value, bool):
            return [f"{where}: {value!r} is not a BOOLEAN"]
    problems = []
    if t in ("INT", "FLOAT"):
        lo, hi = spec.extra.get("min"), spec.extra.get("max")
        if lo is not None and value < lo:
            problems.append(f"{where}: {value!r} < min {lo}")
        if hi is not None and value > hi:
            problems.append(f"{where}: {value!r} > max {hi}")
    return problems


# --------------------------------------------------------------------------
# UI workflow -> API prompt
# --------------------------------------------------------------------------


class ConversionError(ValueError):
    pass


def workflow_to_prompt(wf: dict, class_inputs: Callable[[str], dict]) -> dict:
    """The API prompt for a UI workflow, as the frontend's graphToPrompt builds it.

    ``class_inputs(type)`` returns the node class's ``INPUT_TYPES()``.
    Frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) and
    muted nodes are left out; links through Reroutes and bypassed nodes are
    followed to the real source; a PrimitiveNode's value becomes the target's
    widget value. Raises ConversionError on a widget mismatch.
    """
    by_id = nodes_by_id(wf)
    links = links_by_id(wf)

    def resolve(link_id: int, want_type: Any, seen=()):
        """('link', [id_str, slot]) or ('value', v) or None for an input's link."""
        if link_id in seen:
            raise ConversionError(f"link cycle through {link_id}")
        link = links[link_id]
        src = by_id[link.from_node]
        mode = src.get("mode", MODE_ALWAYS)
        if src["type"] == "Reroute":
            lid = (src.get("inputs") or [{}])[0].get("link")
            return None if lid is None else resolve(lid, want_type, seen + (link_id,))
        if src["type"] == "PrimitiveNode":
            vals = src.get("widgets_values") or []
            if not vals:
                raise ConversionError(f"PrimitiveNode {src['id']} has no value")
            return ("value", vals[0])
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            out_type = (src.get("outputs") or [])[link.from_slot].get("type")
            for inp in src.get("inputs") or []:
                if inp.get("link") is not None and types_match(inp.get("type"), out_type):
                    return resolve(inp["link"], want_type, seen + (link_id,))
            return None
        return ("link", [str(src["id"]), link.from_slot])

    prompt: dict[str, dict] = {}
    for node in wf.get("nodes", []):
        t = node["type"]
        if t in FRONTEND_ONLY or node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        specs = input_specs(class_inputs(t))
        mapping = map_widgets(node, specs)
        if mapping.problems:
            raise ConversionError("; ".join(mapping.problems))
        inputs: dict[str, Any] = dict(mapping.values)
        for inp in node.get("inputs") or []:
            lid = inp.get("link")
            if lid is None:
                continue
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            got = resolve(lid, inp.get("type"))
            if got is None:  # from a muted node or an unconnected Reroute: as if unlinked
                continue
            inputs[name] = got[1]
        prompt[str(node["id"])] = {"class_type": t, "inputs": inputs,
                                   "_meta": {"title": node.get("title") or t}}
    return prompt

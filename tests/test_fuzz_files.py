"""Property-based fuzzing of everything the pack reads from disk.

Generated plans and statistics files, valid ones mutated at the JSON level
(a field replaced, dropped, a 5,000-digit integer, deep nesting), the text
level (truncated, characters changed) and the tensor level (dtype, shape,
NaN / Inf / zero values, missing tensors, damaged headers), go through the
public loaders and everything that consumes them: the search (Solve), the
picture (Preview) and, with a ComfyUI checkout (COMFYUI_PATH), every node's
`execute` as ComfyUI calls it. The only outcomes allowed are success or a
PlanError; a hang fails the example after SPARSE_VDIT_FUZZ_HANG_SECONDS.

Example counts: small by default (a few seconds); a large run on demand:
    SPARSE_VDIT_FUZZ_EXAMPLES=10000 SPARSE_VDIT_FUZZ_STATS_EXAMPLES=1000 \
    SPARSE_VDIT_FUZZ_REPORT=/tmp/fuzz.json python -m pytest -q tests/test_fuzz_files.py
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import tempfile
import time

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sparse_vdit.patterns import (Diagonal, Full, Geometry, LayerPattern, MultiDiagonal, Skip,  # noqa: E402
                                  Routed, VerticalStripe, Window3D)
from sparse_vdit.plans.candidates import MENUS  # noqa: E402
from sparse_vdit.plans.format import (DenseSchedule, ModelShape, Plan, PlanError, StepRange, load_plan,  # noqa: E402
                                      plan_to_dict, save_plan)
from sparse_vdit.plans.statistics import Statistics, load_statistics, save_statistics  # noqa: E402

EXAMPLES = int(os.environ.get("SPARSE_VDIT_FUZZ_EXAMPLES", "30"))
STATS_EXAMPLES = int(os.environ.get("SPARSE_VDIT_FUZZ_STATS_EXAMPLES", str(max(10, EXAMPLES // 10))))
HANG_SECONDS = int(os.environ.get("SPARSE_VDIT_FUZZ_HANG_SECONDS", "120"))
REPORT = os.environ.get("SPARSE_VDIT_FUZZ_REPORT")
TINY = (2, 4, 16)  # the harness's tiny Wan: layers, heads, head_dim (a plan that fits gets applied)

SETTINGS = dict(deadline=None, database=None, derandomize=EXAMPLES <= 100, print_blob=True,
                suppress_health_check=list(HealthCheck))

# Outcomes per fuzzed consumer (and a few PlanError messages of each),
# written to SPARSE_VDIT_FUZZ_REPORT at exit.
TALLY: dict[str, dict[str, int]] = {}
MESSAGES: dict[str, list[str]] = {}
STARTED = time.time()


def tally(what: str, outcome: str, message: str = "") -> None:
    TALLY.setdefault(what, {}).setdefault(outcome, 0)
    TALLY[what][outcome] += 1
    seen = MESSAGES.setdefault(what, [])
    if message and len(seen) < 8 and message[:200] not in seen:
        seen.append(message[:200])


@atexit.register
def _write_report():
    if REPORT and TALLY:
        with open(REPORT, "w") as handle:
            json.dump({"seconds": round(time.time() - STARTED, 1), "examples": EXAMPLES,
                       "stats_examples": STATS_EXAMPLES, "outcomes": TALLY, "messages": MESSAGES}, handle, indent=1)


class Hang(Exception):
    pass


@contextlib.contextmanager
def hang_guard():
    """Fail an example that runs past HANG_SECONDS (a hang, not a speed check)."""
    def alarm(signum, frame):
        raise Hang(f"no result after {HANG_SECONDS} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome_of(what: str, fn, *args, **kwargs):
    """Run a consumer: its result, or None after a PlanError. Anything else fails the test."""
    try:
        result = fn(*args, **kwargs)
    except PlanError as error:
        assert str(error), "a PlanError must say something"
        tally(what, "PlanError", str(error))
        return None
    tally(what, "ok")
    return result


# ---------------------------------------------------------------- strategies

KEYS = ["mode", "rows", "frames", "layer", "heads", "layers", "format", "version", "model", "family", "head_dim",
        "dense", "warmup_fraction", "sigma_above", "provenance", "kind", "geometry", "statistics", "cols", "prefix",
        "suffix", "name", "later_step_ranges", "from_step_fraction", "top_frames", "total_steps", "probed_layers",
        "date", "share"]
BIG_INT, DEEP, UNCLOSED = "\x00BIG\x00", "\x00DEEP\x00", "\x00UNCLOSED\x00"
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40), st.integers(-3, 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["full", "skip", "diagonal", "multi_diagonal", "vertical_stripe", "window_3d", "routed",
                     "sparse-vdit-plan",
                     "calibrated", "static-baseline", "all", "x" * 400, "../../etc/passwd", "con", BIG_INT, DEEP,
                     UNCLOSED, 1e308, -0.0, 10**18, 4097, -4097, 1 << 31]))
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)

patterns = st.one_of(
    st.just(Full()), st.just(Skip()), st.builds(Diagonal, st.integers(0, 5)),
    st.builds(MultiDiagonal, st.integers(0, 3), st.none() | st.integers(1, 4)),
    st.builds(VerticalStripe, st.lists(st.integers(-3, 6), min_size=1, max_size=3).map(tuple)),
    st.builds(Window3D, st.integers(0, 3), st.integers(0, 5), st.integers(0, 9)),
    st.builds(Routed, st.floats(0.001, 1.0)))
geometries = st.builds(Geometry, st.integers(1, 5), st.integers(1, 6), st.integers(1, 8), st.integers(0, 4),
                       st.integers(0, 4))


@st.composite
def plans(draw) -> Plan:
    layers, heads, head_dim = TINY if draw(st.booleans()) else (draw(st.integers(1, 3)), draw(st.integers(1, 4)), 64)
    layer = st.lists(patterns, min_size=heads, max_size=heads).map(lambda p: LayerPattern(tuple(p)))
    first = tuple(draw(st.lists(layer, min_size=layers, max_size=layers)))
    starts = sorted(set(draw(st.lists(st.floats(0.05, 0.95), max_size=2))))
    later = tuple(StepRange(s, tuple(draw(st.lists(layer, min_size=layers, max_size=layers)))) for s in starts)
    provenance = {"kind": draw(st.sampled_from(["static-baseline", "calibrated"]))}
    if draw(st.booleans()):
        provenance["geometry"] = draw(geometries).to_dict()
    if draw(st.booleans()):
        provenance["statistics"] = "fuzz.stats.safetensors"
    dense = DenseSchedule(draw(st.floats(0, 1)), draw(st.none() | st.floats(0, 100)))
    return Plan("fuzz plan", ModelShape("wan2.1 tiny", layers, heads, head_dim), first, dense, provenance, later)


def paths_of(data, prefix=()):
    """Every (container path, key) in a JSON document, without recursion limits to worry about (depth is small)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.append(prefix + (key,))
            found.extend(paths_of(value, prefix + (key,)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.append(prefix + (index,))
            found.extend(paths_of(value, prefix + (index,)))
    return found


@st.composite
def mutated_json(draw, data):
    """data (a JSON document) with 1-3 fields replaced or removed, as text."""
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_of(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.integers(0, 4)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    text = json.dumps(data)
    text = text.replace(json.dumps(BIG_INT), "9" * draw(st.sampled_from([19, 400, 4301, 5000])))
    text = text.replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000).replace(json.dumps(UNCLOSED), "[" * 100000)
    return text


def plausible(value):
    """A value of the same JSON type as `value`, in a plausible range."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-3, 5000) | st.integers(-2, 8)
    if isinstance(value, float):
        return st.floats(-0.5, 1.5)
    if isinstance(value, str):
        return st.sampled_from(["full", "skip", "diagonal", "multi_diagonal", "vertical_stripe", "x", ""])
    return st.none() | st.integers(0, 8)


@st.composite
def tweaked_json(draw, data):
    """data with 1-3 leaves (numbers, names, nulls) given other values of
    their type, so that many still load and reach the consumers."""
    for _ in range(draw(st.integers(1, 3))):
        leaves_at = [p for p in paths_of(data) if not isinstance(_at(data, p), (dict, list))]
        path = draw(st.sampled_from(leaves_at))
        parent = _at(data, path[:-1])
        parent[path[-1]] = draw(plausible(parent[path[-1]]))
    return json.dumps(data)


def _at(data, path):
    for key in path:
        data = data[key]
    return data


@st.composite
def mutated_text(draw, text):
    """Text-level damage: truncation, or characters changed or inserted."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return text[: draw(st.integers(0, len(text)))]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        piece = draw(st.text(min_size=1, max_size=3) | st.sampled_from(["[", "{", "]", "\"", "e999", "-", "NaN"]))
        text = text[:at] + piece + text[at + (kind == 1):]
    return text


@st.composite
def plan_files(draw) -> tuple[str, str]:
    """(how it was made, file text)."""
    plan = draw(plans())
    how = draw(st.sampled_from(["valid", "json", "json", "tweak", "tweak", "text"]))
    if how == "valid":
        return how, json.dumps(plan_to_dict(plan))
    if how == "tweak":
        return how, draw(tweaked_json(plan_to_dict(plan)))
    if how == "json":
        return how, draw(mutated_json(plan_to_dict(plan)))
    return how, draw(mutated_text(json.dumps(plan_to_dict(plan))))


# ---------------------------------------------------------------- statistics

@st.composite
def statistics(draw) -> Statistics:
    L, H = TINY[:2] if draw(st.booleans()) else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    menu = MENUS["extended-wide"]  # every mode, the newer ones included
    chosen = sorted(draw(st.sets(st.integers(0, len(menu) - 1), min_size=1, max_size=5)))
    candidates = tuple(menu[i] for i in chosen)
    C = len(candidates)
    total = draw(st.none() | st.integers(4, 60))
    P = draw(st.integers(1, 4))
    steps = sorted(draw(st.sets(st.integers(0, (total or 60) - 1), min_size=P, max_size=P)))
    geometry = draw(geometries)
    K = max([c.top_frames or 0 for c in candidates] + [1])
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    power = torch.rand(P, L, generator=g, dtype=torch.float64) + 0.1
    sq_err = torch.rand(P, L, H, C, generator=g, dtype=torch.float64) * power[:, :, None, None] * 0.05
    cost = torch.tensor([0.0 if c.mode == "skip" else float(torch.rand(1, generator=g)) * 0.8 + 0.05
                         for c in candidates] + [1.0], dtype=torch.float64)
    info = {"total_steps": total, "warmup_fraction": draw(st.sampled_from([0.0, 0.2, 0.5])), "date": "2026-11-29"}
    if draw(st.booleans()):
        info["probed_layers"] = sorted(draw(st.sets(st.integers(0, L - 1), min_size=1)))
    model = ModelShape("wan2.1 tiny", L, H, TINY[2])
    return Statistics(model, geometry, candidates, sq_err, power, cost,
                      torch.randint(0, geometry.frames, (L, H, K), generator=g),
                      torch.rand(L, H, geometry.frames, generator=g), torch.rand(L, H, 32, 64, generator=g).half(),
                      torch.tensor(steps, dtype=torch.int64), "block-count", info)


POISON = [float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 1e300, 5e-324]
DTYPES = [torch.bool, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16,
          torch.bfloat16, torch.float32, torch.float64] + \
         [getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)]


@st.composite
def damage_tensors(draw, tensors: dict) -> dict:
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(tensors) + ["extra"]))
        value = tensors.get(name, torch.zeros(3))
        kind = draw(st.integers(0, 5))
        if kind == 0:
            tensors.pop(name, None)
            continue
        if kind == 1:
            value = value.to(draw(st.sampled_from(DTYPES)))
        elif kind == 2 and value.numel():
            value = value.flatten()[: draw(st.integers(0, value.numel()))]
        elif kind == 3:
            value = value.unsqueeze(draw(st.integers(0, value.dim())))
        elif kind == 4 and value.numel():
            value = value.clone()
            flat = value.view(-1)
            poison = draw(st.sampled_from(POISON)) if value.is_floating_point() else draw(st.sampled_from([-1, 10**6]))
            flat[draw(st.integers(0, flat.numel() - 1))] = torch.tensor(poison, dtype=torch.float64).to(value.dtype)
        elif kind == 5 and value.is_floating_point():
            value = torch.full(value.shape, draw(st.sampled_from(POISON)), dtype=torch.float64).to(value.dtype)
        tensors[name] = value.contiguous()
    return tensors


@st.composite
def statistics_files(draw, folder: str) -> tuple[str, str]:
    """(how it was damaged, path) of a statistics file written into folder."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = os.path.join(folder, "fuzz.stats.safetensors")
    save_statistics(draw(statistics()), path)
    how = draw(st.sampled_from(["valid", "metadata", "metadata", "tensors", "tensors", "both", "bytes"]))
    if how == "valid":
        return how, path
    if how == "bytes":
        raw = bytearray(open(path, "rb").read())
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
        else:
            for _ in range(draw(st.integers(1, 8))):
                raw[draw(st.integers(0, min(len(raw), 2000) - 1))] = draw(st.integers(0, 255))
        with open(path, "wb") as handle:
            handle.write(raw)
        return how, path
    with safe_open(path, framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if how in ("metadata", "both"):
        key = draw(st.sampled_from(["model", "geometry", "candidates", "info", "cost_source", "version", "format"]))
        if key in ("model", "geometry", "candidates", "info") and draw(st.booleans()):
            metadata[key] = draw(mutated_json({"doc": json.loads(metadata[key])}))[len('{"doc": '):-1]
        elif draw(st.booleans()):
            metadata[key] = json.dumps(draw(json_values)).replace(json.dumps(BIG_INT), "9" * 5000)
        else:
            metadata.pop(key)
    if how in ("tensors", "both"):
        tensors = draw(damage_tensors(tensors))
    save_file(tensors, path, {k: str(v) for k, v in metadata.items()})
    return how, path


# ---------------------------------------------------------------- consumers

def use_plan(plan: Plan) -> None:
    """What the pack does with a loaded plan, minus ComfyUI."""
    from sparse_vdit.plans.preview import render_plan

    outcome_of("render_plan", render_plan, plan)
    with tempfile.TemporaryDirectory() as folder:  # a loaded plan saves and loads back the same
        save_plan(plan, os.path.join(folder, "again.json"))
        assert plan_to_dict(load_plan(os.path.join(folder, "again.json"))) == plan_to_dict(plan)
    for step in range(4):
        plan.layers_at(step, 4)


def use_statistics(stats: Statistics, data) -> None:
    from sparse_vdit.plans.preview import render_plan
    from sparse_vdit.plans.search import solve_plan

    ranges = data.draw(st.sampled_from(["auto", "1", "2", "4"]))
    if data.draw(st.booleans()):
        plan = outcome_of("solve epsilon", solve_plan, stats, data.draw(st.floats(0, 10)),
                          data.draw(st.floats(0, 100)), step_ranges=ranges)
    else:
        plan = outcome_of("solve target", solve_plan, stats, target_speedup=data.draw(st.floats(1, 50)),
                          step_ranges=ranges)
    if plan is not None:
        outcome_of("render_plan+stats", render_plan, plan, stats)


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(plan_files())
def test_plan_files_load_or_say_why(made):
    how, text = made
    with hang_guard(), tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz.json")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as handle:
            handle.write(text)
        plan = outcome_of(f"load_plan ({how})", load_plan, path)
        if how == "valid":
            assert plan is not None
        if plan is not None:
            use_plan(plan)


@settings(max_examples=STATS_EXAMPLES, **SETTINGS)
@given(st.data())
def test_statistics_files_load_or_say_why(data):
    with hang_guard(), tempfile.TemporaryDirectory() as folder:
        how, path = data.draw(statistics_files(folder))
        stats = outcome_of(f"load_statistics ({how})", load_statistics, path)
        if how == "valid":
            assert stats is not None
        if stats is not None:
            use_statistics(stats, data)


plan_names = st.one_of(st.text(max_size=30), st.sampled_from(
    ["con", "NUL.json", "com1", "Lpt9.txt", "aux ", "x" * 101, "x" * 300, "a/b", "..", ".hidden", "ok name",
     "wan2.1-14b_static-baseline", "WAN2.1-14B_STATIC-BASELINE.json", "name.", "good_name-1.2"]))


@settings(max_examples=max(EXAMPLES, 50), **SETTINGS)
@given(plan_names)
def test_plan_names_are_writable_or_refused(name):
    """A name the check accepts can be written as plan and statistics on this OS."""
    from sparse_vdit.plans.validation import check_plan_name

    checked = outcome_of("check_plan_name", check_plan_name, name)
    if checked is not None:
        with tempfile.TemporaryDirectory() as folder:
            for suffix in (".json", ".stats.safetensors"):
                open(os.path.join(folder, checked + suffix), "w").close()
            assert sorted(os.listdir(folder)) == sorted([checked + ".json", checked + ".stats.safetensors"])


# ---------------------------------------------------------------- the nodes, as ComfyUI calls them

@pytest.fixture(scope="module")
def node_env(comfy):
    """A plans folder of its own (the shipped plans left out: they are checked
    elsewhere) and a tiny Wan model, for the whole module."""
    import comfy_harness as H
    from sparse_vdit.nodes import plan_files as files

    folder = tempfile.mkdtemp(prefix="sparse-vdit-fuzz-")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "user_plans_dir", lambda: folder)
        patch.setattr(files, "SHIPPED_DIR", folder)
        for name in (files.FOLDER, files.STATS_FOLDER):
            patch.delitem(comfy.folder_paths.folder_names_and_paths, name, raising=False)
        model = H.tiny_wan_model(seed=0)
        yield folder, model, H.make_conds(model, seed=1)
    for name in (files.FOLDER, files.STATS_FOLDER):
        comfy.folder_paths.folder_names_and_paths.pop(name, None)


def _clear(folder: str) -> None:
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


@pytest.mark.comfyui
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(plan_files(), st.booleans(), st.integers(0, 15))
def test_nodes_take_plan_files_or_say_why(node_env, made, with_bad_neighbour, sample_one_in_16):
    """Patch (the chosen plan, and the 'plans that fit' listing over a
    folder with a bad file in it) and Preview; one patched model in 16 samples
    two steps with the plan (odd patterns served, no crash)."""
    import comfy_harness as H

    from sparse_vdit.nodes.patch_node import SparseVDiTPatch
    from sparse_vdit.nodes.plan_files import load_named_plan, plan_names
    from sparse_vdit.nodes.preview_node import SparseVDiTPlanPreview

    folder, model, _ = node_env
    how, text = made
    _clear(folder)
    with hang_guard():
        with open(os.path.join(folder, "fuzz.json"), "w", encoding="utf-8", errors="surrogatepass") as handle:
            handle.write(text)
        if with_bad_neighbour:
            with open(os.path.join(folder, "zz_bad.json"), "w") as handle:
                handle.write('{"format": "sparse-vdit-plan", "version": 1, "layers": [{"heads": [{"mode": []}]}]')
        assert "fuzz.json" in plan_names()
        patched = outcome_of("Patch.execute", SparseVDiTPatch.execute, model=model, plan="fuzz.json",
                             backend="reference")
        if patched is not None and sample_one_in_16 == 0:
            latent = H.sample(patched.result[0], *node_env[2], steps=2, seed=1)
            assert latent.shape == H.empty_latent().shape
            tally("sampled with the plan", "ok")
        plan = outcome_of("load_named_plan", load_named_plan, "fuzz.json")
        if plan is not None:
            image = outcome_of("Preview.execute", SparseVDiTPlanPreview.execute, plan)
            assert image is None or image.result[0].dim() == 4


@pytest.mark.comfyui
@settings(max_examples=STATS_EXAMPLES, **SETTINGS)
@given(st.data())
def test_nodes_take_statistics_files_or_say_why(node_env, data):
    """Solve (by epsilon and for a target) and Preview of what it solved,
    and of a plan that names the damaged statistics."""
    from sparse_vdit.nodes.preview_node import SparseVDiTPlanPreview
    from sparse_vdit.nodes.solve_node import SparseVDiTSolvePlan

    folder = node_env[0]
    _clear(folder)
    with hang_guard():
        how, _ = data.draw(statistics_files(folder))
        target = data.draw(st.sampled_from([0.0, 0.0, 1.5, 3.0, 40.0]))
        out = outcome_of(f"Solve.execute ({how})", SparseVDiTSolvePlan.execute, "fuzz.stats.safetensors",
                         data.draw(st.floats(0, 10)), data.draw(st.floats(0, 100)), target, "fuzz_solved",
                         data.draw(st.sampled_from(["auto", "1", "2", "3", "4"])))
        if out is not None:
            outcome_of("Preview.execute (solved)", SparseVDiTPlanPreview.execute, out.result[0])
        named = data.draw(plans())
        named = Plan(named.name, named.model, named.layers, named.dense,
                     {**named.provenance, "statistics": "fuzz.stats.safetensors"}, named.later_ranges)
        outcome_of("Preview.execute (names the statistics)", SparseVDiTPlanPreview.execute, named)

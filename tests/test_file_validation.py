"""Every bad file a PlanError naming the file and the field: one test per
case found by hand (issue 13), before any work and within the stated limits."""
import json
import os
import time

import pytest
import torch

from sparse_vdit.patterns import Diagonal, Full, LayerPattern
from sparse_vdit.plans import atomic, validation
from sparse_vdit.plans.candidates import MENUS
from sparse_vdit.plans.format import (DenseSchedule, ModelShape, Plan, PlanError, dumps_plan, load_plan, loads_plan,
                                      plan_to_dict, save_plan)
from sparse_vdit.plans.static import SHIPPED, static_baseline_plan
from sparse_vdit.plans.statistics import (Statistics, load_statistics, save_plan_with_statistics,
                                          save_statistics)
from sparse_vdit.patterns import Geometry


def plan_dict(layers=2, heads=3, **provenance):
    plan = Plan("p", ModelShape("wan", layers, heads, 64), (LayerPattern((Diagonal(1), Full(), Full())[:heads]),) * layers,
                DenseSchedule(0.2), {"kind": "calibrated", **provenance})
    return plan_to_dict(plan)


def refused(text, match, source="bad.json"):
    with pytest.raises(PlanError, match=match) as caught:
        loads_plan(text, source)
    assert source in str(caught.value)


# ---------------------------------------------------------------- plan loader

def test_deep_nesting_is_refused_not_a_recursion_error():
    refused("[" * 100000, "nested deeper than 32")
    refused("[" * 5000 + "]" * 5000, "nested deeper")
    data = plan_dict()
    data["provenance"]["note"] = json.loads("[" * 40 + "]" * 40)
    refused(json.dumps(data), "nested deeper than 32")


def test_a_head_whose_mode_is_a_list():
    data = plan_dict()
    data["layers"][1]["heads"][0] = {"mode": []}
    refused(json.dumps(data), r"layer 1, head 0: must be an object with a 'mode' name")


@pytest.mark.parametrize("digits", [19, 4301, 5000])
def test_an_integer_literal_too_long(digits):
    text = json.dumps(plan_dict()).replace('"head_dim": 64', '"head_dim": ' + "7" * digits)
    refused(text, f"an integer of {digits} digits")


def test_sigma_above_too_large():
    data = plan_dict()
    data["dense"]["sigma_above"] = "SIGMA"
    refused(json.dumps(data).replace('"SIGMA"', "9" * 400), "integer of 400 digits")
    refused(json.dumps(data).replace('"SIGMA"', "1e400"), r"dense.sigma_above .*number in \[0, 1e\+30\], got inf")


@pytest.mark.parametrize("field,value,match", [
    ("layers", 99_864, "'layers' must be between 1 and 512"),
    ("heads", 100_000, "'heads' must be between 1 and 256"),
    ("head_dim", 10**9, "'head_dim' must be between 1 and 1,024"),
])
def test_counts_beyond_the_limits_are_refused_before_parsing_heads(field, value, match):
    data = plan_dict()
    data["model"][field] = value
    refused(json.dumps(data), match)


def test_too_many_step_ranges():
    data = plan_dict()
    data["version"] = 2
    data["later_step_ranges"] = [{"from_step_fraction": (i + 1) / 4000, "layers": data["layers"]} for i in range(3538)]
    refused(json.dumps(data), "3,538 later step ranges; at most 15")


def test_a_file_too_large_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(validation.MAX_PLAN_BYTES + 1)
    with pytest.raises(PlanError, match=r"huge.json: 16,777,217 bytes, more than"):
        load_plan(str(path))


def test_real_models_fit_the_limits(tmp_path):
    """Wan2.1 14B (40 x 40) and HunyuanVideo (60 x 24) with the most step ranges the search makes."""
    from dataclasses import replace

    from sparse_vdit.plans.format import StepRange
    for layers, heads in ((40, 40), (60, 24)):
        plan = static_baseline_plan("m", layers, heads, 128)
        plan = replace(plan, later_ranges=tuple(StepRange(s, plan.layers) for s in (0.3, 0.5, 0.7)),
                       provenance={**plan.provenance, "geometry": Geometry(51, 90, 160).to_dict()})
        save_plan(plan, str(tmp_path / "big.json"))
        assert load_plan(str(tmp_path / "big.json")).model.layers == layers


# ---------------------------------------------------------------- provenance

@pytest.mark.parametrize("provenance,match", [
    ({"statistics": 5}, "provenance.statistics must be a string"),
    ({"statistics": "../../secret.safetensors"}, "provenance.statistics must name a file in the plans folders"),
    ({"geometry": {"frames": 200, "rows": 200, "cols": 10}}, "200 frames x 200 rows is more than 16,384 grid rows"),
    ({"geometry": {"frames": 1e400, "rows": 2, "cols": 2}}, "provenance.geometry.frames must be an integer"),
    ({"geometry": [21, 30, 52]}, "provenance.geometry must be a JSON object"),
    ({"kind": ["calibrated"]}, "provenance.kind"),
])
def test_provenance_fields_the_pack_reads_are_checked(provenance, match):
    refused(json.dumps(plan_dict(**provenance)).replace("1e+400", "1e400"), match)


def test_preview_of_a_plan_claiming_a_large_geometry_is_drawn_on_fewer_frames():
    from sparse_vdit.plans.preview import PREVIEW_GRID_ROWS, drawn_geometry, render_plan

    plan = loads_plan(json.dumps(plan_dict(geometry={"frames": 81, "rows": 90, "cols": 10})), "p.json")
    drawn = drawn_geometry(Geometry(81, 90, 10))
    assert drawn.frames * drawn.rows <= PREVIEW_GRID_ROWS and (drawn.rows, drawn.cols) == (90, 10)
    assert render_plan(plan).width > 0


def test_preview_densities_equal_the_compiled_layers():
    """Per-pattern caching in the preview gives what compiling each layer gives."""
    from sparse_vdit.patterns import MultiDiagonal, Skip, VerticalStripe, compile_layer
    from sparse_vdit.plans.preview import layer_densities

    geometry = Geometry(5, 6, 7, prefix=3)
    layers = (LayerPattern((Diagonal(1), Full(), Skip(), VerticalStripe((0, -1)))),
              LayerPattern((MultiDiagonal(1, frames=2), Diagonal(1), Diagonal(0), Full())))
    expected = [compile_layer(layer, geometry).density() for layer in layers]
    assert layer_densities(layers, geometry, {}) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- statistics

def small_statistics(**info) -> Statistics:
    candidates = tuple(MENUS["standard"][i] for i in (0, 1, 4, 8))  # skip, diagonal, multi-diagonal, stripe
    g = torch.Generator().manual_seed(0)
    L, H, C, P = 2, 3, len(candidates), 2
    return Statistics(ModelShape("wan", L, H, 64), Geometry(4, 5, 6), candidates,
                      torch.rand(P, L, H, C, generator=g, dtype=torch.float64) * 0.01,
                      torch.rand(P, L, generator=g, dtype=torch.float64) + 0.5,
                      torch.tensor([0.0, 0.4, 0.5, 0.7, 1.0], dtype=torch.float64),
                      torch.zeros(L, H, 1, dtype=torch.int64), torch.rand(L, H, 4), torch.rand(L, H, 32, 64).half(),
                      torch.tensor([2, 5]), "block-count", {"total_steps": 8, "warmup_fraction": 0.2, **info})


def rewrite(path, metadata=None, tensors=None):
    """The statistics file at path with metadata fields / tensors replaced (None: removed)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        data = {name: handle.get_tensor(name) for name in handle.keys()}
    for key, value in (metadata or {}).items():
        meta.pop(key) if value is None else meta.__setitem__(key, value)
    for key, value in (tensors or {}).items():
        data.pop(key) if value is None else data.__setitem__(key, value)
    save_file(data, str(path), meta)


@pytest.fixture
def stats_path(tmp_path):
    path = tmp_path / "s.stats.safetensors"
    save_statistics(small_statistics(), str(path))
    assert load_statistics(str(path)).sq_err.dtype == torch.float64
    return path


P_L_H_C = (2, 2, 3, 4)
FLOAT8 = getattr(torch, "float8_e4m3fn", torch.int8)


@pytest.mark.parametrize("tensors,match", [
    ({"sq_err": torch.zeros(2, 2, 3)}, r"'sq_err' has shape \[2, 2, 3\], expected \[\*, 2, 3, 4\]"),
    ({"sq_err": torch.zeros(0, 2, 3, 4)}, "0 probed steps"),
    ({"sq_err": torch.full(P_L_H_C, float("nan"))}, "'sq_err' holds 48 value"),
    ({"sq_err": torch.zeros(P_L_H_C, dtype=torch.bool)}, "'sq_err' is torch.bool"),
    ({"sq_err": torch.zeros(P_L_H_C, dtype=torch.int8)}, "'sq_err' is torch.int8"),
    ({"sq_err": torch.zeros(P_L_H_C).to(FLOAT8)}, "'sq_err' is torch.float8|'sq_err' is torch.int8"),
    ({"cost": torch.zeros(5)}, "'cost' must give full attention a positive cost"),
    ({"cost": torch.full((5,), float("nan"))}, "'cost' holds 5 value"),
    ({"cost": torch.full((5,), float("inf"))}, "'cost' holds 5 value"),
    ({"cost": torch.tensor([0.0, 1e-300, 0.5, 0.5, 1.0], dtype=torch.float64)}, "between 1e-9 and 1e6"),
    ({"power": torch.tensor([[1.0, -1.0], [1.0, 1.0]])}, "'power' holds 1 value"),
    ({"stripe_frames": torch.zeros(2, 3, 0, dtype=torch.int64)}, "'stripe_frames' must list at least 1 frame"),
    ({"stripe_frames": torch.full((2, 3, 1), 9)}, r"'stripe_frames' must list .* in 0..3"),
    ({"probe_steps": torch.tensor([5, 2])}, "'probe_steps' must rise step by step"),
    ({"probe_steps": torch.tensor([2, 8])}, r"within 0..7"),
    ({"thumbnails": torch.zeros(2, 3, 4096, 1)}, "thumbnails of"),
    ({"power": None}, "no 'power' tensor"),
])
def test_bad_statistics_tensors(stats_path, tensors, match):
    rewrite(stats_path, tensors=tensors)
    with pytest.raises(PlanError, match=match) as caught:
        load_statistics(str(stats_path))
    assert str(stats_path) in str(caught.value)


@pytest.mark.parametrize("metadata,match", [
    ({"info": "[1, 2]"}, "info must be a JSON object"),
    ({"info": "null"}, "info must be a JSON object"),
    ({"info": "[" * 100000}, "metadata.info: JSON nested deeper"),
    ({"info": json.dumps({"total_steps": "20"})}, "info.total_steps must be an integer"),
    ({"info": json.dumps({"total_steps": 10**7})}, "info.total_steps must be between 1 and 10,000"),
    ({"info": json.dumps({"total_steps": 1e30})}, "info.total_steps must be an integer"),
    ({"info": '{"total_steps": ' + "1" * 31 + "}"}, "an integer of 31 digits"),
    ({"info": json.dumps({"probed_layers": [0, 7]})}, r"info.probed_layers\[1\] must be between 0 and 1"),
    ({"info": json.dumps({"warmup_fraction": float("nan")})}, "info.warmup_fraction"),
    ({"geometry": '{"frames": Infinity, "rows": 5, "cols": 6}'}, "geometry.frames must be an integer"),
    ({"geometry": None}, "metadata has no 'geometry'"),
    ({"model": '{"family": "wan", "layers": 2, "heads": 3}'}, "model: missing 'head_dim'"),
    ({"candidates": '[{"mode": "stripe"}]'}, r"candidates\[0\].mode must be one of"),
    ({"candidates": '[{"mode": "diagonal", "rows": 99999}]'}, r"candidates\[0\].rows must be between"),
    ({"candidates": "[]"}, "candidates must be a list of 1 to 64"),
    ({"version": "2"}, "statistics version '2' is not supported"),
])
def test_bad_statistics_metadata(stats_path, metadata, match):
    rewrite(stats_path, metadata=metadata)
    with pytest.raises(PlanError, match=match):
        load_statistics(str(stats_path))


def test_damaged_statistics_bytes(stats_path):
    raw = stats_path.read_bytes()
    stats_path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PlanError, match="cannot read statistics file"):
        load_statistics(str(stats_path))


def test_statistics_of_real_models_fit_the_limits():
    """14B: 40 x 40 heads, the wide menu, 50 probed steps (the Calibrate node's most)."""
    P, L, H, C = 50, 40, 40, len(MENUS["wide"])
    assert P * (P + 1) // 2 * L * H * C <= validation.MAX_SPAN_VALUES
    assert P <= validation.MAX_PROBES and C <= validation.MAX_CANDIDATES


# ---------------------------------------------------------------- names and files

@pytest.mark.parametrize("name,match", [
    ("x" * 225, "225 characters long; at most 100"),
    ("y" * 300 + ".json", "300 characters long"),
    ("con", "reserved device name"), ("NUL.json", "reserved device name"), ("com1", "reserved"),
    ("Lpt9.backup", "reserved"), ("aux ", "reserved"),
    ("a/b", "plain file name"), ("..", "plain file name"), (".hidden", "plain file name"), ("", "plain file name"),
    ("name.", "may not end with"),
    (os.path.splitext(next(iter(SHIPPED)))[0], "shipped with the pack"),
    (next(iter(SHIPPED)).upper(), "shipped with the pack"),
    (None, "must be text"),
])
def test_plan_names_refused(name, match):
    with pytest.raises(PlanError, match=match):
        validation.check_plan_name(name)


def test_plan_names_accepted():
    assert validation.check_plan_name(" my plan-1.2.json ") == "my plan-1.2"
    assert validation.check_plan_name("x" * 100) == "x" * 100
    assert validation.check_plan_name("console") == "console"


def test_plan_and_statistics_are_written_as_a_pair(tmp_path, monkeypatch):
    plan = loads_plan(json.dumps(plan_dict()), "p")
    stats = small_statistics()
    plan_path, stats_path = tmp_path / "p.json", tmp_path / "p.stats.safetensors"
    real = os.replace

    def fail_on_the_plan(src, dst):
        """The plan's rename fails (once: putting things back works)."""
        if str(dst).endswith("p.json") and os.path.basename(src).startswith(".tmp-p.json") and not failed:
            failed.append(dst)
            raise OSError("disk full")
        return real(src, dst)
    failed = []
    monkeypatch.setattr(os, "replace", fail_on_the_plan)
    with pytest.raises(OSError):
        save_plan_with_statistics(plan, str(plan_path), stats, str(stats_path))
    assert os.listdir(tmp_path) == []  # no orphan statistics, no temporary

    monkeypatch.setattr(os, "replace", real)
    save_plan_with_statistics(plan, str(plan_path), stats, str(stats_path))
    before = stats_path.read_bytes()
    failed.clear()
    monkeypatch.setattr(os, "replace", fail_on_the_plan)
    with pytest.raises(OSError):  # a failed overwrite keeps the old pair
        save_plan_with_statistics(plan, str(plan_path), small_statistics(date="later"), str(stats_path))
    assert stats_path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["p.json", "p.stats.safetensors"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_of_a_plain_new_file(tmp_path, umask):
    """0644 under the usual umask (safetensors' save_file makes its file 0600)."""
    old = os.umask(umask)
    try:
        save_plan_with_statistics(loads_plan(json.dumps(plan_dict()), "p"), str(tmp_path / "p.json"),
                                  small_statistics(), str(tmp_path / "p.stats.safetensors"))
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in os.listdir(tmp_path)}
    assert modes == {"p.json": 0o666 & ~umask, "p.stats.safetensors": 0o666 & ~umask}


def test_failed_statistics_write_leaves_nothing(tmp_path, monkeypatch):
    from safetensors import torch as st_torch

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(st_torch, "save_file", broken)
    with pytest.raises(OSError):
        save_plan_with_statistics(loads_plan(json.dumps(plan_dict()), "p"), str(tmp_path / "p.json"),
                                  small_statistics(), str(tmp_path / "p.stats.safetensors"))
    assert os.listdir(tmp_path) == []


def test_temporaries_are_hidden_and_cleaned_on_the_next_start(tmp_path, monkeypatch):
    seen = []

    def write(tmp):
        seen.append(os.path.basename(tmp))
        raise KeyboardInterrupt  # killed mid-write
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(str(tmp_path / "p.json"), write)
    assert seen[0].startswith(".tmp-") and not seen[0].endswith(".json") and atomic.is_temporary(seen[0])
    # what a killed process leaves (this naming and the older one, which ended in .json)
    for name in (".tmp-p.json-abc.partial", ".tmp-k2jd0p.json", ".tmp-fresh.partial"):
        (tmp_path / name).write_text("{")
    old = time.time() - 2 * atomic.STALE_SECONDS
    for name in (".tmp-p.json-abc.partial", ".tmp-k2jd0p.json"):
        os.utime(tmp_path / name, (old, old))
    (tmp_path / "kept.json").write_text("{}")
    assert sorted(atomic.remove_stale_temporaries(str(tmp_path))) == [".tmp-k2jd0p.json", ".tmp-p.json-abc.partial"]
    assert sorted(os.listdir(tmp_path)) == [".tmp-fresh.partial", "kept.json"]  # a write still going on is left


def test_dumped_plan_text_round_trips_after_the_checks():
    text = dumps_plan(static_baseline_plan("wan", 40, 40, 128))
    assert plan_to_dict(loads_plan(text)) == json.loads(text)

"""The example workflows in workflows/ load and validate in a real ComfyUI.

Plain tests (no ComfyUI): graph bookkeeping, the model file names of the
official templates, a note in every workflow, the Sparse-vDiT nodes on the
MODEL link before the sampler, and the UI -> API prompt converter.

Integration tests (marker ``comfyui``), against the checkout in
``$COMFYUI_PATH`` with ComfyUI's built-in extra nodes and this pack loaded
as a custom node (from a copy under a temporary custom_nodes folder), and
placeholder model files (empty files with the templates' names) in a
temporary models folder:

- every node type exists (frontend-only Note / MarkdownNote / Reroute /
  PrimitiveNode excepted);
- widget values fit the node's inputs: count (control_after_generate and
  upload widgets included), type, combo membership, min / max;
- every link joins an output to an input of a matching type;
- the workflow converted to an API prompt passes ComfyUI's own
  ``execution.validate_prompt`` with every output node valid.

One set of workflows serves every version tested (0.3.64, 0.8.0, 0.33.0):
they carry the widget values of the oldest, and inputs a newer ComfyUI added
(0.33's CreateVideo ``bit_depth``, SaveVideo's hidden ``codec``) are optional
ones the frontend fills with their defaults; the converter does the same and
ComfyUI's own validation then judges the prompt. A required widget without a
value fails the test. tests/test_browser.py checks that each version's
frontend builds the same prompt.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import sys
import types

import pytest

import workflow_tools as wt

WAN_T2V_FILES = {
    "text_encoders": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
    "vae": ["wan_2.1_vae.safetensors"],
}

#: file -> what it must hold: model files per models/ folder, Patch plans,
#: and the sampler node types fed by the Patch nodes.
EXPECTED = {
    "Wan2.1 T2V 1.3B with sparse attention.json": dict(
        models={"diffusion_models": ["wan2.1_t2v_1.3B_fp16.safetensors"], **WAN_T2V_FILES},
        plans=["auto"], samplers={"KSampler": 1}),
    "Wan2.1 T2V 14B with sparse attention.json": dict(
        models={"diffusion_models": ["wan2.1_t2v_14B_fp16.safetensors"], **WAN_T2V_FILES},
        plans=["auto"], samplers={"KSampler": 1}),
    "Wan2.1 I2V 14B with sparse attention.json": dict(
        models={"diffusion_models": ["wan2.1_i2v_480p_14B_fp16.safetensors"], **WAN_T2V_FILES,
                "clip_vision": ["clip_vision_h.safetensors"]},
        plans=["auto"], samplers={"KSampler": 1}),
    "Wan2.2 T2V A14B with sparse attention.json": dict(
        models={"diffusion_models": ["wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                                     "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"], **WAN_T2V_FILES},
        plans=["auto", "auto"],
        samplers={"KSamplerAdvanced": 2}),
    "Wan2.1 calibrate a plan for your model.json": dict(
        models={"diffusion_models": ["wan2.1_t2v_1.3B_fp16.safetensors"], **WAN_T2V_FILES},
        plans=[], samplers={}),
    "HunyuanVideo T2V with sparse attention.json": dict(
        models={"diffusion_models": ["hunyuan_video_t2v_720p_bf16.safetensors"],
                "text_encoders": ["clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors"],
                "vae": ["hunyuan_video_vae_bf16.safetensors"]},
        plans=["auto"], samplers={"BasicGuider": 1, "BasicScheduler": 1}),
    "Look at a plan (no model needed).json": dict(models={}, plans=[], samplers={}),
}


PACK_NODES = {"SparseVDiTPatch", "SparseVDiTCalibrate", "SparseVDiTSolvePlan", "SparseVDiTPlanPreview",
              "SparseVDiTLoadPlan"}
#: nodes that take the (patched) diffusion model for sampling
MODEL_CONSUMERS = {"KSampler", "KSamplerAdvanced", "BasicGuider", "CFGGuider", "BasicScheduler",
                   "SparseVDiTCalibrate"}

WORKFLOWS = sorted(EXPECTED)
PACK = wt.PACK_ROOT


def _wf(name):
    return wt.load_workflow(os.path.join(wt.WORKFLOWS_DIR, name))


def _nodes_of(wf, type_):
    return [n for n in wf["nodes"] if n["type"] == type_]


# ==========================================================================
# Plain tests
# ==========================================================================


def test_workflow_folder_holds_exactly_the_documented_workflows():
    names = sorted(os.path.basename(p) for p in wt.workflow_paths())
    assert names == WORKFLOWS


@pytest.mark.parametrize("name", WORKFLOWS)
def test_graph_bookkeeping_is_consistent(name):
    assert wt.structure_problems(_wf(name)) == []


@pytest.mark.parametrize("name", WORKFLOWS)
def test_model_files_are_the_official_template_names(name):
    found = wt.model_files(_wf(name))
    assert {k: sorted(v) for k, v in found.items()} == {k: sorted(v) for k, v in EXPECTED[name]["models"].items()}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_has_a_note_that_names_every_model_file_and_the_pack_nodes(name):
    wf = _wf(name)
    notes = [n for n in wf["nodes"] if n["type"] in wt.NOTE_TYPES]
    assert notes, "no Note / MarkdownNote node"
    text = "\n".join(str(v) for n in notes for v in n.get("widgets_values") or [])
    for files in EXPECTED[name]["models"].values():
        for f in files:
            assert f in text, f"the note does not say where {f} goes"
    for t in sorted(PACK_NODES & {n["type"] for n in wf["nodes"]}):
        title = {"SparseVDiTPatch": "Sparse-vDiT Patch", "SparseVDiTCalibrate": "Sparse-vDiT Calibrate"}.get(t)
        if title:
            assert title in text, f"the note does not explain {title}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_pack_nodes_sit_on_the_model_link_before_the_sampler(name):
    wf = _wf(name)
    exp = EXPECTED[name]
    patches = _nodes_of(wf, "SparseVDiTPatch")
    assert sorted(p["widgets_values"][0] for p in patches) == sorted(exp["plans"])
    for p in patches:
        src = wt.upstream(wf, p["id"], "model")
        assert src is not None and src[0]["type"] == "ModelSamplingSD3", f"Patch {p['id']} is not fed by ModelSamplingSD3"
        assert wt.upstream(wf, src[0]["id"], "model")[0]["type"] == "UNETLoader"
    consumers = [n for n in wf["nodes"] if n["type"] in MODEL_CONSUMERS]
    counts: dict[str, int] = {}
    for n in consumers:
        counts[n["type"]] = counts.get(n["type"], 0) + 1
        src = wt.upstream(wf, n["id"], "model")
        assert src is not None, f"{n['type']} {n['id']} has no model"
        if n["type"] == "SparseVDiTCalibrate":
            assert src[0]["type"] == "ModelSamplingSD3"
        else:
            assert src[0]["type"] == "SparseVDiTPatch", f"{n['type']} {n['id']} gets its model from {src[0]['type']}"
    counts.pop("SparseVDiTCalibrate", None)
    assert counts == exp["samplers"]
    # every patch feeds a sampler, and (Wan2.2) each expert has its own patch and model
    fed = {wt.upstream(wf, n["id"], "model")[0]["id"] for n in consumers}
    assert {p["id"] for p in patches} <= fed


def test_wan22_experts_split_the_steps_like_the_official_template():
    wf = _wf("Wan2.2 T2V A14B with sparse attention.json")
    samplers = {}
    for ks in _nodes_of(wf, "KSamplerAdvanced"):
        add_noise, _seed, _ctl, steps, _cfg, _s, _sch, start, end, leftover = ks["widgets_values"]
        unet = ks
        for _ in range(3):  # KSampler <- Patch <- ModelSamplingSD3 <- UNETLoader
            unet = wt.upstream(wf, unet["id"], "model")[0]
        samplers[unet["widgets_values"][0]] = (add_noise, steps, start, end, leftover, ks)
    hi = samplers["wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"]
    lo = samplers["wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"]
    assert hi[:5] == ("enable", 20, 0, 10, "enable")
    assert (lo[0], lo[1], lo[2], lo[4]) == ("disable", 20, 10, "disable") and lo[3] >= 20
    # the low-noise sampler continues from the high-noise latent
    assert wt.upstream(wf, lo[5]["id"], "latent_image")[0]["id"] == hi[5]["id"]
    patches = [wt.upstream(wf, x[5]["id"], "model")[0]["id"] for x in (hi, lo)]
    assert patches[0] != patches[1]


def test_calibration_workflow_previews_the_plan_and_decodes_the_calibration_latent():
    wf = _wf("Wan2.1 calibrate a plan for your model.json")
    (cal,) = _nodes_of(wf, "SparseVDiTCalibrate")
    (prev,) = _nodes_of(wf, "SparseVDiTPlanPreview")
    (dec,) = _nodes_of(wf, "VAEDecode")
    assert wt.upstream(wf, prev["id"], "plan") == (cal, 1)
    assert wt.upstream(wf, dec["id"], "samples") == (cal, 2)
    (pi,) = _nodes_of(wf, "PreviewImage")
    assert wt.upstream(wf, pi["id"], "images") == (prev, 0)
    assert not _nodes_of(wf, "KSampler")


# --- the converter on a synthetic graph (no ComfyUI) -------------------------

_FAKE_DEFS = {
    "Loader": {"required": {"name": (["a.safetensors", "b.safetensors"],)}},
    "Sampler": {"required": {"model": ("MODEL",), "seed": ("INT", {"min": 0, "max": 10, "control_after_generate": True}),
                             "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                             "cfg": ("FLOAT", {"min": 0.0, "max": 10.0})},
                "optional": {"mode": ("COMBO", {"options": ["x", "y"]})}},
    "Image": {"required": {"image": (["in.png"], {"image_upload": True})}},
    "Out": {"required": {"model": ("MODEL",), "images": ("IMAGE",)}},
}


def _fake_graph():
    def node(id_, type_, widgets=None, inputs=(), outputs=(), mode=0):
        return {"id": id_, "type": type_, "pos": [0, 0], "size": [1, 1], "mode": mode,
                "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs],
                "widgets_values": widgets if widgets is not None else []}
    return {
        "last_node_id": 7, "last_link_id": 5, "version": 0.4, "groups": [], "extra": {}, "config": {},
        "nodes": [
            node(1, "Loader", ["b.safetensors"], outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]}]),
            node(2, "Reroute", [], inputs=[{"name": "", "type": "*", "link": 1}],
                 outputs=[{"name": "", "type": "MODEL", "links": [2]}]),
            node(3, "Sampler", [3, "randomize", 7, 2.5, "y"],
                 inputs=[{"name": "model", "type": "MODEL", "link": 2},
                         {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 3}],
                 outputs=[{"name": "MODEL", "type": "MODEL", "links": [4]}]),
            node(4, "PrimitiveNode", [12, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [3],
                                                             "widget": {"name": "steps"}}]),
            node(5, "Note", ["hello"]),
            node(6, "Image", ["in.png", "image"], outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [5]},
                                                            {"name": "MASK", "type": "MASK", "links": []}]),
            node(7, "Out", [], inputs=[{"name": "model", "type": "MODEL", "link": 4},
                                       {"name": "images", "type": "IMAGE", "link": 5}]),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 4, 0, 3, 1, "INT"],
                  [4, 3, 0, 7, 0, "MODEL"], [5, 6, 0, 7, 1, "IMAGE"]],
    }


def test_converter_maps_widgets_follows_reroutes_and_primitives_and_skips_notes():
    g = _fake_graph()
    assert wt.structure_problems(g) == []
    prompt = wt.workflow_to_prompt(g, lambda t: _FAKE_DEFS[t])
    assert sorted(prompt) == ["1", "3", "6", "7"]
    assert prompt["1"]["inputs"] == {"name": "b.safetensors"}
    assert prompt["3"]["inputs"] == {"model": ["1", 0], "seed": 3, "steps": 12, "cfg": 2.5, "mode": "y"}
    assert prompt["6"]["inputs"] == {"image": "in.png"}
    assert prompt["7"]["inputs"] == {"model": ["3", 0], "images": ["6", 0]}


def test_converter_routes_around_bypassed_and_drops_muted_nodes():
    g = _fake_graph()
    wt.nodes_by_id(g)[3]["mode"] = wt.MODE_BYPASS
    prompt = wt.workflow_to_prompt(g, lambda t: _FAKE_DEFS[t])
    assert "3" not in prompt and prompt["7"]["inputs"]["model"] == ["1", 0]
    wt.nodes_by_id(g)[6]["mode"] = wt.MODE_NEVER
    prompt = wt.workflow_to_prompt(g, lambda t: _FAKE_DEFS[t])
    assert "6" not in prompt and "images" not in prompt["7"]["inputs"]


def test_widget_checks_catch_count_type_range_and_combo_errors():
    specs = wt.input_specs(_FAKE_DEFS["Sampler"])
    node = {"id": 9, "type": "Sampler", "widgets_values": [3, 7, 2.5, "y"]}  # control value missing
    assert wt.map_widgets(node, specs).problems
    node["widgets_values"] = [3, "fixed", 7, 2.5, "y", "extra"]
    assert wt.map_widgets(node, specs).problems
    node["widgets_values"] = [3, "fixed", 7, 2.5, "y"]
    m = wt.map_widgets(node, specs)
    assert m.problems == [] and m.expected_count == 5
    by_name = {s.name: s for s in specs}
    assert wt.widget_value_problems(node, by_name["seed"], 11)  # > max
    assert wt.widget_value_problems(node, by_name["steps"], 2.5)  # not an INT
    assert wt.widget_value_problems(node, by_name["cfg"], True)  # bool is not a FLOAT
    assert wt.widget_value_problems(node, by_name["mode"], "z")  # not an option
    assert wt.widget_value_problems(node, by_name["cfg"], 3) == []  # an int is a fine FLOAT
    assert wt.types_match("MODEL", "*") and wt.types_match("IMAGE", "IMAGE") and not wt.types_match("MODEL", "CLIP")


def test_widgets_past_the_saved_values_get_their_defaults_as_in_the_frontend():
    specs = wt.input_specs({"required": {"fps": ("FLOAT", {"default": 30.0})},
                            "optional": {"bit_depth": ("INT", {"default": 8}), "mode": (["a", "b"],)}})
    m = wt.map_widgets({"id": 1, "type": "CreateVideo", "widgets_values": [24]}, specs)
    assert m.problems == [] and m.values == {"fps": 24, "bit_depth": 8, "mode": "a"}
    assert m.defaulted == ["bit_depth", "mode"]
    m = wt.map_widgets({"id": 1, "type": "CreateVideo", "widgets_values": []}, specs)
    assert m.defaulted == ["fps", "bit_depth", "mode"] and m.widgets["fps"].required
    no_default = wt.input_specs({"required": {"text": ("STRING", {})}})
    assert wt.map_widgets({"id": 2, "type": "T", "widgets_values": []}, no_default).problems


#: a V3 dynamic combo as ComfyUI 0.33's SaveVideo declares it (format -> codec -> encoding)
_DYNAMIC = {"required": {
    "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
    "format": (wt.DYNAMIC_COMBO, {"options": [
        {"key": "auto", "inputs": {"required": {"codec": (wt.DYNAMIC_COMBO, {"options": [
            {"key": "auto", "inputs": {"required": {}}},
            {"key": "h264", "inputs": {"required": {"crf": ("FLOAT", {"default": 23.0})}}}]})}}},
        {"key": "webm", "inputs": {"required": {}}}]})},
    "optional": {"codec": (wt.DYNAMIC_COMBO, {"hidden": True, "options": [{"key": "auto", "inputs": {}}]})}}


def test_dynamic_combo_inputs_follow_their_combo_with_dotted_names():
    specs = wt.input_specs(_DYNAMIC)
    m = wt.map_widgets({"id": 3, "type": "SaveVideo", "widgets_values": ["v/x", "auto", "h264", 18.0]}, specs)
    assert m.problems == []
    assert list(m.values.items()) == [("filename_prefix", "v/x"), ("format", "auto"), ("format.codec", "h264"),
                                      ("format.codec.crf", 18.0), ("codec", "auto")]
    assert m.defaulted == ["codec"]
    m = wt.map_widgets({"id": 3, "type": "SaveVideo", "widgets_values": ["v/x", "webm"]}, specs)
    assert m.values == {"filename_prefix": "v/x", "format": "webm", "codec": "auto"}
    assert wt.widget_value_problems({"id": 3}, m.widgets["format"], "mov")  # not an option
    m = wt.map_widgets({"id": 3, "type": "SaveVideo", "widgets_values": ["v/x", "webm", "auto", "auto"]}, specs)
    assert m.problems  # one value too many


# ==========================================================================
# Against a real ComfyUI
# ==========================================================================


def _import_comfy_utils_package(comfy_path):
    """Import ComfyUI's top-level ``utils`` package as main.py does.

    main.py imports ``utils.extra_config`` before ``nodes`` puts ``comfy/``
    first on sys.path; after that ``import utils`` would find comfy/utils.py
    and ``server`` (imported by comfy_extras/nodes_images.py) would fail.
    """
    if "utils" in sys.modules:
        return
    init = os.path.join(comfy_path, "utils", "__init__.py")
    if not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location("utils", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["utils"] = mod
    spec.loader.exec_module(mod)


@pytest.fixture(scope="module")
def comfy_env(comfy, tmp_path_factory):
    """ComfyUI's nodes with the built-in extras, this pack (a copy) and placeholder models."""
    _import_comfy_utils_package(comfy.path)
    import execution  # noqa: F401  (imports nodes)
    import folder_paths
    import nodes

    if "CreateVideo" not in nodes.NODE_CLASS_MAPPINGS:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # missing optional deps (kornia, torchaudio...) log tracebacks
        try:
            failed = asyncio.run(nodes.init_builtin_extra_nodes())
        finally:
            root.setLevel(level)
        logging.getLogger(__name__).info("comfy_extras that did not import here: %s", failed)

    base = tmp_path_factory.mktemp("workflow_env")
    target = base / "custom_nodes" / "ComfyUI-Sparse-vDiT"
    shutil.copytree(PACK, target, ignore=shutil.ignore_patterns(".git", "tests", "benchmarks", "__pycache__",
                                                                "*.egg-info", ".benchmarks"))
    assert asyncio.run(nodes.load_custom_node(str(target))), "the pack did not load as a custom node"

    # placeholder model files and input images named as in the workflows
    wt.write_placeholder_inputs(str(base), [_wf(name) for name in WORKFLOWS])
    models, input_dir = base / "models", base / "input"
    added = []
    for folder in sorted(p.name for p in models.iterdir()):
        folder_paths.add_model_folder_path(folder, str(models / folder))
        added.append(folder)
        folder_paths.filename_list_cache.pop(folder, None)
    old_input = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(input_dir))
    try:
        yield types.SimpleNamespace(nodes=nodes, mappings=nodes.NODE_CLASS_MAPPINGS, folder_paths=folder_paths,
                                    pack_dir=str(target))
    finally:
        folder_paths.set_input_directory(old_input)
        for folder in added:
            paths = folder_paths.folder_names_and_paths.get(folder, ([], set()))[0]
            if str(models / folder) in paths:
                paths.remove(str(models / folder))
            folder_paths.filename_list_cache.pop(folder, None)


def _specs(env, type_):
    return wt.input_specs(env.mappings[type_].INPUT_TYPES())


pytest_comfy = pytest.mark.comfyui


@pytest_comfy
@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_node_type_exists(name, comfy_env):
    wf = _wf(name)
    missing = [t for t in wt.node_types(wf) if t not in wt.FRONTEND_ONLY and t not in comfy_env.mappings]
    assert missing == [], f"node types missing from ComfyUI {sys.modules['comfy_harness'].comfyui_version()}"


@pytest_comfy
@pytest.mark.parametrize("name", WORKFLOWS)
def test_widget_values_fit_the_node_inputs(name, comfy_env):
    wf = _wf(name)
    problems = []
    for node in wf["nodes"]:
        if node["type"] in wt.FRONTEND_ONLY:
            continue
        specs = _specs(comfy_env, node["type"])
        mapping = wt.map_widgets(node, specs)
        problems += mapping.problems
        for input_name, value in mapping.values.items():
            problems += wt.widget_value_problems(node, mapping.widgets[input_name], value)
        # only inputs a newer ComfyUI made optional may be left to their defaults
        problems += [f"node {node['id']} ({node['type']}): required widget {name!r} has no value"
                     for name in mapping.defaulted if mapping.widgets[name].required]
        by_name = {s.name: s for s in specs}
        # socket inputs named in the workflow exist on the node, with the same type
        for inp in node.get("inputs") or []:
            iname = (inp.get("widget") or {}).get("name") or inp["name"]
            spec = by_name.get(iname)
            if spec is None:
                problems.append(f"node {node['id']} ({node['type']}): no input named {iname!r}")
            elif not inp.get("widget") and not wt.types_match(inp.get("type"), spec.type_name) and \
                    inp.get("type") != spec.type_name:
                problems.append(f"node {node['id']} ({node['type']}): input {iname!r} is {spec.type_name}, "
                                f"the workflow says {inp.get('type')}")
        returns = list(comfy_env.mappings[node["type"]].RETURN_TYPES)
        for k, out in enumerate(node.get("outputs") or []):
            if k >= len(returns):
                problems.append(f"node {node['id']} ({node['type']}): has no output slot {k}")
            elif out.get("type") != returns[k]:
                problems.append(f"node {node['id']} ({node['type']}): output {k} is {returns[k]}, "
                                f"the workflow says {out.get('type')}")
    assert problems == []


@pytest_comfy
@pytest.mark.parametrize("name", WORKFLOWS)
def test_links_connect_matching_types(name, comfy_env):
    from comfy_execution.validation import validate_node_input

    wf = _wf(name)
    by_id = wt.nodes_by_id(wf)
    problems = []
    for link in wt.links_by_id(wf).values():
        src, dst = by_id[link.from_node], by_id[link.to_node]
        if src["type"] in wt.FRONTEND_ONLY or dst["type"] in wt.FRONTEND_ONLY:
            continue
        out_type = comfy_env.mappings[src["type"]].RETURN_TYPES[link.from_slot]
        inp = dst["inputs"][link.to_slot]
        iname = (inp.get("widget") or {}).get("name") or inp["name"]
        spec = next((s for s in _specs(comfy_env, dst["type"]) if s.name == iname), None)
        if spec is None:
            problems.append(f"link {link.id}: {dst['type']} has no input {iname!r}")
            continue
        in_type = spec.type_name if spec.is_combo else spec.type
        if not (wt.types_match(out_type, in_type) and validate_node_input(out_type, in_type)):
            problems.append(f"link {link.id}: {src['type']}[{link.from_slot}] is {out_type}, "
                            f"{dst['type']}.{iname} wants {in_type}")
    assert problems == []


@pytest_comfy
@pytest.mark.parametrize("name", WORKFLOWS)
def test_api_prompt_passes_comfyui_validation(name, comfy_env):
    import execution

    wf = _wf(name)
    prompt = wt.workflow_to_prompt(wf, lambda t: comfy_env.mappings[t].INPUT_TYPES())
    assert all(v["class_type"] not in wt.FRONTEND_ONLY for v in prompt.values())
    outputs = {k for k, v in prompt.items() if getattr(comfy_env.mappings[v["class_type"]], "OUTPUT_NODE", False)}
    assert outputs, "no output node"
    valid, error, good_outputs, node_errors = asyncio.run(
        execution.validate_prompt("sparse-vdit-workflow-test", prompt, None))
    assert valid is True, (error, node_errors)
    assert node_errors == {}
    assert set(good_outputs) == outputs


def test_every_template_has_its_picture_and_nothing_else_lies_beside_it():
    """ComfyUI's template browser shows <name>.jpg for a pack's template <name>.json."""
    names = set(os.listdir(wt.WORKFLOWS_DIR)) - {"raylight"}
    pictures = {name[:-4] + ".json" for name in names if name.endswith(".jpg")}
    assert pictures == set(WORKFLOWS) and names == set(WORKFLOWS) | {n[:-5] + ".jpg" for n in WORKFLOWS}
    for name in WORKFLOWS:
        with open(os.path.join(wt.WORKFLOWS_DIR, name[:-5] + ".jpg"), "rb") as f:
            assert f.read(3) == b"\xff\xd8\xff", f"{name}: its picture is not a JPEG"


def test_look_at_a_plan_needs_no_model_and_shows_the_plan_and_its_description():
    wf = _wf("Look at a plan (no model needed).json")
    assert not wt.model_files(wf) and not {n["type"] for n in wf["nodes"]} & set(wt.MODEL_LOADERS)
    (load,) = _nodes_of(wf, "SparseVDiTLoadPlan")
    (prev,) = _nodes_of(wf, "SparseVDiTPlanPreview")
    (image,) = _nodes_of(wf, "PreviewImage")
    (text,) = _nodes_of(wf, "PreviewAny")
    assert load["widgets_values"] == ["wan2.1-1.3b_static-baseline.json"]
    assert wt.upstream(wf, prev["id"], "plan") == (load, 0)
    assert wt.upstream(wf, image["id"], "images") == (prev, 0)
    assert wt.upstream(wf, text["id"], "source") == (load, 1)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_notes_follow_the_readme_on_triton_and_on_which_plan(name):
    wf = _wf(name)
    text = "\n".join(str(v) for n in wf["nodes"] if n["type"] in wt.NOTE_TYPES for v in n.get("widgets_values") or [])
    assert "pip install triton" not in text  # Linux torch brings Triton; Windows needs triton-windows
    if _nodes_of(wf, "SparseVDiTPatch"):
        assert "triton-windows" in text and "not calibrated on any model" in text and "`auto`" in text
        assert "no HunyuanVideo plan ships" not in text

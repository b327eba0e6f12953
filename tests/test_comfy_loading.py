"""ComfyUI loads the pack from custom_nodes/ under any folder name."""
import asyncio
import os
import shutil

import pytest

pytestmark = pytest.mark.comfyui

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loads_as_a_custom_node_under_an_odd_folder_name(comfy, tmp_path):
    import nodes

    target = tmp_path / "custom_nodes" / "My Sparse.vDiT pack-2"
    shutil.copytree(PACK, target, ignore=shutil.ignore_patterns(".git", "tests", "benchmarks", "__pycache__", "*.egg-info"))
    assert asyncio.run(nodes.load_custom_node(str(target)))
    node = nodes.NODE_CLASS_MAPPINGS["SparseVDiTPatch"]
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["SparseVDiTPatch"] == "Sparse-vDiT Patch"
    assert node.__module__.startswith(str(target).replace(".", "_x_"))  # the copy, not the installed package
    inputs = node.GET_SCHEMA().inputs
    plan_input = next(i for i in inputs if i.id == "plan")
    assert "wan2.1-1.3b_static-baseline.json" in plan_input.options
    assert {".json"} == comfy.folder_paths.folder_names_and_paths["sparse_vdit_plans"][1]

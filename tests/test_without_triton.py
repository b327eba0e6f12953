"""The pack without Triton: Windows without triton-windows, macOS, any venv
that never had it (requirements.txt asks for Triton only where a wheel
exists, so such installs are expected).

A subprocess makes ``import triton`` fail (``sys.modules["triton"] = None``:
``import`` raises ModuleNotFoundError and ``importlib.util.find_spec``
answers None, as on a machine without it), so this runs whether or not
Triton is installed here. In it:

- every module of the pack imports (the ComfyUI nodes too when
  ``$COMFYUI_PATH`` is set), and the kernel bridge says it cannot serve, so
  the dispatcher takes the dense / reference path;
- the demo test and the override's routing tests pass, and (an integration
  test) ComfyUI loads the pack and the Patch node integration tests pass.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import comfy_harness

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)

#: the demo and the hook without ComfyUI
PLAIN_TESTS = ["test_demo.py", "test_sparse_patch.py"]
#: the pack loaded by a real ComfyUI and its Patch node sampling a tiny Wan
NODE_TESTS = ["test_comfy_loading.py", "test_integration_patch.py"]

IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
sys.modules["triton"] = None  # as if it were not installed
import torch
with_comfy = %(with_comfy)r
if with_comfy:  # the nodes import comfy / comfy_api
    sys.path.insert(0, %(tests)r)
    import comfy_harness
    comfy_harness.import_comfy()
import sparse_vdit
names = []
for info in pkgutil.walk_packages(sparse_vdit.__path__, "sparse_vdit."):
    if not with_comfy and info.name.startswith("sparse_vdit.nodes"):
        continue
    importlib.import_module(info.name)
    names.append(info.name)
from sparse_vdit.kernels import triton_backend, triton_sparse
assert triton_sparse.triton is None, "triton was imported after all"
assert not triton_backend.can_serve(torch.zeros(1, 8, 2, 64, dtype=torch.float16))
assert "triton" not in sys.modules or sys.modules["triton"] is None
print("imported", len(names), "modules without triton")
"""

RUN_TESTS = """
import sys
sys.modules["triton"] = None  # as if it were not installed
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def _run(code: str, *args: str, with_comfy: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)  # the inner run picks its own tests
    if not with_comfy:  # a run of plain tests: no ComfyUI, and none required
        for name in (comfy_harness.ENV_VAR, "SPARSE_VDIT_REQUIRE_COMFYUI"):
            env.pop(name, None)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_every_module_imports_and_the_kernel_declines_without_triton():
    with_comfy = comfy_harness.comfyui_path() is not None
    done = _run(IMPORT_EVERYTHING % {"with_comfy": with_comfy, "tests": TESTS_DIR})
    assert done.returncode == 0, done.stdout + done.stderr
    count = int(done.stdout.split("imported ", 1)[1].split()[0])
    assert count >= 20, done.stdout  # the walk found the pack's modules, not an empty package


def _tests_pass_without_triton(names, with_comfy: bool):
    files = [os.path.join(TESTS_DIR, name) for name in names]
    done = _run(RUN_TESTS, "-q", "-p", "no:cacheprovider", "-m", "not gpu", *files, with_comfy=with_comfy)
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    last = done.stdout.strip().splitlines()[-1]  # pytest's own closing line
    assert " passed" in last and "failed" not in last and "error" not in last, tail


def test_demo_and_routing_tests_pass_without_triton():
    _tests_pass_without_triton(PLAIN_TESTS, with_comfy=False)


@pytest.mark.comfyui
def test_node_tests_pass_without_triton():
    _tests_pass_without_triton(NODE_TESTS, with_comfy=True)

"""Shared pytest setup.

- ``comfy`` fixture (session): the namespace from
  ``comfy_harness.import_comfy()`` for the checkout in ``$COMFYUI_PATH``;
  skips the test when no checkout is configured.
- ``tiny_wan`` fixture: a fresh tiny Wan2.1 ModelPatcher (seed 0) per test.
- Tests marked ``comfyui`` skip without ``$COMFYUI_PATH``; tests marked ``gpu``
  skip without CUDA.

When ``$COMFYUI_PATH`` is set, ComfyUI is imported once at configure time
(before test modules are collected), so test modules and the pack's ComfyUI
glue may import ``comfy`` / ``comfy_api`` at module level. A configured
checkout that fails to import makes every test that needs it fail (not skip).
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import comfy_harness  # noqa: E402

NO_COMFY_REASON = "set COMFYUI_PATH to a ComfyUI checkout to run integration tests"

_comfy_ns = None
_comfy_error: BaseException | None = None


def pytest_configure(config):
    global _comfy_ns, _comfy_error
    if comfy_harness.comfyui_path():
        try:
            _comfy_ns = comfy_harness.import_comfy()
        except BaseException as e:  # noqa: BLE001 - reported by the fixture
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            _comfy_error = e


def pytest_report_header(config):
    path = comfy_harness.comfyui_path()
    if not path:
        return f"comfyui: not configured ({NO_COMFY_REASON})"
    if _comfy_error is not None:
        return f"comfyui: FAILED to import {path}: {_comfy_error!r}"
    stub = ", torchvision stubbed" if _comfy_ns.torchvision_stubbed else ""
    return f"comfyui: {_comfy_ns.version} at {path}{stub}"


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    no_comfy = pytest.mark.skip(reason=NO_COMFY_REASON)
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    have_comfy = comfy_harness.comfyui_path() is not None
    have_gpu = None
    for item in items:
        if not have_comfy and "comfyui" in item.keywords:
            item.add_marker(no_comfy)
        if "gpu" in item.keywords:
            if have_gpu is None:
                have_gpu = _cuda_available()
            if not have_gpu:
                item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def comfy():
    """Namespace of imported ComfyUI modules (see comfy_harness.import_comfy)."""
    if not comfy_harness.comfyui_path():
        pytest.skip(NO_COMFY_REASON)
    if _comfy_error is not None:
        pytest.fail(
            f"COMFYUI_PATH={comfy_harness.comfyui_path()} could not be imported: {_comfy_error!r}",
            pytrace=False,
        )
    return _comfy_ns if _comfy_ns is not None else comfy_harness.import_comfy()


@pytest.fixture
def tiny_wan(comfy):
    """A fresh tiny Wan2.1 ModelPatcher (seed 0, 2 layers, 4 heads x 16)."""
    return comfy_harness.tiny_wan_model(seed=0)

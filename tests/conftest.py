"""Shared pytest setup.

- ``comfy`` fixture (session): the namespace from
  ``comfy_harness.import_comfy()`` for the checkout in ``$COMFYUI_PATH``;
  skips the test when no checkout is configured.
- ``tiny_wan`` fixture: a fresh tiny Wan2.1 ModelPatcher (seed 0) per test.
- Tests marked ``comfyui`` (and any test using the ``comfy`` fixture, which
  gets the marker here) skip without ``$COMFYUI_PATH``; tests marked ``gpu``
  skip without CUDA.
- The run ends with one line on the integration tests: how many ran, and how
  many skipped and why.
- ``SPARSE_VDIT_REQUIRE_COMFYUI=1`` (set by .ci/run): integration tests must
  run. No ``$COMFYUI_PATH`` stops the run at once; an integration test that
  skips fails instead (so does a test module skipped whole at collection);
  a run in which no integration test ran fails.

When ``$COMFYUI_PATH`` is set, ComfyUI is imported once at configure time
(before test modules are collected), so test modules and the pack's ComfyUI
glue may import ``comfy`` / ``comfy_api`` at module level. A configured
checkout that fails to import makes every test that needs it fail (not skip).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import comfy_harness  # noqa: E402

NO_COMFY_REASON = "set COMFYUI_PATH to a ComfyUI checkout to run integration tests"
REQUIRE_ENV = "SPARSE_VDIT_REQUIRE_COMFYUI"
MARKER = "comfyui"

_comfy_ns = None
_comfy_error: BaseException | None = None
#: integration test outcomes of this run: nodeid -> ("passed" | "failed" | "skipped", skip reason)
_integration: dict[str, tuple[str, str]] = {}


def require_comfyui() -> bool:
    """Whether integration tests must run (CI): see the module docstring."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def pytest_configure(config):
    global _comfy_ns, _comfy_error
    if require_comfyui() and not comfy_harness.comfyui_path():
        raise pytest.UsageError(f"{REQUIRE_ENV}=1 but COMFYUI_PATH is not set: integration tests cannot run")
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
    stubs = [name for name, stubbed in (("torchvision", _comfy_ns.torchvision_stubbed),
                                        ("torchaudio", _comfy_ns.torchaudio_stubbed)) if stubbed]
    stub = f", {' and '.join(stubs)} stubbed" if stubs else ""
    required = f", {REQUIRE_ENV}=1: integration tests may not skip" if require_comfyui() else ""
    return f"comfyui: {_comfy_ns.version} at {path}{stub}{required}"


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
        if "comfy" in getattr(item, "fixturenames", ()) and MARKER not in item.keywords:
            item.add_marker(MARKER)  # it needs ComfyUI, so it is an integration test
        if not have_comfy and MARKER in item.keywords:
            item.add_marker(no_comfy)
        if "gpu" in item.keywords:
            if have_gpu is None:
                have_gpu = _cuda_available()
            if not have_gpu:
                item.add_marker(no_gpu)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if MARKER not in item.keywords:
        return
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if require_comfyui():
            report.outcome = "failed"
            report.longrepr = (f"integration test skipped, which {REQUIRE_ENV}=1 forbids "
                               f"(COMFYUI_PATH={comfy_harness.comfyui_path()}): {reason}")
            _integration[item.nodeid] = ("failed", "")
        else:
            _integration[item.nodeid] = ("skipped", reason)
    elif report.failed:
        _integration[item.nodeid] = ("failed", "")
    elif report.when == "call" and item.nodeid not in _integration:
        _integration[item.nodeid] = ("passed", "")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # a module skipped whole (module-level skip / importorskip) hides its integration tests
    outcome = yield
    report = outcome.get_result()
    if require_comfyui() and report.skipped:
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"test module skipped at collection, which {REQUIRE_ENV}=1 forbids: {reason}"


def pytest_sessionfinish(session, exitstatus):
    ran = sum(1 for outcome, _ in _integration.values() if outcome != "skipped")
    if require_comfyui() and ran == 0 and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def integration_summary() -> list[str]:
    """Lines on this run's integration tests: counts, then each skip reason."""
    if not _integration:
        return [f"no integration test ran, which {REQUIRE_ENV}=1 forbids"] if require_comfyui() else []
    counts = Counter(outcome for outcome, _ in _integration.values())
    where = comfy_harness.comfyui_path()
    version = comfy_harness.comfyui_version(where) if where else None
    against = f"against ComfyUI {version or '?'} at {where}" if where else "no COMFYUI_PATH"
    lines = [f"integration tests (marker {MARKER}, {against}): {counts['passed']} passed, "
             f"{counts['failed']} failed, {counts['skipped']} skipped"]
    reasons = Counter(reason for outcome, reason in _integration.values() if outcome == "skipped")
    lines += [f"  {n} skipped: {reason}" for reason, n in reasons.most_common()]
    if require_comfyui() and counts["passed"] + counts["failed"] == 0:
        lines.append(f"  no integration test ran, which {REQUIRE_ENV}=1 forbids")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = integration_summary()
    if lines:
        terminalreporter.section("integration tests", sep="-")
        for line in lines:
            terminalreporter.write_line(line)


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

"""conftest's bookkeeping of integration tests, run on a throw-away test
folder in a subprocess (no ComfyUI needed):

- without ``$COMFYUI_PATH`` integration tests skip, and the run ends with a
  line saying how many and why;
- with ``SPARSE_VDIT_REQUIRE_COMFYUI=1`` (CI) a skipped integration test, a
  test module skipped whole, or a run in which no integration test ran fails,
  and a missing ``$COMFYUI_PATH`` stops the run.

The configured "checkout" is an empty folder: it fails to import, which only
the ``comfy`` fixture would report; the tests here do not use it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

SAMPLE_TESTS = '''
import pytest

@pytest.mark.comfyui
def test_runs():
    pass

@pytest.mark.comfyui
def test_skips_inside():
    pytest.skip("frontend not installed")

def test_plain():
    pass
'''

SKIPPED_MODULE = '''
import pytest
pytest.importorskip("no_such_module_for_sparse_vdit")
'''

PLAIN_ONLY = '''
def test_plain():
    pass
'''

INI = """[pytest]
addopts = -p no:cacheprovider
markers =
    comfyui: needs ComfyUI
    gpu: needs a GPU
"""


@pytest.fixture
def folder(tmp_path):
    for name in ("conftest.py", "comfy_harness.py"):
        shutil.copy(os.path.join(TESTS_DIR, name), tmp_path / name)
    (tmp_path / "pytest.ini").write_text(INI)
    return tmp_path


@pytest.fixture
def checkout(tmp_path_factory):
    """A configured COMFYUI_PATH that is no ComfyUI (nothing here imports it)."""
    return str(tmp_path_factory.mktemp("empty_checkout"))


def run(folder, files: dict[str, str], comfyui: str | None, require: bool):
    for name, text in files.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMFYUI_PATH", "SPARSE_VDIT_REQUIRE_COMFYUI", "PYTEST_ADDOPTS")}
    if comfyui is not None:
        env["COMFYUI_PATH"] = comfyui
    if require:
        env["SPARSE_VDIT_REQUIRE_COMFYUI"] = "1"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "--continue-on-collection-errors", *files], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_without_comfyui_the_run_says_what_it_skipped_and_why(folder):
    rc, out = run(folder, {"test_sample.py": SAMPLE_TESTS}, comfyui=None, require=False)
    assert rc == 0, out
    assert "integration tests (marker comfyui, no COMFYUI_PATH): 0 passed, 0 failed, 2 skipped" in out
    assert "2 skipped: set COMFYUI_PATH to a ComfyUI checkout to run integration tests" in out


def test_configured_run_counts_its_own_skips(folder, checkout):
    rc, out = run(folder, {"test_sample.py": SAMPLE_TESTS}, comfyui=checkout, require=False)
    assert rc == 0, out
    assert "1 passed, 0 failed, 1 skipped" in out
    assert "1 skipped: frontend not installed" in out


def test_required_run_fails_skipped_integration_tests_and_skipped_modules(folder, checkout):
    rc, out = run(folder, {"test_sample.py": SAMPLE_TESTS, "test_gone.py": SKIPPED_MODULE},
                  comfyui=checkout, require=True)
    assert rc == 1, out
    assert "FAILED test_sample.py::test_skips_inside" in out
    assert "SPARSE_VDIT_REQUIRE_COMFYUI=1 forbids" in out and "frontend not installed" in out
    assert "test module skipped at collection" in out and "no_such_module_for_sparse_vdit" in out
    assert "PASSED test_sample.py::test_runs" in out


def test_required_run_fails_when_no_integration_test_ran(folder, checkout):
    rc, out = run(folder, {"test_plain_only.py": PLAIN_ONLY}, comfyui=checkout, require=True)
    assert rc == 1, out
    assert "1 passed" in out


def test_required_run_without_a_checkout_stops_at_once(folder):
    rc, out = run(folder, {"test_sample.py": SAMPLE_TESTS}, comfyui=None, require=True)
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "COMFYUI_PATH is not set" in out

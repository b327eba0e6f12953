"""What ComfyUI-Manager installs (`pip install -r requirements.txt`) is the
pack's dependency list, and on no platform does it touch torch or Triton.

pip's resolver cannot check the markers for another platform (``--platform``
changes the wheels it picks, not the markers it evaluates), so they are
evaluated here for each platform ComfyUI users run; .ci/run then has pip
resolve the list for the Windows, macOS and Linux wheel tags.
"""
from __future__ import annotations

import os

import pytest
from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: a user's torch stack: the pack never installs, upgrades or pins these
USER_OWNED = {"torch", "torchvision", "torchaudio", "triton", "triton-windows", "pytorch-triton"}

#: marker environments of the platforms ComfyUI users run (portable Windows build, Apple silicon, Linux)
PLATFORMS = {
    "windows": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                "os_name": "nt"},
    "macos": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
              "os_name": "posix"},
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                      "os_name": "posix"},
}


def requirements_txt() -> list[Requirement]:
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [Requirement(line) for line in lines if line]


def pyproject_dependencies() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]


def test_requirements_txt_is_the_pyproject_dependency_list():
    assert sorted(map(str, requirements_txt())) == sorted(map(str, pyproject_dependencies()))


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_no_platform_installs_torch_or_triton(platform):
    env = {"python_version": "3.12", "python_full_version": "3.12.0", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", **PLATFORMS[platform]}
    applied = [r for r in requirements_txt() if r.marker is None or r.marker.evaluate(env)]
    assert applied, "nothing would be installed: the list was not read"
    assert {r.name.lower() for r in applied} & USER_OWNED == set()


def test_the_marker_check_sees_a_platform_specific_line():
    """Negative control: a triton line for Windows is caught on Windows only."""
    env = {"python_version": "3.12", **PLATFORMS["windows"]}
    req = Requirement('triton-windows; sys_platform == "win32"')
    assert req.marker.evaluate(env) and not req.marker.evaluate({**env, **PLATFORMS["macos"]})

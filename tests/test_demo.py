"""The main job runs on the CPU and its search finds the planted modes; the
command line says what is wrong in one sentence, before any work."""
import os
import subprocess
import sys

import pytest
import torch

from sparse_vdit import demo, demo_setup
from sparse_vdit.demo import run_demo
from sparse_vdit.patterns import Geometry


def test_demo_finds_planted_modes_and_stays_close_to_dense(capsys):
    result = run_demo("cpu", Geometry(3, 16, 24), repeats=1)
    assert result["hits"] == 12
    assert max(error for *_, error, _ in result["rows"]) < 1e-3
    assert 0 < result["density"] < 0.5
    assert "found the planted mode for 12 of 12 heads" in capsys.readouterr().out


def test_command_line_usage():
    bad = subprocess.run([sys.executable, "-m", "sparse_vdit", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stdout


def fake_comfyui(root):
    (root / "comfy").mkdir(parents=True)
    (root / "comfy" / "model_management.py").write_text("")
    (root / "requirements.txt").write_text("psutil\n")
    return root


def refused(capsys, *argv):
    """main(argv) exits 2 before any work; returns its one error line."""
    with pytest.raises(SystemExit) as stop:
        demo.main(list(argv))
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Any demo actually starting fails the test."""
    def started(*args, **kwargs):
        raise AssertionError("the demo started")
    monkeypatch.setattr(demo, "run_demo", started)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)


def test_a_comfyui_path_that_is_not_a_comfyui_tree_names_it(capsys, no_work, monkeypatch, tmp_path):
    assert "--comfyui /nonexistent: not a ComfyUI tree" in refused(capsys, "--comfyui", "/nonexistent")
    assert f"--comfyui {tmp_path}: not a ComfyUI tree" in refused(capsys, "--planted", "--comfyui", str(tmp_path))
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "gone"))
    assert f"COMFYUI_PATH {tmp_path / 'gone'}: not a ComfyUI tree" in refused(capsys)


def test_missing_comfyui_packages_are_named_with_the_install_command(capsys, no_work, monkeypatch, tmp_path):
    comfyui = fake_comfyui(tmp_path / "ComfyUI")
    monkeypatch.setattr(demo_setup, "COMFY_MODULES", {"psutil_not_here_x": "psutil", "torchsde_not_here_x": "torchsde",
                                                       "os": "os"})
    line = refused(capsys, "--comfyui", str(comfyui))
    assert "missing here: psutil, torchsde" in line and f"pip install -r {comfyui / 'requirements.txt'}" in line


@pytest.mark.parametrize("argv, says", [
    (["--device", "gpu"], "--device gpu: use auto, cpu or cuda"),
    (["--device", "cuda:1"], "--device cuda:1: use auto, cpu or cuda"),
    (["--grid", "1,2"], "--grid 1,2: give three positive whole numbers"),
    (["--grid", "0,4,4"], "--grid 0,4,4: give three positive whole numbers"),
    (["--grid", "a,b,c"], "--grid a,b,c: give three positive whole numbers"),
    (["--repeats", "0"], "--repeats 0: at least 1"),
    (["--out", "result.txt"], "--out result.txt: give an image file name ending in .png"),
])
def test_bad_arguments_are_refused_in_one_sentence(capsys, no_work, argv, says):
    assert says in refused(capsys, "--planted", *argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without CUDA")
def test_cuda_on_a_cpu_torch_is_refused(capsys, no_work):
    assert "--device cuda: torch" in refused(capsys, "--planted", "--device", "cuda")


def test_the_comfyui_around_a_custom_nodes_checkout_is_found(tmp_path, monkeypatch):
    comfyui = fake_comfyui(tmp_path / "ComfyUI")
    pack = comfyui / "custom_nodes" / "ComfyUI-Sparse-vDiT"
    pack.mkdir(parents=True)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    assert demo_setup.find_comfyui(None, pack_root=str(pack)) == str(comfyui)
    assert demo_setup.find_comfyui(None, pack_root=str(tmp_path / "elsewhere")) is None
    # the default picture: ./output, and never inside the pack (there: the output folder of its ComfyUI)
    assert demo_setup.default_out("x.png", cwd=str(tmp_path)) == str(tmp_path / "output" / "x.png")
    assert demo_setup.default_out("x.png", cwd=str(pack), pack_root=str(pack)) == str(comfyui / "output" / "x.png")
    inside = demo_setup.default_out("x.png", cwd=demo_setup.PACK_ROOT)
    assert not os.path.realpath(inside).startswith(os.path.realpath(demo_setup.PACK_ROOT) + os.sep)


def test_out_is_a_file_the_planted_demo_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(demo_setup, "comfyui_around", lambda *a: None)
    target = tmp_path / "new folder" / "result.png"
    assert demo.main(["--planted", "--device", "cpu", "--grid", "2,8,16", "--out", str(target)]) == 0
    assert target.is_file() and not (tmp_path / "result.png").exists()
    assert f"image: {target}" in capsys.readouterr().out
    # an existing folder gets the default name inside it
    assert demo_setup.out_path(str(tmp_path), "d.png") == str(tmp_path / "d.png")


def test_the_strip_is_labelled(tmp_path):
    import importlib

    sys.path.insert(0, os.path.join(demo_setup.PACK_ROOT, "yardstick"))
    try:
        strip_module = importlib.import_module("yardstick_demo")
    finally:
        sys.path.pop(0)
    latents = torch.zeros(1, 16, 2, 8, 8)
    image = strip_module._strip(latents, latents + 0.5)
    assert strip_module.STRIP_LABELS == ("dense", "sparse", "difference x4")
    assert image.height == 3 * 8 * 4 and image.width == strip_module.LABEL_W + 2 * 8 * 4
    for row in range(3):  # ink in the label column of every row
        band = image.crop((0, row * 32, strip_module.LABEL_W, (row + 1) * 32)).convert("L")
        assert band.getextrema()[0] < 128


def test_runs_as_a_file_from_a_custom_nodes_checkout_without_installing(tmp_path):
    """`python demo.py` in ComfyUI/custom_nodes/<any name>, sparse_vdit not importable."""
    import shutil

    pack = tmp_path / "custom_nodes" / "Any-Folder-Name"
    shutil.copytree(demo_setup.PACK_ROOT, pack, ignore=shutil.ignore_patterns(".git", "tests", "benchmarks", "yardstick",
                                                                               "__pycache__", "workflows", "docs"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_PATH")}
    done = subprocess.run([sys.executable, "demo.py", "--planted", "--device", "cpu", "--grid", "2,8,16",
                           "--out", str(tmp_path / "p.png")], cwd=pack, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "found the planted mode" in done.stdout and (tmp_path / "p.png").is_file()

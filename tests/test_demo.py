"""The main job runs on the CPU and its search finds the planted modes."""
import subprocess
import sys

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

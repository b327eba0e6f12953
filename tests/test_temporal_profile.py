"""yardstick/temporal_profile.py: the per-distance mass is right on inputs whose
answer is known, and the script runs end to end on wan480's tiny size."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "yardstick"))


def test_mass_by_distance_uniform_and_frame_local():
    from temporal_profile import mass_by_distance

    frames, per_frame, dim = 5, 3, 8
    q = torch.zeros(2, frames * per_frame, dim)
    uniform = mass_by_distance(q, q.clone(), per_frame, frames)  # every key gets 1 / tokens
    assert torch.allclose(uniform, torch.full((2, frames), 1.0 / (frames * per_frame)))
    # one-hot frame codes, scaled: a query attends almost only to its own frame
    codes = torch.nn.functional.one_hot(torch.arange(frames * per_frame) // per_frame, dim).float() * 40.0
    local = mass_by_distance(codes[None], codes[None], per_frame, frames)[0]
    assert local[0] > 0.3 and (local[1:] < 1e-3).all()
    assert torch.isclose(local[0] * per_frame, torch.tensor(1.0), atol=1e-3)  # its own frame holds the mass


@pytest.mark.comfyui
def test_profile_runs_on_the_tiny_size(comfy, tmp_path):
    import comfy_harness
    import ys_model
    from ys_sizes import WAN480_TINY

    model = ys_model.build_model(size=WAN480_TINY, seed=3)
    weights = str(tmp_path / "w.safetensors")
    ys_model.save_weights(model, weights, quant="int4")
    done = subprocess.run([sys.executable, os.path.join(REPO, "yardstick", "temporal_profile.py"), "--size",
                           "wan480-tiny", "--weights", weights, "--frames", "4", "--height", "8", "--width", "8",
                           "--comfyui", comfy_harness.comfyui_path(), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "yardstick_wan480-tiny_temporal_profile.json").read_text())
    assert report["latent"] == [4, 8, 8] and report["short_clip_frames"] == 2
    for layers in report["profiles"].values():
        assert len(layers) == WAN480_TINY.config["num_layers"]
        assert all(len(row) == 4 and row[0] == pytest.approx(1.0) and min(row) > 0 for row in layers)
    assert "first-phase clips: |dt| <= 1" in done.stdout
    assert len(report["near_share"]["0.9"]) == WAN480_TINY.config["num_layers"]


def test_near_share_counts_frames_at_each_distance():
    from temporal_profile import near_share

    assert near_share([1.0] * 5, 5, 4) == pytest.approx(1.0)
    # uniform in time over 5 frames: the +-1 window holds 1 + 2 * 4 / 5 of 1 + 2 * (4 + 3 + 2 + 1) / 5 frames
    assert near_share([1.0] * 5, 5, 1) == pytest.approx((1 + 8 / 5) / (1 + 20 / 5))
    assert near_share([1.0, 0, 0, 0, 0], 5, 0) == pytest.approx(1.0)

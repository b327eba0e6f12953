"""How a yardstick layer's attention falls off with the distance in frames.

For each self-attention layer (mean over its heads), the attention mass a
query gives one key token at temporal distance |dt| frames, relative to a key
token in the query's own frame (1.00 at dt 0). A head local in time falls off
and stays low; a head that was trained only on short clips (wan480's first
phase: 7 frames, so |dt| <= 6) has never seen the larger distances that the
full 21-frame grid brings, and rotary positions there can alias: the profile
rises again at distances it was not trained on. Such heads look dense to the
census at 21 frames though they are local where they were trained.

The spatial grid is kept small (the relative spatial offsets stay within the
trained range); one sample of ys_scenes data at each sigma, noised as in
training, prompt 0.

    python yardstick/temporal_profile.py --comfyui PATH [--size wan480] [--frames 21] [--out DIR]

Prints one row per layer and sigma, the trained range marked, and writes
DIR/yardstick_SIZE_temporal_profile.json when --out is given.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import ys_data as data
import ys_model as ymodel
from ys_sizes import size_named


def mass_by_distance(q: torch.Tensor, k: torch.Tensor, per_frame: int, frames: int) -> torch.Tensor:
    """[heads, frames]: mean attention mass per key token at each |dt|, q / k [heads, tokens, dim]."""
    p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    t = torch.arange(q.shape[1], device=q.device) // per_frame
    dt = (t[None, :] - t[:, None]).abs().flatten()
    mass = torch.zeros(q.shape[0], frames, dtype=p.dtype, device=p.device).index_add_(1, dt, p.flatten(1))
    return mass / torch.bincount(dt, minlength=frames).to(p.dtype)  # per (query, key) pair at each distance


def near_share(row: list, frames: int, radius: int) -> float:
    """Share of a query's attention mass within +-radius frames, from one relative profile row
    (a query has 2 (T - d) / T key frames at distance d > 0 on average, one at d = 0)."""
    count = [1.0] + [2.0 * (frames - d) / frames for d in range(1, frames)]
    total = sum(m * c for m, c in zip(row, count))
    return sum(m * c for m, c in zip(row[:radius + 1], count[:radius + 1])) / total


def profile(net, wan_module, size, latent, sigmas, seed: int = 5) -> dict:
    """{sigma: [[layer's relative mass at dt 0..frames-1], ...]} for prompt 0."""
    frames, height, width = latent
    per_frame = (height // 2) * (width // 2)
    rows: list = []
    original = wan_module.optimized_attention

    def spy(q, k, v, heads, **kwargs):
        if q.shape[1] == k.shape[1]:  # self-attention (cross-attention keys are the prompt)
            b, s, _ = q.shape
            qh = q[:1].reshape(1, s, heads, -1)[0].transpose(0, 1).float()
            kh = k[:1].reshape(1, s, heads, -1)[0].transpose(0, 1).float()
            m = mass_by_distance(qh, kh, per_frame, frames).mean(0)
            rows.append((m / m[0]).tolist())
        return original(q, k, v, heads=heads, **kwargs)

    x0 = data.make_videos("scenes", [0], seed=seed, latent=latent)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    cond = ymodel.conditioning(size)[[0]]
    result = {}
    wan_module.optimized_attention = spy
    try:
        for sigma in sigmas:
            rows.clear()
            with torch.no_grad():
                net((sigma * noise + (1 - sigma) * x0), torch.tensor([sigma * 1000.0]), cond, transformer_options={})
            result[str(sigma)] = [list(r) for r in rows]
    finally:
        wan_module.optimized_attention = original
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--size", default="wan480")
    ap.add_argument("--weights", default=None, help="default: the size's committed weights")
    ap.add_argument("--frames", type=int, default=0, help="0: the size's full grid")
    ap.add_argument("--height", type=int, default=16, help="latent height (small: the question is time)")
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--sigmas", default="0.9,0.5")
    ap.add_argument("--near", type=int, default=2, help="report the mass share within +-NEAR frames")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    size = size_named(args.size)
    frames = args.frames or size.latent[0]
    trained = (size.short_latent or size.latent)[0]
    ymodel.import_comfy(args.comfyui, cpu=True)
    import comfy.ldm.wan.model as wan_module

    weights = args.weights or ymodel.weights_path(size)
    net = ymodel.load_patcher(weights, dtype=torch.float32).model.diffusion_model
    sigmas = [float(s) for s in args.sigmas.split(",")]
    result = profile(net, wan_module, size, (frames, args.height, args.width), sigmas)
    report = {"size": size.name, "weights": os.path.basename(weights), "latent": [frames, args.height, args.width],
              "short_clip_frames": trained, "profiles": result, "near_radius": args.near,
              "near_share": {s: [near_share(r, frames, args.near) for r in rows] for s, rows in result.items()},
              "uniform_near_share": near_share([1.0] * frames, frames, args.near),
              "meaning": "per layer (mean over heads): attention mass per key token at |dt| frames, over dt 0"}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"yardstick_{size.name}_temporal_profile.json"), "w") as f:
            json.dump(report, f, indent=1)
    header = " ".join(f"{d:>4}" for d in range(frames))
    print(f"attention mass per key token by |dt| frames, over dt 0 (first-phase clips: |dt| <= {trained - 1}); "
          f"last column: share of the mass within +-{args.near} frames (uniform in time: "
          f"{report['uniform_near_share']:.2f})")
    for sigma, layers in result.items():
        print(f"sigma {sigma}   layer  {header}  near")
        for i, row in enumerate(layers):
            print(f"{'':>10}{i:>5}  " + " ".join(f"{v:4.2f}" for v in row) + f"  {report['near_share'][sigma][i]:.2f}")
    return report


if __name__ == "__main__":
    main()

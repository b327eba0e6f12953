"""Does a pooled tail make routed heads better on real heads? (issue 23)

On a trained yardstick (ComfyUI's WanModel, yardstick/), sample dense with
ComfyUI as calibration does (prompts 0-3, the size's cfg, euler / simple,
20 steps, only up to the last probed step) with the pack's calibration hook
installed, and at the probed steps score every layer's self-attention call:
  - the paper's fixed candidates (menu "standard"), exactly as calibration
    scores them (plans/calibrator.py -> plans/scoring.py),
  - routed heads at each share, selected as kernels/routing.py selects
    (routed_block_masks), without and with the pooled tail, in float64
    against float64 dense (kernels/routed_tail_reference.py), on the same
    sampled query blocks.
Errors are in calibration's unit (plans/search.py: squared error over 1% of
the layer's dense output power, worst probed step per head).

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/routed_tail.py [--size video|tiny]
        [--probe-steps 4,10,16] [--query-fraction 0.1] [--results DIR]

Writes DIR/routed_tail_<size>.json and .md and prints a short table last.
Needs sparse_vdit importable (PYTHONPATH holding a link to the repository).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "yardstick"))

import ys_common as common  # noqa: E402
import ys_model as ymodel  # noqa: E402
from ys_sizes import size_named  # noqa: E402

from sparse_vdit.kernels.routed_tail_reference import routed_tail_attention64  # noqa: E402
from sparse_vdit.kernels.routing import routed_block_masks  # noqa: E402
from sparse_vdit.patterns import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N  # noqa: E402
from sparse_vdit.plans.atomic import atomic_write_text  # noqa: E402
from sparse_vdit.plans.calibrator import Calibrator  # noqa: E402
from sparse_vdit.plans.candidates import MENUS, Candidate  # noqa: E402
from sparse_vdit.plans.cost import block_share_costs  # noqa: E402
from sparse_vdit.plans.scoring import sampled_query_blocks  # noqa: E402
from sparse_vdit.plans.search import normalised_errors  # noqa: E402

SHARES = (0.05, 0.1, 0.2, 0.3)
MENU = "standard"
VARIANTS = ("no_tail", "tail")


def routed_tail_sq_err(q, k, v, geometry, shares, query_blocks) -> torch.Tensor:
    """float64 [H, S, 2]: mean squared error against dense of each head
    routed at each share, without / with the tail, on these query blocks."""
    routed = [routed_block_masks(q, k, geometry, s, DEFAULT_BLOCK_M, DEFAULT_BLOCK_N) for s in shares]
    masks = torch.stack([torch.ones_like(routed[0])] + routed)  # the first, all blocks, is dense
    out = routed_tail_attention64(q, k, v, masks, DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, query_blocks=query_blocks)
    dense = out.no_tail[0]
    err = [(x[1:] - dense).pow(2).mean(dim=(1, 2, 4)) for x in (out.no_tail, out.tail)]  # [S, H] each
    return torch.stack(err, -1).transpose(0, 1)


class TailCalibrator(Calibrator):
    """Calibration's scoring of the fixed candidates, plus the routed
    heads without / with the tail on the same calls and query blocks."""

    def __init__(self, *args, shares=SHARES, **kwargs):
        super().__init__(*args, **kwargs)
        self.shares = tuple(shares)
        self.tail_sq_err = torch.zeros(*self._sq_err.shape[:3], len(self.shares), 2, dtype=torch.float64)

    def record(self, probe, layer, q, k, v, geometry=None):
        start = time.perf_counter()
        super().record(probe, layer, q, k, v, geometry)
        geometry = geometry or self.geometry
        blocks = sampled_query_blocks(-(-geometry.seq_len // DEFAULT_BLOCK_M), self.query_fraction)
        self.tail_sq_err[probe, layer] += routed_tail_sq_err(q, k, v, geometry, self.shares, blocks)
        print(f"step {self.probe_steps[probe]} layer {layer}: scored {len(blocks)} query blocks of a batch of "
              f"{q.shape[0]} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def measure(patcher, size, probe_at, query_fraction, cfg, steps, shares=SHARES, seed=100):
    """(fixed-candidate Statistics, routed errors float64 [L, H, S, 2] in
    calibration's unit, worst probed step). Samples dense up to the last probe."""
    import comfy_harness as H
    from sparse_vdit.integration.calibration_hook import CalibrationHook
    from sparse_vdit.integration.install import install_hook, require_model_info
    from sparse_vdit.plans.format import ModelShape

    info = require_model_info(patcher)
    calibrator = TailCalibrator(ModelShape(info.family, info.layers, info.heads, info.head_dim), MENUS[MENU],
                                query_fraction=query_fraction, warmup=common.WARMUP, probe_at=probe_at,
                                shares=shares)
    pos, neg = common.conds(common.CALIB_CLASSES, size)
    latent = torch.zeros(len(common.CALIB_CLASSES), common.data.CHANNELS, *size.latent)
    H.sample(install_hook(patcher, CalibrationHook(info, calibrator)), pos, neg, latent, seed=seed, steps=steps,
             cfg=cfg, sampler=common.SAMPLER, scheduler=common.SCHEDULER, last_step=max(probe_at) + 1)
    stats = calibrator.statistics(block_share_costs(calibrator.candidates, calibrator.geometry), "block-count")
    calls = calibrator._calls[:len(stats.probe_steps)].to(torch.float64).clamp_min(1)[:, :, None, None, None]
    routed_sq = calibrator.tail_sq_err[:len(stats.probe_steps)] / calls
    # the same normalisation as the fixed candidates' (only sq_err differs)
    flat = dataclasses.replace(stats, sq_err=routed_sq.flatten(3))
    return stats, normalised_errors(flat).view(*routed_sq.shape[1:])


def summarise(stats, routed: torch.Tensor, shares) -> dict:
    """Per head and in total: errors, and who beats whom."""
    fixed = normalised_errors(stats)                      # [L, H, C]
    cost = stats.cost[:-1]
    routed_cost = block_share_costs([Candidate("routed", share=s) for s in shares], stats.geometry)[:-1]
    best = fixed.argmin(-1)
    heads, per_share = [], []
    for l in range(fixed.shape[0]):
        for h in range(fixed.shape[1]):
            b = int(best[l, h])
            heads.append({"layer": l, "head": h,
                          "best_fixed": {"candidate": stats.candidates[b].label, "error": float(fixed[l, h, b]),
                                         "block_share": float(cost[b])},
                          **{v: {f"{s:g}": float(routed[l, h, i, j]) for i, s in enumerate(shares)}
                             for j, v in enumerate(VARIANTS)}})
    best_err = fixed.amin(-1).flatten()
    for i, s in enumerate(shares):
        no_tail, tail = routed[:, :, i, 0].flatten(), routed[:, :, i, 1].flatten()
        # the best fixed candidate that computes no more key blocks than routed does here
        cheaper = fixed.masked_fill(cost[None, None] > routed_cost[i] + 1e-9, float("inf")).amin(-1).flatten()
        per_share.append({
            "share": s, "block_share": float(routed_cost[i]),
            "no_tail": {"median": float(no_tail.median()), "mean": float(no_tail.mean())},
            "tail": {"median": float(tail.median()), "mean": float(tail.mean())},
            "tail_beats_no_tail": int((tail < no_tail).sum()),
            "no_tail_beats_best_fixed": int((no_tail < best_err).sum()),
            "tail_beats_best_fixed": int((tail < best_err).sum()),
            "no_tail_beats_best_fixed_at_most_its_blocks": int((no_tail < cheaper).sum()),
            "tail_beats_best_fixed_at_most_its_blocks": int((tail < cheaper).sum()),
        })
    return {"heads": heads, "per_share": per_share, "head_count": len(heads),
            "best_fixed": {"median": float(best_err.median()), "mean": float(best_err.mean())}}


def table(summary: dict) -> str:
    n = summary["head_count"]
    lines = [f"| share | blocks | no tail median / mean | tail median / mean | tail < no tail | "
             f"no tail < best fixed | tail < best fixed | tail < best fixed at <= its blocks |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["per_share"]:
        lines.append(f"| {r['share']:g} | {r['block_share']:.3f} | {r['no_tail']['median']:.3g} / "
                     f"{r['no_tail']['mean']:.3g} | {r['tail']['median']:.3g} / {r['tail']['mean']:.3g} | "
                     f"{r['tail_beats_no_tail']}/{n} | {r['no_tail_beats_best_fixed']}/{n} | "
                     f"{r['tail_beats_best_fixed']}/{n} | {r['tail_beats_best_fixed_at_most_its_blocks']}/{n} |")
    b = summary["best_fixed"]
    lines.append(f"\nbest fixed candidate (menu {MENU}) per head: median {b['median']:.3g}, mean {b['mean']:.3g} "
                 f"(errors: squared error / 1% of the layer's dense output power, worst probed step)")
    return "\n".join(lines)


def head_table(summary: dict, shares) -> str:
    """Per head: the best fixed candidate, then no tail / tail at each share."""
    by_share = " | ".join(f"{s:g}: no tail / tail" for s in shares)
    lines = [f"| layer | head | best fixed (blocks): error | {by_share} |",
             "|---|---|---|" + "---|" * len(shares)]
    for h in summary["heads"]:
        b = h["best_fixed"]
        cells = [f"{h['no_tail'][f'{s:g}']:.3g} / {h['tail'][f'{s:g}']:.3g}" for s in shares]
        lines.append(f"| {h['layer']} | {h['head']} | {b['candidate']} ({b['block_share']:.2f}): {b['error']:.3g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    s = result["sampling"]
    return (f"# Routed heads with and without the pooled tail: {result['size']} yardstick ({result['tokens']} "
            f"tokens, {result['head_count']} heads)\n\nProbe steps {s['probe_steps']} of {s['steps']} (cfg "
            f"{s['cfg']:g}, prompts {s['prompts']}), {result['query_fraction']:g} of the query blocks, CPU float64; "
            f"benchmarks/routed_tail.py.\n\n{table(result)}\n\nPer head (same unit):\n\n"
            f"{head_table(result, result['shares'])}\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="video", help="yardstick size (yardstick/ys_sizes.py)")
    ap.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH)")
    ap.add_argument("--probe-steps", default="4,10,16", help="sampling steps to probe (0-based)")
    ap.add_argument("--query-fraction", type=float, default=0.1, help="share of query blocks scored")
    ap.add_argument("--steps", type=int, default=common.STEPS)
    ap.add_argument("--cfg", type=float, default=None, help="default: the size's protocol (1 tiny, else 3)")
    ap.add_argument("--results", default=common.RESULTS)
    args = ap.parse_args(argv)
    size = size_named(args.size)
    probe_at = sorted({int(s) for s in args.probe_steps.split(",")})
    if not probe_at or probe_at[0] < 0 or probe_at[-1] >= args.steps:
        raise SystemExit(f"--probe-steps must lie in 0..{args.steps - 1}, got {args.probe_steps!r}")
    cfg = args.cfg if args.cfg is not None else common.default_cfg(size)
    weights = ymodel.weights_path(size)
    start = time.perf_counter()
    patcher = common.setup(args.comfyui, weights, "cpu")
    torch.set_grad_enabled(False)
    stats, routed = measure(patcher, size, probe_at, args.query_fraction, cfg, args.steps)
    summary = summarise(stats, routed, SHARES)
    result = {"size": size.name, "tokens": size.tokens, "geometry": stats.geometry.to_dict(),
              "model": os.path.relpath(weights, common.REPO),
              "sampling": {"prompts": list(common.CALIB_CLASSES), "seed": 100, "steps": args.steps, "cfg": cfg,
                           "sampler": common.SAMPLER, "scheduler": common.SCHEDULER,
                           "probe_steps": stats.probe_steps.tolist()},
              "query_fraction": args.query_fraction, "block_m": DEFAULT_BLOCK_M, "block_n": DEFAULT_BLOCK_N,
              "menu": MENU, "shares": list(SHARES),
              "error_unit": "squared error / (1% of the layer's dense output power), worst probed step",
              "env": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "comfyui": common.comfyui_release()},
              "seconds": round(time.perf_counter() - start, 1), **summary}
    os.makedirs(args.results, exist_ok=True)
    stem = os.path.join(args.results, f"routed_tail_{size.name}")
    atomic_write_text(stem + ".json", json.dumps(result, indent=1))
    atomic_write_text(stem + ".md", markdown(result))
    print(f"wrote {stem}.json and .md in {result['seconds']} s")
    print(table(result))
    return result


if __name__ == "__main__":
    main()

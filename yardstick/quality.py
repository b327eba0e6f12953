"""Quality benchmark on the yardstick: calibrated plans vs static baselines.

1. Calibration statistics from one dense run on the calibration prompts
   (0-3), as census.py makes them (re-used from --work when present).
2. Plans solved from them: by epsilon (lambda 0.5) and by target attention
   speedup (the pack's solver, block-share costs: this is a CPU run); plus
   plans from a more thorough calibration (5 probed steps instead of 3,
   every query block instead of half).
3. Static baselines at (about) equal density: one pattern on every head,
   with the first n heads (layer-major) kept full, n chosen so the mean
   density is nearest the calibrated plan's:
     spatial window   Diagonal(rows=4)      (9 latent rows of its own frame)
     temporal window  MultiDiagonal(rows=2, frames=2)  (5 rows, frames t-2..t+2)
     radial-style     per layer: head 0 Diagonal(rows=8) (its whole frame),
                      head 1 MultiDiagonal(rows=1, frames=2) (a narrow band in
                      nearby frames) - dense near the query in time, thin
                      further away, the shape of Radial Attention's mask as
                      far as our per-head patterns can draw it.
4. Generation from the held-out prompts (4-7), same seed, dense and with
   every plan (reference backend, exact masks), ComfyUI sampling: 20 steps
   euler / simple, cfg 1 (the model was trained without an unconditional
   prompt), Wan's shift 8 (ComfyUI's WAN21_T2V default), dense warm-up 20%
   of the steps for every sparse plan.
5. PSNR and SSIM against dense ON THE LATENTS (there is no VAE), in the
   model's latent space (data range [-1, 1]: PSNR peak-to-peak 2; SSIM per
   latent channel and frame plane, 7x7 Gaussian window), mean over the
   held-out prompts; attention density (block pairs computed, 128 x 64
   blocks) and the attention speedup it predicts (1 / density on sparse
   steps, and over the whole run with the dense warm-up).

    COMFYUI_PATH=/path/to/ComfyUI python yardstick/quality.py [--work DIR]
Writes benchmarks/results/yardstick_quality.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

import ys_common as common

SEED = 7
EPSILONS = (1.0, 3.0, 10.0)
TARGETS = (1.5, 1.75, 2.0, 3.0)
# a more thorough calibration (5 probed steps, every query block) for the same targets
THOROUGH = dict(probe_steps=5, query_fraction=1.0)
THOROUGH_TARGETS = (1.5, 1.75, 2.0)
BASELINES_FOR = ("target 1.5x", "target 2.0x", "target 3.0x")


def baseline_layers(kind: str, layers: int, heads: int, n_full: int):
    from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal

    out = []
    for l in range(layers):
        row = []
        for h in range(heads):
            if l * heads + h < n_full:
                row.append(Full())
            elif kind == "spatial":
                row.append(Diagonal(4))
            elif kind == "temporal":
                row.append(MultiDiagonal(2, 2))
            elif kind == "radial":
                row.append(Diagonal(8) if h % 2 == 0 else MultiDiagonal(1, 2))
            else:
                raise ValueError(kind)
        out.append(LayerPattern(tuple(row)))
    return tuple(out)


def baseline_plan(kind: str, shape, density: float):
    from sparse_vdit.plans.format import DenseSchedule, Plan

    best = None
    for n in range(shape.layers * shape.heads + 1):
        layers = baseline_layers(kind, shape.layers, shape.heads, n)
        plan = Plan(f"{kind} n_full={n}", shape, layers, DenseSchedule(common.WARMUP),
                    {"kind": "static-baseline", "geometry": common.token_geometry().to_dict()})
        d = common.plan_density(plan)
        if best is None or abs(d - density) < abs(best[1] - density):
            best = (plan, d, n)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", default=None)
    ap.add_argument("--work", default="/tmp/yardstick_work")
    args = ap.parse_args()
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.plans.format import plan_to_dict
    from sparse_vdit.plans.search import solve_plan

    patcher = common.setup(args.comfyui)
    stats = common.saved_or_calibrated(patcher, args.work, "yardstick")

    plans = {}
    for eps in EPSILONS:
        plans[f"eps {eps:g}"] = solve_plan(stats, lam=0.5, eps=eps, name=f"eps {eps:g}", warmup=common.WARMUP,
                                           step_ranges=1)
    for t in TARGETS:
        plans[f"target {t}x"] = solve_plan(stats, target_speedup=t, name=f"target {t}x", warmup=common.WARMUP,
                                           step_ranges=1)
    thorough = common.saved_or_calibrated(patcher, args.work, "yardstick_thorough", **THOROUGH)
    for t in THOROUGH_TARGETS:
        name = f"target {t}x (5 probes, all queries)"
        plans[name] = solve_plan(thorough, target_speedup=t, name=name, warmup=common.WARMUP, step_ranges=1)
    # the same statistics and targets, with step ranges where the solver finds they pay
    for source, targets, suffix in ((stats, TARGETS, ""), (thorough, THOROUGH_TARGETS, " (5 probes, all queries)")):
        for t in targets:
            name = f"target {t}x{suffix}, step ranges"
            plans[name] = solve_plan(source, target_speedup=t, name=name, warmup=common.WARMUP, step_ranges="auto")
        for eps in EPSILONS if source is stats else ():
            name = f"eps {eps:g}, step ranges"
            plans[name] = solve_plan(source, lam=0.5, eps=eps, name=name, warmup=common.WARMUP, step_ranges="auto")
    for key in BASELINES_FOR:
        d = common.plan_density(plans[key])
        for kind in ("spatial", "temporal", "radial"):
            plan, bd, n = baseline_plan(kind, stats.model, d)
            plans[f"{kind} @ {key}"] = plan

    classes = common.HELDOUT_CLASSES
    t0 = time.perf_counter()
    dense = common.generate(patcher, classes, SEED)
    dense_s = time.perf_counter() - t0
    results = {"dense": {"seconds": round(dense_s, 1)}}
    cache = {}
    out_path = os.path.join(common.RESULTS, "yardstick_quality.json")
    for name, plan in plans.items():
        layout = plan_to_dict(plan)
        key = json.dumps([layout["layers"], layout.get("later_step_ranges")])
        d = common.plan_density(plan)
        if key in cache:
            x, secs = cache[key]
        else:
            t0 = time.perf_counter()
            x = common.generate(apply_plan(patcher, plan, backend="reference"), classes, SEED)
            secs = time.perf_counter() - t0
            cache[key] = (x, secs)
        p, s = common.psnr(x, dense), common.ssim(x, dense)
        counts = plan.density_summary()
        results[name] = {
            "kind": plan.provenance.get("kind"), "density": round(d, 4), "speedup_sparse_steps": round(1 / d, 3),
            "speedup_whole_run": round(common.whole_run_speedup(1 / d), 3),
            "psnr_db": round(float(p.mean()), 2), "psnr_db_min": round(float(p.min()), 2),
            "ssim": round(float(s.mean()), 4), "ssim_min": round(float(s.min()), 4),
            "psnr_per_prompt": [round(float(v), 2) for v in p], "modes": counts,
            "predicted_speedup_solver": plan.provenance.get("predicted_attention_speedup"),
            "step_ranges": [{"from_step_fraction": r.start, "modes": plan.density_summary(r.layers)}
                            for r in plan.step_ranges],
            "plan": layout["layers"], "later_step_ranges": layout.get("later_step_ranges"), "seconds": round(secs, 1)}
        print(f"{name:28s} density {d:.3f} speedup {1 / d:.2f}x PSNR {float(p.mean()):6.2f} dB "
              f"SSIM {float(s.mean()):.4f} {counts} ranges {len(plan.step_ranges)} {secs:.0f}s", flush=True)
        doc = {"setup": {"model": "yardstick/wan_tiny_yardstick.safetensors", "held_out_prompts": list(classes),
                         "calibration_prompts": list(common.CALIB_CLASSES), "seed": SEED, "steps": common.STEPS,
                         "sampler": common.SAMPLER, "scheduler": common.SCHEDULER, "cfg": common.CFG, "shift": 8.0,
                         "dense_warmup": common.WARMUP, "backend": "reference (CPU)",
                         "geometry": common.token_geometry().to_dict(),
                         "metric_space": "latents (no VAE), model space, data range [-1, 1]"},
               "results": results}
        with open(out_path, "w") as f:
            json.dump(doc, f, indent=1)
    write_md(doc)


def _ranges(result: dict) -> str:
    ranges = result.get("step_ranges") or [{"from_step_fraction": 0.0}]
    return "1" if len(ranges) == 1 else f"{len(ranges)} (from " + ", ".join(
        f"{100 * r['from_step_fraction']:.0f}%" for r in ranges) + ")"


def write_md(doc):
    r = doc["results"]
    lines = ["# Yardstick quality: calibrated plans vs static baselines", "",
             "Trained tiny Wan2.1 (ComfyUI WanModel, 6 layers x 2 heads x 128), held-out prompts "
             f"{doc['setup']['held_out_prompts']}, seed {doc['setup']['seed']}, {doc['setup']['steps']} steps "
             f"{doc['setup']['sampler']}/{doc['setup']['scheduler']}, cfg {doc['setup']['cfg']}, shift 8, dense warm-up "
             "20% of steps, reference backend on CPU. PSNR/SSIM against the dense output of the same seed, on the "
             "LATENTS (no VAE; data range [-1, 1]). Density: block pairs computed (128 x 64 blocks); speedup = "
             "1 / density on sparse steps (block count, CPU), and over the whole run including the dense warm-up.", "",
             "| plan | kind | density | speedup (sparse steps) | speedup (whole run) | PSNR dB (min) | SSIM (min) | step ranges | modes (first range) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in r.items():
        if name == "dense":
            continue
        lines.append(f"| {name} | {v['kind']} | {v['density']:.3f} | {v['speedup_sparse_steps']:.2f}x | "
                     f"{v['speedup_whole_run']:.2f}x | {v['psnr_db']:.2f} ({v['psnr_db_min']:.2f}) | "
                     f"{v['ssim']:.4f} ({v['ssim_min']:.4f}) | {_ranges(v)} | {v['modes']} |")
    path = os.path.join(common.RESULTS, "yardstick_quality.md")
    reading = ""  # the hand-written reading of the numbers stays; update it by hand
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        reading = text[text.find("## Reading"):] if "## Reading" in text else ""
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + ("\n" + reading if reading else ""))


if __name__ == "__main__":
    main()

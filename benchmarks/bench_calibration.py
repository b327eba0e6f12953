"""Calibration cost: wall time of a calibrating run against a dense run with
the same settings, on ComfyUI's own Wan2.1 1.3B at 480p x 81 frames (random
weights: timing only), B = 2 (cond + uncond), on one GPU.

The dense run (measured once) is a plain sampling loop of `steps` model calls with cuDNN
attention. The calibrating run is the same loop with the calibration hook
(probe steps, sampled query blocks), plus measuring candidate costs on this
card and solving the plan: everything the Calibrate node adds.

  python benchmarks/bench_calibration.py --comfyui PATH --out DIR [--steps 20] [--query-fractions 0.1,0.05]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_e2e import CONFIGS, build_model, cudnn_override, import_comfy  # noqa: E402


def sampling_loop(model, inputs, steps: int, hook=None) -> float:
    """Seconds for `steps` model calls along a flow schedule (shift 8, like Wan)."""
    x, context = inputs
    sigmas = torch.linspace(1, 0, steps + 1)
    sigmas = 8 * sigmas / (1 + 7 * sigmas)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(steps):
            options = {"sigmas": sigmas[i].repeat(2), "sample_sigmas": sigmas,
                       "optimized_attention_override": hook or cudnn_override}
            if hook is not None:
                options["wrappers"] = {"diffusion_model": {"sparse_vdit": [hook.wrap_forward]}}
            t = (sigmas[i] * 1000).repeat(2).to(x.device)
            model(x, t, context, transformer_options=options)
    sync()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--out", default=".")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--probe-steps", type=int, default=3)
    parser.add_argument("--query-fractions", default="0.1", help="comma-separated: one calibrating run each")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, to check the script")
    args = parser.parse_args()
    wan, _, ops = import_comfy(args.comfyui, cpu=args.smoke)
    import triton

    from sparse_vdit.integration.calibration_hook import CalibrationHook
    from sparse_vdit.integration.model_info import describe_diffusion_model
    from sparse_vdit.plans.calibrator import Calibrator
    from sparse_vdit.plans.candidates import MENUS
    from sparse_vdit.plans import cost as cost_module
    from sparse_vdit.plans.cost import candidate_costs
    from sparse_vdit.plans.format import ModelShape
    from sparse_vdit.plans.search import probe_agreement, solve_plan

    device, dtype = (torch.device("cpu"), torch.float32) if args.smoke else (torch.device("cuda"), torch.bfloat16)
    config = CONFIGS["smoke" if args.smoke else "1.3b"]
    model = build_model(wan, ops, config, device, dtype)
    info = describe_diffusion_model(model)
    frames, height, width = config["latent"]
    g = torch.Generator(device=device).manual_seed(1)
    inputs = (torch.randn(2, 16, frames, height, width, device=device, dtype=dtype, generator=g),
              torch.randn(2, 512, 4096, device=device, dtype=dtype, generator=g))
    sampling_loop(model, inputs, 1)  # warm-up: kernels compile outside the timings

    dense_s = sampling_loop(model, inputs, args.steps)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__,
               "model": "Wan2.1 1.3B (random weights)", "batch": 2, "steps": args.steps, "dense_run_s": dense_s,
               "runs": []}
    for fraction in (float(f) for f in args.query_fractions.split(",")):
        cost_module._memory_cache.clear()  # every run measures its costs (Triton compiles once per process)
        start = time.perf_counter()
        calibrator = Calibrator(ModelShape(info.family, info.layers, info.heads, info.head_dim), MENUS["standard"],
                                args.probe_steps, fraction, warmup=0.2)
        hook = CalibrationHook(info, calibrator, previous=cudnn_override)
        run_s = sampling_loop(model, inputs, args.steps, hook)
        cost_start = time.perf_counter()
        cost, source = candidate_costs(calibrator.candidates, calibrator.geometry, info.heads, info.head_dim, device)
        cost_s = time.perf_counter() - cost_start
        stats = calibrator.statistics(cost, source)
        plan = solve_plan(stats, 0.5, 1.0, name="bench")
        calibration_s = time.perf_counter() - start
        results["geometry"] = calibrator.geometry.describe()
        results["runs"].append({
            "query_fraction": fraction, "probe_steps": calibrator.probe_steps, "calibrating_run_s": run_s,
            "cost_measurement_s": cost_s, "calibration_total_s": calibration_s, "ratio": calibration_s / dense_s,
            "cost_source": source, "plan_counts": plan.density_summary(), "scored_calls": hook.counts.get("scored", 0),
            "probe_agreement": probe_agreement(stats, 0.5, 1.0)})
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "calibration_cost.json"), "w") as handle:
            json.dump(results, handle, indent=1)
        print(f"query fraction {fraction}: dense {args.steps} steps {dense_s:.1f} s | calibrating run {run_s:.1f} s "
              f"+ costs {cost_s:.1f} s = {calibration_s:.1f} s | ratio {calibration_s / dense_s:.2f}x "
              f"(target <= 1.5x) on {gpu}", flush=True)


if __name__ == "__main__":
    main()

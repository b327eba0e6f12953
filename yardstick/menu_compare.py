"""Candidate menus compared on the whole trajectory (CPU, tiny yardstick):
the paper's modes, the extended menu with routed heads without the pooled
tail, and with it.

Per menu: one calibration (prompts --calib, seed 1, 2 probed steps, a
quarter of the query blocks), plans solved for each --targets block
speedup (block-count costs: this is a CPU run), then generation from the
held-out prompts (seed 3) with every plan on the reference backend, PSNR of
the latents against dense: mean and worst, the density and the modes the
solver chose. Same settings as tests/test_yardstick.py's PSNR floor.

    COMFYUI_PATH=/path/to/ComfyUI python yardstick/menu_compare.py [--steps 8] [--out FILE]

Prints one JSON line per (menu, target) and writes them to --out
(default benchmarks/results/yardstick_menu_compare.json).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ys_common as common  # noqa: E402

NO_TAIL = "extended-wide (routed without tail)"


@contextlib.contextmanager
def menus():
    """The menus compared, by name; the no-tail variant is registered in
    MENUS only meanwhile (calibration looks menus up by name)."""
    from sparse_vdit.plans.candidates import MENUS
    MENUS[NO_TAIL] = tuple(dataclasses.replace(c, tail=False) for c in MENUS["extended-wide"])
    try:
        yield ("wide", NO_TAIL, "extended-wide")
    finally:
        MENUS.pop(NO_TAIL, None)


def chosen_modes(plan) -> dict:
    labels = collections.Counter(p.label() if p.name == "routed" else p.name
                                 for r in plan.step_ranges for layer in r.layers for p in layer.heads)
    return dict(sorted(labels.items()))


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--targets", default="1.5,2")
    ap.add_argument("--calib", default="0,1")
    ap.add_argument("--held-out", default="4,5,6,7")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "yardstick_menu_compare.json"))
    args = ap.parse_args(argv)
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.plans.atomic import atomic_write_text
    from sparse_vdit.plans.search import solve_plan

    calib = [int(p) for p in args.calib.split(",")]
    held = [int(p) for p in args.held_out.split(",")]
    patcher = common.setup(args.comfyui)
    torch.set_grad_enabled(False)
    dense = {p: common.generate(patcher, [p], seed=3, steps=args.steps) for p in held}
    rows = []
    with tempfile.TemporaryDirectory() as work, menus() as names:
        for menu in names:
            start = time.time()
            result = common.calibrate(patcher, os.path.join(work, str(len(rows))), name="compare", classes=calib,
                                      seed=1, steps=args.steps, probe_steps=2, query_fraction=0.25, menu=menu)
            for target in (float(t) for t in args.targets.split(",")):
                plan = solve_plan(result.statistics, target_speedup=target, name="compare", warmup=common.WARMUP)
                psnrs = [float(common.psnr(common.generate(apply_plan(patcher, plan, backend="reference"), [p],
                                                           seed=3, steps=args.steps), dense[p])[0]) for p in held]
                row = {"menu": menu, "target": target, "density": round(common.plan_density(plan, args.steps), 3),
                       "psnr_mean": round(sum(psnrs) / len(psnrs), 2), "psnr_worst": round(min(psnrs), 2),
                       "modes": chosen_modes(plan), "seconds": round(time.time() - start, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"steps": args.steps, "calibration_prompts": calib, "held_out_prompts": held, "seed": 3,
              "costs": "block-count (CPU)", "torch": torch.__version__, "comfyui": common.comfyui_release(),
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1))
    return rows


if __name__ == "__main__":
    main()

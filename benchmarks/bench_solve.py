"""How long re-solving a plan from saved statistics takes (the Solve Plan
node's work), on the CPU, at Wan2.1 14B's shape (40 layers x 40 heads) and
the standard candidate menu, for 3 and 5 probed steps, by lambda/epsilon and
for a target speedup, with step ranges on auto (every count of ranges tried).

The statistics are random (timing does not depend on their values), with
errors that grow with the step so that step ranges are chosen.

    python benchmarks/bench_solve.py [--out benchmarks/results/solve_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from sparse_vdit.patterns import Geometry
from sparse_vdit.plans.candidates import MENUS
from sparse_vdit.plans.cost import block_share_costs
from sparse_vdit.plans.format import ModelShape
from sparse_vdit.plans.search import solve_plan
from sparse_vdit.plans.statistics import Statistics

LAYERS, HEADS, STEPS, WARMUP = 40, 40, 20, 0.2
GEOMETRY = Geometry(21, 45, 80)  # Wan 14B 720p, 81 frames


def random_statistics(probes: int) -> Statistics:
    torch.manual_seed(0)
    candidates = MENUS["standard"]
    growth = torch.linspace(0.2, 3.0, probes, dtype=torch.float64)[:, None, None, None]
    first = round(WARMUP * STEPS)
    steps = [first + round(i * (STEPS - 1 - first) / max(probes - 1, 1)) for i in range(probes)]
    return Statistics(ModelShape("wan2.1 14b", LAYERS, HEADS, 128), GEOMETRY, candidates,
                      torch.rand(probes, LAYERS, HEADS, len(candidates), dtype=torch.float64) * growth * 0.01,
                      torch.ones(probes, LAYERS, dtype=torch.float64), block_share_costs(candidates, GEOMETRY),
                      torch.zeros(LAYERS, HEADS, 2, dtype=torch.int64), torch.zeros(LAYERS, HEADS, GEOMETRY.frames),
                      torch.zeros(LAYERS, HEADS, 32, 64, dtype=torch.float16), torch.tensor(steps),
                      info={"total_steps": STEPS, "warmup_fraction": WARMUP})


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "solve_cpu.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for probes in (3, 5):
        stats = random_statistics(probes)
        for label, kwargs in (("lambda 0.5, epsilon 1", {"lam": 0.5, "eps": 1.0}), ("target 2x", {"target_speedup": 2.0})):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                plan = solve_plan(stats, **kwargs)
                times.append(time.perf_counter() - start)
            rows.append({"probes": probes, "solve": label, "median_ms": round(1e3 * sorted(times)[len(times) // 2], 1),
                         "step_ranges": len(plan.step_ranges)})
            print(f"{probes} probes, {label:22s} {rows[-1]['median_ms']:7.1f} ms  ({rows[-1]['step_ranges']} step ranges)")
    result = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
              "shape": f"{LAYERS} layers x {HEADS} heads, {len(MENUS['standard'])} candidates", "rows": rows}
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()

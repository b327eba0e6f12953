"""Pattern census of the trained yardstick: which sparse shape each head has.

Runs one dense calibration through the pack's ComfyUI glue
(``integration.calibrate.calibrate``) on the calibration prompts (20 euler
steps, 3 probed steps, half of the query blocks, the "wide" candidate menu),
then classifies every head by the method's own rule at lambda 0.5,
epsilon 1 (its error power may reach 1% of its layer's output power):

    near-zero       skip is the chosen candidate (the head's output is negligible)
    diagonal / multi_diagonal / vertical_stripe / window_3d / routed   that mode is chosen
    dense           every candidate fails (the head stays full)

and records, per head, the best candidate of every mode and its normalised
error (units of 1% of the layer's dense output power, worst probed step).
Writes benchmarks/results/yardstick_census.json and .png, and keeps the
statistics (for quality.py) in --work.

    COMFYUI_PATH=/path/to/ComfyUI python yardstick/census.py [--work DIR]
    python yardstick/census.py --size wan480 --device cuda --results DIR   (on a GPU; cfg 3)

Other sizes write benchmarks/results/yardstick_SIZE_census.{json,png}
(--results moves them) and record the share of full heads.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import ys_common as common
import ys_model as ymodel
from ys_sizes import size_named

MODE_OF = {"skip": "near-zero", "diagonal": "diagonal", "multi_diagonal": "multi-diagonal",
           "vertical_stripe": "stripe", "window_3d": "3-D window", "routed": "routed"}


def census(stats, lam: float = 0.5, eps: float = 1.0) -> dict:
    from sparse_vdit.plans.search import FULL, judge, normalised_errors, sparsity

    err = normalised_errors(stats)
    choice = judge(err, sparsity(stats), lam, eps)
    heads = []
    per_layer = []
    for l in range(err.shape[0]):
        counts = {}
        for h in range(err.shape[1]):
            c = int(choice[l, h])
            kind = "dense" if c == FULL else MODE_OF[stats.candidates[c].mode]
            counts[kind] = counts.get(kind, 0) + 1
            best = {}
            for i, cand in enumerate(stats.candidates):
                m = MODE_OF[cand.mode]
                if m not in best or float(err[l, h, i]) < best[m]["error"]:
                    best[m] = {"candidate": cand.label, "error": round(float(err[l, h, i]), 4),
                               "cost": round(float(stats.cost[i]), 4)}
            heads.append({"layer": l, "head": h, "class": kind,
                          "chosen": "full" if c == FULL else stats.candidates[c].label,
                          "chosen_error": 0.0 if c == FULL else round(float(err[l, h, c]), 4),
                          "stripe_frames": stats.stripe_frames[l, h].tolist(), "best_per_mode": best})
        per_layer.append(counts)
    totals = {}
    for c in per_layer:
        for k, v in c.items():
            totals[k] = totals.get(k, 0) + v
    return {"rule": {"lambda": lam, "epsilon": eps, "error_unit": "1% of the layer's dense output power"},
            "totals": totals, "per_layer": per_layer, "heads": heads}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", default=None)
    ap.add_argument("--work", default="/tmp/yardstick_work")
    ap.add_argument("--size", default="tiny", help="the yardstick size (ys_sizes.py)")
    ap.add_argument("--weights", default=None, help="the model file (default: the size's committed one)")
    ap.add_argument("--device", default="cpu", help="cpu (reference kernels) or cuda")
    ap.add_argument("--cfg", type=float, default=None, help="default: 1 for tiny (no unconditional training), else 3")
    ap.add_argument("--results", default=common.RESULTS, help="folder for the census json and png")
    ap.add_argument("--steps", type=int, default=common.STEPS)
    ap.add_argument("--menu", default="wide", help="candidate menu; with newer modes than the paper's (extended, "
                    "extended-wide) the paper-menu census is also given, from the same calibration")
    args = ap.parse_args()
    size = size_named(args.size)
    cfg = args.cfg if args.cfg is not None else common.default_cfg(size)
    weights = args.weights or ymodel.weights_path(size)
    patcher = common.setup(args.comfyui, weights, args.device)
    torch.manual_seed(0)
    name = "yardstick" if size.name == "tiny" else f"yardstick-{size.name}"  # quality.py reuses the first
    result = common.calibrate(patcher, args.work, name=name, steps=args.steps, size=size, cfg=cfg, menu=args.menu)
    stats = result.statistics
    out = census(stats)
    from sparse_vdit.plans.candidates import PAPER_MODES
    from sparse_vdit.plans.statistics import with_modes

    if any(c.mode not in PAPER_MODES for c in stats.candidates):
        out["paper_menu"] = paper_census(with_modes(stats, PAPER_MODES))
    out.update(model=os.path.relpath(weights, common.REPO), size=size.name, tokens=size.tokens,
               geometry=stats.geometry.to_dict(),
               calibration={"prompts": list(common.CALIB_CLASSES), "steps": args.steps, "sampler": common.SAMPLER,
                            "scheduler": common.SCHEDULER, "cfg": cfg, "probe_steps": stats.probe_steps.tolist(),
                            "query_fraction": 0.5, "menu": args.menu, "seconds": round(result.seconds, 1),
                            "device": args.device, "cost_source": stats.cost_source},
               full_share=full_share(out), candidates=[c.label for c in stats.candidates],
               cost_block_share=stats.cost.tolist())
    os.makedirs(args.results, exist_ok=True)
    stem = os.path.join(args.results, census_name(size.name))
    with open(stem + ".json", "w") as f:
        json.dump(out, f, indent=1)
    from sparse_vdit.plans.preview import render_plan

    image = render_plan(result.plan, stats, thumbs_per_mode=4)
    image.save(stem + ".png")
    print(json.dumps({"menu": args.menu, "totals": out["totals"], "full_share": out["full_share"],
                      "per_layer": out["per_layer"], "seconds": result.seconds,
                      "paper_menu": out.get("paper_menu", {}).get("totals")}))
    for h in out["heads"]:
        print(h["layer"], h["head"], h["class"], h["chosen"], h["chosen_error"],
              {m: (b["candidate"], b["error"]) for m, b in h["best_per_mode"].items()})


def paper_census(paper_stats) -> dict:
    """The census's totals, per-layer counts and full share from statistics
    restricted to the paper's modes (``with_modes``)."""
    paper = census(paper_stats)
    return {"totals": paper["totals"], "per_layer": paper["per_layer"], "full_share": full_share(paper)}


def census_name(size_name: str) -> str:
    """File stem of a size's census (the tiny model's keeps its first name)."""
    return "yardstick_census" if size_name == "tiny" else f"yardstick_{size_name}_census"


def full_share(result: dict) -> float:
    """Share of heads the rule keeps dense (the wan480 goal: at most 0.4)."""
    totals = result["totals"]
    return totals.get("dense", 0) / sum(totals.values())


if __name__ == "__main__":
    main()

"""Head-to-head on the video yardstick: quality at measured speed, in one run.

Every method a ComfyUI user could put on this model, on held-out prompts and
seeds (calibration sees prompts 0-3 only; the comparison uses 4-7), 20 euler
steps, cfg 3 (so B = 2: cond + uncond in one batch), the same dense warm-up
for every sparse method (the first 20% of the steps, as both our Patch node
and core's node default to):

  dense            ComfyUI's attention (PyTorch SDPA: cuDNN / flash on the GPU)
  ours             plans calibrated on prompts 0-3 (the pack's Calibrate glue,
                   kernel costs measured on this card), solved for several
                   attention speedups, one step range and "auto" ranges; bf16
                   and 8-bit (layers with tailed routed heads run 16-bit, so
                   the paper menu's plan of an 8-bit target runs 8-bit too)
  sol-attn / sla   ComfyUI core's sparse node ("Model Sparse Attention") on
                   comfy-kitchen's kernel, installed as that node installs
                   itself (tests/core_sparse_standin.py, hook placement
                   written from its source; min_tokens 12,288, extra_tokens
                   256, head_dim 128), the real kernel, our warm-up as its
                   start sigma
  radial / window  static masks at the density of our plans (static_masks.py)
                   through our kernel
  ours + sol-attn  our plan on top of core's node: our full heads go down
                   the chain to Sol-Attn

Per configuration: measured self-attention time per step (CUDA events around
each self-attention call: the whole override chain, not predicted), measured
step time, peak memory, PSNR / SSIM against dense per (prompt, seed) on the
latents (mean and worst), and one picture strip.

    python yardstick/head_to_head.py --comfyui PATH --kitchen PATH --out DIR
    python yardstick/head_to_head.py --size wan480 ...        (32,760 tokens; its protocol below)
    python yardstick/head_to_head.py --size tiny --device cpu --steps 3 ...   (a CPU smoke run)

--size picks the yardstick (video: 13,312 tokens; wan480: Wan2.1 480p's
32,760) and its protocol (wan480: ours at 1.25-4x, 8-bit at 2x). Where one
device call cannot hold every method, --families runs a part (dense always
runs: every part has its own baseline), --work keeps the calibration on the
machine for the next part (--reuse-calibration), and --merge joins the
parts' reports into one (each row keeps the speedups against its own part's
dense run; both dense runs are listed) and prints the table last:

    python yardstick/head_to_head.py --merge A/head_to_head.json B/head_to_head.json --out DIR

Prints its table last; writes DIR/head_to_head.json and .md, the picture
DIR/quality_vs_time.png, DIR/head_to_head_strips.png, the census picture and
the calibration statistics (DIR/calibration/).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics as pystats
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ys_common as common  # noqa: E402
import ys_model as ymodel  # noqa: E402
from h2h_timing import AttentionTimer  # noqa: E402
from ys_sizes import size_named  # noqa: E402

CFG = common.GUIDED_CFG
EXTRA_TOKENS = 256       # core node's extra_tokens default
CORE_MIN_TOKENS = 12288  # core node's min_tokens default
SOL_TAUS = (1.0, 1.3, 1.6, 2.0)
SLA_KEEP = (10.0, 20.0, 30.0)
# per size: our targets (each with one step range and with "auto" ranges) and the 8-bit ones
PROTOCOL = {"wan480": {"targets": "1.25,1.5,2,2.5,3,4", "targets_8bit": "2"}}
DEFAULT_PROTOCOL = {"targets": "1.1,1.25,1.5,2,2.5,3", "targets_8bit": "2,3"}
# --families names -> the rows' families
FAMILIES = {"floor": ("noise floor",), "ours": ("ours bf16",), "paper": ("ours bf16 paper menu",),
            "8bit": ("ours 8-bit",), "sol": ("core sol-attn",),
            "sla": ("core sla",), "static": ("static radial", "static window"), "composition": ("ours + core sol-attn",)}


def sol_kernel(kitchen, tau: float = 1.3, keep_percent: float = 0.0):
    """Core node's kernel call for [B, H, L, D] tensors (it takes B, T, H, D)."""
    def run(q, k, v):
        out = kitchen.sol_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), tau=tau,
                               topk_ratio=keep_percent / 100.0, token_aug=EXTRA_TOKENS)
        return out.transpose(1, 2)
    return run


def static_kernel(table, backend: str):
    """Our block-sparse kernel over one static block table (every head)."""
    from sparse_vdit.kernels.reference import reference_sparse_attention

    def run(q, k, v):
        q4, k4, v4 = (t.transpose(1, 2) for t in (q, k, v))  # [B, L, H, D]
        if backend == "triton":
            from sparse_vdit.kernels import triton_backend

            out = torch.empty_like(q4)
            triton_backend.run(q4, k4, v4, out, table)
        else:
            out = reference_sparse_attention(q4, k4, v4, table)
        return out.transpose(1, 2)
    return run


def eight_bit_pairs(configs, all_latents):
    """(8-bit row name, mean PSNR of its latents against the bf16 run of the same plan)."""
    for name, *_ in configs:
        twin = name.replace(" 8-bit", "")
        if name.endswith(" 8-bit") and twin in all_latents:
            ps = [float(common.psnr(all_latents[name][r], all_latents[twin][r])[0]) for r in all_latents[name]]
            yield name, sum(ps) / len(ps)


def env_info(device, kitchen_version) -> dict:
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "comfy_kitchen": kitchen_version}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["comfyui"] = common.comfyui_release()
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--kitchen", default=None, help="folder holding the unpacked comfy_kitchen package")
    ap.add_argument("--kitchen-version", default="0.2.40")
    ap.add_argument("--weights", default=None, help="the yardstick weights (default: the committed file)")
    ap.add_argument("--size", default="video")
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="all", help=f"all, or some of {','.join(FAMILIES)} (dense always runs)")
    ap.add_argument("--work", default=None, help="calibration folder (default OUT/calibration)")
    ap.add_argument("--reuse-calibration", action="store_true", help="use the statistics saved in --work")
    ap.add_argument("--merge", nargs="+", default=None, help="join these head_to_head.json parts into --out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=common.STEPS)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per held-out prompt")
    ap.add_argument("--prompts", default="4,5,6,7")
    ap.add_argument("--targets", default=None, help="default: the size's protocol")
    ap.add_argument("--targets-8bit", default=None, help="default: the size's protocol")
    ap.add_argument("--paper-menu-targets", default="",
                    help="targets also solved with the paper's modes only, from the same calibration: what modes "
                         "beyond the paper's add, where the menu holds any (none on main yet)")
    ap.add_argument("--probe-steps", type=int, default=5)
    ap.add_argument("--query-fraction", type=float, default=1.0)
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    size = size_named(args.size)
    for key, value in PROTOCOL.get(size.name, DEFAULT_PROTOCOL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    wanted = set(FAMILIES) if args.families == "all" else set(args.families.split(","))
    if wanted - set(FAMILIES):
        raise SystemExit(f"--families: unknown {sorted(wanted - set(FAMILIES))}; pick from {list(FAMILIES)}")
    families = {"dense"} | {f for w in wanted for f in FAMILIES[w]}
    device = torch.device(args.device)
    # 8-bit rows (GPU only) run the bf16 plan of the same target: only when wanted, and that plan must be solved
    targets_8bit = [float(t) for t in args.targets_8bit.split(",") if t] \
        if "8bit" in wanted and device.type == "cuda" else []
    missing = set(targets_8bit) - {float(t) for t in args.targets.split(",")}
    if missing:
        raise SystemExit(f"--targets-8bit {sorted(missing)} not among --targets {args.targets}: "
                         "an 8-bit row runs the bf16 plan of its target")
    ymodel.import_comfy(args.comfyui, cpu=device.type == "cpu")
    import comfy.samplers
    from core_sparse_standin import apply_core_sparse_standin
    from sparse_vdit.integration.install import apply_plan
    from sparse_vdit.patterns import table_from_block_mask
    from sparse_vdit.plans.candidates import PAPER_MODES
    from sparse_vdit.plans.format import DenseSchedule, plan_to_dict
    from sparse_vdit.plans.search import solve_plan
    from sparse_vdit.plans.statistics import with_modes
    from static_masks import mask_at_density

    kitchen, kitchen_version = None, None
    if args.kitchen and device.type == "cuda":
        sys.path.insert(0, args.kitchen)
        try:
            import comfy_kitchen as kitchen
            kitchen_version = getattr(kitchen, "__version__", None) or args.kitchen_version
            if not kitchen.sol_attn_is_available(device):
                print("comfy-kitchen loaded, but Sol-Attn is not available on this card")
                kitchen = None
        except Exception as error:  # the benchmark still runs the other methods
            print(f"comfy-kitchen did not load: {error}")
            kitchen = None
    os.makedirs(args.out, exist_ok=True)
    weights = args.weights or ymodel.weights_path(size)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    patcher = ymodel.load_patcher(weights, dtype=dtype)
    backend = "triton" if device.type == "cuda" else "reference"
    prompts = [int(p) for p in args.prompts.split(",")]
    runs = [(p, 1000 + s) for p in prompts for s in range(args.seeds)]

    model_sampling = patcher.get_model_object("model_sampling")
    sigmas = [float(s) for s in comfy.samplers.calculate_sigmas(model_sampling, common.SCHEDULER, args.steps)]
    first_sparse = DenseSchedule(common.WARMUP).first_sparse_step(args.steps)
    sigma_start = sigmas[first_sparse]
    core_default_sigma = float(model_sampling.percent_to_sigma(0.2))
    core_default_dense_steps = sum(1 for s in sigmas[:-1] if s > core_default_sigma)
    timer = AttentionTimer(sigmas, device, first_sparse)

    # 1. calibration on the calibration prompts only
    work = args.work or os.path.join(args.out, "calibration")
    t0 = time.perf_counter()
    calib_seconds = None
    stats = common.saved_statistics(work, f"yardstick-{size.name}") if args.reuse_calibration else None
    if stats is None:
        shutil.rmtree(work, ignore_errors=True)
        result = common.calibrate(patcher, work, name=f"yardstick-{size.name}", classes=common.CALIB_CLASSES,
                                  seed=100, steps=args.steps, probe_steps=args.probe_steps,
                                  query_fraction=args.query_fraction, menu="extended-wide", size=size, cfg=CFG)
        calib_seconds = time.perf_counter() - t0
        stats = result.statistics
        print(f"calibrated in {calib_seconds:.1f}s, cost source {stats.cost_source}", flush=True)
    else:
        print(f"calibration statistics reused from {work}, cost source {stats.cost_source}", flush=True)

    configs = [("dense", "dense", "", lambda: patcher, None)]
    plans = {}
    targets = [float(t) for t in args.targets.split(",")]
    for target in targets:
        for ranges in (1, "auto"):
            plan = solve_plan(stats, target_speedup=target, name=f"ours {target:g}x", step_ranges=ranges)
            density = common.plan_density(plan, steps=args.steps, size=size)
            label = f"ours {target:g}x" + (" ranges" if ranges == "auto" else "")
            plans[label] = (plan, density)
            configs.append((label, "ours bf16", f"target {target:g}x, {plan.describe_step_ranges()}",
                            (lambda p=plan: apply_plan(patcher, p, backend=backend)), density))
    paper_stats = with_modes(stats, PAPER_MODES)
    for target in [float(t) for t in args.paper_menu_targets.split(",") if t]:
        plan = solve_plan(paper_stats, target_speedup=target, name=f"ours {target:g}x paper menu", step_ranges=1)
        density = common.plan_density(plan, steps=args.steps, size=size)
        plans[f"ours {target:g}x paper menu"] = (plan, density)
        configs.append((f"ours {target:g}x paper menu", "ours bf16 paper menu",
                        f"target {target:g}x, modes {', '.join(PAPER_MODES)} and full only",
                        (lambda p=plan: apply_plan(patcher, p, backend=backend)), density))
    for target in targets_8bit:
        # the paper menu's plan too, where solved: its layers have no tailed routed heads, which run 16-bit
        for label in (f"ours {target:g}x", f"ours {target:g}x paper menu"):
            if label in plans:
                plan, density = plans[label]
                configs.append((f"{label} 8-bit", "ours 8-bit", f"target {target:g}x",
                                (lambda p=plan: apply_plan(patcher, p, backend=backend, precision="8-bit")), density))
    head_dim = size.config["dim"] // size.config["num_heads"]
    if kitchen is not None:
        for tau in SOL_TAUS:
            configs.append((f"sol-attn tau {tau:g}", "core sol-attn", f"tau {tau:g}",
                            (lambda t=tau: apply_core_sparse_standin(patcher, head_dim, CORE_MIN_TOKENS,
                                                                     sol_kernel(kitchen, tau=t), sigma_start)[0]), None))
        for keep in SLA_KEEP:
            configs.append((f"sla keep {keep:g}%", "core sla", f"keep {keep:g}%",
                            (lambda k=keep: apply_core_sparse_standin(patcher, head_dim, CORE_MIN_TOKENS,
                                                                      sol_kernel(kitchen, keep_percent=k),
                                                                      sigma_start)[0]), None))
        # our plans that keep full heads (the composition changes nothing for a plan without)
        with_full = [t for t in targets if plans[f"ours {t:g}x"][0].density_summary().get("full")][-2:]
        for target in with_full:
            plan, density = plans[f"ours {target:g}x"]
            configs.append((f"ours {target:g}x + sol-attn", "ours + core sol-attn",
                            f"target {target:g}x, full heads on tau 1.3",
                            (lambda p=plan: apply_plan(apply_core_sparse_standin(
                                patcher, head_dim, CORE_MIN_TOKENS, sol_kernel(kitchen, tau=1.3), sigma_start)[0],
                                p, backend=backend)), density))
    heads = tuple(range(size.config["num_heads"]))
    # the trajectory's own noise floor: dense attention through our kernel
    # (every block, after the same warm-up), which differs from SDPA only by rounding
    everything = torch.ones(1, -(-size.tokens // 128), -(-size.tokens // 64), dtype=torch.bool)
    full_table = table_from_block_mask(everything.expand(len(heads), -1, -1).contiguous(), heads, size.tokens).to(device)
    configs.insert(1, ("dense, our kernel", "noise floor", "every block through our bf16 kernel",
                       lambda: apply_core_sparse_standin(patcher, head_dim, 0, static_kernel(full_table, backend),
                                                         sigma_start)[0], 1.0))
    statics = {}
    for target in (1.5, 2.0):  # static masks at the densities of two mid-range plans
        if f"ours {target:g}x" not in plans or "static radial" not in families:
            continue
        density = plans[f"ours {target:g}x"][1]
        for kind in ("radial", "window"):
            mask, setting = mask_at_density(kind, size.grid, density, device=device)
            table = table_from_block_mask(mask.unsqueeze(0).expand(len(heads), -1, -1).contiguous(), heads,
                                          size.tokens).to(device)
            statics[(kind, target)] = setting
            configs.append((f"{kind} d={setting['density']:.2f}", f"static {kind}", json.dumps(setting),
                            (lambda t=table: apply_core_sparse_standin(patcher, head_dim, 0, static_kernel(t, backend),
                                                                       sigma_start)[0]), setting["density"]))

    configs = [c for c in configs if c[1] in families]

    def generate(model, prompt, seed):
        return common.generate(model, [prompt], seed=seed, steps=args.steps, size=size, cfg=CFG)

    rows, reference, strips, all_latents = [], {}, [], {}
    for name, family, setting, make, density in configs:
        model = make()
        generate(model, runs[0][0], runs[0][1]) if device.type == "cuda" else None  # compile / load outside timing
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        timer.reset()
        latents, seconds = {}, []
        for prompt, seed in runs:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            latents[(prompt, seed)] = generate(model, prompt, seed).cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t)
        per_step = timer.per_step_ms()
        attn_total = sum(per_step.values()) / len(runs)
        attn_sparse = sum(v for s, v in per_step.items() if s >= first_sparse) / len(runs)
        sparse_steps = max(1, args.steps - first_sparse)
        row = {"name": name, "family": family, "setting": setting, "density": density,
               "step_ms": 1000 * pystats.median(seconds) / args.steps,
               "attention_ms_per_step": attn_total / args.steps,
               "attention_ms_per_sparse_step": attn_sparse / sparse_steps,
               "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None}
        if device.type == "cuda":
            warm_ms, sparse_ms = timer.kernel_ms(lambda m=model: generate(m, *runs[0]))
            row.update(kernel_ms_per_step=(warm_ms + sparse_ms) / args.steps,
                       kernel_ms_per_sparse_step=sparse_ms / sparse_steps)
        if name == "dense":
            reference = latents
        ps = [float(common.psnr(latents[r], reference[r])[0]) for r in runs]
        ss = [float(common.ssim(latents[r], reference[r])[0]) for r in runs]
        row.update(psnr_mean=sum(ps) / len(ps), psnr_worst=min(ps), ssim_mean=sum(ss) / len(ss), ssim_worst=min(ss),
                   psnr_per_run=[round(p, 3) if p < 1e9 else None for p in ps])
        rows.append(row)
        strips.append((name, latents[runs[0]][0]))
        all_latents[name] = latents
        print(f"{name}: step {row['step_ms']:.1f} ms, attention {row['attention_ms_per_step']:.2f} ms/step, "
              f"PSNR {row['psnr_mean']:.2f} dB (worst {row['psnr_worst']:.2f})", flush=True)
        del model
    dense = rows[0]
    for row in rows:
        if dense.get("kernel_ms_per_step") and row.get("kernel_ms_per_step"):
            row["kernel_speedup"] = dense["kernel_ms_per_step"] / row["kernel_ms_per_step"]
            row["kernel_speedup_sparse_steps"] = dense["kernel_ms_per_sparse_step"] / row["kernel_ms_per_sparse_step"]
        row["attention_speedup"] = dense["attention_ms_per_step"] / row["attention_ms_per_step"]
        row["attention_speedup_sparse_steps"] = dense["attention_ms_per_sparse_step"] / row["attention_ms_per_sparse_step"]
        row["step_speedup"] = dense["step_ms"] / row["step_ms"]

    by_name = {r["name"]: r for r in rows}
    for name, lat in eight_bit_pairs(configs, all_latents):
        by_name[name]["psnr_vs_bf16_same_plan"] = lat
    from census import census, paper_census

    report = {"env": env_info(device, kitchen_version), "size": size.name, "tokens": size.tokens, "grid": size.grid,
              "model_heads": size.heads, "steps": args.steps, "cfg": CFG, "batch": 2, "sampler": common.SAMPLER,
              "scheduler": common.SCHEDULER, "dense_warmup_steps": first_sparse, "sigma_start": sigma_start,
              "core_start_percent_0.2_dense_steps": core_default_dense_steps,
              "held_out": [list(r) for r in runs], "calibration": {
                  "prompts": list(common.CALIB_CLASSES), "seed": 100, "probe_steps": stats.probe_steps.tolist(),
                  "query_fraction": args.query_fraction, "menu": "extended-wide",
                  "seconds": None if calib_seconds is None else round(calib_seconds, 1), "reused": calib_seconds is None,
                  "cost_source": stats.cost_source},
              "plans": {k: {"density": d, "modes": p.density_summary(), "ranges": p.describe_step_ranges(),
                            "plan": plan_to_dict(p)} for k, (p, d) in plans.items()},
              "static_settings": {f"{k} {t:g}x": v for (k, t), v in statics.items()},
              "census": census(stats), "census_paper_menu": paper_census(paper_stats),
              "families": sorted(wanted), "results": rows}
    with open(os.path.join(args.out, "head_to_head.json"), "w") as f:
        json.dump(report, f, indent=1)
    try:
        from sparse_vdit.plans.preview import render_plan

        from h2h_plot import markdown, plot, strips_image

        strips_image(strips).save(os.path.join(args.out, "head_to_head_strips.png"))
        plot(report, os.path.join(args.out, "quality_vs_time.png"))
        with open(os.path.join(args.out, "head_to_head.md"), "w") as f:
            f.write(markdown(report))
        census_plan = plans.get("ours 2x", next(iter(plans.values())))[0]
        render_plan(census_plan, stats, thumbs_per_mode=4).save(os.path.join(args.out, f"yardstick_{size.name}_census.png"))
    except ImportError as error:
        print(f"no pictures: {error}")
    print_table(report)


def print_table(report: dict) -> None:
    env = report["env"]
    print(f"\n{env}\n{report['size']} yardstick, {report['tokens']} tokens, B=2 (cfg {report['cfg']:g}), "
          f"{report['steps']} steps, first {report['dense_warmup_steps']} dense; held-out {len(report['held_out'])} runs")
    for label, key in (("census, calibration's menu", "census"), ("census, paper's modes", "census_paper_menu")):
        if report.get(key):
            totals = report[key]["totals"]
            print(f"{label}: {totals.get('dense', 0)} of {sum(totals.values())} heads full, {totals}")
    print(f"{'config':28s} {'density':>7s} {'step ms':>8s} {'attn ms':>8s} {'attn x':>6s} {'sparse x':>8s} "
          f"{'PSNR':>6s} {'worst':>6s} {'SSIM':>6s} {'GiB':>5s}")
    for r in report["results"]:
        print(f"{r['name']:28s} {(r['density'] or 0):7.3f} {r['step_ms']:8.2f} {r['attention_ms_per_step']:8.3f} "
              f"{r['attention_speedup']:6.2f} {r['attention_speedup_sparse_steps']:8.2f} {min(r['psnr_mean'], 999):6.2f} "
              f"{min(r['psnr_worst'], 999):6.2f} {r['ssim_mean']:6.4f} {(r['peak_memory_gib'] or 0):5.2f}")


def merge(paths: list[str], out: str) -> None:
    """One report from parts of a head-to-head (same size, protocol, plans): the
    first part's dense row leads, the other parts' dense rows follow as
    "dense (part N)", and each row keeps the speedups against its own part's
    dense run (same machine, another call)."""
    parts = []
    for p in paths:
        with open(p) as f:
            parts.append(json.load(f))
    base = parts[0]
    for i, part in enumerate(parts[1:], 2):
        for key in ("size", "tokens", "steps", "cfg", "held_out", "dense_warmup_steps"):
            if part[key] != base[key]:
                raise SystemExit(f"--merge: part {i} differs in {key}: {part[key]} vs {base[key]}")
        # a part may solve fewer plans (no paper menu, other targets): compare the shared ones
        if any(part["plans"][k]["plan"] != base["plans"][k]["plan"] for k in part["plans"].keys() & base["plans"]):
            print(f"--merge: part {i} solved different plans (calibrated again?); its rows keep its own plans")
    rows = []
    for i, part in enumerate(parts, 1):
        for r in part["results"]:
            if r["family"] == "dense" and i > 1:
                r = {**r, "name": f"dense (part {i})", "family": "dense, other part"}
            rows.append({**r, "part": i})
    plans = {k: v for part in parts[:0:-1] for k, v in part["plans"].items()}
    plans.update(base["plans"])  # every part's plans; the first part's where they share a name
    env = {**base["env"], "comfy_kitchen": next((p["env"]["comfy_kitchen"] for p in parts if p["env"].get("comfy_kitchen")),
                                                 None)}  # the part that ran core's node names its version
    report = {**base, "env": env, "results": rows, "plans": plans, "families": sorted({f for p in parts for f in p.get("families", [])}),
              "parts": [{"file": p, "env": part["env"], "families": part.get("families")} for p, part in zip(paths, parts)]}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "head_to_head.json"), "w") as f:
        json.dump(report, f, indent=1)
    from h2h_plot import markdown, plot

    plot(report, os.path.join(out, "quality_vs_time.png"))
    with open(os.path.join(out, "head_to_head.md"), "w") as f:
        f.write(markdown(report))
    print_table(report)


if __name__ == "__main__":
    main()

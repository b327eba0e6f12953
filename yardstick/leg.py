"""Train the wan480 yardstick in legs: one device call each, resumed from the
committed checkpoint, each writing its log, its census and the census curve.

On the GPU machine (one call of at most 10 minutes; see yardstick/README.md,
"Training legs", for what travels):

    python yardstick/leg.py run --comfyui PATH --out $OUT [--first] [--budget-s 560]

  resumes from yardstick/wan480_checkpoint/ (or, on a warm machine, from the
  newer checkpoint a previous call left in --work), trains until the budget
  less the census reserve is spent, exports the 4-bit model, evaluates it,
  runs the census at lambda 0.5 / epsilon 1 on it (ComfyUI sampling, cfg 3,
  calibration prompts 0-3), and writes to $OUT (8 files at most, as a call
  brings back): checkpoint/ (index + shards of at most 15 MiB),
  yardstick_wan480_legs.json (every leg so far: steps, loss, v-loss of the
  stored model, census, full-head share), yardstick_wan480_census.png and
  this leg's log. Its summary table is printed last. --first starts a new
  run with the plan below (refused where a checkpoint exists).

Here, after the call:

    python yardstick/leg.py land FILES_AT     # FILES_AT: where the call's files came back

  puts the checkpoint in yardstick/wan480_checkpoint/ (replaced, not
  accumulated), rebuilds yardstick/wan480_yardstick.safetensors from it and
  checks its tensors against the digest the GPU recorded, and writes
  benchmarks/results/yardstick_wan480_{legs.json,census.json,census.png,
  census_curve.png,training_log.txt}; then commit those.

    python yardstick/leg.py park leg|h2h      # move what a call does not need out of the checkout
    python yardstick/leg.py unpark            # and back (before committing)
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import ys_checkpoint as ckpt  # noqa: E402
from ys_sizes import size_named  # noqa: E402

# the first leg's plan (recorded in the checkpoint; later legs take it from there). Short clips
# (7 x 30 x 52 = 10,920 tokens) cost about a ninth of the full grid's attention per sample.
FIRST_LEG = {
    "wan480": "--steps 12000 --short-steps 6000 --short-batch 8 --batch 2 --optimizer factored --ema 0 "
              "--schedule wsd --decay-steps 1500 --warmup 200 --lr 3e-4 --uncond-p 0.1",
    "wan480-tiny": "--steps 4 --short-steps 2 --short-batch 2 --batch 1 --optimizer factored --ema 0 "
                   "--schedule wsd --decay-steps 2 --warmup 1 --uncond-p 0.5",
}
PARKED = "/tmp/sparse_vdit_parked"
FULL_SHARE_GOAL = 0.4


def stem(size) -> str:
    return f"yardstick_{size.name}"


def checkpoint_dir(root: str, size) -> str:
    return os.path.join(root, "yardstick", size.name.replace("-", "_") + "_checkpoint")


def results_dir(root: str) -> str:
    return os.path.join(root, "benchmarks", "results")


def step_of(folder: str) -> int:
    """The step a checkpoint folder holds, -1 where there is none."""
    index = os.path.join(folder, "index.json")
    if not os.path.isfile(index):
        return -1
    with open(index) as f:
        return int(json.load(f)["info"]["step"])


def replace_folder(src: str, dst: str) -> None:
    """Copy ``src`` over ``dst`` whole: a copy beside it, then renames."""
    tmp = dst + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    ckpt.swap_in(tmp, dst)


def tensor_digest(path: str) -> str:
    """sha256 over a safetensors file's tensors (names, dtypes, shapes, bytes),
    not its header: the same model gives the same digest whatever wrote it."""
    import torch
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(path).items()):
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def stream(cmd: list[str], log) -> int:
    """Run ``cmd``, its output to our stdout and to ``log``; its exit status."""
    print("$ " + shlex.join(cmd), file=log, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        sys.stdout.write(line)
        log.write(line)
    log.flush()
    return proc.wait()


def read_legs(*paths: str) -> list:
    """The longest leg list among ``paths`` (a call not yet landed leaves a longer one in --work)."""
    best = []
    for p in paths:
        if os.path.isfile(p):
            with open(p) as f:
                legs = json.load(f)
            best = legs if len(legs) > len(best) else best
    return best


def run(args) -> None:
    t0 = time.perf_counter()
    size = size_named(args.size)
    committed, work = checkpoint_dir(args.root, size), os.path.abspath(args.work)
    work_ckpt = os.path.join(work, "checkpoint")
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    at_committed, at_work = step_of(committed), step_of(work_ckpt)
    if args.first:
        if max(at_committed, at_work) >= 0:
            raise SystemExit(f"--first: a checkpoint exists (step {max(at_committed, at_work)}); resume instead")
    elif max(at_committed, at_work) < 0:
        raise SystemExit(f"no checkpoint in {committed} or {work_ckpt}: the first leg needs --first")
    elif at_committed > at_work:
        replace_folder(committed, work_ckpt)
    if not args.first:
        source = "committed" if at_committed >= at_work else "warm machine's"
        print(f"resuming from the {source} checkpoint at step {max(at_committed, at_work)}", flush=True)
    weights = os.path.join(work, size.weights)
    log_path = os.path.join(args.out, f"{stem(size)}_leg_log.txt")
    with open(log_path, "w") as log:
        left = args.budget_s - (time.perf_counter() - t0) - (0 if args.no_census else args.census_reserve_s)
        cmd = [sys.executable, os.path.join(HERE, "train.py"), "--comfyui", args.comfyui, "--out", work,
               "--size", size.name, "--device", args.device, "--stop-after-s", f"{max(30.0, left):.0f}", "--export",
               "--eval-samples", str(args.eval_samples)]
        cmd += shlex.split(args.train_args or FIRST_LEG[size.name]) if args.first else ["--resume"]
        cmd += ["--set-total", str(args.set_total)] if args.set_total else []
        cmd += ["--set-short-steps", str(args.set_short_steps)] if args.set_short_steps >= 0 else []
        if stream(cmd, log):
            raise SystemExit("training failed: see the log")
        census = None
        if not args.no_census:
            results = os.path.join(work, "census")
            cmd = [sys.executable, os.path.join(HERE, "census.py"), "--comfyui", args.comfyui, "--size", size.name,
                   "--weights", weights, "--device", args.device, "--results", results,
                   "--work", os.path.join(work, "census_calibration"), "--steps", str(args.census_steps),
                   "--menu", args.census_menu]
            if stream(cmd, log):  # the trained steps still come back; the next leg's census counts
                print("census failed (see the log): this leg's files come back without it", file=log, flush=True)
            else:
                import census as census_mod

                with open(os.path.join(results, census_mod.census_name(size.name) + ".json")) as f:
                    census = json.load(f)
                shutil.copy(os.path.join(results, census_mod.census_name(size.name) + ".png"), args.out)
    with open(os.path.join(work, f"{stem(size)}_training.json")) as f:
        training = json.load(f)
    legs_name = f"{stem(size)}_legs.json"
    legs = read_legs(os.path.join(results_dir(args.root), legs_name), os.path.join(work, legs_name))
    this = training["runs"][-1]
    curve = training["loss_curve"]
    tail = [r["loss"] for r in curve[-4:]]
    legs.append({"leg": len(legs) + 1, "card": this["card"], "from_step": this["from_step"],
                 "to_step": training["steps"], "total": training["total"], "seconds": this["seconds"],
                 "train_seconds_total": training["train_seconds"], "loss": sum(tail) / max(1, len(tail)),
                 "tokens": curve[-1].get("tokens") if curve else None, "lr": curve[-1]["lr"] if curve else None,
                 "eval_v_loss": training["eval_v_loss"], "weights_digest": tensor_digest(weights),
                 "full_share": None if census is None else census["full_share"],
                 "totals": None if census is None else census["totals"], "census": census,
                 "census_menu": args.census_menu,
                 "full_share_paper": None if census is None else paper_share(census)})
    for folder in (work, args.out):
        with open(os.path.join(folder, legs_name), "w") as f:
            json.dump(legs, f, indent=1)
    replace_folder(work_ckpt, os.path.join(args.out, "checkpoint"))
    print_table(legs, size)
    print(f"leg done in {time.perf_counter() - t0:.0f}s", flush=True)


def paper_share(census: dict) -> float:
    """The census's share of full heads with the paper's shapes only (the whole census where
    its menu had no newer modes)."""
    return census.get("paper_menu", census)["full_share"]


def leg_shares(leg: dict) -> tuple:
    """(full share with the paper's shapes, with the census's menu where it had newer modes, else None);
    legs before session 12 recorded only the first, under full_share."""
    if leg["full_share"] is None:
        return None, None
    paper = leg.get("full_share_paper", leg["full_share"])
    return paper, (leg["full_share"] if leg.get("census_menu", "wide") != "wide" else None)


def print_table(legs: list, size) -> None:
    print(f"\n{size.name} yardstick legs (census lambda 0.5 / epsilon 1; goal: full heads <= {FULL_SHARE_GOAL:.0%}; "
          "full share: with the paper's shapes; (newer): with 3-D windows and routed heads too)")
    print(f"{'leg':>3s} {'card':>22s} {'steps':>12s} {'tokens':>6s} {'loss':>7s} {'v@0.9 stored':>12s} "
          f"{'full share':>10s} {'(newer)':>7s}  census")
    for leg in legs:
        stored = next((v for k, v in leg["eval_v_loss"].items() if k.startswith("stored")),
                      next(iter(leg["eval_v_loss"].values())))
        paper, newer = leg_shares(leg)
        share = "-" if paper is None else f"{paper:.2f}"
        extended = "-" if newer is None else f"{newer:.2f}"
        print(f"{leg['leg']:3d} {leg['card'][-22:]:>22s} {leg['from_step']:5d}-{leg['to_step']:<6d} "
              f"{leg['tokens'] or 0:6d} {leg['loss']:7.4f} {stored['sigma_0.9']:12.4f} {share:>10s} {extended:>7s}  "
              f"{leg['totals']}")


def land(args) -> None:
    import train

    size = size_named(args.size)
    src = args.files_at
    with open(os.path.join(src, f"{stem(size)}_legs.json")) as f:
        legs = json.load(f)
    last = legs[-1]
    new_step, committed = step_of(os.path.join(src, "checkpoint")), checkpoint_dir(args.root, size)
    if new_step != last["to_step"]:
        raise SystemExit(f"the checkpoint holds step {new_step}, the legs file says {last['to_step']}")
    if step_of(committed) > new_step:
        raise SystemExit(f"the committed checkpoint (step {step_of(committed)}) is newer than this one ({new_step})")
    weights = os.path.join(args.root, "yardstick", size.weights)
    tmp = weights + ".partial"
    train.export_weights(os.path.join(src, "checkpoint"), tmp, size)
    if tensor_digest(tmp) != last["weights_digest"]:
        os.remove(tmp)
        raise SystemExit("the model rebuilt from the checkpoint differs from the one the GPU evaluated")
    replace_folder(os.path.join(src, "checkpoint"), committed)
    os.replace(tmp, weights)
    results = results_dir(args.root)
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, f"{stem(size)}_legs.json"), "w") as f:
        json.dump(legs, f, indent=1)
    if last["census"] is not None:
        with open(os.path.join(results, f"{stem(size)}_census.json"), "w") as f:
            json.dump(last["census"], f, indent=1)
        shutil.copy(os.path.join(src, f"{stem(size)}_census.png"), results)
    with open(os.path.join(src, f"{stem(size)}_leg_log.txt")) as f:
        text = f.read()
    with open(os.path.join(results, f"{stem(size)}_training_log.txt"), "a") as f:
        f.write(f"\n=== leg {last['leg']}: steps {last['from_step']}-{last['to_step']} on {last['card']} ===\n{text}")
    curve_image(legs, size).save(os.path.join(results, f"{stem(size)}_census_curve.png"))
    print_table(legs, size)
    print(f"\nlanded leg {last['leg']}; commit yardstick/{os.path.basename(committed)} yardstick/{size.weights} "
          f"benchmarks/results/{stem(size)}_*")


def curve_image(legs: list, size, width: int = 720, height: int = 420):
    """Share of full heads (census, lambda 0.5 / epsilon 1) against training steps."""
    from PIL import Image, ImageDraw

    shares = [(leg["to_step"], *leg_shares(leg)) for leg in legs]
    points = [(step, paper) for step, paper, _ in shares if paper is not None]
    newer = [(step, extended) for step, _, extended in shares if extended is not None]
    image = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(image)
    left, right, top, bottom = 60, 20, 40, 50
    x1 = max([p[0] for p in points + newer] + [1]) * 1.05

    def at(x, y):
        return left + x / x1 * (width - left - right), height - bottom - y * (height - top - bottom)

    d.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(6):
        _, py = at(0, i / 5)
        d.text((left - 35, py - 6), f"{i / 5:.1f}", fill="black")
        px, _ = at(x1 * i / 5, 0)
        d.text((px - 15, height - bottom + 8), f"{x1 * i / 5:.0f}", fill="black")
    gy = at(0, FULL_SHARE_GOAL)[1]
    d.line([left, gy, width - right, gy], fill=(44, 160, 44))
    d.text((width - right - 150, gy - 16), f"goal: <= {FULL_SHARE_GOAL:.0%} full", fill=(44, 160, 44))
    for row, (series, colour, label) in enumerate(((points, (31, 119, 180), "paper's shapes"),
                                                   (newer, (255, 127, 14), "with 3-D windows and routed heads"))):
        xy = [at(x, y) for x, y in series]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for x, y in xy:
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        if series:
            d.text((left + 10, top + 8 + 14 * row), label, fill=colour)
    d.text((left, 10), f"{size.name} yardstick: share of full heads (census lambda 0.5, epsilon 1) vs training step",
           fill="black")
    d.text((left + 200, height - 25), "training step", fill="black")
    return image


PARK_SETS = {  # what a call does not need (the tracked weights of the other sizes; see the README)
    "leg": ("yardstick/wan_tiny_yardstick.safetensors", "yardstick/wan_video_yardstick.safetensors",
            "yardstick/wan480_yardstick.safetensors"),
    "h2h": ("yardstick/wan_tiny_yardstick.safetensors", "yardstick/wan_video_yardstick.safetensors",
            "yardstick/wan480_checkpoint"),
}
# parked for every call: committed pictures no call reads (the head-to-heads' strips, 4.4 MB together;
# a leg call has under 1 MB to spare without them)
PARK_ALWAYS = ("benchmarks/results/**/*_strips.png",)


def travelling_bytes(root: str) -> int:
    """Bytes of what a device call sends of the checkout (tracked files that
    exist and untracked files git does not ignore), carried paths aside."""
    out = subprocess.run(["git", "-C", root, "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                         check=True).stdout.decode()
    return sum(os.path.getsize(os.path.join(root, p)) for p in out.split("\0") if p and
               os.path.isfile(os.path.join(root, p)))


def park(args) -> None:
    if any(files for _, _, files in os.walk(args.parked)):
        raise SystemExit(f"{args.parked} already holds parked files: run `leg.py unpark` first")
    os.makedirs(args.parked, exist_ok=True)
    always = sorted(os.path.relpath(p, args.root) for pattern in PARK_ALWAYS
                    for p in glob.glob(os.path.join(args.root, pattern), recursive=True))
    for rel in (*PARK_SETS[args.what], *always):
        src = os.path.join(args.root, rel)
        if os.path.exists(src):
            dst = os.path.join(args.parked, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(src, dst)
            print(f"parked {rel}")
    print(f"the checkout now sends {travelling_bytes(args.root) / 2 ** 20:.1f} MiB; add what you carry "
          f"(64 MiB in all). Run `leg.py unpark` before committing.")


def unpark(args) -> None:
    for dirpath, dirnames, files in os.walk(args.parked):
        rel = os.path.relpath(dirpath, args.parked)
        if rel.endswith("_checkpoint"):
            if os.path.exists(os.path.join(args.root, rel)):
                raise SystemExit(f"{rel} exists in the checkout and is parked too: move one of them yourself")
            dirnames.clear()
            files = []
            shutil.move(dirpath, os.path.join(args.root, rel))
            print(f"back: {rel}")
        for name in files:
            src, dst = os.path.join(dirpath, name), os.path.join(args.root, rel, name)
            if os.path.exists(dst):
                # Written after `park` (by `land`, which rebuilds the weights): newer than the parked copy.
                os.remove(src)
                print(f"kept the checkout's newer {os.path.join(rel, name)}; dropped the parked copy")
                continue
            shutil.move(src, dst)
            print(f"back: {os.path.join(rel, name)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="one training leg (on the GPU machine)")
    r.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"))
    r.add_argument("--out", default=os.environ.get("OUT"), help="where the call's files go ($OUT)")
    r.add_argument("--first", action="store_true", help="start the run (no checkpoint may exist)")
    r.add_argument("--train-args", default="", help="a first leg's training plan (default: FIRST_LEG[size])")
    r.add_argument("--set-total", type=int, default=0, help="move the run's step total (its wsd decay)")
    r.add_argument("--set-short-steps", type=int, default=-1, help="move the step where the full grid starts")
    r.add_argument("--budget-s", type=float, default=560.0, help="wall time of the whole leg")
    r.add_argument("--census-reserve-s", type=float, default=150.0, help="kept for export, evaluation and census")
    r.add_argument("--no-census", action="store_true")
    r.add_argument("--census-steps", type=int, default=20)
    r.add_argument("--census-menu", default="wide", help="the census's candidate menu; extended-wide also counts "
                   "3-D windows and routed heads and still reports the paper's shapes alone (one calibration)")
    r.add_argument("--eval-samples", type=int, default=16)
    r.add_argument("--work", default="/tmp/sparse_vdit_leg", help="kept between calls on a warm machine")
    r.add_argument("--device", default="cuda")
    la = sub.add_parser("land", help="bring a leg's files into the checkout (here)")
    la.add_argument("files_at")
    pa = sub.add_parser("park", help="move what a call does not need out of the checkout")
    pa.add_argument("what", choices=sorted(PARK_SETS))
    un = sub.add_parser("unpark", help="move parked files back")
    for p in (pa, un):
        p.add_argument("--parked", default=PARKED, help="where parked files wait")
    for p in (r, la, pa, un):
        p.add_argument("--size", default="wan480")
        p.add_argument("--root", default=REPO, help="the checkout (tests point it elsewhere)")
    args = ap.parse_args(argv)
    if args.verb == "run" and not args.out:
        ap.error("run: --out (or $OUT) is required")
    {"run": run, "land": land, "park": park, "unpark": unpark}[args.verb](args)


if __name__ == "__main__":
    main()

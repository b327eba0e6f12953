"""The pictures of a head-to-head run (PIL only): quality versus measured
time, the latent strips; and its table as markdown.

    python yardstick/h2h_plot.py RESULTS.json OUT.png [OUT.md]

Two panels, x: measured self-attention time per step (ms, the whole run,
warm-up included), left as GPU kernel time (profiler), right as CUDA-event
time around each call (host time included where the GPU waits for it);
dense marked as a vertical line; y: mean PSNR against dense over the
held-out runs (worst run as a thin tick below each point). One colour per
method family, each point labelled with its setting.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STRIP_FRAMES = 4

COLOURS = {"ours bf16": (31, 119, 180), "ours 8-bit": (44, 160, 44), "core sol-attn": (214, 39, 40),
           "core sla": (255, 127, 14), "static radial": (148, 103, 189), "static window": (140, 86, 75),
           "ours + core sol-attn": (23, 190, 207), "ours bf16 paper menu": (188, 189, 34),
           "noise floor": (127, 127, 127)}


def latent_rgb(latent: torch.Tensor) -> torch.Tensor:
    """A fixed linear map of the 16 latent channels to 3 maps: the
    pseudo-inverse of the data's shared channel mixture (ys_data.class_mixing,
    seed 12345), rows 0-2 = background, object mask, object texture.
    [16, T, H, W] -> [3, T, H, W] in about [-1, 1]."""
    import ys_data as data

    shared = torch.Generator().manual_seed(12345)
    a = 0.5 * torch.randn(data.CHANNELS, data.N_MAPS, generator=shared)
    to_maps = torch.linalg.pinv(a)[:3]  # [3, 16]
    x = torch.atanh(latent.float().clamp(-0.999, 0.999) ) / 0.9
    return torch.einsum("mc,cthw->mthw", to_maps, x).clamp(-1.5, 1.5) / 1.5


def strips_image(rows: list[tuple[str, torch.Tensor]], scale: int = 2):
    from PIL import Image, ImageDraw

    label_w = 260
    tiles = []
    for label, lat in rows:
        rgb = latent_rgb(lat)
        t = rgb.shape[1]
        frames = sorted({round(i * (t - 1) / (STRIP_FRAMES - 1)) for i in range(STRIP_FRAMES)})
        strip = torch.cat([rgb[:, f] for f in frames], dim=2)  # [3, H, F*W]
        tiles.append((label, ((strip + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()))
    h, w = tiles[0][1].shape[:2]
    image = Image.new("RGB", (label_w + w * scale, h * scale * len(tiles)), "white")
    draw = ImageDraw.Draw(image)
    for i, (label, arr) in enumerate(tiles):
        image.paste(Image.fromarray(arr).resize((w * scale, h * scale), Image.NEAREST), (label_w, i * h * scale))
        draw.text((6, i * h * scale + h * scale // 2 - 6), label, fill="black")
    return image


def short_label(row) -> str:
    name = row["name"]
    for prefix in ("sol-attn ", "sla ", "ours "):
        if name.startswith(prefix) and row["family"] in ("core sol-attn", "core sla", "ours bf16"):
            return name[len(prefix):]
    return name.replace("ours ", "").replace(" + sol-attn", "+sol")


def plot(report: dict, path: str) -> None:
    from PIL import Image

    keys = [("kernel_ms_per_step", "GPU kernel time in self-attention per step (ms)"),
            ("attention_ms_per_step", "self-attention time per step, host included (ms)")]
    keys = [(k, label) for k, label in keys if all(r.get(k) for r in report["results"])]
    panels = [panel(report, key, label, legend=i == len(keys) - 1) for i, (key, label) in enumerate(keys)]
    image = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
    x = 0
    for p in panels:
        image.paste(p, (x, 0))
        x += p.width
    image.save(path)


def panel(report: dict, key: str, x_label: str, legend: bool, width: int = 900, height: int = 700):
    from PIL import Image, ImageDraw

    rows = [r for r in report["results"] if not r["family"].startswith("dense")]  # dense: the line (each part's)
    dense = next(r for r in report["results"] if r["family"] == "dense")
    left, right, top, bottom = 80, 230 if legend else 40, 50, 60
    xs = [r[key] for r in rows] + [dense[key]]
    ys = [r["psnr_mean"] for r in rows] + [r["psnr_worst"] for r in rows]
    x0, x1 = 0.0, max(xs) * 1.08
    y0, y1 = max(0.0, min(ys) - 2), max(ys) + 2

    def at(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    image = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(image)
    d.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        px, _ = at(x, y0)
        d.line([px, height - bottom, px, height - bottom + 5], fill="black")
        d.text((px - 12, height - bottom + 8), f"{x:.1f}", fill="black")
        y = y0 + (y1 - y0) * i / 5
        _, py = at(x0, y)
        d.line([left - 5, py, left, py], fill="black")
        d.text((left - 45, py - 6), f"{y:.1f}", fill="black")
    d.text((left + 150, height - 25), x_label + ", 20 steps incl. dense warm-up", fill="black")
    d.text((8, top - 30), "mean PSNR vs dense (dB, latents); tick: worst run", fill="black")
    env = report["env"]
    d.text((left, 8), f"{report['size']} yardstick, {report['tokens']} tokens, B=2, {env['device']}, "
                      f"torch {env['torch']}, triton {env['triton']}, comfy-kitchen {env['comfy_kitchen']}",
           fill="black")
    px, _ = at(dense[key], y0)
    d.line([px, top, px, height - bottom], fill=(120, 120, 120), width=2)
    d.text((px - 40, top + 4), "dense", fill=(80, 80, 80))
    for r in rows:
        colour = COLOURS.get(r["family"], (0, 0, 0))
        x, y = at(r[key], r["psnr_mean"])
        _, yw = at(r[key], r["psnr_worst"])
        d.line([x, y, x, yw], fill=colour)
        d.line([x - 3, yw, x + 3, yw], fill=colour)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour)
        d.text((x + 7, y - 6), short_label(r), fill=colour)
    for i, (family, colour) in enumerate(COLOURS.items() if legend else ()):
        if any(r["family"] == family for r in rows):
            y = top + 10 + 20 * i
            d.ellipse([width - right + 15, y, width - right + 25, y + 10], fill=colour)
            d.text((width - right + 32, y - 1), family, fill="black")
    return image


def markdown(report: dict) -> str:
    env = report["env"]
    lines = [f"# Head-to-head on the {report['size']} yardstick", "",
             f"{env['device']}, torch {env['torch']}, Triton {env['triton']}, comfy-kitchen {env['comfy_kitchen']}, "
             f"ComfyUI {env['comfyui']}. {report['tokens']:,} tokens per call, B = 2 (cfg {report['cfg']:g}), "
             f"{report['steps']} steps {report['sampler']} / {report['scheduler']}, first {report['dense_warmup_steps']} "
             f"steps dense for every sparse method; {len(report['held_out'])} held-out runs (prompts, seeds) "
             f"{report['held_out']}; calibration on prompts {report['calibration']['prompts']}.", "",
             "Times per step, the whole run (warm-up included); `kernel` = GPU kernel time inside self-attention "
             "(profiler), `host` = CUDA events around each call (includes host time where the GPU waits). "
             "PSNR / SSIM against dense on the latents, mean and worst run.", "",
             "| config | density | kernel ms | kernel x | sparse steps x | host ms | host x | step ms | PSNR | worst | SSIM |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        density = "" if r.get("density") is None else f"{r['density']:.3f}"
        psnr = "ref" if r["family"].startswith("dense") else f"{r['psnr_mean']:.2f}"
        worst = "" if r["family"].startswith("dense") else f"{r['psnr_worst']:.2f}"
        lines.append(f"| {r['name']} | {density} | {r.get('kernel_ms_per_step', 0):.3f} | {r.get('kernel_speedup', 0):.2f} "
                     f"| {r.get('kernel_speedup_sparse_steps', 0):.2f} | {r['attention_ms_per_step']:.3f} "
                     f"| {r['attention_speedup']:.2f} | {r['step_ms']:.1f} | {psnr} | {worst} | {r['ssim_mean']:.3f} |")
    pairs = [(r["name"], r["psnr_vs_bf16_same_plan"]) for r in report["results"] if "psnr_vs_bf16_same_plan" in r]
    if pairs:
        lines += ["", "8-bit against bf16 on the same plan (mean PSNR of the latents): "
                  + ", ".join(f"{n} {p:.2f} dB" for n, p in pairs)]
    lines += ["", f"Census of the {report['model_heads']} heads: {report['census']['totals']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        results = json.load(f)
    plot(results, sys.argv[2])
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as f:
            f.write(markdown(results))

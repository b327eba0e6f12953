"""Shared pieces of the yardstick scripts: ComfyUI setup, the trained model,
sampling with ComfyUI, calibration through the pack's ComfyUI glue, metrics.

All on the CPU with the pack's ``reference`` backend (exact semantics).
"""
from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(REPO, "benchmarks", "results")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

import ys_data as data  # noqa: E402
import ys_model as ymodel  # noqa: E402
from ys_sizes import TINY, YardstickSize  # noqa: E402

CALIB_CLASSES = (0, 1, 2, 3)    # calibration prompts
HELDOUT_CLASSES = (4, 5, 6, 7)  # evaluation prompts (never seen by calibration)
STEPS, SAMPLER, SCHEDULER, CFG = 20, "euler", "simple", 1.0
GUIDED_CFG = 3.0  # the video-scale sizes learnt the empty prompt (10% of samples), so they sample at cfg 3


def default_cfg(size: YardstickSize) -> float:
    """The tiny model samples without guidance; the video-scale sizes at cfg 3."""
    return CFG if size.name == "tiny" else GUIDED_CFG


def comfyui_release() -> str | None:
    """The imported ComfyUI's version (comfyui_version.py), or None."""
    try:
        import comfyui_version
        return comfyui_version.__version__
    except ImportError:
        return None
WARMUP = 0.2  # dense warm-up share of the steps (the pack's default)


def setup(comfyui: str | None = None, weights: str | None = None, device: str = "cpu"):
    """Import ComfyUI and load a model (default: the committed tiny one) through
    ComfyUI's loader; fp32 on the CPU, bf16 on a GPU."""
    cpu = torch.device(device).type == "cpu"
    ymodel.import_comfy(comfyui, cpu=cpu)
    return ymodel.load_patcher(weights or ymodel.WEIGHTS, dtype=torch.float32 if cpu else torch.bfloat16)


def conds(classes, size: YardstickSize = TINY):
    """(positive, negative) for a batch of prompts; the negative is the empty
    (all-zero) prompt; cfg 1 never evaluates it."""
    c = ymodel.conditioning(size)[list(classes)]
    return [[c.clone(), {}]], [[torch.zeros_like(c), {}]]


def generate(patcher, classes, seed: int, steps: int = STEPS, size: YardstickSize = TINY,
             cfg: float = CFG) -> torch.Tensor:
    """ComfyUI sampling (comfy.sample.sample, as KSampler does); returns the
    latent in the model's space ([B, 16, T, H, W], data range about [-1, 1])."""
    import comfy_harness as H

    pos, neg = conds(classes, size)
    latent = torch.zeros(len(classes), data.CHANNELS, *size.latent)
    out = H.sample(patcher, pos, neg, latent, seed=seed, steps=steps, cfg=cfg, sampler=SAMPLER, scheduler=SCHEDULER)
    return patcher.model.process_latent_in(out)


def calibrate(patcher, folder: str, name: str = "yardstick", classes=CALIB_CLASSES, seed: int = 100,
              steps: int = STEPS, eps: float = 1.0, lam: float = 0.5, probe_steps: int = 3,
              query_fraction: float = 0.5, menu: str = "wide", size: YardstickSize = TINY, cfg: float = CFG,
              precision: str = "bf16"):
    """One dense calibration run (a batch of the calibration prompts) through
    ``integration.calibrate.calibrate``; returns its CalibrationResult."""
    import comfy_harness as H
    from sparse_vdit.integration.calibrate import calibrate as run

    pos, neg = conds(classes, size)
    latent = torch.zeros(len(classes), data.CHANNELS, *size.latent)

    def sample(model):
        return H.sample(model, pos, neg, latent, seed=seed, steps=steps, cfg=cfg, sampler=SAMPLER,
                        scheduler=SCHEDULER)

    os.makedirs(folder, exist_ok=True)
    return run(patcher, sample, plan_name=name, folder=folder, lam=lam, eps=eps, probe_steps=probe_steps,
               query_fraction=query_fraction, menu=menu, warmup=WARMUP, precision=precision,
               settings={"steps": steps, "sampler": SAMPLER, "scheduler": SCHEDULER, "cfg": cfg,
                         "prompts": list(classes), "seed": seed, "yardstick": size.name})


def saved_or_calibrated(patcher, folder: str, name: str, **kwargs):
    """The statistics `name` saved in `folder` by an earlier calibrate(), or a
    new calibration (kwargs as calibrate's). Saved ones are reused as they
    are: delete them after changing what calibration records."""
    stats = saved_statistics(folder, name)
    return stats if stats is not None else calibrate(patcher, folder, name=name, **kwargs).statistics


def saved_statistics(folder: str, name: str):
    """The statistics `name` an earlier calibrate() saved in `folder`, or None."""
    from sparse_vdit.integration.calibrate import STATS_SUFFIX
    from sparse_vdit.plans.statistics import load_statistics

    path = os.path.join(folder, name + STATS_SUFFIX)
    return load_statistics(path) if os.path.exists(path) else None


def psnr(x: torch.Tensor, ref: torch.Tensor, peak_to_peak: float = 2.0) -> torch.Tensor:
    """Per sample PSNR in dB, data range [-1, 1] (peak-to-peak 2)."""
    mse = ((x.double() - ref.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(peak_to_peak ** 2 / mse.clamp_min(1e-20))


def _gauss(size=7, sigma=1.5):
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-ax ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per sample SSIM (Wang et al. 2004: 7x7 Gaussian window, sigma 1.5,
    K1 0.01, K2 0.03), on each (channel, frame) latent plane, averaged."""
    b = x.shape[0]
    xs = x.double().reshape(-1, 1, *x.shape[-2:])
    ys = ref.double().reshape(-1, 1, *ref.shape[-2:])
    g = _gauss()
    win = (g[:, None] * g[None, :])[None, None]

    def f(t):
        return torch.nn.functional.conv2d(t, win)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = f(xs), f(ys)
    vx, vy, cxy = f(xs * xs) - mx * mx, f(ys * ys) - my * my, f(xs * ys) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(b, -1).mean(1)


def token_geometry(size: YardstickSize = TINY):
    from sparse_vdit.patterns import Geometry

    return Geometry(*size.grid)


def plan_density(plan, steps: int = STEPS, warmup: float = WARMUP, size: YardstickSize = TINY) -> float:
    """Mean block density over the sparse steps (each step's own range)."""
    from sparse_vdit.patterns import compile_layer

    g = token_geometry(size)
    from sparse_vdit.plans.format import DenseSchedule

    sparse_steps = range(DenseSchedule(warmup).first_sparse_step(steps), steps)
    per_step = [sum(compile_layer(l, g).density() for l in plan.layers_at(s, steps)) / len(plan.layers)
                for s in sparse_steps]
    return sum(per_step) / len(per_step)


def whole_run_speedup(step_speedup: float, warmup: float = WARMUP, steps: int = STEPS) -> float:
    """Attention speedup over the whole run with the first warm-up steps dense."""
    from sparse_vdit.plans.format import DenseSchedule

    dense_steps = DenseSchedule(warmup).first_sparse_step(steps)
    return steps / (dense_steps + (steps - dense_steps) / step_speedup)

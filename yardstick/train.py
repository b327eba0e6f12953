"""Train the yardstick: ComfyUI's WanModel (small) as a flow-matching denoiser.

ComfyUI's WAN21 is ``ModelType.FLOW``: ``model_sampling`` is CONST +
ModelSamplingDiscreteFlow (comfy/model_base.py, comfy/model_sampling.py):
    x_t      = sigma * noise + (1 - sigma) * x0       (CONST.noise_scaling)
    timestep = sigma * 1000                           (multiplier 1000)
    denoised = x_t - sigma * model_output             (CONST.calculate_denoised)
so the model predicts v = noise - x0 at timestep sigma * 1000, which is what
this script trains (MSE on v). Sigmas are drawn as u ~ U(0, 1) pushed through
ComfyUI's shift (time_snr_shift) with shift 3, so high noise levels, where
Wan's shift-8 sampling spends most steps, are well covered.

Data: yardstick/ys_data.py procedural latent videos [16, 8, 32, 32] (2048
tokens), one of 8 conditioning embeddings per sample (the class).

    python yardstick/train.py --comfyui /path/to/ComfyUI --out DIR [--steps N | --budget-s 360]

Deterministic from --seed for a given --steps (with --steps 0 the step count
is fitted to --budget-s after 30 timed steps and recorded). AdamW, bf16
autocast on CUDA, EMA of the weights (the EMA is what is saved).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ys_data as data  # noqa: E402
import ys_model as ymodel  # noqa: E402


def shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1 + (shift - 1) * u)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def batch_inputs(step: int, args, cond, device):
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    classes = torch.randint(0, data.NUM_CLASSES, (args.batch,), generator=g)
    x0 = data.make_batch(classes.tolist(), seed=args.seed * 7_777_777 + step, device=device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    u = torch.rand(args.batch, generator=g)
    sigma = shifted(u, args.train_shift).clamp(1e-3, 1.0).to(device)
    context = cond[classes].to(device)
    return x0, noise, sigma, context


def v_loss(net, x0, noise, sigma, context, device):
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = s * noise + (1 - s) * x0
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = net(xt, sigma * 1000.0, context, transformer_options={})
    return torch.mean((out.float() - (noise - x0)) ** 2)


@torch.no_grad()
def evaluate(net, cond, device, seed=999, n=32):
    """v-loss per sigma on a fixed batch; and at sigma 0.9 with shuffled prompts."""
    g = torch.Generator().manual_seed(seed)
    classes = [i % data.NUM_CLASSES for i in range(n)]
    x0 = data.make_batch(classes, seed=seed, device=device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    ctx = cond[classes].to(device)
    out = {}
    for s in (0.1, 0.3, 0.5, 0.7, 0.9, 0.97):
        sig = torch.full((n,), s, device=device)
        out[f"sigma_{s}"] = float(v_loss(net, x0, noise, sig, ctx, device))
    wrong = cond[[(c + 1) % data.NUM_CLASSES for c in classes]].to(device)
    out["sigma_0.9_wrong_prompt"] = float(v_loss(net, x0, noise, torch.full((n,), 0.9, device=device), wrong, device))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=0, help="0: fit to --budget-s")
    ap.add_argument("--budget-s", type=float, default=360.0, help="training wall budget when --steps 0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--train-shift", type=float, default=3.0)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--save-every-s", type=float, default=90.0)
    args = ap.parse_args()

    t_start = time.perf_counter()
    device = torch.device(args.device)
    ymodel.import_comfy(args.comfyui, cpu=device.type == "cpu")
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.makedirs(args.out, exist_ok=True)
    net = ymodel.build_model(device="cpu", dtype=torch.float32, seed=args.seed).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    cond = ymodel.conditioning()
    decay, no_decay = [], []
    for n_, p in net.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), eps=1e-8)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = dict(config={k: list(v) if isinstance(v, tuple) else v for k, v in ymodel.CONFIG.items()},
                params=ymodel.param_count(net), card=card, seed=args.seed, batch=args.batch, lr=args.lr,
                warmup=args.warmup, train_shift=args.train_shift, ema=args.ema, torch=torch.__version__,
                data=dict(frames=data.FRAMES, height=data.HEIGHT, width=data.WIDTH, classes=data.NUM_CLASSES,
                          text_len=ymodel.TEXT_LEN))
    print(json.dumps(meta), flush=True)

    total = args.steps if args.steps > 0 else 10 ** 9
    log, acc, acc_n = [], 0.0, 0
    t_train = time.perf_counter()
    last_save = t_train
    step = 0
    while step < total:
        x0, noise, sigma, ctx = batch_inputs(step, args, cond, device)
        lr = lr_at(step, total if total < 10 ** 9 else 10 ** 6, args.lr, args.warmup)
        for grp in opt.param_groups:
            grp["lr"] = lr
        loss = v_loss(net, x0, noise, sigma, ctx, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - d)
        acc = acc + loss.detach()
        acc_n += 1
        step += 1
        if step == 10:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t10 = time.perf_counter()
        if args.steps <= 0 and step == 30:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - t10) / 20
            left = args.budget_s - (time.perf_counter() - t_start) - 25.0
            total = max(60, 30 + int(left / per_step) // 50 * 50)
            meta["steps_fitted"] = total
            print(f"fitted: {per_step * 1000:.1f} ms/step -> {total} steps", flush=True)
        if step % 25 == 0 or step == total:
            el = time.perf_counter() - t_train
            acc = float(acc)
            log.append(dict(step=step, loss=acc / acc_n, lr=lr, grad_norm=float(gn), seconds=round(el, 2)))
            print(f"step {step:5d}/{total} loss {acc / acc_n:.4f} lr {lr:.2e} gn {float(gn):.2f} {el:.0f}s", flush=True)
            acc, acc_n = 0.0, 0
        if time.perf_counter() - last_save > args.save_every_s and step < total:
            ymodel.save_weights(ema, os.path.join(args.out, "wan_tiny_yardstick.safetensors"),
                                metadata={**meta, "steps_done": step, "partial": True})
            last_save = time.perf_counter()

    train_s = time.perf_counter() - t_train
    meta.update(steps=step, train_seconds=round(train_s, 1))
    ev = {"ema": evaluate(ema, cond, device), "raw": evaluate(net.eval(), cond, device)}
    meta["eval_v_loss"] = ev
    meta["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    ymodel.save_weights(ema, os.path.join(args.out, "wan_tiny_yardstick.safetensors"), metadata=meta)
    with open(os.path.join(args.out, "yardstick_training.json"), "w") as f:
        json.dump({**meta, "loss_curve": log}, f, indent=1)
    print(json.dumps(ev), flush=True)
    print(f"done: {step} steps in {train_s:.0f}s, wall {meta['wall_seconds']}s", flush=True)


if __name__ == "__main__":
    main()

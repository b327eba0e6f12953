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

Data: yardstick/ys_data.py procedural latent videos at the size's latent
shape (tiny [16, 8, 32, 32] = 2,048 tokens; video [16, 13, 64, 64] = 13,312
tokens), ys_scenes.py's many-object scenes for wan480 ([16, 21, 60, 104] =
32,760 tokens; its first --short-steps steps on 7-frame clips with
--short-batch samples), one of 8 conditioning embeddings per sample (the class); with
--uncond-p, that share of samples gets the empty (all-zero) prompt, so the
model also learns the unconditional branch that cfg > 1 samples with.

    python yardstick/train.py --comfyui /path/to/ComfyUI --out DIR [--size video] [--steps N | --budget-s 360]

Deterministic from --seed for a given --steps (with --steps 0 the step count
is fitted to --budget-s after 30 timed steps and recorded). AdamW, bf16
autocast on CUDA, EMA of the weights (the EMA is what is saved). Or, with
--optimizer factored --ema 0 (wan480: its state must travel in one device
call), ys_optim.FactoredRMS: factored second moments, weights on the bf16
grid, 2 bytes a parameter in the checkpoint; the saved model is the weights.
--schedule wsd keeps the learning rate flat after the warm-up and decays it
linearly to 10% over the last --decay-steps (the total can be moved on a
resume with --set-total, so legs can go on until the census goal is met).

Resumable: every --checkpoint-every-s the whole training state (weights,
EMA, optimizer, step, loss log) is saved to OUT/checkpoint in shards of at
most 16 MiB (ys_checkpoint.py); --resume continues from it, with the same
schedule and the training settings recorded in the checkpoint (those given
on its command line are ignored). A run stops, checkpointed, once
--stop-after-s has passed (--export: then it also writes the model and its
v-loss evaluation, as a finished run does); each batch is drawn from
(seed, step) alone, so a resumed run draws the batches the uninterrupted run
would have.
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

import ys_checkpoint as ckpt  # noqa: E402
import ys_data as data  # noqa: E402
import ys_model as ymodel  # noqa: E402
import ys_optim  # noqa: E402
from ys_sizes import size_named  # noqa: E402

# settings a checkpoint records and a resumed run takes from it
TRAINING_SETTINGS = ("size", "batch", "lr", "warmup", "train_shift", "ema", "seed", "uncond_p", "optimizer",
                     "schedule", "decay_steps", "short_steps", "short_batch")
SHARD_BYTES = 15 * 2 ** 20  # under the 16 MiB a file may have to come back from a device call


def shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1 + (shift - 1) * u)


def lr_at(step: int, total: int, base: float, warmup: int, schedule: str = "cosine", decay_steps: int = 0) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "wsd":  # warm-up, stable, then a linear decay to 10% over the last decay_steps
        left = total - step
        return base if left >= decay_steps else base * (0.1 + 0.9 * max(0, left) / max(1, decay_steps))
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def stage_at(step: int, args, size) -> tuple[tuple[int, int, int], int]:
    """(latent shape, batch) of a step: short clips for the first --short-steps."""
    if size.short_latent and step < args.short_steps:
        return size.short_latent, args.short_batch or args.batch
    return size.latent, args.batch


def batch_inputs(step: int, args, cond, device, latent, batch: int | None = None, kind: str = "classic"):
    batch = batch or args.batch
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    classes = torch.randint(0, data.NUM_CLASSES, (batch,), generator=g)
    x0 = data.make_videos(kind, classes.tolist(), seed=args.seed * 7_777_777 + step, device=device, latent=latent)
    noise = torch.randn(x0.shape, generator=g).to(device)
    u = torch.rand(batch, generator=g)
    sigma = shifted(u, args.train_shift).clamp(1e-3, 1.0).to(device)
    context = cond[classes]
    if args.uncond_p > 0:  # drawn last: with --uncond-p 0 the batches are those of earlier runs
        empty = torch.rand(batch, generator=g) < args.uncond_p
        context = torch.where(empty.view(-1, 1, 1), torch.zeros_like(context), context)
    return x0, noise, sigma, context.to(device)


def differentiable_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with freqs [..., D/2, 2, 2] rotation matrices (ComfyUI's
    layout), in plain torch ops: ComfyUI binds comfy-kitchen's fused rope when
    that package is installed, and it has no backward."""
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def use_differentiable_rope() -> None:
    import comfy.ldm.wan.model as wan

    wan.apply_rope1 = differentiable_rope


def v_loss(net, x0, noise, sigma, context, device):
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = s * noise + (1 - s) * x0
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = net(xt, sigma * 1000.0, context, transformer_options={})
    return torch.mean((out.float() - (noise - x0)) ** 2)


@torch.no_grad()
def evaluate(net, cond, device, latent, seed=999, n=32, chunk=8, kind: str = "classic"):
    """v-loss per sigma on a fixed batch; at sigma 0.9 with shuffled prompts and with the empty prompt."""
    g = torch.Generator().manual_seed(seed)
    classes = [i % data.NUM_CLASSES for i in range(n)]
    x0 = data.make_videos(kind, classes, seed=seed, device=device, latent=latent)
    noise = torch.randn(x0.shape, generator=g).to(device)
    ctx = cond[classes].to(device)

    def loss(sigma, context):
        parts = [v_loss(net, x0[i:i + chunk], noise[i:i + chunk], torch.full((len(x0[i:i + chunk]),), sigma,
                 device=device), context[i:i + chunk], device) for i in range(0, n, chunk)]
        return float(sum(parts) / len(parts))

    out = {f"sigma_{s}": loss(s, ctx) for s in (0.1, 0.3, 0.5, 0.7, 0.9, 0.97)}
    out["sigma_0.9_wrong_prompt"] = loss(0.9, cond[[(c + 1) % data.NUM_CLASSES for c in classes]].to(device))
    out["sigma_0.9_empty_prompt"] = loss(0.9, torch.zeros_like(ctx))
    return out


def training_state(net, ema, opt, step: int, total: int, log: list, meta: dict) -> tuple[dict, dict]:
    # FactoredRMS keeps the weights on the bf16 grid: bf16 holds them exactly
    weight_dtype = torch.bfloat16 if isinstance(opt, ys_optim.FactoredRMS) else None
    tensors = {f"net.{k}": v.to(weight_dtype or v.dtype) for k, v in net.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    state = opt.state_dict()
    for i, per_param in state["state"].items():
        tensors.update({f"opt.{i}.{k}": v for k, v in per_param.items()})
    info = {"step": step, "total": total, "log": log, "meta": meta, "param_groups": state["param_groups"]}
    return tensors, info


def restore_state(tensors: dict, info: dict, net, ema, opt) -> None:
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    per_param: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, key = k.split(".", 2)
            per_param.setdefault(int(i), {})[key] = v
    opt.load_state_dict({"state": per_param, "param_groups": info["param_groups"]})


def model_state_from_checkpoint(folder: str) -> tuple[dict, dict]:
    """(the saved model's state dict in fp32: the EMA if the run keeps one, else
    the weights; the checkpoint's info)."""
    tensors, info = ckpt.load_checkpoint(folder)
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "net."
    return {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}, info


def export_weights(folder: str, path: str, size, extra: dict | None = None) -> str:
    """Write the model file of the checkpoint in ``folder`` (the size's storage:
    fp16, or 4 bits for wan480). Deterministic: the same checkpoint gives the
    same bytes on any machine (ys_leg.py land checks it). Returns its sha256."""
    import hashlib

    sd, info = model_state_from_checkpoint(folder)
    meta = {**info["meta"], "steps": info["step"], "total": info["total"], **(extra or {})}
    if size.quant:
        import ys_quant

        ys_quant.save_quantized(sd, path, metadata=meta)
    else:
        ymodel.save_state_dict(sd, path, metadata=meta)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_optimizer(net, args):
    decay, no_decay = [], []
    for _, p in net.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "factored":
        with torch.no_grad():
            for p in net.parameters():
                ys_optim.round_to_bf16_grid(p.data)
        return ys_optim.FactoredRMS(groups, lr=args.lr, seed=args.seed)
    if args.optimizer != "adamw":
        raise SystemExit(f"unknown --optimizer {args.optimizer!r}")
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99), eps=1e-8)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=0, help="0: fit to --budget-s")
    ap.add_argument("--budget-s", type=float, default=360.0, help="training wall budget when --steps 0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--train-shift", type=float, default=3.0)
    ap.add_argument("--ema", type=float, default=0.998, help="0: no EMA (the saved model is the weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="tiny", help="tiny (2,048 tokens), video (13,312), wan480 (32,760), wan480-tiny")
    ap.add_argument("--uncond-p", type=float, default=0.0, help="share of samples trained with the empty prompt")
    ap.add_argument("--optimizer", default="adamw", help="adamw, or factored (ys_optim.FactoredRMS)")
    ap.add_argument("--schedule", default="cosine", help="cosine, or wsd (flat, then --decay-steps to 10%%)")
    ap.add_argument("--decay-steps", type=int, default=0)
    ap.add_argument("--short-steps", type=int, default=0, help="first steps on the size's short clips")
    ap.add_argument("--short-batch", type=int, default=0, help="batch of the short-clip steps (0: --batch)")
    ap.add_argument("--checkpoint-every-s", type=float, default=90.0)
    ap.add_argument("--stop-after-s", type=float, default=0.0, help="checkpoint and stop after this much wall time")
    ap.add_argument("--eval-samples", type=int, default=32, help="samples in the final v-loss evaluation")
    ap.add_argument("--stop-at-step", type=int, default=0, help="checkpoint and stop at this step (for tests)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    ap.add_argument("--set-total", type=int, default=0, help="on --resume: move the run's step total (wsd decay)")
    ap.add_argument("--set-short-steps", type=int, default=-1, help="on --resume: move the end of the short clips")
    ap.add_argument("--export", action="store_true", help="also write the model and its evaluation when stopped")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checkpoint = os.path.join(args.out, "checkpoint")
    resumed = None
    if args.resume:
        if not ckpt.has_checkpoint(checkpoint):
            raise SystemExit(f"--resume: no checkpoint in {checkpoint}")
        resumed = ckpt.load_checkpoint(checkpoint)
        for key, value in resumed[1]["meta"].get("args", {}).items():
            setattr(args, key, value)
    size = size_named(args.size)

    t_start = time.perf_counter()
    device = torch.device(args.device)
    ymodel.import_comfy(args.comfyui, cpu=device.type == "cpu")
    use_differentiable_rope()
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.makedirs(args.out, exist_ok=True)
    net = ymodel.build_model(device="cpu", dtype=torch.float32, seed=args.seed, size=size).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False) if args.ema > 0 else None
    cond = ymodel.conditioning(size)
    opt = make_optimizer(net, args)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = dict(size=size.name, config={k: list(v) if isinstance(v, tuple) else v for k, v in size.config.items()},
                params=ymodel.param_count(net), card=card, seed=args.seed, batch=args.batch, lr=args.lr,
                warmup=args.warmup, train_shift=args.train_shift, ema=args.ema, uncond_p=args.uncond_p,
                torch=torch.__version__, args={k: getattr(args, k) for k in TRAINING_SETTINGS},
                data=dict(kind=size.data, frames=size.latent[0], height=size.latent[1], width=size.latent[2],
                          tokens=size.tokens, short_latent=size.short_latent, classes=data.NUM_CLASSES,
                          text_len=size.text_len))
    total = args.steps if args.steps > 0 else 10 ** 9
    log, acc, acc_n, step, runs = [], 0.0, 0, 0, []
    if resumed is not None:
        tensors, info = resumed
        restore_state(tensors, info, net, ema, opt)
        step, total, log = info["step"], info["total"], info["log"]
        if args.set_total:
            print(f"step total moved from {total} to {args.set_total}", flush=True)
            total = args.set_total
        if args.set_short_steps >= 0:
            print(f"short clips end at step {args.set_short_steps} (was {args.short_steps})", flush=True)
            args.short_steps = args.set_short_steps
        runs = info["meta"].get("runs", [])
        meta = {**info["meta"], "card": card, "torch": torch.__version__,
                "args": {k: getattr(args, k) for k in TRAINING_SETTINGS}}
        print(f"resumed at step {step} of {total}", flush=True)
    print(json.dumps(meta), flush=True)

    def save_checkpoint():
        tensors, info = training_state(net, ema, opt, step, total, log, {**meta, "runs": runs + [this_run()]})
        ckpt.save_checkpoint(checkpoint, tensors, info, limit=SHARD_BYTES)

    def this_run():
        return dict(card=card, from_step=first_step, to_step=step, seconds=round(time.perf_counter() - t_train, 1),
                    set_total=args.set_total or None,
                    set_short_steps=args.set_short_steps if args.set_short_steps >= 0 else None)

    first_step = step
    t_train = time.perf_counter()
    last_save = t_train
    stopped = False
    while step < total:
        if (args.stop_after_s > 0 and time.perf_counter() - t_start > args.stop_after_s) or step == args.stop_at_step > 0:
            stopped = True
            break
        latent, batch = stage_at(step, args, size)
        x0, noise, sigma, ctx = batch_inputs(step, args, cond, device, latent, batch, size.data)
        lr = lr_at(step, total if total < 10 ** 9 else 10 ** 6, args.lr, args.warmup, args.schedule, args.decay_steps)
        for grp in opt.param_groups:
            grp["lr"] = lr
        loss = v_loss(net, x0, noise, sigma, ctx, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                d = min(args.ema, (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - d)
        acc = acc + loss.detach()
        acc_n += 1
        step += 1
        if step == first_step + 10:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t10 = time.perf_counter()
        if args.steps <= 0 and step == 30 and not args.resume:
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
            log.append(dict(step=step, loss=acc / acc_n, lr=lr, grad_norm=float(gn), seconds=round(el, 2),
                            tokens=latent[0] * latent[1] * latent[2] // 4, batch=batch))
            print(f"step {step:5d}/{total} loss {acc / acc_n:.4f} lr {lr:.2e} gn {float(gn):.2f} "
                  f"tokens {latent[0] * latent[1] * latent[2] // 4} x {batch} {el:.0f}s", flush=True)
            acc, acc_n = 0.0, 0
        if time.perf_counter() - last_save > args.checkpoint_every_s and step < total:
            save_checkpoint()
            last_save = time.perf_counter()

    save_checkpoint()
    if stopped:
        print(f"stopped at step {step} of {total}: run again with --resume", flush=True)
        if not args.export:
            return
    runs = runs + [this_run()]
    train_s = sum(r["seconds"] for r in runs)
    meta.update(steps=step, train_seconds=round(train_s, 1), runs=runs)
    model = ema if ema is not None else net.eval()
    ev = {("ema" if ema is not None else "weights"): evaluate(model, cond, device, size.latent, n=args.eval_samples,
                                                               kind=size.data)}
    if ema is not None:
        ev["raw"] = evaluate(net.eval(), cond, device, size.latent, n=args.eval_samples, kind=size.data)
    weights = os.path.join(args.out, size.weights)
    sha = export_weights(checkpoint, weights, size)
    if size.quant:  # the stored model is what every comparison runs: evaluate it too
        stored = ymodel.build_model(device="cpu", dtype=torch.float32, seed=args.seed, size=size)
        stored.load_state_dict({k: v.float() for k, v in ymodel.load_state_dict(weights).items()})
        ev["stored_" + size.quant] = evaluate(stored.to(device).eval(), cond, device, size.latent,
                                              n=args.eval_samples, kind=size.data)
    meta["eval_v_loss"] = ev
    meta["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    with open(os.path.join(args.out, f"yardstick_{size.name}_training.json"), "w") as f:
        json.dump({**meta, "weights_sha256": sha, "total": total, "loss_curve": log}, f, indent=1)
    print(json.dumps(ev), flush=True)
    print(f"{'exported' if stopped else 'done'}: {step} steps in {train_s:.0f}s, wall {meta['wall_seconds']}s", flush=True)


if __name__ == "__main__":
    main()

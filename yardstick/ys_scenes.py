"""Procedural latent scenes for the wan480 yardstick: many things moving at once,
so that different heads have different jobs.

A sample is a latent video [16, T, H, W] in (-1, 1), seen through a moving
camera (a pan in the class's direction and a slow zoom):
- a background of textures at three scales (coarse 1-2, mid 4-7, fine 10-16
  cycles a frame width): local heads see the fine texture, wider ones the coarse;
- 2-4 objects of different shapes and textures, each moving on its own path
  (bouncing off the frame's edges), slowly (0.3-1.2% of the width a frame) or
  fast (3-7%): the same place in nearby frames (slow) or far along a path (fast);
- depth order: a nearer object hides what is behind it (occlusion), so what a
  token shows changes when something passes in front of it;
- a light level drifting over the clip (a global, whole-video signal).

The 16 channels are the class's fixed mixture of 6 maps (ys_data.class_mixing,
the same shared part as the classic data, so the picture strips' channel map
holds): background, object cover, object texture, a lit vertical gradient,
fine background detail, background behind objects. Each conditioning index
0..7 fixes the background texture, the camera pan, the speed regime and the
object count; per sample: positions, directions, speeds, sizes, spins,
frequencies, phases, zoom and light. Deterministic in (classes, seed): every
random draw is made on the CPU.
"""
from __future__ import annotations

import math

import torch

import ys_data as data

# (background texture, camera pan angle in degrees or None, speeds, objects)
CLASSES = (
    ("stripes", 180, "mixed", 3),
    ("checker", 270, "fast", 2),
    ("dots", 0, "slow", 4),
    ("smooth", 90, "mixed", 3),
    ("checker", None, "fast", 4),
    ("smooth", 0, "slow", 2),
    ("stripes", 90, "fast", 3),
    ("dots", 180, "mixed", 4),
)
MAX_OBJECTS = 4
SLOW, FAST = (0.003, 0.012), (0.03, 0.07)  # share of the frame width per latent frame


def _bounce(p, lo: float = 0.1, hi: float = 0.9):
    """Position p reflected into [lo, hi] (a path that bounces off the edges)."""
    span = hi - lo
    y = torch.remainder(p - lo, 2 * span)
    return lo + span - (y - span).abs()


def make_scenes(classes, seed: int, device="cpu", frames: int = 21, height: int = 60, width: int = 104):
    """Latent videos [B, 16, T, H, W] in (-1, 1) for the given class indices."""
    classes = [int(c) for c in classes]
    bsz = len(classes)
    g = torch.Generator().manual_seed(int(seed))
    dev = torch.device(device)

    def rnd(lo, hi, *shape):  # kept on the CPU: 0-dim pieces of it enter GPU ops as plain numbers, no syncs
        return lo + (hi - lo) * torch.rand(bsz, *shape, generator=g)

    # per sample, drawn in a fixed order whatever the class (determinism across classes)
    pan_speed, zoom, light_amp, light_w, light_ph = rnd(0.01, 0.03), rnd(-0.15, 0.15), rnd(0.05, 0.25), \
        rnd(0.1, 0.4), rnd(0, 2 * math.pi)
    bg_freq = torch.stack([rnd(1.0, 2.0), rnd(4.0, 7.0), rnd(10.0, 16.0)], 1)  # [B, 3] scales
    bg_phase, bg_angle, bg_weight = rnd(0, 2 * math.pi, 3), rnd(0, math.pi, 3), rnd(0.3, 1.0, 3)
    ox, oy, odir = rnd(0.15, 0.85, MAX_OBJECTS), rnd(0.15, 0.85, MAX_OBJECTS), rnd(0, 2 * math.pi, MAX_OBJECTS)
    slow, fast = rnd(*SLOW, MAX_OBJECTS), rnd(*FAST, MAX_OBJECTS)
    is_fast = rnd(0, 1, MAX_OBJECTS) < 0.5
    radius, spin, sharp = rnd(0.06, 0.16, MAX_OBJECTS), rnd(-0.5, 0.5, MAX_OBJECTS), rnd(25.0, 40.0, MAX_OBJECTS)
    ob_freq, ob_phase = rnd(5.0, 9.0, MAX_OBJECTS), rnd(0, 2 * math.pi, MAX_OBJECTS)
    jitter_a = 0.15 * torch.randn(bsz, data.CHANNELS, data.N_MAPS, generator=g)

    t = (torch.arange(frames, dtype=torch.float32, device=dev) - (frames - 1) / 2).view(frames, 1, 1)
    v = ((torch.arange(height, dtype=torch.float32, device=dev) + 0.5) / height).view(1, height, 1)
    u = ((torch.arange(width, dtype=torch.float32, device=dev) + 0.5) / width).view(1, 1, width)

    out = torch.empty(bsz, data.CHANNELS, frames, height, width, device=dev)
    for i, cls in enumerate(classes):
        texture, pan_deg, speeds, n_objects = CLASSES[cls]
        # camera: world coordinates of each pixel (zoom about the centre, then pan)
        z = 1 + zoom[i] * t / max(1, frames)
        px = py = 0.0
        if pan_deg is not None:
            pa = math.radians(pan_deg)
            px, py = pan_speed[i] * math.cos(pa) * t, pan_speed[i] * math.sin(pa) * t
        wu, wv = (u - 0.5) / z + 0.5 + px, (v - 0.5) / z + 0.5 + py
        layers = [bg_weight[i, s] * data._texture(texture if s < 2 else data.TEXTURES[(cls + 1) % 4], wu, wv,
                                                  bg_freq[i, s], bg_phase[i, s], bg_angle[i, s]) for s in range(3)]
        bg = (layers[0] + layers[1] + layers[2]) / bg_weight[i].sum()
        cover = torch.zeros_like(bg)
        objtex = torch.zeros_like(bg)
        for j in range(n_objects):  # painted far to near: later objects hide earlier ones
            fast_j = speeds == "fast" or (speeds == "mixed" and bool(is_fast[i, j]))
            speed = fast[i, j] if fast_j else slow[i, j]
            cx = _bounce(ox[i, j] + speed * math.cos(float(odir[i, j])) * t) + px
            cy = _bounce(oy[i, j] + speed * math.sin(float(odir[i, j])) * t) + py
            dx, dy = wu - cx, wv - cy
            shape = data.SHAPES[(cls + j) % len(data.SHAPES)]
            sdf = data._shape_sdf(shape, dx, dy, radius[i, j], t, spin[i, j])
            mask = torch.sigmoid(sharp[i, j] * sdf)
            tex = data._texture(data.TEXTURES[(cls + j + 1) % 4], dx, dy, ob_freq[i, j], ob_phase[i, j],
                                bg_angle[i, 0] + j)
            objtex = objtex * (1 - mask) + tex * mask
            cover = cover * (1 - mask) + mask
        light = 1 + light_amp[i] * torch.sin(light_w[i] * t + light_ph[i])
        grad = (2 * v - 1) * 0.8 * light
        maps = torch.stack([bg * (1 - cover), cover, objtex * cover, grad.expand_as(bg),
                            layers[2] * (1 - cover), bg * cover], dim=-1)
        a, b = data.class_mixing(cls)
        lat = torch.einsum("thwm,cm->cthw", maps * light[..., None], (a + jitter_a[i]).to(dev)) + b.to(dev).view(-1, 1, 1, 1)
        out[i] = torch.tanh(0.9 * lat)
    return out

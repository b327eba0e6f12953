"""Procedural LATENT videos for the yardstick model (no VAE anywhere).

A sample is a tensor [16, T, H, W] with values in (-1, 1): a textured
background seen through a panning camera, a main object of the class's shape
family that moves in the class's direction while it deforms (pulses, rotates,
grows lobes) and carries its own texture, and a small secondary blob moving
the other way. The 16 channels are fixed, class-dependent mixtures of those
maps (channels correlate, like real latents). Denoising such content needs a
token's spatial neighbourhood (edges, textures) and the same place in other
frames (motion, pan) - the structures sparse attention patterns exploit.

Each conditioning index (0..NUM_CLASSES-1) fixes the content properties
(shape family, motion direction, texture, camera pan, channel mixture); per
sample randomness covers positions, speeds, sizes, phases and frequencies.
Everything is deterministic from a seed (torch.Generator on CPU, then moved).
"""
from __future__ import annotations

import math

import torch

CHANNELS = 16
FRAMES, HEIGHT, WIDTH = 8, 32, 32  # latent; 1x2x2 patchify -> 8 x 16 x 16 = 2048 tokens
NUM_CLASSES = 8

SHAPES = ("disc", "square", "ring", "blob")
TEXTURES = ("stripes", "checker", "dots", "smooth")
# (shape, motion angle in degrees, texture, camera pan angle or None)
CLASSES = (
    ("disc", 0, "stripes", 180),
    ("square", 90, "checker", 270),
    ("ring", 180, "dots", 0),
    ("blob", 270, "smooth", 90),
    ("disc", 45, "checker", None),
    ("square", 225, "smooth", 0),
    ("ring", 315, "stripes", 90),
    ("blob", 135, "dots", 180),
)
N_MAPS = 6  # bg, mask, mask*objtex, gradient, secondary mask, bg*mask


def class_mixing(cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed channel mixture for a class: A [16, N_MAPS], bias [16]."""
    g = torch.Generator().manual_seed(7919 + 104729 * int(cls))
    shared = torch.Generator().manual_seed(12345)
    a = 0.5 * torch.randn(CHANNELS, N_MAPS, generator=shared) + 0.5 * torch.randn(CHANNELS, N_MAPS, generator=g)
    b = 0.2 * torch.randn(CHANNELS, generator=g)
    return a, b


def _texture(kind: str, u, v, freq, phase, angle):
    if kind == "stripes":
        return torch.sin(2 * math.pi * freq * (u * torch.cos(angle) + v * torch.sin(angle)) + phase)
    if kind == "checker":
        return torch.tanh(3.0 * torch.sin(2 * math.pi * freq * u + phase) * torch.sin(2 * math.pi * freq * v))
    if kind == "dots":
        return torch.cos(2 * math.pi * freq * u + phase) * torch.cos(2 * math.pi * freq * v + phase)
    if kind == "smooth":
        return 0.6 * torch.sin(2 * math.pi * 0.5 * freq * u + phase) + 0.4 * torch.cos(2 * math.pi * 0.35 * freq * v - phase)
    raise ValueError(kind)


def _shape_sdf(kind: str, dx, dy, r, t, spin):
    """Signed 'inside' distance (>0 inside) in normalised units."""
    d = torch.sqrt(dx * dx + dy * dy + 1e-8)
    if kind == "disc":
        return r - d
    if kind == "square":
        c, s = torch.cos(spin * t), torch.sin(spin * t)
        rx, ry = c * dx + s * dy, -s * dx + c * dy
        return r * 0.85 - torch.maximum(rx.abs(), ry.abs())
    if kind == "ring":
        return 0.35 * r - (d - r).abs()
    if kind == "blob":
        phi = torch.atan2(dy, dx)
        return r * (1 + 0.3 * torch.sin(3 * phi + spin * t)) - d
    raise ValueError(kind)


def make_batch(classes, seed: int, device="cpu", frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH):
    """Latent videos [B, 16, T, H, W] in (-1, 1) for the given class indices.

    Deterministic in (classes, seed); the random draws are made on the CPU.
    """
    classes = [int(c) for c in classes]
    bsz = len(classes)
    g = torch.Generator().manual_seed(int(seed))

    def rnd(lo, hi):
        return (lo + (hi - lo) * torch.rand(bsz, generator=g)).view(bsz, 1, 1, 1)

    x0, y0 = rnd(0.3, 0.7), rnd(0.3, 0.7)
    speed = rnd(0.025, 0.05)
    r0 = rnd(0.12, 0.2)
    pulse_amp, pulse_w, pulse_ph = rnd(0.1, 0.3), rnd(0.5, 1.2), rnd(0, 2 * math.pi)
    spin = rnd(0.2, 0.6) * torch.sign(rnd(-1, 1))
    bg_freq, bg_phase, bg_angle = rnd(2.0, 4.0), rnd(0, 2 * math.pi), rnd(0, math.pi)
    ob_freq, ob_phase = rnd(5.0, 8.0), rnd(0, 2 * math.pi)
    pan_speed = rnd(0.02, 0.045)
    x1, y1, r1 = rnd(0.2, 0.8), rnd(0.2, 0.8), rnd(0.06, 0.1)
    sharp = rnd(25.0, 40.0)
    jitter_a = 0.15 * torch.randn(bsz, CHANNELS, N_MAPS, generator=g)
    dev = torch.device(device)
    (x0, y0, speed, r0, pulse_amp, pulse_w, pulse_ph, spin, bg_freq, bg_phase, bg_angle, ob_freq, ob_phase,
     pan_speed, x1, y1, r1, sharp, jitter_a) = (p.to(dev) for p in (
        x0, y0, speed, r0, pulse_amp, pulse_w, pulse_ph, spin, bg_freq, bg_phase, bg_angle, ob_freq, ob_phase,
        pan_speed, x1, y1, r1, sharp, jitter_a))

    t = torch.arange(frames, dtype=torch.float32, device=dev).view(1, frames, 1, 1)
    v = ((torch.arange(height, dtype=torch.float32, device=dev) + 0.5) / height).view(1, 1, height, 1)
    u = ((torch.arange(width, dtype=torch.float32, device=dev) + 0.5) / width).view(1, 1, 1, width)

    out = torch.empty(bsz, CHANNELS, frames, height, width, device=dev)
    for i, cls in enumerate(classes):
        shape, motion_deg, texture, pan_deg = CLASSES[cls]
        sl = slice(i, i + 1)
        ma = math.radians(motion_deg)
        cx = x0[sl] + speed[sl] * math.cos(ma) * (t - frames / 2)
        cy = y0[sl] + speed[sl] * math.sin(ma) * (t - frames / 2)
        if pan_deg is None:
            px = py = torch.zeros(1, 1, 1, 1, device=dev)
        else:
            pa = math.radians(pan_deg)
            px, py = pan_speed[sl] * math.cos(pa), pan_speed[sl] * math.sin(pa)
        # camera pan: the whole scene (background and objects) shifts
        bu, bv = u + px * t, v + py * t
        bg = _texture(texture, bu, bv, bg_freq[sl], bg_phase[sl] + 0 * t, bg_angle[sl])
        r = r0[sl] * (1 + pulse_amp[sl] * torch.sin(pulse_w[sl] * t + pulse_ph[sl]))
        dx, dy = bu - cx, bv - cy
        sdf = _shape_sdf(shape, dx, dy, r, t, spin[sl])
        mask = torch.sigmoid(sharp[sl] * sdf)
        other = TEXTURES[(TEXTURES.index(texture) + 1) % len(TEXTURES)]
        objtex = _texture(other, dx, dy, ob_freq[sl], ob_phase[sl], bg_angle[sl] + 1.0)
        grad = (2 * bv - 1) * 0.8
        sx = x1[sl] - speed[sl] * math.cos(ma) * (t - frames / 2) * 0.7
        sy = y1[sl] - speed[sl] * math.sin(ma) * (t - frames / 2) * 0.7
        m2 = torch.sigmoid(sharp[sl] * (r1[sl] - torch.sqrt((bu - sx) ** 2 + (bv - sy) ** 2)))
        maps = torch.stack([bg * (1 - mask), mask, mask * objtex, grad.expand_as(bg), m2, bg * mask], dim=-1)[0]
        a, b = (m.to(dev) for m in class_mixing(cls))
        a = a + jitter_a[i]
        lat = torch.einsum("thwm,cm->cthw", maps, a) + b.view(CHANNELS, 1, 1, 1)
        out[i] = torch.tanh(0.9 * lat)
    return out


def make_videos(kind: str, classes, seed: int, device="cpu", latent=(FRAMES, HEIGHT, WIDTH)) -> torch.Tensor:
    """A size's training data (``YardstickSize.data``) at a latent shape (T, H, W)."""
    if kind == "scenes":
        import ys_scenes

        return ys_scenes.make_scenes(classes, seed, device, *latent)
    if kind == "classic":
        return make_batch(classes, seed, device, *latent)
    raise ValueError(f"unknown yardstick data {kind!r}")


def conditioning(num: int = NUM_CLASSES, text_len: int = 16, text_dim: int = 4096, seed: int = 2024) -> torch.Tensor:
    """Fixed stand-in 'prompt' embeddings [num, text_len, text_dim] (deterministic)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(num, text_len, text_dim, generator=g)


if __name__ == "__main__":
    x = make_batch(range(NUM_CLASSES), seed=0)
    print(x.shape, float(x.mean()), float(x.std()), float(x.abs().max()))

"""8-bit previews of HDR maps: tone-mapped panorama and a mirror ball."""
from __future__ import annotations

import numpy as np

from engines.relight.shading import linear_to_srgb
from engines.relight.sphere import luminance


def tonemap(env: np.ndarray, key: float = 0.18) -> np.ndarray:
    """Reinhard with the log-average luminance mapped to ``key``; uint8 [H, W, 3] sRGB."""
    lum = luminance(env)
    avg = float(np.exp(np.log(np.maximum(lum, 1e-6)).mean()))
    x = env * (key / max(avg, 1e-9))
    y = x / (1 + luminance(x)[..., None])
    return (np.clip(linear_to_srgb(np.clip(y, 0, 1)), 0, 1) * 255 + 0.5).astype(np.uint8)


def mirror_ball(env: np.ndarray, size: int = 128) -> np.ndarray:
    """The map as seen in a chrome ball photographed from the front (+z), linear [size, size, 3];
    pixels outside the ball are 0."""
    h, w, _ = env.shape
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, -c)  # image up = +y
    r2 = x * x + y * y
    inside = r2 <= 1
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    n = np.stack([x, y, nz], -1)  # ball normal, environment frame
    v = np.array([0.0, 0.0, -1.0])  # the camera looks along -z at the ball
    refl = v - 2 * (n @ v)[..., None] * n  # reflected view direction [S, S, 3]
    theta = np.arccos(np.clip(refl[..., 1], -1, 1))
    phi = np.arctan2(refl[..., 0], refl[..., 2])
    row = np.clip((theta / np.pi * h).astype(int), 0, h - 1)
    col = np.clip(((phi / (2 * np.pi) + 0.5) * w).astype(int), 0, w - 1)
    return np.where(inside[..., None], env[row, col], 0.0).astype(np.float32)

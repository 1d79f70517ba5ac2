"""Equirectangular geometry and order-2 spherical-harmonics lighting.

Frame (shared by maps, normals and captions): y up, +z in front of the subject (toward the
camera), +x to the subject's left (the image's right). Pixel (row v, column u) of an H×W
map (W = 2H) looks along θ = π·(v+½)/H from the zenith and φ = 2π·((u+½)/W − ½) from the
front, turning toward +x: d = (sin θ sin φ, cos θ, sin θ cos φ). The map's centre column is
the front; its left and right edges meet behind the subject (the seam). Every integral over
the map weights pixels by their solid angle dω = (2π/W)(π/H)·sin θ.
"""
from __future__ import annotations

import numpy as np

# Ramamoorthi–Hanrahan: Y_lm basis constants and the clamped-cosine convolution Â_l.
Y0, Y1, Y2A, Y2B, Y2C = 0.282095, 0.488603, 1.092548, 0.315392, 0.546274
A_HAT = np.array([np.pi] + [2 * np.pi / 3] * 3 + [np.pi / 4] * 5, np.float64)  # [9]


def directions(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions [H, W, 3] of the pixel centres and their solid angles [H, W]."""
    theta = np.pi * (np.arange(h) + 0.5) / h  # [H]
    phi = 2 * np.pi * ((np.arange(w) + 0.5) / w - 0.5)  # [W]
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    d = np.stack([st * np.sin(phi)[None], np.broadcast_to(ct, (h, w)), st * np.cos(phi)[None]], -1)
    domega = np.broadcast_to((2 * np.pi / w) * (np.pi / h) * st, (h, w))
    return d.astype(np.float64), np.ascontiguousarray(domega)


def to_angles(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Direction(s) [..., 3] → (elevation above the horizon, azimuth φ), radians."""
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return np.arcsin(np.clip(d[..., 1], -1, 1)), np.arctan2(d[..., 0], d[..., 2])


def from_angles(elevation: float, azimuth: float) -> np.ndarray:
    ce = np.cos(elevation)
    return np.array([ce * np.sin(azimuth), np.sin(elevation), ce * np.cos(azimuth)])


def sh_basis(d: np.ndarray) -> np.ndarray:
    """The 9 real SH basis functions at unit directions [..., 3] → [..., 9]."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return np.stack([np.full_like(x, Y0), Y1 * y, Y1 * z, Y1 * x, Y2A * x * y, Y2A * y * z,
                     Y2B * (3 * z * z - 1), Y2A * x * z, Y2C * (x * x - y * y)], -1)


def project_sh(env: np.ndarray) -> np.ndarray:
    """Radiance map [H, W, 3] → SH coefficients L_lm [9, 3] (solid-angle weighted)."""
    h, w, _ = env.shape
    d, dw = directions(h, w)
    return np.einsum("hwk,hwc,hw->kc", sh_basis(d), env.astype(np.float64), dw)


def irradiance_sh(coeffs: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """E(n) = Σ Â_l L_lm Y_lm(n) for unit normals [..., 3] → [..., 3]."""
    return np.einsum("...k,kc->...c", sh_basis(normals), coeffs * A_HAT[:, None])


def irradiance_bruteforce(env: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """E(n) = ∫ L(ω) max(0, n·ω) dω by summing every pixel (the reference for the SH error)."""
    h, w, _ = env.shape
    d, dw = directions(h, w)
    d, lw = d.reshape(-1, 3), (env.reshape(-1, 3) * dw.reshape(-1, 1))  # [P, 3], [P, 3]
    n = normals.reshape(-1, 3)
    out = np.zeros((len(n), 3))
    for i in range(0, len(n), 256):
        cos = np.maximum(n[i:i + 256] @ d.T, 0.0)  # [B, P]
        out[i:i + 256] = cos @ lw
    return out.reshape(normals.shape)


def rotate_yaw(d: np.ndarray, yaw: float) -> np.ndarray:
    """Turn directions [..., 3] about +y by ``yaw`` radians (toward +x)."""
    c, s = np.cos(yaw), np.sin(yaw)
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return np.stack([c * x + s * z, y, -s * x + c * z], -1)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 / BT.2020-agnostic luminance weights (Rec. 709 primaries)."""
    return rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722

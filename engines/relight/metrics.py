"""Scores for generated environment maps against the world's ground truth."""
from __future__ import annotations

import math

import numpy as np

from engines.relight import pq
from engines.relight.sphere import directions, luminance


def dominant_direction(env: np.ndarray, top: float = 0.1) -> np.ndarray:
    """Unit direction of the emitter delivering the most energy: pixels at ≥ ``top`` × the
    peak luminance (after a 3×3 blur, so a lone hot pixel does not decide) are grouped into
    connected regions (wrapping at the seam), and the region with the most luminous energy
    (luminance × solid angle) gives its energy-weighted mean direction."""
    h, w, _ = env.shape
    d, dw = directions(h, w)
    lum = luminance(env)
    pad = np.pad(lum, ((1, 1), (1, 1)), mode="wrap")
    blur = sum(pad[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    sel = blur >= top * blur.max()
    labels = _label_wrapped(sel)
    energy = lum * dw
    best = np.bincount(labels.ravel(), weights=energy.ravel() * sel.ravel())
    best[0] = -1  # background
    region = labels == int(best.argmax())
    v = (d[region] * energy[region][:, None]).sum(0)
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.array([0.0, 1.0, 0.0])


def _label_wrapped(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels (1..K, 0 = background); columns wrap around."""
    h, w = mask.shape
    parent = np.arange(h * w + 1)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    idx = np.arange(1, h * w + 1).reshape(h, w)
    pairs = []
    right = mask & np.roll(mask, -1, axis=1)  # with wrap
    pairs.append((idx[right], np.roll(idx, -1, axis=1)[right]))
    down = mask[:-1] & mask[1:]
    pairs.append((idx[:-1][down], idx[1:][down]))
    for a_, b_ in pairs:
        for i, j in zip(a_.tolist(), b_.tolist()):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(h * w + 1)])
    out = np.where(mask.ravel(), roots[1:], 0)
    _, inv = np.unique(out, return_inverse=True)
    return inv.reshape(h, w) if out.min() == 0 else (inv + 1).reshape(h, w)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return math.degrees(math.acos(float(np.clip(a @ b, -1, 1))))


def light_color(env: np.ndarray, direction: np.ndarray, radius_deg: float = 5.0) -> np.ndarray:
    """Chromaticity (r, g, b summing to 1) of the light within ``radius_deg`` of ``direction``."""
    h, w, _ = env.shape
    d, dw = directions(h, w)
    near = d @ direction >= math.cos(math.radians(radius_deg))
    if not near.any():
        near = d @ direction >= (d @ direction).max()
    rgb = (env[near] * dw[near][:, None]).sum(0)
    return rgb / max(rgb.sum(), 1e-12)


def color_error(env: np.ndarray, direction: np.ndarray, true_rgb: np.ndarray, radius_deg: float = 5.0) -> float:
    """L1 distance between chromaticities (0 = same colour, 2 = disjoint)."""
    t = np.asarray(true_rgb, np.float64)
    return float(np.abs(light_color(env, direction, radius_deg) - t / t.sum()).sum())


def dynamic_range(env: np.ndarray) -> float:
    """Peak / solid-angle-weighted median luminance."""
    h, w, _ = env.shape
    _, dw = directions(h, w)
    lum = luminance(env).ravel()
    order = np.argsort(lum)
    cum = np.cumsum(dw.ravel()[order])
    median = lum[order][np.searchsorted(cum, cum[-1] / 2)]
    return float(lum.max() / max(median, 1e-9))


def column_jump(env: np.ndarray, col: int) -> float:
    """Mean PQ-domain difference between column ``col`` and the column before it (wrapping):
    for ``col = 0`` that is the seam where the panorama's edges meet."""
    code = pq.encode(np.maximum(env, 0).astype(np.float64))
    return float(np.abs(code[:, col] - code[:, col - 1]).mean())


def seam_error(env: np.ndarray) -> float:
    """PQ jump across the wrap (0 = seamless; 1 = black against peak white). Compare a set of
    maps with ``column_jump`` at an interior column: a model without a seam gives both alike,
    since lights and horizons cross the wrap as often as any other column."""
    return column_jump(env, 0)

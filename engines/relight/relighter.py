"""Per-frame portrait relighting: geometry (matte + normals), SH shading, matte composite.

The same object relights a still or streams a video: across frames it tracks the face from
the previous landmarks (no re-detection) and smooths the matte and normals with an EMA, so
the light does not flicker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engines.relight.portrait import Face, Geometry, PortraitModels
from engines.relight.shading import EMA, reference_irradiance, shade

GEOMETRY_SIDE = 512  # geometry is computed at most at this size, then upsampled


def env_coeffs(env: np.ndarray) -> np.ndarray:
    """SH coefficients [9, 3] of a radiance map, scaled so the mean irradiance on normals
    facing the camera is 1 (absolute nits are arbitrary; ``strength`` sets the amount)."""
    from engines.relight.environments import shrink
    from engines.relight.sphere import project_sh

    c = project_sh(shrink(env))
    return (c / max(reference_irradiance(c), 1e-9)).astype(np.float32)


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float map [h, w] or [h, w, C] → [H, W(, C)] bilinear, size = (W, H)."""
    if a.shape[1] == size[0] and a.shape[0] == size[1]:
        return a
    if a.ndim == 2:
        return np.asarray(Image.fromarray(a.astype(np.float32)).resize(size, Image.BILINEAR), np.float32)
    return np.stack([_resize(a[..., i], size) for i in range(a.shape[2])], -1)


@dataclass
class Relighter:
    models: PortraitModels
    coeffs: np.ndarray  # [9, 3], exposure-normalised (env_coeffs)
    yaw_deg: float = 0.0
    strength: float = 0.8
    mode: str = "add"
    smoothing: float = 0.0  # weight of the past in the EMA (0 = none)
    face: Face | None = None
    _n: EMA = field(default_factory=EMA)
    _m: EMA = field(default_factory=EMA)

    def __post_init__(self) -> None:
        self._n.alpha = self._m.alpha = 1.0 - self.smoothing

    def geometry(self, rgb: np.ndarray) -> Geometry:
        """Matte and normals at ≤ GEOMETRY_SIDE, smoothed over frames."""
        h, w, _ = rgb.shape
        s = min(1.0, GEOMETRY_SIDE / max(h, w))
        small = rgb if s == 1.0 else np.asarray(Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))),
                                                                          Image.BILINEAR))
        g = self.models.geometry(small, self.face)
        self.face = g.face
        n = self._n(g.normals)
        n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        return Geometry(self._m(g.matte), n.astype(np.float32), g.face)

    def frame(self, rgb: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """uint8 [H, W, 3] → (relit uint8 [H, W, 3], geometry at the working size)."""
        h, w, _ = rgb.shape
        g = self.geometry(rgb)
        normals = _resize(g.normals, (w, h))
        normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-6)
        matte = _resize(g.matte, (w, h))
        out = shade(rgb, normals, matte, self.coeffs, yaw=math.radians(self.yaw_deg), strength=self.strength,
                    mode=self.mode, exposure=1.0)
        return out, g

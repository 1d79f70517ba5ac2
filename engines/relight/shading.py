"""Diffuse "light-adding" relighting from SH irradiance (EdgeRelight360's renderer).

Given a portrait, its matte and per-pixel normals, the map's 9×3 SH coefficients give the
irradiance E(n) at every pixel; the image itself stands in for albedo. Normals come in the
camera frame (OpenCV: x right, y down, z into the scene) and are turned into the map's
frame (x right = the subject's left, y up, z toward the camera), then rotated by the user's
yaw. The same formula runs in the browser preview's shader.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.relight.sphere import irradiance_sh


def camera_to_env(normals_cam: np.ndarray) -> np.ndarray:
    """[..., 3] OpenCV camera-frame normals → environment frame (flip y and z)."""
    return normals_cam * np.array([1.0, -1.0, -1.0])


def shade(image: np.ndarray, normals_cam: np.ndarray, matte: np.ndarray, coeffs: np.ndarray, yaw: float = 0.0,
          strength: float = 0.8, mode: str = "add", exposure: float | None = None) -> np.ndarray:
    """Relit image, uint8 [H, W, 3] sRGB.

    image uint8 [H, W, 3] (or float in [0, 1]); shading is applied in linear light.
    normals_cam [H, W, 3] unit, matte [H, W] in [0, 1], coeffs [9, 3] (nits).
    ``exposure`` scales irradiance to image units (default: 1 / the mean irradiance over
    normals facing the camera, so a map's absolute scale does not matter).
    mode "add": I + s·I·E (light adding); "mul": I·(1 − s + s·E).
    """
    if mode not in ("add", "mul"):
        raise ValueError(f"mode must be add or mul (got {mode!r})")
    if image.dtype == np.uint8:
        lin = SRGB_TO_LINEAR[image]  # [H, W, 3] float32 via a 256-entry table
    else:
        lin = srgb_to_linear(np.clip(image, 0, 1)).astype(np.float32)
    if exposure is None:
        exposure = 1.0 / max(reference_irradiance(coeffs), 1e-9)
    a = np.clip(matte, 0, 1).astype(np.float32) * strength  # [H, W]
    m = a > 1e-4  # shade only where light is added (the background stays as it is)
    out = lin.copy() if lin.dtype == np.float32 else lin.astype(np.float32)
    if m.any():
        e = irradiance_yaw(coeffs * exposure, np.asarray(normals_cam, np.float32)[m], yaw)  # [P, 3]
        np.maximum(e, 0, out=e)
        am, lm = a[m][:, None], out[m]
        out[m] = lm * (1 + am * e) if mode == "add" else lm * (1 + am * (e - 1))
    return linear_to_srgb_u8(out)


def irradiance_yaw(coeffs: np.ndarray, normals_cam: np.ndarray, yaw: float) -> np.ndarray:
    """E(n) [H, W, 3] float32 for camera-frame normals under the map turned by ``yaw``: the
    9-term SH sum written out (about 3× faster than a generic einsum at 256²)."""
    from engines.relight.sphere import A_HAT, Y0, Y1, Y2A, Y2B, Y2C

    c = (coeffs * A_HAT[:, None]).astype(np.float32)  # [9, 3]
    n = np.asarray(normals_cam, np.float32)
    cy, sy = np.float32(np.cos(-yaw)), np.float32(np.sin(-yaw))
    x0, y, z0 = n[..., 0:1], -n[..., 1:2], -n[..., 2:3]  # camera → environment frame
    x, z = cy * x0 + sy * z0, -sy * x0 + cy * z0  # then turn by -yaw
    return (Y0 * c[0] + Y1 * (y * c[1] + z * c[2] + x * c[3]) + Y2A * (x * y * c[4] + y * z * c[5] + x * z * c[7])
            + Y2B * (3 * z * z - 1) * c[6] + Y2C * (x * x - y * y) * c[8])


def reference_irradiance(coeffs: np.ndarray) -> float:
    """Mean luminance of E(n) over normals facing the camera's hemisphere (an exposure anchor)."""
    rng = np.random.default_rng(0)
    n = rng.normal(size=(512, 3))
    n[:, 2] = np.abs(n[:, 2])  # toward the camera (+z in the environment frame)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    e = irradiance_sh(coeffs, n)
    return float((e @ np.array([0.2126, 0.7152, 0.0722])).mean())


@dataclass
class EMA:
    """Exponential moving average of per-frame maps (normals, shading): steadies video."""

    alpha: float = 0.6  # weight of the new frame
    state: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.state = x if self.state is None or self.state.shape != x.shape else \
            self.alpha * x + (1 - self.alpha) * self.state
        return self.state


def linear_to_srgb_u8(x: np.ndarray) -> np.ndarray:
    """Linear [0, 1] float → uint8 sRGB through a 4096-entry table (exact to < 1 code)."""
    idx = np.clip(x * (len(LINEAR_TO_SRGB) - 1) + 0.5, 0, len(LINEAR_TO_SRGB) - 1).astype(np.int32)
    return LINEAR_TO_SRGB[idx]


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(np.maximum(x, 0), 1 / 2.4) - 0.055)


SRGB_TO_LINEAR = srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)  # [256]
LINEAR_TO_SRGB = (np.clip(linear_to_srgb(np.linspace(0, 1, 4096) ** 1.0), 0, 1) * 255 + 0.5).astype(np.uint8)  # [4096]

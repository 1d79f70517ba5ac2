"""SMPTE ST 2084 (PQ, HDR10) encode/decode of absolute luminance in nits.

EdgeRelight360 generates environment maps in this domain: radiance spanning 10⁻³–10⁴ nits
maps to [0, 1] nearly uniformly in perceived brightness, so 8-bit codes and a diffusion
model's latent space spend their precision evenly instead of on the darkest stops.
Works on numpy arrays and torch tensors alike.
"""
from __future__ import annotations

from typing import Any

M1 = 2610 / 16384  # 0.1593017578125
M2 = 2523 / 4096 * 128  # 78.84375
C1 = 3424 / 4096  # 0.8359375
C2 = 2413 / 4096 * 32  # 18.8515625
C3 = 2392 / 4096 * 32  # 18.6875
PEAK_NITS = 10000.0


def _clip(x: Any, lo: float, hi: float | None) -> Any:
    return x.clamp(lo, hi) if hasattr(x, "clamp") else x.clip(lo, hi)


def encode(nits: Any) -> Any:
    """Linear luminance (cd/m², per channel) → PQ code in [0, 1]. Values are clamped to
    [0, 10000] first (the ST 2084 range)."""
    y = _clip(nits / PEAK_NITS, 0.0, 1.0)
    ym = y ** M1
    return ((C1 + C2 * ym) / (1 + C3 * ym)) ** M2


def decode(code: Any) -> Any:
    """PQ code in [0, 1] → linear luminance in nits (the inverse of :func:`encode`)."""
    e = _clip(code, 0.0, 1.0) ** (1 / M2)
    num = _clip(e - C1, 0.0, None)
    return (num / (C2 - C3 * e)) ** (1 / M1) * PEAK_NITS

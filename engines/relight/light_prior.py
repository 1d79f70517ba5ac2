"""Text → where the dominant light is: the HDRI model's light-layout prior.

Why it exists: a small text-to-panorama U-Net trained on CPU learned from captions *what* the
light is (sun, moon, lamp colour, its height) but not *where* in azimuth it goes — the light's
azimuth came from the noise seed, whatever the words said (78.7° median direction error, about
what a random guess scores). Binding words to positions through cross-attention alone is
slow to learn. So the words are first turned into a direction by a tiny network trained on the
world's captions, and the U-Net gets that direction as a picture — one extra input channel
holding a soft spot where the light should be (``layout_map``), the way layout-conditioned
generators take boxes. Placing a bright disk under a spot is a local job that convolutions
learn quickly.

What the prior predicts for a prompt, trained with a squared error on unit vectors so that it
learns conditional means:

* ``m`` = E[d | text] — the mean direction of the dominant light (3 numbers). Its normalised
  value is the direction with the least expected error for what the words allow ("on my left"
  covers 60°–120° of azimuth); its length says how much the words pin it down.
* p(light | text) — whether the words describe a scene with a dominant light at all (overcast
  skies have none).

``choose_direction`` turns that into the layout: the normalised mean when the words fix an
azimuth; otherwise (e.g. "sunny day") the mean elevation with an azimuth drawn from the seed, so
seeds still vary the scene. No light → an empty layout, the U-Net's trained "free" mode.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.relight.sphere import directions

PRIOR_DIM = 64
KAPPA = 8.0  # spot sharpness: exp(κ(cos γ − 1)) falls to 1/e at γ ≈ 29°, about one 22.5° latent cell
AZIMUTH_SPREAD = 0.35  # below this mean resultant length of azimuth, the words do not fix one


class LightPrior(nn.Module):
    """Word ids [N, L] → (mean direction [N, 3], light-present logit [N]).

    Its own small text encoder (the same shape as the U-Net's, narrower), masked mean pooling,
    a two-layer head."""

    def __init__(self, vocab_size: int, dim: int = PRIOR_DIM, layers: int = 2) -> None:
        super().__init__()
        from engines.relight.hdri_model import WordTextEncoder  # one text encoder class

        self.text = WordTextEncoder(vocab_size, dim=dim, layers=layers)
        self.head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, 4))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        from engines.relight.hdri_model import PAD

        h = self.text(ids)  # [N, L, D], zero at padding
        n = (ids != PAD).sum(1, keepdim=True).clamp(min=1)  # [N, 1]
        out = self.head(h.sum(1) / n)  # [N, 4]
        return torch.tanh(out[:, :3]), out[:, 3]


def prior_loss(mean: torch.Tensor, logit: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Squared error of the mean direction on scenes with a light (→ conditional mean) + BCE
    on whether there is one. ``target`` [N, 3] unit vectors, ``present`` [N] in {0, 1}."""
    se = ((mean - target) ** 2).sum(1)
    mse = (se * present).sum() / present.sum().clamp(min=1)
    return mse + F.binary_cross_entropy_with_logits(logit, present)


def choose_direction(mean: np.ndarray, p_light: float, seed: int) -> np.ndarray | None:
    """The layout direction (unit [3], ``sphere`` frame) for one prompt, or None for no light."""
    if p_light < 0.5:
        return None
    m = np.asarray(mean, np.float64)
    sin_el = float(np.clip(m[1], -1.0, 1.0))
    cos_el = math.sqrt(max(1e-6, 1.0 - sin_el ** 2))
    r_h = math.hypot(m[0], m[2])
    if r_h / cos_el >= AZIMUTH_SPREAD and np.linalg.norm(m) > 1e-6:
        return m / np.linalg.norm(m)
    az = float(np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED]).uniform(-math.pi, math.pi))
    return np.array([cos_el * math.sin(az), sin_el, cos_el * math.cos(az)])


def layout_map(dirs: list[np.ndarray | None], h: int, w: int, kappa: float = KAPPA) -> torch.Tensor:
    """(N, 1, h, w) soft spots exp(κ(d·c − 1)) at the cell-centre directions c of an
    equirectangular h × w grid; zeros where there is no light. Continuous across the wrap."""
    cells, _ = directions(h, w)  # [h, w, 3]
    out = torch.zeros((len(dirs), 1, h, w))
    for i, d in enumerate(dirs):
        if d is not None:
            cos = cells @ (np.asarray(d, np.float64) / np.linalg.norm(d))  # [h, w]
            out[i, 0] = torch.from_numpy(np.exp(kappa * (cos - 1.0)).astype(np.float32))
    return out


def dominant_of(meta: dict[str, Any]) -> np.ndarray | None:
    """The layout target of a world scene: its dominant light's direction, none if overcast."""
    if meta["kind"] == "overcast":
        return None
    return np.asarray(meta["lights"][meta["dominant"]]["direction"], np.float64)

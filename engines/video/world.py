"""World clips: a shape moving and breathing over a background, with the exact edited clip.

Each clip is one world scene whose object follows a smooth path (jitter within ±9 px at 64²)
and scale (0.8–1.2); the edit changes one attribute (colour, style, shape or background) and
is rendered with the same motion, so "make the star yellow" has a known right answer in every
frame. These are the demo clips, the test inputs and the benchmark's ground truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engines.world import generator as g

EDITABLE = ("color", "style", "shape", "background")


@dataclass
class WorldClip:
    before: np.ndarray  # [T, 64, 64, 3] uint8
    after: np.ndarray  # [T, 64, 64, 3] uint8: the exact edit
    instruction: str
    attribute: str
    labels_before: dict[str, str]
    labels_after: dict[str, str]


def world_clip(seed: int, frames: int = 48, attribute: str | None = None) -> WorldClip:
    """A seeded clip and its edit. Motion: a Lissajous path and a slow scale oscillation."""
    rng = np.random.default_rng([seed, 11])
    attr = attribute or EDITABLE[int(rng.integers(len(EDITABLE)))]
    pair = g.edit_pair(seed, 0, attr)
    s0, s1 = pair.before.scene, pair.after.scene
    o0, o1 = s0.primary, s1.primary
    ax, ay = rng.uniform(4, 9, 2)
    fx, fy = rng.uniform(0.5, 1.5, 2)
    ph = rng.uniform(0, 2 * math.pi, 2)
    before, after = [], []
    for t in range(frames):
        u = 2 * math.pi * t / max(frames, 1)
        jit = (float(ax * math.sin(fx * u + ph[0])), float(ay * math.sin(fy * u + ph[1])))
        sc = float(1.0 + 0.2 * math.sin(u * 0.5))
        a = g.Scene(s0.background, (replace(o0, jitter=jit, scale=sc),))
        b = g.Scene(s1.background, (replace(o1, jitter=jit, scale=sc),))
        before.append(g.render(a)[0])
        after.append(g.render(b)[0])
    return WorldClip(np.stack(before), np.stack(after), pair.instruction, attr, pair.before.labels, pair.after.labels)


def write_clip(frames: np.ndarray, path: Path, fps: float = 12.0, upscale: int = 4) -> Path:
    """Save frames as an H.264 mp4 (nearest-neighbour upscaled so the codec keeps edges)."""
    from engines.video.io import Writer

    h, w = frames.shape[1:3]
    wr = Writer(path, (w * upscale, h * upscale), fps)
    for f in frames:
        wr.write(f.repeat(upscale, 0).repeat(upscale, 1))
    wr.close()
    return path

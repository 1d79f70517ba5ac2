"""A procedural world of HDR environment maps with exact radiance and captions.

Each scene is built from analytic parts (sky gradients, sun and moon disks, rectangular area
lights, windows) in absolute luminance (nits), so the direction, colour and strength of its
dominant light are known exactly: the ground truth that text→HDRI generation is scored
against. Kinds: clear sky with the sun, overcast, sunset, night with a moon, studio with one
to three coloured area lights, a room with windows. Captions say where the light comes from
(from the subject's point of view; frame in ``sphere``) and its colour, in varied wording.

Scale: PQ tops out at 10 000 nits, so a sun is ~8 000 nits over a sky of a few nits
(thousands of times brighter), as in exposure-normalised HDRIs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.relight.sphere import directions, from_angles, luminance, to_angles

KINDS = ("sun", "overcast", "sunset", "night", "studio", "room")
COLORS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0), "warm": (1.0, 0.72, 0.42), "cool": (0.70, 0.82, 1.0), "red": (1.0, 0.18, 0.12),
    "green": (0.2, 1.0, 0.3), "blue": (0.2, 0.35, 1.0), "orange": (1.0, 0.5, 0.12), "purple": (0.7, 0.25, 1.0),
}
SUN_RGB = (1.0, 0.95, 0.88)
SUNSET_RGB = (1.0, 0.48, 0.16)
MOON_RGB = (0.78, 0.85, 1.0)


@dataclass(eq=False)
class Light:
    kind: str  # sun | moon | area | window
    direction: np.ndarray  # unit [3]
    rgb: tuple[float, float, float]  # chromaticity-ish colour (max channel 1)
    color: str  # the word used in captions
    nits: float  # peak luminance of the emitter
    size_deg: float  # angular radius (disks) or half-width (rectangles)

    def solid_angle(self) -> float:
        r = math.radians(self.size_deg)
        if self.kind in ("sun", "moon"):
            return 2 * math.pi * (1 - math.cos(r))
        if self.kind == "sky":
            return 2 * math.pi
        return (2 * r * (0.7 if self.kind == "window" else 1.0)) * (2 * r)  # elevation × true azimuth span

    def energy(self) -> float:
        lum = 0.2126 * self.rgb[0] + 0.7152 * self.rgb[1] + 0.0722 * self.rgb[2]
        return self.nits * lum * self.solid_angle()

    def meta(self) -> dict[str, Any]:
        el, az = to_angles(self.direction)
        return {"kind": self.kind, "direction": [round(float(v), 5) for v in self.direction],
                "elevation_deg": round(math.degrees(float(el)), 2), "azimuth_deg": round(math.degrees(float(az)), 2),
                "rgb": [round(c, 4) for c in self.rgb], "color": self.color, "nits": self.nits,
                "size_deg": self.size_deg}


@dataclass
class EnvScene:
    kind: str
    lights: list[Light]
    sky: dict[str, Any] = field(default_factory=dict)  # parameters of the background
    seed: int = 0

    @property
    def dominant(self) -> Light:
        """The light delivering the most luminous energy (luminance × solid angle)."""
        return max(self.lights, key=lambda lt: lt.energy())

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "lights": [lt.meta() for lt in self.lights],
                "dominant": next(i for i, lt in enumerate(self.lights) if lt is self.dominant), "sky": self.sky}


# -- sampling --------------------------------------------------------------------------------
def sample_scene(rng: np.random.Generator, kind: str | None = None) -> EnvScene:
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    az = lambda: float(rng.uniform(-math.pi, math.pi))  # noqa: E731
    if kind == "sun":
        el = math.radians(rng.uniform(20, 80))
        lights = [Light("sun", from_angles(el, az()), SUN_RGB, "white", float(rng.uniform(6000, 9000)), 2.0)]
        sky = {"zenith": 3.0, "horizon": 6.0, "tint": (0.45, 0.62, 1.0)}
    elif kind == "sunset":
        el = math.radians(rng.uniform(1, 8))
        lights = [Light("sun", from_angles(el, az()), SUNSET_RGB, "orange", float(rng.uniform(3000, 6000)), 2.5)]
        sky = {"zenith": 0.6, "horizon": 4.0, "tint": (1.0, 0.55, 0.3), "zenith_tint": (0.25, 0.3, 0.7)}
    elif kind == "night":
        el = math.radians(rng.uniform(15, 70))
        lights = [Light("moon", from_angles(el, az()), MOON_RGB, "cool", float(rng.uniform(800, 2000)), 1.5)]
        sky = {"zenith": 0.01, "horizon": 0.03, "tint": (0.3, 0.4, 1.0)}
    elif kind == "overcast":
        lights = [Light("sky", np.array([0.0, 1.0, 0.0]), (0.92, 0.95, 1.0), "white", 60.0, 60.0)]
        sky = {"zenith": 60.0, "horizon": 20.0, "tint": (0.92, 0.95, 1.0)}
    elif kind == "studio":
        n = int(rng.integers(1, 4))
        names = list(COLORS)
        lights = []
        for i in range(n):
            c = names[int(rng.integers(len(names)))]
            el = math.radians(rng.uniform(-10, 50))
            nits = float(rng.uniform(2500, 6000)) * (1.0 if i == 0 else float(rng.uniform(0.25, 0.6)))
            lights.append(Light("area", from_angles(el, az()), COLORS[c], c, nits, float(rng.uniform(8, 15))))
        sky = {"zenith": 0.3, "horizon": 0.3, "tint": (1.0, 1.0, 1.0)}
    elif kind == "room":
        n = int(rng.integers(1, 3))
        lights = [Light("window", from_angles(math.radians(rng.uniform(0, 15)), az()), (0.9, 0.95, 1.0), "daylight",
                        float(rng.uniform(1500, 4000)) * (1.0 if i == 0 else 0.5), float(rng.uniform(10, 18)))
                  for i in range(n)]
        sky = {"zenith": 8.0, "horizon": 12.0, "tint": (1.0, 0.9, 0.8), "ground": 5.0}
    else:
        raise ValueError(f"unknown environment kind {kind!r}; one of {', '.join(KINDS)}")
    for lt in lights[1:]:  # the first light dominates clearly, so "where the light comes from" has one answer
        cap = 0.45 * lights[0].energy()
        if lt.energy() > cap:
            lt.nits *= cap / lt.energy()
    return EnvScene(kind, lights, sky)


# -- rendering -------------------------------------------------------------------------------
def render(scene: EnvScene, width: int = 256, supersample: int = 2) -> np.ndarray:
    """Linear radiance in nits, equirectangular float32 [W/2, W, 3]. Disks and rectangles are
    supersampled so small emitters keep their exact energy at any resolution."""
    h, w = width // 2, width
    s = max(1, supersample)
    d, _ = directions(h * s, w * s)  # [hs, ws, 3]
    el = np.arcsin(np.clip(d[..., 1], -1, 1))
    sky = scene.sky
    t = np.clip(el / (math.pi / 2), 0, 1)[..., None]  # 0 horizon → 1 zenith
    tint = np.array(sky.get("tint", (1, 1, 1)))
    ztint = np.array(sky.get("zenith_tint", sky.get("tint", (1, 1, 1))))
    if scene.kind == "overcast":  # CIE overcast: L(θ) ∝ (1 + 2 sin el) / 3
        lum = sky["zenith"] * ((1 + 2 * np.sin(np.clip(el, 0, None))) / 3)[..., None]
        above = lum * tint
    else:
        above = (sky["horizon"] * (1 - t) * tint + sky["zenith"] * t * ztint)
    ground = sky.get("ground", 0.25 * sky["horizon"]) * np.array([0.55, 0.45, 0.35])
    img = np.where(el[..., None] >= 0, above, ground)
    for lt in scene.lights:
        if lt.kind == "sky":
            continue
        rgb = np.array(lt.rgb) * lt.nits
        if lt.kind in ("sun", "moon"):
            cos = d @ lt.direction
            mask = cos >= math.cos(math.radians(lt.size_deg))
            if lt.kind == "sun":  # a soft aureole around the disk lights the sky near the sun
                ang = np.arccos(np.clip(cos, -1, 1))
                img = img + (sky["horizon"] * 2.0 * np.exp(-ang / 0.25))[..., None] * np.array(lt.rgb) * (el[..., None] >= 0)
        else:  # rectangle in (elevation, azimuth) around the light's direction
            lel, laz = to_angles(lt.direction)
            del_ = np.abs(el - lel)
            daz = np.abs((np.arctan2(d[..., 0], d[..., 2]) - laz + math.pi) % (2 * math.pi) - math.pi) * np.cos(lel)
            half = math.radians(lt.size_deg)
            mask = (del_ <= half * (0.7 if lt.kind == "window" else 1.0)) & (daz <= half)
        img = np.where(mask[..., None], rgb, img)
    img = img.reshape(h, s, w, s, 3).mean(axis=(1, 3))
    return img.astype(np.float32)


# -- captions --------------------------------------------------------------------------------
def where(direction: np.ndarray, rng: np.random.Generator | None = None) -> str:
    """Words for a direction from the subject's point of view ("low behind me on my left")."""
    el, az = (math.degrees(float(v)) for v in to_angles(direction))
    if el > 70:
        return "right above me"
    side = ""
    a = abs(az)
    if a <= 30:
        side = "in front of me"
    elif a >= 150:
        side = "behind me"
    else:
        lr = "on my left" if az > 0 else "on my right"
        side = lr if 60 <= a <= 120 else (f"in front of me {lr}" if a < 60 else f"behind me {lr}")
    height = "low " if el < 15 else "high " if el > 45 else ""
    return f"{height}{side}".strip()


def caption(scene: EnvScene, rng: np.random.Generator) -> str:
    """A varied description naming the dominant light's direction and colour."""
    lt = scene.dominant
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    w = where(lt.direction)
    if scene.kind == "sun":
        return pick([f"a clear blue sky, the sun {w}", f"sunny day with the sun {w}", f"bright midday sun {w}, blue sky"])
    if scene.kind == "sunset":
        return pick([f"sunset, the sun {w}", f"an orange sunset {w}",
                     f"golden hour, orange sun {w}" if w.startswith("low") else f"golden hour, low orange sun {w}"])
    if scene.kind == "night":
        return pick([f"night sky with the moon {w}", f"a dark night, moonlight {w}", f"full moon {w} at night"])
    if scene.kind == "overcast":
        return pick(["an overcast sky, soft light from above", "cloudy grey day, even light", "overcast, diffuse daylight"])
    if scene.kind == "studio":
        extra = [f"a {o.color} light {where(o.direction)}" for o in scene.lights if o is not lt]
        main = pick([f"studio with a {lt.color} light {w}", f"a photo studio, {lt.color} key light {w}"])
        return ", ".join([main, *extra])
    return pick([f"a room with a window {w}", f"indoors, daylight from a window {w}", f"a bright window {w} in a room"])


def sample(seed: int, kind: str | None = None, width: int = 256) -> tuple[np.ndarray, dict[str, Any], str]:
    """(radiance [W/2, W, 3] nits, metadata with exact light directions/colours, caption)."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, kind)
    scene.seed = seed
    return render(scene, width), scene.meta(), caption(scene, rng)


def light_energy_share(env: np.ndarray, scene_meta: dict[str, Any]) -> float:
    """Fraction of the map's luminous energy within 5° of the dominant light (how much a
    direction estimate can rely on it)."""
    h, w, _ = env.shape
    d, dw = directions(h, w)
    lt = scene_meta["lights"][scene_meta["dominant"]]
    near = d @ np.array(lt["direction"]) >= math.cos(math.radians(lt["size_deg"] + 5))
    e = luminance(env) * dw
    return float(e[near].sum() / e.sum())

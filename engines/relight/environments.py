"""Built-in environment maps and the loading of user ones.

Built-ins are exact HDR-world scenes (``envworld``) with a fixed, named dominant light, so a
user can relight without generating or uploading anything. User maps are Radiance ``.hdr``
or OpenEXR files (e.g. an ``hdri`` job's output), or an 8-bit panorama taken as sRGB.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from engines.relight import envworld as W
from engines.relight.sphere import from_angles

# name → (kind, elevation°, azimuth° (+ = the subject's left), colour word, nits)
BUILTINS: dict[str, tuple[str, float, float, str, float]] = {
    "sunset-left": ("sunset", 4.0, 90.0, "orange", 5000.0),
    "sun-high-right": ("sun", 55.0, -60.0, "white", 8000.0),
    "window-front-left": ("room", 8.0, 40.0, "daylight", 3000.0),
    "studio-blue-right": ("studio", 20.0, -80.0, "blue", 5000.0),
    "studio-warm-front": ("studio", 25.0, 15.0, "warm", 5000.0),
    "moon-behind-left": ("night", 35.0, 150.0, "cool", 1500.0),
    "overcast": ("overcast", 90.0, 0.0, "white", 60.0),
}


def builtin(name: str, width: int = 256) -> np.ndarray:
    """Linear radiance [width/2, width, 3] of a built-in environment."""
    if name not in BUILTINS:
        raise KeyError(f"unknown built-in environment {name!r}; one of {', '.join(BUILTINS)}")
    kind, el, az, color, nits = BUILTINS[name]
    scene = W.sample_scene(np.random.default_rng(0), kind)
    lt = scene.lights[0]
    if kind != "overcast":
        lt.direction = from_angles(math.radians(el), math.radians(az))
        lt.nits = nits
        if kind == "studio":
            lt.rgb, lt.color = W.COLORS[color], color
            scene.lights = [lt]
        elif kind == "room":
            scene.lights = [lt]
    return W.render(scene, width)


def load_map(path: Path, max_pixels: int = 64 * 1024 * 1024) -> np.ndarray:
    """An environment file → linear radiance float32 [H, W, 3] (H = W/2 expected; other
    aspects are accepted and treated as equirectangular). Negative and non-finite values
    are cleared."""
    from engines.relight import hdr_io

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith((b"#?RADIANCE", b"#?RGBE")) or head.startswith(hdr_io.EXR_MAGIC):
        w, h = (hdr_io.exr_size if head.startswith(hdr_io.EXR_MAGIC) else hdr_io.hdr_size)(path)
        if w * h > max_pixels:
            raise hdr_io.HDRFormatError(f"environment map of {w}x{h} pixels is too large")
        env = hdr_io.read_any(path)
    else:
        from PIL import Image

        from engines.relight.shading import srgb_to_linear

        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise hdr_io.HDRFormatError(f"panorama of {im.width}x{im.height} pixels is too large")
            rgb = np.asarray(im.convert("RGB"), np.float32) / 255.0
        env = srgb_to_linear(rgb).astype(np.float32) * 100.0  # an LDR panorama: no highlights, 100 nits white
    env = np.nan_to_num(env.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(env, 0, None)


def shrink(env: np.ndarray, width: int = 256) -> np.ndarray:
    """Box-downsample a map to at most ``width`` columns (energy-preserving block means), so
    SH projection stays cheap for 8K maps."""
    h, w, _ = env.shape
    f = max(1, w // width)
    if f == 1:
        return env
    h2, w2 = h // f, w // f
    return env[:h2 * f, :w2 * f].reshape(h2, f, w2, f, 3).mean(axis=(1, 3))

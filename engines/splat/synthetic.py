"""Synthetic Gaussian scenes with ground truth, and posed-image datasets rendered from them.

Tests, the bench and demos need scenes whose planes, colours and cameras are known
exactly; real captures have none of that. Scenes are z-up (``meta["up"] = "z"``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from engines.splat.formats import SH_C0, GaussianScene


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """[N, 3, 3] rotation matrices -> [N, 4] unit quaternions (w, x, y, z)."""
    R = np.asarray(R, np.float64)
    tr = R[:, 0, 0] + R[:, 1, 1] + R[:, 2, 2]
    q = np.zeros((R.shape[0], 4))
    # Shepperd's method, branch per row for stability
    c0 = tr > 0
    s = np.sqrt(np.maximum(tr[c0] + 1.0, 1e-12)) * 2
    q[c0] = np.stack([0.25 * s, (R[c0, 2, 1] - R[c0, 1, 2]) / s, (R[c0, 0, 2] - R[c0, 2, 0]) / s,
                      (R[c0, 1, 0] - R[c0, 0, 1]) / s], 1)
    rest = ~c0
    d = np.stack([R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]], 1)
    big = d.argmax(1)
    for k in range(3):
        m = rest & (big == k)
        if not m.any():
            continue
        i, j, l = k, (k + 1) % 3, (k + 2) % 3
        s = np.sqrt(np.maximum(1.0 + R[m, i, i] - R[m, j, j] - R[m, l, l], 1e-12)) * 2
        qq = np.zeros((m.sum(), 4))
        qq[:, 0] = (R[m, l, j] - R[m, j, l]) / s
        qq[:, 1 + i] = 0.25 * s
        qq[:, 1 + j] = (R[m, j, i] + R[m, i, j]) / s
        qq[:, 1 + l] = (R[m, l, i] + R[m, i, l]) / s
        q[m] = qq
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _rand_rot(rng: np.random.Generator, n: int, max_deg: float) -> np.ndarray:
    """[n, 3, 3] small random rotations (axis uniform, angle uniform in [0, max_deg])."""
    ax = rng.normal(size=(n, 3))
    ax /= np.linalg.norm(ax, axis=1, keepdims=True)
    th = np.radians(rng.uniform(0, max_deg, n))
    K = np.zeros((n, 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -ax[:, 2], ax[:, 1], -ax[:, 0]
    K = K - K.transpose(0, 2, 1)
    s, c = np.sin(th)[:, None, None], np.cos(th)[:, None, None]
    return np.eye(3)[None] + s * K + (1 - c) * K @ K


def plane_patch(center: Sequence[float], u: Sequence[float], v: Sequence[float], size_u: float, size_v: float,
                spacing: float, color: Sequence[float], rng: np.random.Generator, jitter_deg: float = 0.0,
                offset_noise: float = 0.0, opacity: float = 0.95) -> GaussianScene:
    """Flat Gaussians tiling a rectangle (normal = u x v): in-plane scale ~spacing, thin normal axis."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    n = np.cross(u, v)
    nu, nv = max(1, int(round(size_u / spacing))), max(1, int(round(size_v / spacing)))
    gu, gv = np.meshgrid((np.arange(nu) + 0.5) / nu - 0.5, (np.arange(nv) + 0.5) / nv - 0.5, indexing="ij")
    gu = gu.reshape(-1) * size_u + rng.uniform(-0.3, 0.3, gu.size) * spacing
    gv = gv.reshape(-1) * size_v + rng.uniform(-0.3, 0.3, gv.size) * spacing
    N = gu.size
    means = np.asarray(center)[None] + gu[:, None] * u + gv[:, None] * v + rng.normal(0, offset_noise, (N, 1)) * n
    R = np.stack([u, v, n], 1)[None].repeat(N, 0)  # columns: u, v, n
    if jitter_deg > 0:
        R = _rand_rot(rng, N, jitter_deg) @ R
    s = np.log(np.array([spacing * 0.7, spacing * 0.7, spacing * 0.02]))
    col = np.asarray(color, np.float64)
    sh = ((col - 0.5) / SH_C0)[None, None, :].repeat(N, 0)
    lo = math.log(opacity / (1 - opacity))
    return GaussianScene(means.astype(np.float32), np.tile(s, (N, 1)).astype(np.float32), rotmat_to_quat(R),
                         np.full(N, lo, np.float32), sh.astype(np.float32), meta={"up": "z"})


def concat(scenes: Sequence[GaussianScene]) -> GaussianScene:
    return GaussianScene(*(np.concatenate([getattr(s, a) for s in scenes]) for a in
                           ("means", "log_scales", "quats", "opacity_logits", "sh")), meta=dict(scenes[0].meta))


def two_plane_scene(seed: int = 0, spacing: float = 0.05, clutter: int = 200,
                    jitter_deg: float = 3.0) -> tuple[GaussianScene, np.ndarray, list[tuple[np.ndarray, float]]]:
    """A floor (z=0) and a wall tilted 75 deg from it, plus isotropic clutter blobs.

    Returns (scene, labels [N] with -1 for clutter, planes [(normal, offset)] with n.x = offset).
    """
    rng = np.random.default_rng(seed)
    floor = plane_patch((0, 0, 0), (1, 0, 0), (0, 1, 0), 2.0, 2.0, spacing, (0.8, 0.3, 0.2), rng, jitter_deg, 0.003)
    th = math.radians(75)
    wu = np.array([0.0, 1.0, 0.0])
    wv = np.array([-math.cos(th), 0.0, math.sin(th)])  # rises from the floor's x=+1.1 edge
    wall_c = np.array([1.1, 0.0, 0.0]) + 0.75 * wv
    wall = plane_patch(wall_c, wu, wv, 2.0, 1.5, spacing, (0.2, 0.5, 0.8), rng, jitter_deg, 0.003)
    blobs = []
    if clutter:
        means = rng.uniform([-0.8, -0.8, 0.15], [0.6, 0.8, 1.0], (clutter, 3))
        ls = np.log(rng.uniform(0.02, 0.05, (clutter, 1))).repeat(3, 1)
        q = np.tile([1.0, 0, 0, 0], (clutter, 1))
        sh = ((rng.uniform(0, 1, (clutter, 3)) - 0.5) / SH_C0)[:, None, :]
        blobs = [GaussianScene(means.astype(np.float32), ls.astype(np.float32), q.astype(np.float32),
                               np.full(clutter, 2.0, np.float32), sh.astype(np.float32))]
    scene = concat([floor, wall] + blobs)
    labels = np.concatenate([np.zeros(len(floor), int), np.ones(len(wall), int), -np.ones(clutter, int)])
    n_wall = np.cross(wu, wv)
    planes = [(np.array([0.0, 0.0, 1.0]), 0.0), (n_wall, float(n_wall @ wall_c))]
    return scene, labels, planes


def box_faces(center: Sequence[float], size: float, spacing: float, colors: Sequence[Sequence[float]],
              rng: np.random.Generator) -> list[GaussianScene]:
    c = np.asarray(center, np.float64)
    h = size / 2
    axes = np.eye(3)
    out = []
    for k in range(3):
        for sgn in (1, -1):
            n = sgn * axes[k]
            u = axes[(k + 1) % 3]
            v = np.cross(n, u)
            if k == 2 and sgn == -1:
                continue  # bottom face sits on the floor, never seen
            col = colors[(2 * k + (sgn < 0)) % len(colors)]
            out.append(plane_patch(c + h * n, u, v, size, size, spacing, col, rng))
    return out


def room_scene(seed: int = 0, spacing: float = 0.08) -> GaussianScene:
    """An open room corner: floor, two walls and a box, each a different colour."""
    rng = np.random.default_rng(seed)
    parts = [
        plane_patch((0, 0, 0), (1, 0, 0), (0, 1, 0), 2.0, 2.0, spacing, (0.75, 0.7, 0.6), rng),  # floor
        plane_patch((0, 1, 0.6), (0, 0, 1), (1, 0, 0), 1.2, 2.0, spacing, (0.3, 0.5, 0.8), rng),  # back wall
        plane_patch((-1, 0, 0.6), (0, 1, 0), (0, 0, 1), 2.0, 1.2, spacing, (0.8, 0.35, 0.3), rng),  # left wall
    ]
    parts += box_faces((0.2, 0.1, 0.25), 0.5, spacing * 0.7,
                       [(0.9, 0.8, 0.2), (0.2, 0.8, 0.3), (0.6, 0.3, 0.7), (0.95, 0.6, 0.2), (0.3, 0.8, 0.8)], rng)
    return concat(parts)


def dataset_cameras(n: int, width: int, height: int, fov_deg: float = 50.0, radius: float = 3.6,
                    target: Sequence[float] = (0.0, 0.0, 0.35), seed: int = 0,
                    az_range: tuple[float, float] = (-80, -10),
                    el_range: tuple[float, float] = (15, 45)) -> list:
    """Cameras facing the room corner from the open side (azimuth about +z from +x)."""
    from engines.splat.render import orbit_camera

    rng = np.random.default_rng(seed)
    az = rng.uniform(*az_range, n)
    el = rng.uniform(*el_range, n)
    return [orbit_camera(target, float(a), float(e), radius, fov_deg, width, height, "z") for a, e in zip(az, el)]


def write_dataset(scene: GaussianScene, out_dir: str | Path, n_train: int = 12, n_test: int = 4, width: int = 64,
                  height: int = 64, fov_deg: float = 50.0, seed: int = 0, mode: str = "alpha") -> Path:
    """Render posed images into the NeRF-synthetic layout (transforms_{train,test}.json + PNGs).

    Images are RGBA (alpha = coverage) over a black background, like the Blender set.
    """
    import torch
    from PIL import Image

    from engines.splat.render import SplatTensors, c2w_blender, render, to_uint8

    out = Path(out_dir)
    st = SplatTensors.from_scene(scene)
    cams = dataset_cameras(n_train + n_test, width, height, fov_deg, seed=seed)
    splits = {"train": cams[:n_train], "test": cams[n_train:]}
    for split, cs in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i, cam in enumerate(cs):
            with torch.no_grad():
                r = render(st, cam, mode)
            a = r["alpha"][..., None]
            straight = torch.where(a > 1e-3, r["rgb"] / a.clamp_min(1e-3), r["rgb"])  # PNG alpha is straight
            rgba = np.concatenate([to_uint8(straight), to_uint8(a)], -1)
            Image.fromarray(rgba, "RGBA").save(out / split / f"r_{i}.png")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w_blender(cam).tolist()})
        doc = {"camera_angle_x": math.radians(fov_deg), "frames": frames}
        (out / f"transforms_{split}.json").write_text(json.dumps(doc, indent=1))
    return out

"""A development set for planar parsing that behaves like real captures.

Synthetic scenes parse too easily: every Gaussian is a flat disc lying exactly in its plane.
Real 3DGS captures have non-flat Gaussians on the surfaces, noisy shortest axes, uneven density,
floaters in front and an arbitrary scale. So the dev set parses *reconstructed* Gaussians:

1. A ground-truth scene of textured planes (walls, floors, slanted planes, boxes) is built from
   a seed, with the planes as rectangles (centre, in-plane axes, half sizes).
2. Posed images are rendered from cameras on the open side and the Studio's own
   ``reconstruct`` optimises Gaussians from them (random init, so nothing is planar by design).
3. Variants of the reconstruction: ``noisy`` (every rotation perturbed, a third made non-flat),
   ``floaters`` (opaque junk in front of the surfaces) and ``scaled`` (a random similarity
   transform: arbitrary scale, rotation and offset, plus floaters).

Ground truth for the reconstructed Gaussians comes from the known planes: an opaque Gaussian is
*on* a plane when its centre is within ``on_rel`` of the scene diagonal of the plane and inside
its rectangle. ``score`` applies issue 11's goals to any :class:`PlaneResult`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from engines.splat.formats import SH_C0, GaussianScene
from engines.splat.synthetic import concat, plane_patch


@dataclass
class GTPlane:
    center: np.ndarray  # [3]
    u: np.ndarray  # [3] unit, in-plane
    v: np.ndarray  # [3] unit, in-plane
    half: tuple[float, float]  # half sizes along u, v
    name: str = ""

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)

    @property
    def offset(self) -> float:
        return float(self.normal @ self.center)


@dataclass
class DevScene:
    name: str
    scene: GaussianScene
    planes: list[GTPlane]
    cameras: list = field(default_factory=list)  # render.Camera, the posed views
    meta: dict[str, Any] = field(default_factory=dict)


def _textured(center: Sequence[float], u: Sequence[float], v: Sequence[float], su: float, sv: float, spacing: float,
              color: Sequence[float], rng: np.random.Generator, name: str) -> tuple[GaussianScene, GTPlane]:
    """A plane patch whose colour varies (random sinusoid texture) so multi-view photometry
    constrains its depth, as real wall/floor texture does."""
    p = plane_patch(center, u, v, su, sv, spacing, color, rng)
    uu, vv = np.asarray(u, float) / np.linalg.norm(u), np.asarray(v, float) / np.linalg.norm(v)
    rel = p.means.astype(np.float64) - np.asarray(center, float)
    a, b = rel @ uu, rel @ vv  # [N] in-plane coordinates
    tex = np.zeros(len(a))
    for _ in range(4):
        f = rng.uniform(3.0, 9.0)
        th = rng.uniform(0, math.pi)
        tex += np.sin(f * (math.cos(th) * a + math.sin(th) * b) + rng.uniform(0, 2 * math.pi))
    shade = 0.6 + 0.4 * np.tanh(tex)  # [N] in 0.2..1
    col = np.clip(np.asarray(color, float)[None] * shade[:, None], 0, 1)
    p.sh[:, 0, :] = ((col - 0.5) / SH_C0).astype(np.float32)
    return p, GTPlane(np.asarray(center, float), uu, vv, (su / 2, sv / 2), name)


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def corner_scene(seed: int = 0, spacing: float = 0.04, views: int = 32, size: int = 96) -> DevScene:
    """Like the outside check's capture: a wall and a slanted plane meeting at ~86 deg."""
    rng = np.random.default_rng(seed)
    ang = math.radians(86.0 + rng.uniform(-2, 2))  # dihedral angle between the two planes
    yaw = rng.uniform(-20, 20)
    R = _rot_z(yaw)
    # wall: x=0 plane (normal +x), spans y in [-1.2, 1.2], z in [0, 1.6]
    wall_c, wu, wv = np.array([0.0, 0.0, 0.8]), np.array([0.0, 1.0, 0]), np.array([0.0, 0, 1.0])
    # slanted plane hinged on the wall's bottom edge, leaving it at the dihedral angle
    d = np.array([math.sin(ang), 0.0, -math.cos(ang)])  # direction away from the wall, in x-z
    su, sv = 2.4, 1.8
    slope_c = np.array([0.0, 0.0, 0.0]) + d * sv / 2
    parts, planes = [], []
    for (c, u, v, a, b, col, nm) in [
        (wall_c, wu, wv, 2.4, 1.6, (0.75, 0.72, 0.65), "wall"),
        (slope_c, np.array([0.0, 1.0, 0.0]), d, su, sv, (0.55, 0.45, 0.35), "slope"),
    ]:
        g, p = _textured(R @ c, R @ u, R @ v, a, b, spacing, col, rng, nm)
        parts.append(g)
        planes.append(p)
    cams = _cameras(R @ np.array([0.9, 0.0, 0.5]), R @ np.array([1.0, 0.0, 0.35]), 3.4, rng, views, size)
    return DevScene(f"corner-{seed}", concat(parts), planes, cams, {"dihedral_deg": round(math.degrees(ang), 2)})


def room_scene(seed: int = 0, spacing: float = 0.045, views: int = 32, size: int = 96) -> DevScene:
    """A procedural room corner: floor, back wall, a side wall at 80-100 deg to it, a box of random
    size and (odd seeds) a ramp. Layout, colours and texture vary with the seed."""
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-30, 30)
    R = _rot_z(yaw)
    side = math.radians(90 + rng.uniform(-10, 10))
    H = rng.uniform(1.1, 1.5)
    spec = [
        ((0, 0, 0), (1, 0, 0), (0, 1, 0), 2.2, 2.2, "floor"),
        ((0, 1.1, H / 2), (1, 0, 0), (0, 0, 1), 2.2, H, "back wall"),
    ]
    sdir = np.array([math.cos(side), -math.sin(side), 0.0])  # leaves the back wall's x=-1.1 end
    spec.append((np.array([-1.1, 1.1, H / 2]) + sdir * 1.1, sdir, (0, 0, 1), 2.2, H, "side wall"))
    bs = rng.uniform(0.35, 0.6)
    bx, by = rng.uniform(-0.2, 0.5), rng.uniform(-0.4, 0.3)
    spec += [  # box: top and the three faces a camera on the open side can see
        ((bx, by, bs), (1, 0, 0), (0, 1, 0), bs, bs, "box top"),
        ((bx + bs / 2, by, bs / 2), (0, 1, 0), (0, 0, 1), bs, bs, "box +x"),
        ((bx, by - bs / 2, bs / 2), (1, 0, 0), (0, 0, 1), bs, bs, "box -y"),
        ((bx - bs / 2, by, bs / 2), (0, 0, 1), (0, 1, 0), bs, bs, "box -x"),
    ]
    if seed % 2 == 1:  # a ramp leaning on the back wall
        t = math.radians(rng.uniform(25, 40))
        rv = np.array([0.0, math.cos(t), math.sin(t)])
        L = 0.9
        spec.append((np.array([0.6, 1.1 - L * math.cos(t) / 2 - 0.01, L * math.sin(t) / 2]), (1, 0, 0), rv,
                     0.6, L, "ramp"))
    parts, planes = [], []
    for c, u, v, a, b, nm in spec:
        col = rng.uniform(0.3, 0.9, 3)
        g, p = _textured(R @ np.asarray(c, float), R @ np.asarray(u, float), R @ np.asarray(v, float), a, b,
                         spacing * (0.8 if nm.startswith("box") else 1.0), col, rng, nm)
        parts.append(g)
        planes.append(p)
    cams = _cameras(R @ np.array([0.0, 0.0, 0.45]), R @ np.array([0.6, -1.0, 0.45]), 3.6, rng, views, size)
    return DevScene(f"room-{seed}", concat(parts), planes, cams, {"yaw_deg": round(yaw, 2)})


def _cameras(target: np.ndarray, toward: np.ndarray, radius: float, rng: np.random.Generator,
             n: int = 32, size: int = 96) -> list:
    """Cameras on the open side: azimuths within +-65 deg of ``toward - target``, elevation 12-50."""
    from engines.splat.render import orbit_camera

    d = toward - target
    base = math.degrees(math.atan2(d[1], d[0]))
    az = base + rng.uniform(-65, 65, n)
    el = rng.uniform(12, 50, n)
    return [orbit_camera(target.tolist(), float(a), float(e), radius, 55, size, size, "z") for a, e in zip(az, el)]


def reconstruct_dev(dev: DevScene, steps: int = 800, seed: int = 0, max_gaussians: int = 30000,
                    n_init: int = 8000) -> GaussianScene:
    """Render the posed views of ``dev`` and optimise Gaussians from them (sorted-alpha training)."""
    import torch

    from engines.splat.reconstruct import ReconConfig, reconstruct
    from engines.splat.render import render

    views = []
    with torch.no_grad():
        st = dev.scene
        for cam in dev.cameras:
            views.append((cam, render(st, cam, "alpha", ("rgb",))["rgb"]))  # [H, W, 3] over black
    cfg = ReconConfig(steps=steps, mode="alpha", n_init=n_init, max_gaussians=max_gaussians,
                      densify_every=max(10, steps // 10), densify_frac=0.3, seed=seed)  # local generator inside
    out = reconstruct(views, cfg).to_scene()
    out.meta["up"] = "z"
    return out


# ----------------------------------------------------------------------------- variants

def _rot(rng: np.random.Generator, n: int, max_deg: float) -> np.ndarray:
    from engines.splat.synthetic import _rand_rot

    return _rand_rot(rng, n, max_deg)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [N, 4] Hamilton products (w, x, y, z)."""
    w1, x1, y1, z1 = a.T
    w2, x2, y2, z2 = b.T
    return np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], 1)


def noisy_orientation(scene: GaussianScene, seed: int = 0, max_deg: float = 35.0,
                      unflat_frac: float = 0.35) -> GaussianScene:
    """Every Gaussian rotated by up to ``max_deg``; ``unflat_frac`` of them get their smallest
    scale raised to the middle one (no usable shortest axis at all)."""
    from engines.splat.synthetic import rotmat_to_quat

    rng = np.random.default_rng(seed)
    out = scene.subset(np.arange(len(scene)))
    q = out.quats / np.linalg.norm(out.quats, axis=1, keepdims=True)
    out.quats = _quat_mul(rotmat_to_quat(_rot(rng, len(q), max_deg)).astype(np.float64), q).astype(np.float32)
    m = rng.random(len(q)) < unflat_frac
    ls = out.log_scales.copy()
    srt = np.sort(ls, 1)
    k = ls.argmin(1)
    ls[np.nonzero(m)[0], k[m]] = srt[m, 1]
    out.log_scales = ls
    return out


def add_floaters(scene: GaussianScene, planes: list[GTPlane], seed: int = 0, frac: float = 0.1) -> GaussianScene:
    """``frac`` x N opaque junk Gaussians in the space in front of the surfaces (the cameras' side),
    random sizes and orientations, some flat: what view-dependent effects leave in real captures."""
    from engines.splat.synthetic import rotmat_to_quat

    rng = np.random.default_rng(seed)
    n = max(1, int(frac * len(scene)))
    lo, hi = np.percentile(scene.means, 2, 0), np.percentile(scene.means, 98, 0)
    pts = rng.uniform(lo, hi, (n * 4, 3))
    # keep points at least 4 % of the diagonal away from every plane (in front, not on a surface)
    diag = float(np.linalg.norm(hi - lo))
    dmin = np.min(np.stack([np.abs(pts @ p.normal - p.offset) for p in planes], 1), 1)
    pts = pts[dmin > 0.04 * diag][:n]
    n = len(pts)
    ref = np.exp(np.median(scene.log_scales, 0))
    ls = np.log(ref[None] * rng.uniform(0.5, 3.0, (n, 3)))
    flat = rng.random(n) < 0.5
    ls[flat, 2] += math.log(0.1)
    q = rotmat_to_quat(_rot(rng, n, 180.0))
    K = scene.sh.shape[1]
    sh = np.zeros((n, K, 3), np.float32)
    sh[:, 0] = (rng.uniform(0, 1, (n, 3)) - 0.5) / SH_C0
    op = rng.uniform(0.5, 0.98, n)
    fl = GaussianScene(pts.astype(np.float32), ls.astype(np.float32), q, np.log(op / (1 - op)).astype(np.float32),
                       sh, meta=dict(scene.meta))
    base = GaussianScene(scene.means, scene.log_scales, scene.quats, scene.opacity_logits, scene.sh,
                         meta=dict(scene.meta))
    return concat([base, fl])


def similarity(scene: GaussianScene, planes: list[GTPlane], seed: int = 0) -> tuple[GaussianScene, list[GTPlane]]:
    """A random similarity transform (scale 0.05-40, any rotation, offset): real captures have
    arbitrary scale and axes. Returns the moved scene and planes."""
    from engines.splat.synthetic import rotmat_to_quat

    rng = np.random.default_rng(seed)
    s = float(np.exp(rng.uniform(math.log(0.05), math.log(40.0))))
    R = _rot(rng, 1, 180.0)[0]
    t = rng.normal(0, 5 * s, 3)
    out = scene.subset(np.arange(len(scene)))
    out.means = ((scene.means.astype(np.float64) @ R.T) * s + t).astype(np.float32)
    out.log_scales = (scene.log_scales + math.log(s)).astype(np.float32)
    qR = np.repeat(rotmat_to_quat(R[None]).astype(np.float64), len(scene), 0)
    out.quats = _quat_mul(qR, scene.quats.astype(np.float64)).astype(np.float32)
    out.meta.pop("up", None)
    moved = [GTPlane(R @ p.center * s + t, R @ p.u, R @ p.v, (p.half[0] * s, p.half[1] * s), p.name) for p in planes]
    return out, moved


# ----------------------------------------------------------------------------- scoring

def gt_labels(scene: GaussianScene, planes: list[GTPlane], on_rel: float = 0.015, margin_rel: float = 0.01,
              min_opacity: float = 0.3) -> np.ndarray:
    """[N] ground-truth plane per Gaussian (-1 = none): opaque, centre within ``on_rel`` x diagonal
    of the plane and inside its rectangle (+ margin). Nearest plane wins where two qualify."""
    lo, hi = scene.bounds()
    diag = float(np.linalg.norm(hi - lo))
    P = scene.means.astype(np.float64)
    best = np.full(len(P), np.inf)
    lab = -np.ones(len(P), int)
    for k, p in enumerate(planes):
        d = np.abs(P @ p.normal - p.offset)
        rel = P - p.center
        inside = (np.abs(rel @ p.u) <= p.half[0] + margin_rel * diag) & (np.abs(rel @ p.v) <= p.half[1] + margin_rel * diag)
        ok = (d <= on_rel * diag) & inside & (d < best)
        lab[ok], best[ok] = k, d[ok]
    lab[scene.opacities <= min_opacity] = -1
    return lab


def score(result: Any, scene: GaussianScene, planes: list[GTPlane], labels: np.ndarray,
          min_share: float = 0.05, max_angle: float = 3.0, match_angle: float = 10.0,
          match_off_rel: float = 0.03, min_opacity: float = 0.3) -> dict[str, Any]:
    """Issue 11's goals for one parse. A found plane is an *instance* of true plane g when its
    normal is within ``match_angle`` and its offset within ``match_off_rel`` x diagonal, and most of
    its members lie on g. Per true plane carrying >= ``min_share`` of the opaque Gaussians:
    best normal error over its instances, instance count, and the share of its Gaussians labelled
    with one of its instances."""
    lo, hi = scene.bounds()
    diag = float(np.linalg.norm(hi - lo))
    n_opaque = int((scene.opacities > min_opacity).sum())
    out_planes = []
    found = [np.asarray(p["normal"], float) for p in result.planes]
    offs = [float(p["offset"]) for p in result.planes]
    for g, gp in enumerate(planes):
        on = labels == g
        share = float(on.sum()) / max(1, n_opaque)
        inst, errs = [], []
        for k, (n, o) in enumerate(zip(found, offs)):
            c = float(n @ gp.normal)
            ang = math.degrees(math.acos(min(1.0, abs(c))))
            if ang > match_angle or abs(math.copysign(1, c) * o - gp.offset) > match_off_rel * diag:
                continue
            mem = result.labels == k
            if mem.sum() == 0 or (labels[mem] == g).mean() < 0.5:
                continue
            inst.append(k)
            errs.append(ang)
        assigned = float(np.isin(result.labels[on], inst).mean()) if on.any() and inst else 0.0
        out_planes.append({"name": gp.name, "share": round(share, 4), "n_on": int(on.sum()),
                           "err_deg": round(min(errs), 3) if errs else None, "instances": len(inst),
                           "assigned": round(assigned, 4)})
    big = [p for p in out_planes if p["share"] >= min_share]
    goals = {
        "found_le_3deg": all(p["err_deg"] is not None and p["err_deg"] <= max_angle for p in big),
        "split_le_2": all(p["instances"] <= 2 for p in big),
        "assigned_ge_90pct": all(p["assigned"] >= 0.9 for p in big),
    }
    on_big = np.isin(labels, [i for i, p in enumerate(out_planes) if p["share"] >= min_share])
    return {
        "planes_total": len(result.planes), "n_big": len(big),
        "big_found_le_3deg": sum(p["err_deg"] is not None and p["err_deg"] <= max_angle for p in big),
        "worst_err_deg": max((p["err_deg"] if p["err_deg"] is not None else 90.0) for p in big) if big else None,
        "max_instances": max((p["instances"] for p in big), default=0),
        "min_assigned": round(min((p["assigned"] for p in big), default=1.0), 4),
        "assigned_on_big": round(sum(p["assigned"] * p["n_on"] for p in big) / max(1, sum(p["n_on"] for p in big)), 4),
        "n_on_big": int(on_big.sum()),
        "goals": goals, "goals_met": sum(goals.values()), "all_goals": all(goals.values()), "per_plane": out_planes,
    }


def ahead(ours: dict[str, Any], base: dict[str, Any]) -> bool:
    """Ours ahead of a baseline on one scene: more goals met, else more big planes within 3 deg,
    else a larger share of the big planes' Gaussians assigned (lexicographic)."""
    key = lambda s: (s["goals_met"], s["big_found_le_3deg"], s["assigned_on_big"])  # noqa: E731
    return key(ours) > key(base)


def variants(dev: DevScene, recon: GaussianScene, seed: int = 0) -> dict[str, tuple[GaussianScene, list[GTPlane]]]:
    """The dev set's variants of one reconstruction: recon, noisy, floaters, scaled (+floaters)."""
    fl = add_floaters(recon, dev.planes, seed, 0.1)
    return {
        "recon": (recon, dev.planes),
        "noisy": (noisy_orientation(recon, seed), dev.planes),
        "floaters": (fl, dev.planes),
        "scaled": similarity(noisy_orientation(fl, seed + 1, 20.0, 0.2), dev.planes, seed),
    }

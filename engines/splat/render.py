"""Reference PyTorch splat renderer: EWA projection, SH colour, and two compositors.

* ``alpha``: standard 3DGS front-to-back alpha blending. Gaussians are depth-sorted,
  duplicated per 8x8 tile they touch, stably sorted by tile, and composited with an
  exclusive per-tile cumulative product of (1 - alpha) (computed as a cumsum of logs).
* ``wsr``: sort-free Weighted Sum Rendering (Hou et al. 2025):
  ``C = (w_B c_B + sum_i c_i a_i w_i) / (w_B + sum_i a_i w_i)`` with DIR / EXP / LC weights
  and optional view-dependent opacity. No depth sort and no transmittance: pairs are only
  grouped by tile id (as the sort-free-gs rasterizer keys its sort) and segment-summed.

Both are vectorised over (Gaussian, tile) pairs, run on CPU or CUDA, and are differentiable
(the reconstruction loop trains through them). Any per-Gaussian feature (colour, depth,
normal, plane-instance colour) is composited the same way, so depth/normal/plane maps come
from the same pass. Camera convention: OpenCV (x right, y down, z forward); ``viewmat`` maps
world to camera.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from engines.splat.formats import GaussianScene

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
LOG_099 = math.log(0.99)
LOG_T_MIN = math.log(1e-4)
UP_AXES = {"y": (0.0, 1.0, 0.0), "-y": (0.0, -1.0, 0.0), "z": (0.0, 0.0, 1.0), "-z": (0.0, 0.0, -1.0)}


# ----------------------------------------------------------------------------- cameras

@dataclass
class Camera:
    viewmat: torch.Tensor  # [4, 4] world -> camera (OpenCV)
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def center(self) -> torch.Tensor:  # [3] camera position in world
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t

    def to(self, device: str | torch.device) -> "Camera":
        return Camera(self.viewmat.to(device), self.fx, self.fy, self.cx, self.cy, self.width, self.height)


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float]) -> torch.Tensor:
    """World->camera matrix [4, 4] (OpenCV) for a camera at ``eye`` looking at ``target``."""
    eye_t = torch.tensor(eye, dtype=torch.float64)
    fwd = torch.tensor(target, dtype=torch.float64) - eye_t
    fwd = fwd / fwd.norm()
    upv = torch.tensor(up, dtype=torch.float64)
    right = torch.linalg.cross(fwd, upv)
    if right.norm() < 1e-6:  # looking along up: pick any perpendicular
        right = torch.linalg.cross(fwd, torch.tensor([1.0, 0, 0], dtype=torch.float64))
        if right.norm() < 1e-6:
            right = torch.linalg.cross(fwd, torch.tensor([0, 1.0, 0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    R = torch.stack([right, down, fwd])  # rows: camera axes in world
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = R
    m[:3, 3] = -R @ eye_t
    return m.float()


def orbit_camera(target: Sequence[float], azimuth_deg: float, elevation_deg: float, radius: float,
                 fov_deg: float, width: int, height: int, up: str = "z") -> Camera:
    """A camera on a sphere around ``target``; azimuth about ``up``, elevation above its plane."""
    u = np.array(UP_AXES[up], np.float64)
    a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 0, 1.0])
    a = a - u * (a @ u)
    a /= np.linalg.norm(a)
    b = np.cross(u, a)
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    d = math.cos(el) * (math.cos(az) * a + math.sin(az) * b) + math.sin(el) * u
    eye = np.asarray(target, np.float64) + radius * d
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return Camera(look_at(eye, target, u), f, f, width / 2, height / 2, width, height)


def camera_from_c2w_blender(c2w: np.ndarray, fov_x: float, width: int, height: int) -> Camera:
    """NeRF-synthetic ``transform_matrix`` (OpenGL/Blender: y up, z back) -> OpenCV camera."""
    c2w = np.asarray(c2w, np.float64).copy()
    c2w[:3, 1:3] *= -1
    w2c = np.linalg.inv(c2w)
    f = 0.5 * width / math.tan(fov_x / 2)
    return Camera(torch.tensor(w2c, dtype=torch.float32), f, f, width / 2, height / 2, width, height)


def c2w_blender(cam: Camera) -> np.ndarray:
    """Inverse of :func:`camera_from_c2w_blender` (for writing transforms.json)."""
    c2w = np.linalg.inv(cam.viewmat.double().cpu().numpy())
    c2w[:3, 1:3] *= -1
    return c2w


# ----------------------------------------------------------------------------- tensors

@dataclass
class SplatTensors:
    """Torch view of a scene; fields may be leaf parameters during training."""

    means: torch.Tensor  # [N, 3]
    log_scales: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4] w, x, y, z (any norm)
    opacity_logits: torch.Tensor  # [N]
    sh: torch.Tensor  # [N, K, 3]
    vdo: torch.Tensor | None = None  # [N, Kv] view-dependent opacity SH
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_scene(scene: GaussianScene, device: str | torch.device = "cpu") -> "SplatTensors":
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)  # noqa: E731
        return SplatTensors(t(scene.means), t(scene.log_scales), t(scene.quats), t(scene.opacity_logits),
                            t(scene.sh), None if scene.vdo is None else t(scene.vdo), dict(scene.meta))

    def to_scene(self) -> GaussianScene:
        n = lambda x: x.detach().float().cpu().numpy().copy()  # noqa: E731
        return GaussianScene(n(self.means), n(self.log_scales), n(self.quats), n(self.opacity_logits), n(self.sh),
                             None if self.vdo is None else n(self.vdo), dict(self.meta))

    def __len__(self) -> int:
        return int(self.means.shape[0])


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z) -> [N, 3, 3]; normalises first (files store unnormalised quats)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def gaussian_normals(quats: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """[N, 3] unit normal = rotation column of the smallest scale axis (sign arbitrary)."""
    R = quat_to_rotmat(quats)
    k = log_scales.argmin(dim=1)
    return R[torch.arange(R.shape[0], device=R.device), :, k]


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """sh: [N, K, C], dirs: [N, 3] unit -> [N, C] (no +0.5 offset), degree = sqrt(K) - 1 <= 3."""
    k = sh.shape[1]
    out = SH_C0 * sh[:, 0]
    if k < 4:
        return out
    x, y, z = (dirs[:, i:i + 1] for i in range(3))
    out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    if k < 9:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + SH_C2[0] * xy * sh[:, 4] + SH_C2[1] * yz * sh[:, 5] + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6]
           + SH_C2[3] * xz * sh[:, 7] + SH_C2[4] * (xx - yy) * sh[:, 8])
    if k < 16:
        return out
    return (out + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9] + SH_C3[1] * xy * z * sh[:, 10]
            + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11] + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
            + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + SH_C3[5] * z * (xx - yy) * sh[:, 14]
            + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15])


# ----------------------------------------------------------------------------- projection

@dataclass
class Projected:
    mean2d: torch.Tensor  # [M, 2] pixel coords (pixel i spans [i, i+1])
    conic: torch.Tensor  # [M, 3] inverse 2D covariance (a, b, c)
    depth: torch.Tensor  # [M] camera z
    radius: torch.Tensor  # [M, 2] pixel half-extent in x, y (long)
    idx: torch.Tensor  # [M] indices into the scene of the visible Gaussians
    cov2d: torch.Tensor  # [M, 2, 2]


def project(means: torch.Tensor, log_scales: torch.Tensor, quats: torch.Tensor, cam: Camera,
            near: float = 0.01, blur: float = 0.3, opacity: torch.Tensor | None = None) -> Projected:
    """EWA splatting: Sigma' = J W Sigma W^T J^T + blur*I, culled to the view frustum.

    The screen extent is the axis-aligned box of the ellipse where o*G >= 1/255: faint
    Gaussians get small boxes, which is most of the CPU win.
    """
    R, t = cam.viewmat[:3, :3].to(means), cam.viewmat[:3, 3].to(means)
    p = means @ R.T + t  # [N, 3]
    z = p[:, 2]
    tanx, tany = 0.5 * cam.width / cam.fx, 0.5 * cam.height / cam.fy
    keep = (z > near) & torch.isfinite(p).all(1)
    # cheap frustum cull on centres with a generous margin (3DGS uses 1.3x the half-FOV)
    keep &= (p[:, 0].abs() <= 1.3 * tanx * z + 3 * log_scales.exp().max(1).values) & \
            (p[:, 1].abs() <= 1.3 * tany * z + 3 * log_scales.exp().max(1).values)
    idx = keep.nonzero().squeeze(1)
    p, z = p[idx], z[idx]
    x = (p[:, 0] / z).clamp(-1.3 * tanx, 1.3 * tanx) * z
    y = (p[:, 1] / z).clamp(-1.3 * tany, 1.3 * tany) * z
    zero = torch.zeros_like(z)
    J = torch.stack([cam.fx / z, zero, -cam.fx * x / (z * z),
                     zero, cam.fy / z, -cam.fy * y / (z * z)], 1).reshape(-1, 2, 3)  # [M, 2, 3]
    Rq = quat_to_rotmat(quats[idx])  # [M, 3, 3]
    M = Rq * log_scales[idx].exp()[:, None, :]  # R S
    T = J @ R @ M  # [M, 2, 3]
    cov2d = T @ T.transpose(1, 2) + blur * torch.eye(2, dtype=means.dtype, device=means.device)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = (a * c - b * b).clamp_min(1e-12)
    conic = torch.stack([c / det, -b / det, a / det], 1)
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
    # half-extent in sigmas where o*G falls to 1/255 (3.33 at o=1). Unlike 3DGS's fixed 3 sigma,
    # this makes the footprint exact, so images don't depend on the tile size (or on the viewer's quads)
    k = torch.full_like(z, math.sqrt(2 * math.log(255.0)))
    if opacity is not None:
        o = opacity.detach()[idx].clamp(1e-8, 1.0)
        k = torch.sqrt((2 * torch.log(255.0 * o)).clamp_min(0.0))
    del lam
    radius = torch.stack([torch.ceil(k * torch.sqrt(a.detach())), torch.ceil(k * torch.sqrt(c.detach()))], 1).long()
    radius[k <= 0] = -1  # invisible: o < 1/255
    mean2d = torch.stack([cam.fx * p[:, 0] / z + cam.cx, cam.fy * p[:, 1] / z + cam.cy], 1)
    # drop those whose 3-sigma box misses the image
    m = mean2d.detach()
    rx, ry = radius[:, 0], radius[:, 1]
    onscreen = (rx >= 0) & (m[:, 0] + rx > 0) & (m[:, 0] - rx < cam.width) & (m[:, 1] + ry > 0) & \
               (m[:, 1] - ry < cam.height)
    sel = onscreen.nonzero().squeeze(1)
    return Projected(mean2d[sel], conic[sel], z[sel], radius[sel], idx[sel], cov2d[sel])


# ----------------------------------------------------------------------------- rasterisation

@dataclass
class WSRConfig:
    """Weighted-sum settings. ``sigma``/``bg_weight`` may be tensors (learnable)."""

    variant: Literal["dir", "exp", "lc"] = "lc"
    sigma: float | torch.Tensor | None = None  # depth scale; None = 2x the farthest visible depth
    bg_weight: float | torch.Tensor = 0.02  # w_B


def wsr_weights(depth: torch.Tensor, cfg: WSRConfig, vdo: torch.Tensor | None) -> torch.Tensor:
    """[M] per-Gaussian weight w(d_i) * v_i; zero means culled.

    DIR: w=1. EXP: w=exp(-d/sigma) (weighted-blended-OIT falloff). LC: w=max(0, 1-d/sigma).
    ``vdo`` (view-dependent opacity v_i, [M]) multiplies the weight; v_i <= 0 culls.
    """
    sigma = cfg.sigma
    if sigma is None:
        sigma = float(depth.detach().max()) * 2.0 + 1e-6 if depth.numel() else 1.0
    if cfg.variant == "dir":
        w = torch.ones_like(depth)
    elif cfg.variant == "exp":
        w = torch.exp(-depth / sigma)
    elif cfg.variant == "lc":
        w = torch.relu(1.0 - depth / sigma)
    else:
        raise ValueError(f"unknown WSR variant {cfg.variant!r}")
    if vdo is not None:
        w = w * torch.relu(vdo)
    return w


def _pairs(mean2d: torch.Tensor, radius: torch.Tensor, W: int, H: int, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gaussian index, tile id) for every tile each 3-sigma box touches, Gaussian-major order."""
    ntx, nty = (W + tile - 1) // tile, (H + tile - 1) // tile
    m = mean2d.detach()
    rx, ry = radius[:, 0], radius[:, 1]
    x0 = ((m[:, 0] - rx) / tile).floor().long().clamp(0, ntx - 1)
    x1 = ((m[:, 0] + rx) / tile).floor().long().clamp(0, ntx - 1)
    y0 = ((m[:, 1] - ry) / tile).floor().long().clamp(0, nty - 1)
    y1 = ((m[:, 1] + ry) / tile).floor().long().clamp(0, nty - 1)
    wx = x1 - x0 + 1
    cnt = wx * (y1 - y0 + 1)
    gid = torch.repeat_interleave(torch.arange(m.shape[0], device=m.device), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    local = torch.arange(gid.shape[0], device=m.device) - start[gid]
    tid = (y0[gid] + local // wx[gid]) * ntx + x0[gid] + local % wx[gid]
    return gid, tid


def _cull_pairs(gid: torch.Tensor, tid: torch.Tensor, mean2d: torch.Tensor, conic: torch.Tensor,
                log_o: torch.Tensor, ntx: int, tile: int, cut: float) -> torch.Tensor:
    """Mask [P] of pairs whose tile can see the splat: max of log(o G) over the tile's pixel-centre
    box >= cut. The AABB of a round or tilted ellipse touches many tiles it never reaches (a third
    of the pairs on the sample scene). G is concave in the exponent, so the box maximum is the
    centre if inside, else the best point of the four edges (closed form per edge)."""
    m = mean2d.detach()[gid]
    cg = conic.detach()[gid]
    a, b, c = cg[:, 0], cg[:, 1], cg[:, 2]
    x0 = (tid % ntx).to(m.dtype) * tile + 0.5 - m[:, 0]
    y0 = (tid // ntx).to(m.dtype) * tile + 0.5 - m[:, 1]
    x1, y1 = x0 + (tile - 1), y0 + (tile - 1)

    def q(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        return -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy

    best = torch.maximum(
        torch.maximum(q(x0, (-b * x0 / c).clamp(y0, y1)), q(x1, (-b * x1 / c).clamp(y0, y1))),
        torch.maximum(q((-b * y0 / a).clamp(x0, x1), y0), q((-b * y1 / a).clamp(x0, x1), y1)))
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    best = torch.where(inside, torch.zeros_like(best), best)
    return best + log_o.detach()[gid] >= cut - 1e-4


def rasterize(mean2d: torch.Tensor, conic: torch.Tensor, opacity: torch.Tensor, feats: torch.Tensor,
              depth: torch.Tensor, radius: torch.Tensor, width: int, height: int, mode: str = "alpha",
              weights: torch.Tensor | None = None, background: torch.Tensor | None = None,
              bg_weight: float | torch.Tensor = 0.02, tile: int = 8,
              chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite per-Gaussian ``feats`` [M, C] -> image [H, W, C] and coverage [H, W].

    alpha: C = sum_i f_i a_i T_i + T_N * bg. wsr: C = (w_B bg + sum f_i a_i w_i) / (w_B + sum a_i w_i).
    ``chunk`` bounds the (pair x pixel) working set; ~1 MB chunks stay in cache and were 1.8x
    faster than 16 MB ones on this CPU.
    """
    dev, C = feats.device, feats.shape[1]
    ntx, nty = (width + tile - 1) // tile, (height + tile - 1) // tile
    ntiles, T2 = ntx * nty, tile * tile
    if background is None:
        background = torch.zeros(C, device=dev, dtype=feats.dtype)
    if mode == "alpha":
        order = torch.argsort(depth.detach())
        mean2d, conic, opacity, feats, radius = mean2d[order], conic[order], opacity[order], feats[order], radius[order]
    elif weights is None:
        raise ValueError("wsr needs weights")
    log_o = torch.log(opacity.clamp_min(1e-12))
    cut = math.log(1.0 / 255.0)
    gid, tid = _pairs(mean2d, radius, width, height, tile)
    seen = _cull_pairs(gid, tid, mean2d, conic, log_o, ntx, tile, cut)
    gid, tid = gid[seen], tid[seen]
    if mode == "alpha":
        tid, perm = torch.sort(tid, stable=True)  # tile-major, depth order kept within a tile
        gid = gid[perm]
    else:
        keepw = weights.detach()[gid] > 0
        gid, tid = gid[keepw], tid[keepw]
        # group by tile only (no depth order): index_add is ~5x slower than segment sums on CPU
        tid, perm = torch.sort(tid)
        gid = gid[perm]
    lin = torch.arange(tile, device=dev, dtype=mean2d.dtype) + 0.5  # pixel centres within a tile
    wcol = weights[:, None] if weights is not None else torch.ones_like(log_o)[:, None]
    attr = torch.cat([mean2d, conic, log_o[:, None], wcol.to(mean2d.dtype), feats.to(mean2d.dtype),
                      torch.ones_like(log_o)[:, None]], 1)  # [M, 7+C+1]
    lengths = torch.bincount(tid, minlength=ntiles)  # pairs per tile
    # chunks are whole tile ranges of about ``chunk / T2`` pairs each
    step = max(1, chunk // T2)
    before = torch.cumsum(lengths, 0) - lengths
    cid = (before // step).cpu()
    edges = [0] + (torch.nonzero(cid[1:] != cid[:-1]).squeeze(1) + 1).tolist() + [ntiles]
    starts = (torch.cumsum(lengths, 0) - lengths).cpu().tolist() + [int(lengths.sum())]
    pieces = []
    for t0, t1 in zip(edges[:-1], edges[1:]):
        s, e = starts[t0], starts[t1]
        ln = lengths[t0:t1]
        if e == s:
            pieces.append(torch.zeros(t1 - t0, T2, C + 1, device=dev, dtype=feats.dtype))
            continue
        g, t = gid[s:e], tid[s:e]
        ag = attr[g]  # one gather per pair: tile order is random in Gaussian order, so each is a cache miss
        m2, cg, lo_g, wg, fg = ag[:, 0:2], ag[:, 2:5], ag[:, 5:6], ag[:, 6:7], ag[:, 7:]
        dx = ((t % ntx) * tile).to(m2.dtype)[:, None] + lin - m2[:, 0:1]  # [p, tile]
        dy = ((t // ntx) * tile).to(m2.dtype)[:, None] + lin - m2[:, 1:2]  # [p, tile]
        qx = -0.5 * cg[:, 0:1] * dx * dx
        qy = -0.5 * cg[:, 2:3] * dy * dy + lo_g
        # power[p, y, x] = qy[y] + qx[x] - b dy[y] dx[x]  (log of o * G)
        power = torch.baddbmm(qy[:, :, None] + qx[:, None, :], (-cg[:, 1:2] * dy)[:, :, None], dx[:, None, :])
        power = power.reshape(-1, T2)
        # exp only of clamped (normal-range) values, then mask: exp of -inf or of very negative
        # numbers takes a slow path on CPU (3-10x slower, measured) and yields denormals
        a = torch.exp(power.clamp(cut, LOG_099)).masked_fill(power < cut, 0.0)  # min(.99, o G), 0 below 1/255
        if mode == "alpha":
            l1 = torch.log1p(-a)
            cs = torch.cumsum(l1, 0) - l1  # exclusive; float32 is enough within a chunk
            first = torch.ones_like(t, dtype=torch.bool)
            first[1:] = t[1:] != t[:-1]
            seg = torch.cumsum(first.long(), 0) - 1
            lt = cs - cs[first][seg]  # log transmittance in front of this Gaussian, per tile
            w = a * torch.exp(lt.clamp(min=LOG_T_MIN)).masked_fill(lt < LOG_T_MIN, 0.0)  # early stop at T < 1e-4
        else:
            w = a * wg
        # one segment sum for the features and the weight (fg's last column is 1)
        pieces.append(torch.segment_reduce(w[..., None] * fg[:, None, :], "sum", lengths=ln, axis=0))
    accw = torch.cat(pieces) if len(pieces) > 1 else pieces[0]  # [tiles, T2, C+1]
    acc, wsum = accw[..., :C], accw[..., C]
    if mode == "alpha":
        img = acc + (1.0 - wsum)[..., None] * background
        cov = wsum
    else:
        den = bg_weight + wsum
        img = (acc + bg_weight * background) / den[..., None]
        cov = wsum / den
    img = img.reshape(nty, ntx, tile, tile, C).permute(0, 2, 1, 3, 4).reshape(nty * tile, ntx * tile, C)
    cov = cov.reshape(nty, ntx, tile, tile).permute(0, 2, 1, 3).reshape(nty * tile, ntx * tile)
    return img[:height, :width], cov[:height, :width]


# ----------------------------------------------------------------------------- front end

def render(scene: SplatTensors | GaussianScene, cam: Camera, mode: str = "alpha",
           outputs: Sequence[str] = ("rgb",), background: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
           wsr: WSRConfig | None = None, instance_colors: torch.Tensor | None = None, tile: int = 8,
           use_gsplat: bool = False) -> dict[str, torch.Tensor]:
    """Render ``outputs`` (rgb, depth, normal, planes, alpha) for one camera.

    Returns tensors: rgb [H, W, 3], depth [H, W] (camera z, normalised by coverage),
    normal [H, W, 3] (camera-space unit normals, facing the camera), planes [H, W, 3]
    (``instance_colors`` [N, 3] composited), alpha [H, W] (coverage).
    """
    if isinstance(scene, GaussianScene):
        scene = SplatTensors.from_scene(scene, cam.viewmat.device)
    dev = scene.means.device
    cam = cam.to(dev)
    if mode not in ("alpha", "wsr"):
        raise ValueError(f"unknown render mode {mode!r}")
    if use_gsplat and mode == "alpha" and dev.type == "cuda" and set(outputs) <= {"rgb", "alpha", "depth"}:
        out = _render_gsplat(scene, cam, outputs, background)
        if out is not None:
            return out
    bg = torch.as_tensor(background, dtype=torch.float32, device=dev)
    pr = project(scene.means, scene.log_scales, scene.quats, cam, opacity=torch.sigmoid(scene.opacity_logits))
    idx = pr.idx
    cam_c = cam.center.to(dev)
    dirs = scene.means[idx] - cam_c
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    opac = torch.sigmoid(scene.opacity_logits[idx])
    weights, bgw = None, 0.0
    if mode == "wsr":
        wsr = wsr or WSRConfig(variant=scene.meta.get("wsr_variant", "lc"),
                               sigma=scene.meta.get("wsr_sigma"), bg_weight=scene.meta.get("wsr_bg_weight", 0.02))
        v = eval_sh(scene.vdo[idx][..., None], dirs)[:, 0] if scene.vdo is not None else None
        weights = wsr_weights(pr.depth, wsr, v)
        bgw = wsr.bg_weight
    cols: list[torch.Tensor] = []
    bgs: list[torch.Tensor] = []
    slots: dict[str, slice] = {}

    def add(name: str, f: torch.Tensor, b: torch.Tensor) -> None:
        slots[name] = slice(sum(c.shape[1] for c in cols), sum(c.shape[1] for c in cols) + f.shape[1])
        cols.append(f)
        bgs.append(b)

    if "rgb" in outputs:
        rgb = (eval_sh(scene.sh[idx], dirs) + 0.5).clamp_min(0.0)
        add("rgb", rgb, bg)
    if "depth" in outputs:
        add("depth", pr.depth[:, None], torch.zeros(1, device=dev))
    if "normal" in outputs:
        n = gaussian_normals(scene.quats[idx], scene.log_scales[idx])
        n = torch.where(((n * dirs).sum(1, keepdim=True) > 0), -n, n)  # face the camera
        add("normal", n @ cam.viewmat[:3, :3].T.to(n), torch.zeros(3, device=dev))
    if "planes" in outputs:
        if instance_colors is None:
            raise ValueError("planes output needs instance_colors")
        add("planes", instance_colors.to(dev, torch.float32)[idx], torch.zeros(3, device=dev))
    if not cols:
        add("_", torch.zeros(len(idx), 1, device=dev), torch.zeros(1, device=dev))
    feats = torch.cat(cols, 1)
    bgall = torch.cat(bgs)
    img, cov = rasterize(pr.mean2d, pr.conic, opac, feats, pr.depth, pr.radius, cam.width, cam.height, mode,
                         weights, bgall, bgw, tile)
    out: dict[str, torch.Tensor] = {"alpha": cov}
    if "rgb" in slots:
        out["rgb"] = img[..., slots["rgb"]]
    if "depth" in slots:
        d = img[..., slots["depth"]][..., 0]
        out["depth"] = d / cov.clamp_min(1e-6) if mode == "alpha" else d / (cov.clamp_min(1e-6))
    if "normal" in slots:
        n = img[..., slots["normal"]]
        out["normal"] = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    if "planes" in slots:
        out["planes"] = img[..., slots["planes"]]
    return out


def _render_gsplat(scene: SplatTensors, cam: Camera, outputs: Sequence[str],
                   background: Sequence[float] | torch.Tensor) -> dict[str, torch.Tensor] | None:
    """gsplat's CUDA rasteriser for the alpha path, when installed (lazy, optional)."""
    try:
        from gsplat import rasterization  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    dev = scene.means.device
    K = torch.tensor([[cam.fx, 0, cam.cx], [0, cam.fy, cam.cy], [0, 0, 1]], dtype=torch.float32, device=dev)
    q = scene.quats / scene.quats.norm(dim=1, keepdim=True)
    deg = int(round(math.sqrt(scene.sh.shape[1]))) - 1
    bg = torch.as_tensor(background, dtype=torch.float32, device=dev)
    mode = "RGB+ED" if "depth" in outputs else "RGB"
    colors, alphas, _ = rasterization(
        scene.means, q, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits), scene.sh,
        cam.viewmat[None].to(dev), K[None], cam.width, cam.height, sh_degree=deg, render_mode=mode,
        backgrounds=torch.cat([bg, torch.zeros(1, device=dev)])[None] if mode == "RGB+ED" else bg[None])
    out = {"rgb": colors[0, ..., :3], "alpha": alphas[0, ..., 0]}
    if mode == "RGB+ED":
        out["depth"] = colors[0, ..., 3]
    return out


# ----------------------------------------------------------------------------- images

def to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def colorize_depth(depth: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    """Near = bright grey ramp over covered pixels; uncovered = black. [H, W, 3] uint8."""
    d = depth.detach().cpu().numpy()
    m = alpha.detach().cpu().numpy() > 0.5
    out = np.zeros(d.shape + (3,), np.uint8)
    if m.any():
        lo, hi = np.percentile(d[m], 1), np.percentile(d[m], 99)
        v = 1.0 - np.clip((d - lo) / max(hi - lo, 1e-9), 0, 1)
        out[m] = (40 + 215 * v[m])[:, None].astype(np.uint8)
    return out


def colorize_normal(normal: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    n = normal.detach().cpu().numpy()
    out = ((n * 0.5 + 0.5) * 255).clip(0, 255).astype(np.uint8)
    out[alpha.detach().cpu().numpy() < 0.5] = 0
    return out

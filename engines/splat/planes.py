"""Planar parsing of a 3DGS scene (PGS-style, training-free) plus open3d baselines.

PGS (Zanjani et al. 2025) groups Gaussians into plane instances with learned plane descriptors
and rendered normals. Without SAM descriptors we use geometry, built to survive what real
captures do (issue 11): Gaussians on a wall are not all flat, their shortest axes are noisy,
density is uneven, floaters sit in front and scale is arbitrary.

``parse_planes`` (default): neighbourhood surface normals (what a rendered normal map measures)
plus the own axes of flat Gaussians where they agree -> consensus extraction of one plane at a
time from low-curvature seeds -> the plane's slab is retired -> duplicates merged -> every opaque
Gaussian assigned by distance within an adaptive thickness and the plane's extent -> trimmed
weighted refit. ``parse_planes_tree`` is the wave-1 parser (shortest axes, k-NN segments,
moment-matched tree merging), kept for ablation: exact on clean synthetic scenes, fragmented on
reconstructed ones. Dev set and scoring: ``engines/splat/devset.py``.

Plane convention: ``normal . x = offset``, normal oriented toward the scene centre.
"""
from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.splat.formats import GaussianScene


@dataclass
class PlaneConfig:
    min_opacity: float = 0.3
    max_flatness: float = 0.25  # s_min / s_mid
    angle_deg: float = 10.0  # normal agreement
    dist_rel: float = 0.01  # plane-distance tolerance, fraction of the scene diagonal
    knn: int = 16
    min_count: int = 30  # members for a node to be a plane instance
    max_planes: int = 64
    merge: bool = True  # tree merging above level 1 (off = connected components only, for ablation)
    max_graph: int = 200_000  # the tree is built on at most this many Gaussians (random subset); all are assigned


@dataclass
class PlaneResult:
    planes: list[dict[str, Any]]  # normal, offset, count, extent, center, u, v
    labels: np.ndarray  # [N] plane index per Gaussian, -1 = none
    merges: list[tuple[int, int, float]] = field(default_factory=list)  # tree: (node a, node b, cost)


def scene_normals(scene: GaussianScene) -> np.ndarray:
    """[N, 3] unit normals from the smallest scale axis (sign arbitrary)."""
    q = scene.quats.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    w, x, y, z = q.T
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1).reshape(-1, 3, 3)
    k = scene.log_scales.argmin(1)
    return R[np.arange(len(k)), :, k]


class Open3DUnavailable(ImportError):
    """open3d is missing or cannot load its native libraries; the message says how to fix it."""


def import_open3d() -> Any:
    """open3d, imported lazily: the Studio's own parser never needs it (only the baselines and a
    faster k-NN do). open3d's wheel links Debian's ``libusb-1.0-0``; without it the import fails
    with a bare loader error, which this turns into one actionable line."""
    try:
        import open3d
    except (ImportError, OSError) as e:  # OSError: some loaders report a broken .so this way
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        fix = ("install Debian's libusb-1.0-0: sudo apt-get install -y libusb-1.0-0" if "libusb" in first
               else "install it: pip install open3d-cpu (x86_64) or open3d")
        raise Open3DUnavailable(f"open3d unavailable ({first}); {fix}") from e
    return open3d


def knn(points: np.ndarray, k: int, chunk: int = 2048, kd_min: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours (excluding self): [N, k] idx, dist. open3d's KD-tree from ``kd_min``
    points on (200k points in ~1 s), else exact brute force with torch.cdist (O(N^2))."""
    k = min(k, max(1, len(points) - 1))
    if len(points) >= kd_min:
        try:
            o3d = import_open3d()
            pts = o3d.core.Tensor(np.ascontiguousarray(points, np.float32))
            nns = o3d.core.nns.NearestNeighborSearch(pts)
            nns.knn_index()
            idx, d2 = nns.knn_search(pts, k + 1)
            idx, d2 = idx.numpy().astype(np.int64), d2.numpy()
            is_self = idx == np.arange(len(points))[:, None]
            # drop self (usually column 0; duplicates may move it), else the farthest
            drop = np.where(is_self.any(1), is_self.argmax(1), k)
            keep = np.ones_like(idx, bool)
            keep[np.arange(len(points)), drop] = False
            return idx[keep].reshape(-1, k), np.sqrt(np.maximum(d2[keep].reshape(-1, k), 0))
        except Open3DUnavailable:
            pass  # exact brute force below: slower on big scenes, same answer
    import torch

    p = torch.as_tensor(points, dtype=torch.float64)  # fp32 cdist (|a|^2+|b|^2-2ab) errs by ~1e-4
    idx, dist = [], []
    for s in range(0, len(p), chunk):
        d = torch.cdist(p[s:s + chunk], p, compute_mode="donot_use_mm_for_euclid_dist")
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
        v, i = torch.topk(d, k, dim=1, largest=False)
        idx.append(i)
        dist.append(v)
    return torch.cat(idx).numpy(), torch.cat(dist).numpy()


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component labels [n] of the undirected edges (a, b): min-label propagation."""
    lab = np.arange(n)
    while True:
        m = np.minimum(lab[a], lab[b])
        new = lab.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]  # pointer jumping
        if np.array_equal(new, lab):
            break
        lab = new
    _, out = np.unique(lab, return_inverse=True)
    return out


class _Node:
    """Moment-matched mixture node of the tree."""

    __slots__ = ("w", "s1", "s2", "n2", "count", "members", "alive", "ver")

    def __init__(self, w: float, s1: np.ndarray, s2: np.ndarray, n2: np.ndarray, count: int, members: list[int]):
        self.w, self.s1, self.s2, self.n2, self.count, self.members = w, s1, s2, n2, count, members
        self.alive, self.ver = True, 0

    def plane(self) -> tuple[np.ndarray, float, float]:
        """(normal, offset, thickness variance) of the node's plane."""
        mu = self.s1 / self.w
        cov = self.s2 / self.w - np.outer(mu, mu)
        n = np.linalg.eigh(self.n2)[1][:, -1]  # dominant normal axis (sign-free average)
        ev, evec = np.linalg.eigh(cov)
        if ev[1] > 25 * max(ev[0], 1e-12):  # spatially 2D: the fitted plane normal is reliable
            fit = evec[:, 0]
            if abs(fit @ n) > math.cos(math.radians(30)):
                n = fit
        return n, float(n @ mu), float(n @ cov @ n)


def _merge_cost(A: _Node, B: _Node, tau: float, cos_t: float) -> float | None:
    na, _, _ = A.plane()
    nb, _, _ = B.plane()
    c = abs(float(na @ nb))
    if c < cos_t:
        return None
    M = _Node(A.w + B.w, A.s1 + B.s1, A.s2 + B.s2, A.n2 + B.n2, 0, [])
    _, _, var = M.plane()
    if var > tau * tau:
        return None
    return var / (tau * tau) + (1 - c) / max(1 - cos_t, 1e-9)


def parse_planes_tree(scene: GaussianScene, cfg: PlaneConfig | None = None,
                      check: Any = None) -> PlaneResult:
    """Wave-1 parser (kept for ablation): shortest-axis normals, k-NN segments, moment-matched
    tree merging. Exact on clean synthetic scenes; fragments on reconstructed ones (issue 11)."""
    cfg = cfg or PlaneConfig()
    check = check or (lambda: None)
    N = len(scene)
    labels = -np.ones(N, int)
    if N < 3:
        return PlaneResult([], labels)
    s = np.exp(scene.log_scales.astype(np.float64))
    ss = np.sort(s, 1)
    flat = ss[:, 0] / np.maximum(ss[:, 1], 1e-12)
    cand = np.nonzero((scene.opacities > cfg.min_opacity) & (flat < cfg.max_flatness))[0]
    lo, hi = scene.bounds()
    diag = float(np.linalg.norm(hi - lo)) or 1.0
    centre = (lo + hi) / 2
    tau = cfg.dist_rel * diag
    cos_t = math.cos(math.radians(cfg.angle_deg))
    cos_2t = math.cos(math.radians(min(2 * cfg.angle_deg, 60.0)))  # assignment is looser than merging
    if len(cand) < cfg.min_count:
        return PlaneResult([], labels)
    all_cand = cand
    if len(cand) > cfg.max_graph:
        cand = np.sort(np.random.default_rng(0).choice(cand, cfg.max_graph, replace=False))
    P = scene.means[cand].astype(np.float64)
    Nrm = scene_normals(scene)[cand]
    W = scene.opacities[cand].astype(np.float64) * ss[cand, 1] * ss[cand, 2]
    W = W / W.mean()
    # --- level 1: k-NN graph edges that agree in normal and coplanarity
    nb, nd = knn(P, cfg.knn)
    check()
    med = float(np.median(nd[:, 0])) if nd.size else 0.0
    a = np.repeat(np.arange(len(P)), nb.shape[1])
    b = nb.reshape(-1)
    d = nd.reshape(-1)
    dv = P[b] - P[a]
    ok = (d <= max(4 * med, 1e-12)) & (np.abs((Nrm[a] * Nrm[b]).sum(1)) >= cos_t) & \
         (np.abs((Nrm[a] * dv).sum(1)) <= tau) & (np.abs((Nrm[b] * dv).sum(1)) <= tau)
    seg = components(len(P), a[ok], b[ok])
    nseg = int(seg.max()) + 1
    # --- level 2+: moment-matched agglomeration over the segment adjacency graph
    order = np.argsort(seg, kind="stable")
    starts = np.searchsorted(seg[order], np.arange(nseg + 1))
    nodes: list[_Node] = []
    for k in range(nseg):
        m = order[starts[k]:starts[k + 1]]
        nodes.append(_Node(float(W[m].sum()), (W[m, None] * P[m]).sum(0), np.einsum("i,ij,ik->jk", W[m], P[m], P[m]),
                           np.einsum("i,ij,ik->jk", W[m], Nrm[m], Nrm[m]), len(m), m.tolist()))
    check()
    sa, sb = seg[a[d <= max(4 * med, 1e-12)]], seg[b[d <= max(4 * med, 1e-12)]]
    adj: dict[int, set[int]] = {k: set() for k in range(nseg)}
    for x, y in set(zip(sa.tolist(), sb.tolist())):
        if x != y:
            adj[x].add(y)
            adj[y].add(x)
    heap: list[tuple[float, int, int, int, int]] = []

    def push(x: int, y: int) -> None:
        if nodes[x].count + nodes[y].count < 2:
            return
        c = _merge_cost(nodes[x], nodes[y], tau, cos_t)
        if c is not None:
            heapq.heappush(heap, (c, x, y, nodes[x].ver, nodes[y].ver))

    for x in range(nseg if cfg.merge else 0):
        for y in adj[x]:
            if x < y and (nodes[x].count > 1 or nodes[y].count > 1):
                push(x, y)
    merges: list[tuple[int, int, float]] = []
    while heap:
        c, x, y, vx, vy = heapq.heappop(heap)
        A, B = nodes[x], nodes[y]
        if not (A.alive and B.alive) or A.ver != vx or B.ver != vy:
            continue
        # merge y into x
        A.w, A.s1, A.s2, A.n2 = A.w + B.w, A.s1 + B.s1, A.s2 + B.s2, A.n2 + B.n2
        A.count += B.count
        A.members += B.members
        A.ver += 1
        B.alive = False
        merges.append((x, y, float(c)))
        adj[x] |= adj.pop(y)
        adj[x].discard(x)
        adj[x].discard(y)
        for z in list(adj[x]):
            adj[z].discard(y)
            adj[z].add(x)
            push(x, z)
        if len(merges) % 256 == 0:
            check()
    roots = sorted((nd_ for nd_ in nodes if nd_.alive and nd_.count >= cfg.min_count), key=lambda n_: -n_.count)
    roots = roots[:cfg.max_planes]
    # --- orient each root's plane toward the scene centre
    planes: list[dict[str, Any]] = []
    fits = []
    for r in roots:
        n, off, _ = r.plane()
        mu = r.s1 / r.w
        if n @ (centre - mu) < 0:
            n = -n
        off = float(n @ mu)
        fits.append((n, off, mu))
    # --- probabilistic assignment of every candidate (all of them, if the tree used a subset)
    members = [np.asarray(r.members, dtype=np.int64) for r in roots]
    if len(all_cand) != len(cand):
        pos = np.searchsorted(all_cand, cand)
        members = [pos[m] for m in members]
        cand = all_cand
        P = scene.means[cand].astype(np.float64)
        Nrm = scene_normals(scene)[cand]
        W = scene.opacities[cand].astype(np.float64) * ss[cand, 1] * ss[cand, 2]
        W = W / W.mean()
    lab_c = -np.ones(len(P), int)
    if fits:
        normals = np.stack([f[0] for f in fits])  # [K, 3]
        offs = np.array([f[1] for f in fits])
        # spatial connectivity: inside each plane's member extent (+ a margin), in plane coords
        bases = [_basis(n) for n in normals]
        margin = 4 * med
        boxes = np.array([[(P[m] @ u).min() - margin, (P[m] @ u).max() + margin,
                           (P[m] @ v).min() - margin, (P[m] @ v).max() + margin]
                          for m, (u, v) in zip(members, bases)])  # [K, 4]
        U = np.stack([u for u, _ in bases], 1)  # [3, K]
        V = np.stack([v for _, v in bases], 1)

        def logp_of(rows: np.ndarray) -> np.ndarray:
            """[len(rows), K] log-likelihood of each plane, -inf where inconsistent."""
            p_, n_ = P[rows], Nrm[rows]
            dist = p_ @ normals.T - offs[None]
            cosn = np.abs(n_ @ normals.T)
            qu, qv = p_ @ U, p_ @ V
            inside = (qu >= boxes[:, 0]) & (qu <= boxes[:, 1]) & (qv >= boxes[:, 2]) & (qv <= boxes[:, 3])
            valid = (np.abs(dist) <= 2 * tau) & (cosn >= cos_2t) & inside
            lp = -0.5 * (dist / tau) ** 2 - 0.5 * ((1 - cosn) / max(1 - cos_t, 1e-9)) ** 2
            return np.where(valid, lp, -np.inf)

        step = max(1, 4_000_000 // len(fits))  # bounded [rows, K] working set
        for s0 in range(0, len(P), step):
            rows = np.arange(s0, min(len(P), s0 + step))
            lp = logp_of(rows)
            lab_c[rows] = np.where(np.isfinite(lp.max(1)), lp.argmax(1), -1)
            check()
        # members of a root keep their plane (tree decision) unless another plane is clearly better
        for k, m in enumerate(members):
            lp = logp_of(m)
            keep = np.isfinite(lp[:, k]) & (lp[:, k] >= lp[np.arange(len(m)), lab_c[m].clip(0)] - 2.0)
            lab_c[m[keep]] = k
    for k, (n, off, _) in enumerate(fits):
        m = np.nonzero(lab_c == k)[0]
        if len(m) < 3:
            continue
        # opacity x area weighted SVD refit on the final members
        w = W[m] / W[m].sum()
        mu = (w[:, None] * P[m]).sum(0)
        cov = (w[:, None] * (P[m] - mu)).T @ (P[m] - mu)
        ev, evec = np.linalg.eigh(cov)
        if ev[1] > 25 * max(ev[0], 1e-12) and abs(evec[:, 0] @ n) > math.cos(math.radians(20)):
            n = evec[:, 0] * np.sign(evec[:, 0] @ n)
        off = float(n @ mu)
        u, v = _basis(n)
        pu, pv = (P[m] - mu) @ u, (P[m] - mu) @ v
        u0, u1 = np.percentile(pu, [1, 99])
        v0, v1 = np.percentile(pv, [1, 99])
        c = mu + u * (u0 + u1) / 2 + v * (v0 + v1) / 2
        planes.append({
            "normal": [float(x) for x in n], "offset": off, "count": int(len(m)),
            "extent": [float(u1 - u0), float(v1 - v0)], "center": [float(x) for x in c],
            "u": [float(x) for x in u], "v": [float(x) for x in v], "_k": k,
        })
    remap = -np.ones(len(fits) + 1, int)  # fit index -> output plane index; last slot: -1 stays -1
    for i, p in enumerate(planes):
        remap[p.pop("_k")] = i
    lab_c = remap[lab_c]
    labels[cand] = lab_c
    return PlaneResult(planes, labels, merges)


def surface_normals(P: np.ndarray, W: np.ndarray, nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normal of the surface the Gaussians form around each one, and its curvature.

    Weighted PCA of each centre's k nearest centres (itself included): the same quantity a
    normal map rendered from the splat's depth measures, and unlike a Gaussian's own shortest
    axis it does not depend on that Gaussian being flat or well oriented.
    Returns normals [N, 3] (unit, sign arbitrary) and curvature [N] = l0 / (l0 + l1 + l2).
    """
    idx = np.concatenate([np.arange(len(P))[:, None], nb], 1)  # [N, k+1]
    Q = P[idx]  # [N, k+1, 3]
    w = W[idx]
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-30)  # [N, k+1]
    mu = np.einsum("nk,nki->ni", w, Q)  # [N, 3]
    D = Q - mu[:, None]
    C = np.einsum("nk,nki,nkj->nij", w, D, D)  # [N, 3, 3]
    ev, evec = np.linalg.eigh(C)  # ascending eigenvalues
    return evec[:, :, 0], ev[:, 0] / np.maximum(ev.sum(1), 1e-30)


def _fit_plane(P: np.ndarray, W: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """Weighted least-squares plane through points [M, 3]: (unit normal, offset, eigenvalues asc)."""
    w = W / max(float(W.sum()), 1e-30)
    mu = (w[:, None] * P).sum(0)
    D = P - mu
    ev, evec = np.linalg.eigh((w[:, None] * D).T @ D)
    n = evec[:, 0]
    if ref is not None and n @ ref < 0:
        n = -n
    return n, float(n @ mu), ev


def parse_planes(scene: GaussianScene, cfg: PlaneConfig | None = None, check: Any = None) -> PlaneResult:
    """Plane instances of a 3DGS scene, robust to what real captures do (issue 11).

    1. Opaque Gaussians of any shape are candidates (non-flat ones lie on walls too).
    2. Each gets a *surface* normal and curvature from its neighbourhood (``surface_normals``,
       PGS's rendered-normal cue without a renderer pass); a flat Gaussian's own shortest axis is
       averaged in only where it agrees.
    3. Planes are extracted one at a time: hypotheses from low-curvature seeds are scored by the
       opacity mass that is both within the distance tolerance and normal-consistent (a
       descriptor test, so a slanted plane cannot steal a wall's points along their common
       line); the winner is refitted by weighted least squares on its consensus, which is
       removed. Floaters never reach consensus: they are off every surface.
    4. Near-duplicate planes (within half the angle, same offset) are merged, every candidate is
       assigned to the nearest plane whose adaptive thickness and extent it falls in (normal must
       agree unless its neighbourhood is too curved to say), and each plane is refitted on its
       trimmed members.

    Tolerances are relative to the robust scene diagonal, so scale does not matter.
    ``check()`` is called between phases (cancel hook).
    """
    cfg = cfg or PlaneConfig()
    check = check or (lambda: None)
    N = len(scene)
    labels = -np.ones(N, int)
    cand = np.nonzero(scene.opacities > cfg.min_opacity)[0]
    if len(cand) < max(cfg.min_count, 4):
        return PlaneResult([], labels)
    lo, hi = scene.bounds()
    diag = float(np.linalg.norm(hi - lo)) or 1.0
    centre = (lo + hi) / 2
    tau = cfg.dist_rel * diag
    cos_t = math.cos(math.radians(cfg.angle_deg))
    P = scene.means[cand].astype(np.float64)  # [M, 3]
    W = scene.opacities[cand].astype(np.float64)  # [M] opacity mass (area would favour big junk)
    M = len(P)
    nb, nd = knn(P, max(cfg.knn, 8))
    check()
    Ns, curv = surface_normals(P, W, nb)  # [M, 3], [M]
    ax = scene_normals(scene)[cand]
    ss = np.sort(np.exp(scene.log_scales[cand].astype(np.float64)), 1)
    flat = ss[:, 0] / np.maximum(ss[:, 1], 1e-12) < cfg.max_flatness
    c = (ax * Ns).sum(1)
    agree = flat & (np.abs(c) >= cos_t)
    Ns[agree] = Ns[agree] + np.sign(c[agree])[:, None] * ax[agree]
    Ns /= np.maximum(np.linalg.norm(Ns, axis=1, keepdims=True), 1e-12)
    cos_45 = math.cos(math.radians(45.0))

    def agrees(n: np.ndarray) -> np.ndarray:
        """[M] normal-consistent with plane normal n: the surface normal, or (flat Gaussians) the
        own shortest axis. Either cue alone fails somewhere: axes on reconstructions, surface
        normals on small clean faces whose neighbourhoods reach over an edge."""
        return (np.abs(Ns @ n) >= cos_t) | (flat & (np.abs(ax @ n) >= cos_t))
    check()
    # --- 3: sequential consensus extraction
    rng = np.random.default_rng(0)
    free = np.ones(M, bool)
    fits: list[tuple[np.ndarray, float]] = []
    min_mass = cfg.min_count * float(np.median(W))
    for _ in range(cfg.max_planes):
        R = np.nonzero(free)[0]
        if len(R) < cfg.min_count:
            break
        Rs = R if len(R) <= cfg.max_graph else rng.choice(R, cfg.max_graph, replace=False)
        Rs = Rs if len(Rs) <= 20000 else rng.choice(Rs, 20000, replace=False)  # scoring subset
        pool = R[curv[R] <= np.median(curv[R])]
        S = rng.choice(pool, min(96, len(pool)), replace=False)  # seeds [S]
        ns = Ns[S]  # [S, 3]
        offs = (ns * P[S]).sum(1)  # [S]
        d = np.abs(P[Rs] @ ns.T - offs[None])  # [|Rs|, S]
        ok = (d <= tau) & ((np.abs(Ns[Rs] @ ns.T) >= cos_t) | (flat[Rs, None] & (np.abs(ax[Rs] @ ns.T) >= cos_t)))
        sup = (ok * W[Rs, None]).sum(0) * (len(R) / len(Rs))
        b = int(sup.argmax())
        if sup[b] < min_mass:
            break
        n, off = ns[b], float(offs[b])
        inl = np.zeros(M, bool)
        for _it in range(4):
            inl = free & (np.abs(P @ n - off) <= tau) & agrees(n)
            if inl.sum() < 3:
                break
            n, off, ev = _fit_plane(P[inl], W[inl], n)
        if W[inl].sum() < min_mass or inl.sum() < cfg.min_count:
            # the seed's plane does not hold: retire its consensus so it is not drawn again
            free[S[b]] = False
            free[inl] = False
            continue
        fits.append((n, off))
        # retire the plane's whole slab inside its extent, not only the normal-consistent core:
        # on a reconstructed wall many Gaussians have noisy surface normals, and left free they
        # would seed tilted copies of the same wall. Only clearly crossing ones (> 45 deg) stay.
        u, v = _basis(n)
        qu, qv = P[inl] @ u, P[inl] @ v
        margin = 2 * float(np.median(nd[:, -1]))
        pu, pv = P @ u, P @ v
        slab = free & (np.abs(P @ n - off) <= tau) & (np.abs(Ns @ n) >= cos_45) & \
            (pu >= qu.min() - margin) & (pu <= qu.max() + margin) & (pv >= qv.min() - margin) & (pv <= qv.max() + margin)
        free[inl | slab] = False
        check()
    # --- 4: merge duplicates, assign, refit
    merged: list[tuple[np.ndarray, float]] = []
    cos_half = math.cos(math.radians(cfg.angle_deg / 2))
    for n, off in fits:
        for j, (m_n, m_off) in enumerate(merged):
            sg = 1.0 if n @ m_n >= 0 else -1.0
            if abs(n @ m_n) >= cos_half and abs(sg * off - m_off) <= tau:
                break
        else:
            merged.append((n, off))
    lab = -np.ones(M, int)
    planes: list[dict[str, Any]] = []
    if merged:
        for _round in range(2):  # assign, refit, assign again with the refitted planes
            normals = np.stack([f[0] for f in merged])  # [K, 3]
            offs = np.array([f[1] for f in merged])  # [K]
            dist = np.abs(P @ normals.T - offs[None])  # [M, K]
            cosn = np.abs(Ns @ normals.T)  # [M, K]
            cosa = np.abs(ax @ normals.T)  # [M, K] own shortest axes
            agree_k = (cosn >= cos_t) | (flat[:, None] & (cosa >= cos_t))
            core = (dist <= tau) & agree_k
            thick, boxes = [], []
            margin = 2 * float(np.median(nd[:, -1]))
            for k, n in enumerate(normals):
                m = core[:, k]
                wide = (dist[:, k] <= 3 * tau) & agree_k[:, k]  # untruncated residuals
                mad = 1.4826 * float(np.median(dist[wide, k])) if wide.sum() >= 3 else tau
                thick.append(min(max(3.0 * mad, 2 * tau), 3.0 * tau))  # 3 sigma, at least 2 tau as in wave 1
                u, v = _basis(n)
                band = dist[:, k] <= tau  # extent from the whole slab: the core can miss rough patches
                q = P[band] if m.sum() >= 3 else P[:0]
                if len(q):
                    boxes.append([*np.percentile(q @ u, [1, 99]), *np.percentile(q @ v, [1, 99])])
                else:
                    boxes.append([np.inf, -np.inf, np.inf, -np.inf])
            th = np.array(thick)  # [K]
            bx = np.array(boxes)  # [K, 4]
            U = np.stack([_basis(n)[0] for n in normals], 1)  # [3, K]
            V = np.stack([_basis(n)[1] for n in normals], 1)
            qu, qv = P @ U, P @ V  # [M, K]
            inside = (qu >= bx[:, 0] - margin) & (qu <= bx[:, 1] + margin) & \
                     (qv >= bx[:, 2] - margin) & (qv <= bx[:, 3] + margin)
            # distance (in units of each plane's thickness) and extent decide. The surface
            # normals already chose the planes; using them again here (as a cost term or a veto
            # of > 45 deg) mislabelled box edges, where neighbourhood normals blend two faces,
            # and dropped wall Gaussians whose neighbourhoods are locally rough (dev set).
            valid = (dist <= th[None]) & inside
            cost = np.where(valid, dist / th[None], np.inf)
            lab = np.where(np.isfinite(cost.min(1)), cost.argmin(1), -1)
            new = []
            for k, (n, off) in enumerate(merged):
                m = np.nonzero(lab == k)[0]
                if len(m) >= 3:
                    r = np.abs(P[m] @ n - off)
                    keep = m[r <= np.percentile(r, 80)] if len(m) >= 10 else m  # trimmed refit
                    n, off, _ = _fit_plane(P[keep], W[keep], n)
                new.append((n, off))
            merged = new
            check()
        for k, (n, off) in enumerate(merged):
            m = np.nonzero(lab == k)[0]
            if len(m) < cfg.min_count:
                lab[m] = -1
                continue
            mu = (W[m, None] * P[m]).sum(0) / W[m].sum()
            if n @ (centre - mu) < 0:
                n, off = -n, -off
            u, v = _basis(n)
            pu, pv = (P[m] - mu) @ u, (P[m] - mu) @ v
            u0, u1 = np.percentile(pu, [1, 99])
            v0, v1 = np.percentile(pv, [1, 99])
            cc = mu + u * (u0 + u1) / 2 + v * (v0 + v1) / 2
            cc = cc - n * (n @ cc - off)  # on the plane
            planes.append({
                "normal": [float(x) for x in n], "offset": float(off), "count": int(len(m)),
                "extent": [float(u1 - u0), float(v1 - v0)], "center": [float(x) for x in cc],
                "u": [float(x) for x in u], "v": [float(x) for x in v], "_k": k,
            })
    planes.sort(key=lambda p_: -p_["count"])
    remap = -np.ones(len(merged) + 1, int)  # fit index -> output index; the last slot keeps -1
    for i, p_ in enumerate(planes):
        remap[p_.pop("_k")] = i
    labels[cand] = remap[lab]
    return PlaneResult(planes[:cfg.max_planes], labels)


def _basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1.0, 0, 0]) if abs(n[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(n, a)
    u /= np.linalg.norm(u)
    return u, np.cross(n, u)


def palette(k: int) -> np.ndarray:
    """[k, 3] distinct colours in 0..1 (golden-angle hues)."""
    import colorsys

    return np.array([colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95) for i in range(k)], np.float32)


def instance_colors(labels: np.ndarray, n_planes: int, none: float = 0.25) -> np.ndarray:
    """[N, 3] per-Gaussian colours: plane colour or grey for unassigned."""
    pal = palette(max(n_planes, 1))
    out = np.full((len(labels), 3), none, np.float32)
    m = labels >= 0
    out[m] = pal[labels[m]]
    return out


def write_planes_json(planes: list[dict[str, Any]], path: str | Path) -> Path:
    Path(path).write_text(json.dumps(planes, indent=1))
    return Path(path)


def plane_quads(planes: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices [4K, 3], faces [2K, 3] and colours [4K, 3] (uint8) for the plane rectangles."""
    pal = (palette(max(len(planes), 1)) * 255).astype(np.uint8)
    V, F, C = [], [], []
    for i, p in enumerate(planes):
        c, u, v = (np.asarray(p[k]) for k in ("center", "u", "v"))
        eu, ev = p["extent"][0] / 2, p["extent"][1] / 2
        V += [c - eu * u - ev * v, c + eu * u - ev * v, c + eu * u + ev * v, c - eu * u + ev * v]
        F += [[4 * i, 4 * i + 1, 4 * i + 2], [4 * i, 4 * i + 2, 4 * i + 3]]
        C += [pal[i]] * 4
    return (np.asarray(V, np.float32).reshape(-1, 3), np.asarray(F, np.int32).reshape(-1, 3),
            np.asarray(C, np.uint8).reshape(-1, 3))


def write_plane_mesh(planes: list[dict[str, Any]], path: str | Path) -> Path:
    """Planes as coloured quads: ``.ply`` (binary, vertex colours) or ``.obj`` (with vertex colours)."""
    path = Path(path)
    V, F, C = plane_quads(planes)
    if path.suffix.lower() == ".obj":
        lines = [f"# {len(planes)} planes"]
        lines += [f"v {x:.6f} {y:.6f} {z:.6f} {r / 255:.3f} {g / 255:.3f} {b / 255:.3f}"
                  for (x, y, z), (r, g, b) in zip(V, C)]
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in F]
        path.write_text("\n".join(lines) + "\n")
        return path
    vd = np.empty(len(V), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vd["x"], vd["y"], vd["z"] = V.T
    vd["red"], vd["green"], vd["blue"] = C.T
    fd = np.empty(len(F), [("n", "u1"), ("i", "<i4", (3,))])
    fd["n"] = 3
    fd["i"] = F
    head = ("ply\nformat binary_little_endian 1.0\n"
            f"element vertex {len(V)}\nproperty float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\n"
            f"element face {len(F)}\nproperty list uchar int vertex_indices\nend_header\n")
    with open(path, "wb") as f:
        f.write(head.encode("ascii"))
        f.write(vd.tobytes())
        f.write(fd.tobytes())
    return path


# ----------------------------------------------------------------------------- open3d baseline

def open3d_planes(scene: GaussianScene, method: str = "ransac", dist_rel: float = 0.01, min_count: int = 30,
                  max_planes: int = 16, min_opacity: float = 0.3) -> PlaneResult:
    """Baseline: open3d ``segment_plane`` repeated on the centres (RANSAC), or
    ``detect_planar_patches`` with the Gaussian normals. Raises ``Open3DUnavailable`` (an
    ImportError naming the fix) when open3d cannot load."""
    o3d = import_open3d()

    N = len(scene)
    labels = -np.ones(N, int)
    cand = np.nonzero(scene.opacities > min_opacity)[0]
    lo, hi = scene.bounds()
    diag = float(np.linalg.norm(hi - lo)) or 1.0
    centre = (lo + hi) / 2
    pts = scene.means[cand].astype(np.float64)
    planes: list[dict[str, Any]] = []
    o3d.utility.random.seed(0)
    if method == "ransac":
        remaining = np.arange(len(pts))
        for _ in range(max_planes):
            if len(remaining) < max(min_count, 3):
                break
            pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[remaining]))
            model, inl = pcd.segment_plane(distance_threshold=dist_rel * diag, ransac_n=3, num_iterations=1000)
            inl = np.asarray(inl, int)
            if len(inl) < min_count:
                break
            n = np.asarray(model[:3], np.float64)
            nn = np.linalg.norm(n)
            n, off = n / nn, -model[3] / nn
            if n @ centre - off < 0:
                n, off = -n, -off
            labels[cand[remaining[inl]]] = len(planes)
            planes.append({"normal": n.tolist(), "offset": float(off), "count": int(len(inl))})
            remaining = np.delete(remaining, inl)
    else:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        pcd.normals = o3d.utility.Vector3dVector(scene_normals(scene)[cand].astype(np.float64))
        boxes = pcd.detect_planar_patches(normal_variance_threshold_deg=60, coplanarity_deg=75, outlier_ratio=0.75,
                                          min_plane_edge_length=0, min_num_points=0,
                                          search_param=o3d.geometry.KDTreeSearchParamKNN(knn=30))
        for ob in boxes[:max_planes]:
            R = np.asarray(ob.R)
            n = R[:, 2]
            c = np.asarray(ob.center)
            if n @ (centre - c) < 0:
                n = -n
            idx = np.asarray(ob.get_point_indices_within_bounding_box(pcd.points), int)
            free = idx[labels[cand[idx]] < 0]
            labels[cand[free]] = len(planes)
            planes.append({"normal": n.tolist(), "offset": float(n @ c), "count": int(len(free))})
    return PlaneResult(planes, labels)


def evaluate(result: PlaneResult, gt_labels: np.ndarray, gt_planes: list[tuple[np.ndarray, float]],
             diag: float, max_angle: float = 10.0, max_off_rel: float = 0.05) -> dict[str, Any]:
    """Match GT planes to found planes (greedy by angle); report found count, worst normal
    error (deg) and the share of GT plane Gaussians labelled with their matched plane."""
    used: set[int] = set()
    match: dict[int, int] = {}
    errs = []
    for g, (gn, go) in enumerate(gt_planes):
        best, best_a = -1, 1e9
        for k, p in enumerate(result.planes):
            if k in used:
                continue
            n = np.asarray(p["normal"])
            s = 1.0 if n @ gn >= 0 else -1.0
            ang = math.degrees(math.acos(min(1.0, abs(float(n @ gn)))))
            if ang <= max_angle and abs(s * p["offset"] - go) <= max_off_rel * diag and ang < best_a:
                best, best_a = k, ang
        if best >= 0:
            used.add(best)
            match[g] = best
            errs.append(best_a)
    on = gt_labels >= 0
    correct = np.array([match.get(int(g), -99) == int(l) for g, l in zip(gt_labels[on], result.labels[on])])
    return {
        "planes_found": len(match), "planes_gt": len(gt_planes), "planes_total": len(result.planes),
        "normal_err_deg": round(max(errs), 3) if len(errs) == len(gt_planes) and errs else None,
        "assigned_pct": round(100.0 * float(correct.mean()) if correct.size else 0.0, 2),
    }

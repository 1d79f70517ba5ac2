"""Renderer correctness: EWA footprint vs analytic, alpha vs WSR, depth, normals, SH, gradients."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.splat.formats import SH_C0, GaussianScene, read_scene
from engines.splat.render import (
    Camera, SplatTensors, WSRConfig, eval_sh, look_at, orbit_camera, render, wsr_weights,
)
from engines.splat.synthetic import plane_patch, rotmat_to_quat

DATA = Path(__file__).resolve().parents[2] / "data" / "splats"


def front_camera(w: int = 64, h: int = 48, f: float = 60.0) -> Camera:
    """Camera at the origin looking down +z (OpenCV): world == camera coordinates."""
    return Camera(torch.eye(4), f, f, w / 2, h / 2, w, h)


def scene_of(means, scales, R, opacity, rgb) -> GaussianScene:  # noqa: ANN001
    n = len(means)
    o = np.clip(np.asarray(opacity, np.float64), 1e-6, 1 - 1e-6)
    return GaussianScene(
        np.asarray(means, np.float32), np.log(np.asarray(scales, np.float32)), rotmat_to_quat(np.asarray(R)),
        np.log(o / (1 - o)).astype(np.float32).reshape(n),
        ((np.asarray(rgb, np.float32) - 0.5) / SH_C0)[:, None, :])


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_single_gaussian_footprint_matches_analytic_ewa() -> None:
    cam = front_camera()
    mu = np.array([0.1, -0.05, 2.0])
    S = np.array([0.06, 0.02, 0.03])
    R = rot_z(30) @ np.array([[1, 0, 0], [0, math.cos(0.4), -math.sin(0.4)], [0, math.sin(0.4), math.cos(0.4)]])
    o = 0.8
    s = scene_of([mu], [S], [R], [o], [[1, 1, 1]])
    with torch.no_grad():
        out = render(s, cam, "alpha")
    got = out["alpha"].numpy()
    # independent numpy EWA: J W Sigma W^T J^T + 0.3 I (W = I here)
    x, y, z = mu
    f = cam.fx
    J = np.array([[f / z, 0, -f * x / z**2], [0, f / z, -f * y / z**2]])
    cov3 = R @ np.diag(S**2) @ R.T
    cov2 = J @ cov3 @ J.T + 0.3 * np.eye(2)
    inv = np.linalg.inv(cov2)
    c2 = np.array([f * x / z + cam.cx, f * y / z + cam.cy])
    ys, xs = np.mgrid[0:cam.height, 0:cam.width] + 0.5
    d = np.stack([xs - c2[0], ys - c2[1]], -1)
    g = o * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    want = np.where(g >= 1 / 255, np.minimum(g, 0.99), 0.0)
    assert want.max() > 0.5 and (want > 0).sum() > 30  # the footprint is non-trivial
    np.testing.assert_allclose(got, want, atol=2e-5)
    # colour = alpha * white over black
    np.testing.assert_allclose(out["rgb"].numpy()[..., 0], want, atol=2e-5)


def test_alpha_and_wsr_agree_on_non_overlapping_splats() -> None:
    cam = front_camera(64, 64)
    rng = np.random.default_rng(0)
    means = [[-0.5, -0.5, 2.0], [0.5, -0.5, 3.0], [-0.5, 0.5, 4.0], [0.5, 0.5, 2.5]]
    means = [[m[0] * m[2] / 2, m[1] * m[2] / 2, m[2]] for m in means]
    cols = rng.uniform(0.1, 0.9, (4, 3))
    s = scene_of(means, [[0.05, 0.05, 0.05]] * 4, [np.eye(3)] * 4, [0.9] * 4, cols)
    with torch.no_grad():
        a = render(s, cam, "alpha")
        for variant in ("dir", "exp", "lc"):
            w = render(s, cam, "wsr", wsr=WSRConfig(variant, sigma=100.0, bg_weight=1e-6))
            cov = a["alpha"].numpy()
            m = cov > 0.05
            assert m.sum() > 100
            # alpha: rgb = c * a; WSR (w_B -> 0): rgb = c. Same colour where covered.
            np.testing.assert_allclose(w["rgb"].numpy()[m], (a["rgb"].numpy() / np.maximum(cov, 1e-9)[..., None])[m],
                                       atol=1e-3)
            assert np.abs(w["rgb"].numpy()[cov == 0]).max() < 1e-6


def test_alpha_is_order_independent_and_occludes() -> None:
    cam = front_camera(32, 32)
    s = scene_of([[0, 0, 2.0], [0, 0, 3.0]], [[0.3, 0.3, 0.01]] * 2, [np.eye(3)] * 2, [0.99, 0.99],
                 [[1, 0, 0], [0, 0, 1]])
    with torch.no_grad():
        a = render(s, cam, "alpha")["rgb"][16, 16].numpy()
        b = render(s.subset(np.array([1, 0])), cam, "alpha")["rgb"][16, 16].numpy()
        w = render(s, cam, "wsr", wsr=WSRConfig("dir", bg_weight=0.0))["rgb"][16, 16].numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a[0] > 0.95 and a[2] < 0.02  # front red hides back blue
    np.testing.assert_allclose(w, [0.5, 0, 0.5], atol=1e-3)  # DIR-WSR: plain average


def test_wsr_weight_variants() -> None:
    d = torch.tensor([1.0, 5.0, 12.0])
    np.testing.assert_allclose(wsr_weights(d, WSRConfig("dir"), None).numpy(), [1, 1, 1])
    np.testing.assert_allclose(wsr_weights(d, WSRConfig("exp", sigma=10.0), None).numpy(), np.exp(-d.numpy() / 10))
    np.testing.assert_allclose(wsr_weights(d, WSRConfig("lc", sigma=10.0), None).numpy(), [0.9, 0.5, 0.0])
    v = torch.tensor([2.0, -1.0, 1.0])
    np.testing.assert_allclose(wsr_weights(d, WSRConfig("lc", sigma=10.0), v).numpy(), [1.8, 0.0, 0.0])


def test_view_dependent_opacity_culls_from_behind() -> None:
    """vdo SH degree 1 with v = C0*v0 - C1*y*v1...: visible from one side only."""
    cam = front_camera(32, 32)
    s = scene_of([[0, 0, 2.0]], [[0.2, 0.2, 0.2]], [np.eye(3)], [0.9], [[1, 1, 1]])
    s.vdo = np.zeros((1, 4), np.float32)
    s.vdo[0, 0] = 1 / SH_C0
    with torch.no_grad():
        on = render(s, cam, "wsr", wsr=WSRConfig("lc", sigma=10.0))["rgb"].sum()
        s.vdo[0, 3] = 5.0  # -C1*x*v3 term ... direction here is +z: x=0 -> no change
        same = render(s, cam, "wsr", wsr=WSRConfig("lc", sigma=10.0))["rgb"].sum()
        s.vdo[0, 2] = -5.0  # +C1*z*v2 with z=1 -> v = 1 - 2.44 < 0: culled
        off = render(s, cam, "wsr", wsr=WSRConfig("lc", sigma=10.0))["rgb"].sum()
    assert float(on) > 10 and abs(float(on) - float(same)) < 1e-3 and float(off) == 0.0


def test_depth_of_a_fronto_parallel_plane() -> None:
    rng = np.random.default_rng(0)
    p = plane_patch((0, 0, 3.0), (1, 0, 0), (0, 1, 0), 4.0, 4.0, 0.08, (0.5, 0.5, 0.5), rng)
    cam = front_camera(64, 64)
    with torch.no_grad():
        for mode in ("alpha", "wsr"):
            out = render(p, cam, mode, ("depth", "normal"))
            m = out["alpha"].numpy() > 0.5
            assert m.mean() > 0.9
            np.testing.assert_allclose(out["depth"].numpy()[m], 3.0, atol=0.02)
            # camera-space normal faces the camera: (0, 0, -1)
            np.testing.assert_allclose(out["normal"].numpy()[m], np.tile([0, 0, -1.0], (m.sum(), 1)), atol=0.02)


def test_depth_under_orbit_camera_matches_ray_plane_distance() -> None:
    rng = np.random.default_rng(1)
    floor = plane_patch((0, 0, 0), (1, 0, 0), (0, 1, 0), 2.5, 2.5, 0.03, (0.5, 0.5, 0.5), rng)
    cam = orbit_camera((0, 0, 0), 30, 40, 4.0, 50, 48, 48, "z")
    with torch.no_grad():
        alpha = render(floor, cam, "alpha", ("depth",))["depth"].numpy()[16:32, 16:32]
        wsr = render(floor, cam, "wsr", ("depth",), wsr=WSRConfig("dir"))["depth"].numpy()[16:32, 16:32]
    R = cam.viewmat[:3, :3].double().numpy()
    eye = cam.center.double().numpy()
    vs, us = np.mgrid[16:32, 16:32] + 0.5
    d = np.stack([(us - cam.cx) / cam.fx, (vs - cam.cy) / cam.fy, np.ones_like(us)], -1) @ R  # world dirs, z_cam=1
    t = -eye[2] / d[..., 2]  # ray/floor hit; camera z of the hit == t since z_cam(d) = 1
    assert abs(t.mean() - 4.0) < 0.05  # the target is at 4 m
    # WSR (normalised average of centre depths) is unbiased on a plane
    assert np.abs(wsr - t).mean() < 0.02
    # sorted alpha favours the first Gaussian hit: the sub-pixel splats are widened by the 0.3 px^2
    # low-pass, so depth is biased toward the camera by up to ~1.5 px of depth gradient (~0.1 m here)
    assert (alpha <= wsr + 1e-3).mean() > 0.95 and np.abs(alpha - t).max() < 0.2


def test_sh_degree_one_changes_colour_with_view() -> None:
    sh = torch.zeros(1, 4, 3)
    sh[0, 2, 0] = 1.0  # z coefficient of red
    up = eval_sh(sh, torch.tensor([[0.0, 0.0, 1.0]]))
    down = eval_sh(sh, torch.tensor([[0.0, 0.0, -1.0]]))
    assert abs(float(up[0, 0]) - 0.4886025119029199) < 1e-6 and abs(float(down[0, 0]) + 0.4886025119029199) < 1e-6


def test_renders_are_differentiable() -> None:
    rng = np.random.default_rng(2)
    p = plane_patch((0, 0, 3.0), (1, 0, 0), (0, 1, 0), 1.0, 1.0, 0.1, (0.5, 0.2, 0.3), rng)
    for mode in ("alpha", "wsr"):
        t = SplatTensors.from_scene(p)
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            getattr(t, name).requires_grad_(True)
        out = render(t, front_camera(32, 32), mode, ("rgb", "depth"))
        (out["rgb"].mean() + out["depth"].mean() * 0.01).backward()
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            g = getattr(t, name).grad
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, (mode, name)


def test_real_sample_renders_in_both_modes() -> None:
    s = read_scene(DATA / "fruit_drops_minimal.ply")
    lo, hi = s.bounds()
    cam = orbit_camera(((lo + hi) / 2).tolist(), 0, 20, float(np.linalg.norm(hi - lo)) * 1.5, 50, 64, 64, "-y")
    with torch.no_grad():
        for mode in ("alpha", "wsr"):
            out = render(s, cam, mode, ("rgb", "depth", "normal"))
            assert out["rgb"].shape == (64, 64, 3) and torch.isfinite(out["rgb"]).all()
            assert float(out["alpha"].mean()) > 0.1 and float(out["rgb"].std()) > 0.02


def test_look_at_puts_target_on_the_optical_axis() -> None:
    V = look_at((3.0, -2.0, 1.0), (0.5, 0.5, 0.2), (0, 0, 1))
    p = V @ torch.tensor([0.5, 0.5, 0.2, 1.0])
    assert abs(float(p[0])) < 1e-5 and abs(float(p[1])) < 1e-5 and float(p[2]) > 0
    assert torch.allclose(V[:3, :3] @ V[:3, :3].T, torch.eye(3), atol=1e-5)


@pytest.mark.parametrize("mode", ["alpha", "wsr"])
def test_empty_view_is_background(mode: str) -> None:
    s = scene_of([[0, 0, -2.0]], [[0.1, 0.1, 0.1]], [np.eye(3)], [0.9], [[1, 0, 0]])  # behind the camera
    with torch.no_grad():
        out = render(s, front_camera(16, 16), mode, ("rgb",), background=(0.2, 0.4, 0.6))
    np.testing.assert_allclose(out["rgb"].numpy().reshape(-1, 3), np.tile([0.2, 0.4, 0.6], (256, 1)), atol=1e-6)


@pytest.mark.gpu
def test_gsplat_alpha_path_matches_reference() -> None:
    """Only where CUDA and gsplat exist: gsplat's alpha render vs the reference renderer."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    pytest.importorskip("gsplat")
    from engines.splat.synthetic import room_scene

    scene = room_scene()
    cam = orbit_camera((0, 0, 0.35), -45, 30, 3.6, 50, 128, 128, "z")
    t = SplatTensors.from_scene(scene, "cuda")
    with torch.no_grad():
        ref = render(t, cam.to("cuda"), "alpha")["rgb"]
        fast = render(t, cam.to("cuda"), "alpha", use_gsplat=True)["rgb"]
    assert (ref - fast).abs().mean() < 2 / 255


def test_images_do_not_depend_on_tile_size_or_pair_culling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact 1/255 footprints + exact tile culling: the tiling is an implementation detail."""
    from engines.splat import render as R

    s = read_scene(DATA / "fruit_drops_minimal.ply")
    lo, hi = s.bounds()
    cam = orbit_camera(((lo + hi) / 2).tolist(), 30, 20, float(np.linalg.norm(hi - lo)) * 1.2, 50, 96, 80, "-y")
    t = SplatTensors.from_scene(s)
    tol = {"alpha": 1e-3, "wsr": 1e-5}  # alpha: fp32 log-transmittance cumsums run over different chunks
    with torch.no_grad():
        ref = {m: render(t, cam, m, tile=8)["rgb"] for m in ("alpha", "wsr")}
        for tile in (4, 16):
            for m in ("alpha", "wsr"):
                assert (render(t, cam, m, tile=tile)["rgb"] - ref[m]).abs().max() < tol[m], (tile, m)
        monkeypatch.setattr(R, "_cull_pairs", lambda gid, *a: torch.ones_like(gid, dtype=torch.bool))
        for m in ("alpha", "wsr"):
            assert (render(t, cam, m, tile=8)["rgb"] - ref[m]).abs().max() < tol[m], m

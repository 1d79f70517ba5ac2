"""Relighting foundations: PQ, HDR files, SH irradiance, the HDR environment world and its
metrics, light-adding shading. (Generation of maps and portrait models are not built yet.)"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.relight import envworld as W
from engines.relight import hdr_io as H
from engines.relight import metrics as M
from engines.relight import pq
from engines.relight import preview as P
from engines.relight import shading as SH
from engines.relight import sphere as S


def test_pq_matches_st2084_anchors_and_round_trips() -> None:
    assert pq.encode(np.array(100.0)) == pytest.approx(0.5080784, abs=1e-6)  # the published anchor
    assert pq.encode(np.array(10000.0)) == pytest.approx(1.0)
    assert pq.encode(np.array(0.0)) < 1e-6 and pq.encode(np.array(1e6)) == pytest.approx(1.0)  # clamped
    x = np.logspace(-3, 4, 2000)
    assert np.abs(pq.decode(pq.encode(x)) / x - 1).max() < 1e-9
    t = torch.logspace(-3, 4, 50, dtype=torch.float64)
    assert torch.allclose(pq.decode(pq.encode(t)), t, rtol=1e-9)
    assert np.all(np.diff(pq.encode(x)) > 0)  # monotonic


def test_radiance_hdr_round_trip_rle_and_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = np.exp(rng.normal(0, 3, (40, 96, 3))).astype(np.float32)
    img[:, 10:60] = [5.0, 2.0, 0.5]  # long runs compress
    H.write_hdr(tmp_path / "a.hdr", img)
    back = H.read_hdr(tmp_path / "a.hdr")
    assert back.shape == img.shape
    assert (np.abs(back - img).max(-1) / img.max(-1)).max() < 0.008  # RGBE's shared-exponent precision
    assert (tmp_path / "a.hdr").stat().st_size < 40 * 96 * 4
    data = (tmp_path / "a.hdr").read_bytes()
    for cut in (len(data) // 2, len(data) - 1):
        (tmp_path / "t.hdr").write_bytes(data[:cut])
        with pytest.raises(H.HDRFormatError, match="truncated"):
            H.read_hdr(tmp_path / "t.hdr")
    (tmp_path / "big.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 99999 +X 99999\n")
    with pytest.raises(H.HDRFormatError, match="outside"):
        H.read_hdr(tmp_path / "big.hdr")
    (tmp_path / "x.hdr").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(H.HDRFormatError, match="not a Radiance"):
        H.read_hdr(tmp_path / "x.hdr")


def test_exr_round_trips_float32_exactly(tmp_path: Path) -> None:
    pytest.importorskip("OpenEXR")
    img = np.exp(np.random.default_rng(1).normal(0, 4, (16, 32, 3))).astype(np.float32)
    H.write_exr(tmp_path / "a.exr", img)
    assert np.array_equal(H.read_exr(tmp_path / "a.exr"), img)
    (tmp_path / "bad.exr").write_bytes(b"not an exr")
    with pytest.raises(H.HDRFormatError):
        H.read_exr(tmp_path / "bad.exr")


def test_solid_angles_and_sh_irradiance_against_brute_force() -> None:
    d, dw = S.directions(64, 128)
    assert dw.sum() == pytest.approx(4 * math.pi, rel=1e-3)
    assert np.allclose(d[32, 64], [0, 0, 1], atol=0.03)  # centre column = in front of the subject
    assert np.allclose(d[32, 96], [1, 0, 0], atol=0.03)  # three quarters = the subject's left (+x)
    const = np.ones((64, 128, 3))
    n = np.eye(3)
    assert np.allclose(S.irradiance_sh(S.project_sh(const), n), math.pi, rtol=1e-3)
    assert np.allclose(S.irradiance_bruteforce(const, n), math.pi, rtol=1e-3)
    smooth = 1 + 0.5 * np.maximum(d[..., 1:2], 0) + 0.3 * d[..., 0:1] * np.array([1.0, 0.5, 0.2])
    rng = np.random.default_rng(0)
    nn = rng.normal(size=(200, 3))
    nn /= np.linalg.norm(nn, axis=1, keepdims=True)
    a, b = S.irradiance_sh(S.project_sh(smooth), nn), S.irradiance_bruteforce(smooth, nn)
    assert np.abs(a - b).max() / b.max() < 0.01  # order 2 captures smooth light almost exactly


def test_world_maps_have_exact_lights_and_captions_that_say_where() -> None:
    env, meta, cap = W.sample(7, "sun", width=128)
    env2, meta2, cap2 = W.sample(7, "sun", width=128)
    assert np.array_equal(env, env2) and cap == cap2  # seeded
    assert env.shape == (64, 128, 3) and env.dtype == np.float32
    assert M.dynamic_range(env) > 1000  # the sun is thousands of times brighter than the sky
    counts = {"left": 0, "right": 0}
    for seed in range(60):
        env, meta, cap = W.sample(seed, width=128)
        lt = meta["lights"][meta["dominant"]]
        if meta["kind"] == "overcast":
            continue
        az = lt["azimuth_deg"]
        if 40 < az < 140 and lt["elevation_deg"] < 65:
            assert "left" in cap, (cap, az)
            counts["left"] += 1
        if -140 < az < -40 and lt["elevation_deg"] < 65:
            assert "right" in cap, (cap, az)
            counts["right"] += 1
    assert counts["left"] and counts["right"]


def test_metrics_recover_the_ground_truth_light() -> None:
    errs, colour, seam, centre = [], [], [], []
    for seed in range(24):
        env, meta, _ = W.sample(seed, width=128)
        if meta["kind"] == "overcast":
            continue
        lt = meta["lights"][meta["dominant"]]
        errs.append(M.angle_deg(M.dominant_direction(env), np.array(lt["direction"])))
        colour.append(M.color_error(env, np.array(lt["direction"]), np.array(lt["rgb"])))
        seam.append(M.seam_error(env))
        centre.append(M.column_jump(env, 64))
    assert np.median(errs) < 2 and max(errs) < 12
    assert np.median(colour) < 0.05
    assert np.mean(seam) < 2 * np.mean(centre) + 1e-3  # the world's maps are seamless
    smooth = W.sample(1, "overcast", width=128)[0]
    seamy = smooth.copy()
    seamy[:, :8] *= 3  # a brightness jump at the wrap
    assert M.seam_error(smooth) < 1e-3 < 0.02 < M.seam_error(seamy)


def test_shading_lights_the_side_facing_the_light_and_follows_yaw() -> None:
    env, meta, _ = W.sample(0, "studio", width=128)
    scene = W.EnvScene("studio", [W.Light("area", S.from_angles(0.0, math.pi / 2), (1, 1, 1), "white", 5000.0, 12.0)],
                       {"zenith": 0.3, "horizon": 0.3})
    coeffs = S.project_sh(W.render(scene, 128))  # a light on the subject's left = the image's right
    img = np.full((8, 8, 3), 128, np.uint8)
    normals = np.zeros((8, 8, 3))
    normals[:, :4] = [-1, 0, 0]  # camera frame: facing image left
    normals[:, 4:] = [1, 0, 0]  # facing image right
    matte = np.ones((8, 8))
    out = SH.shade(img, normals, matte, coeffs).astype(int)
    assert out[:, 4:].mean() > out[:, :4].mean() + 20
    flipped = SH.shade(img, normals, matte, coeffs, yaw=math.pi).astype(int)
    assert flipped[:, :4].mean() > flipped[:, 4:].mean() + 20
    untouched = SH.shade(img, normals, np.zeros((8, 8)), coeffs)
    assert np.abs(untouched.astype(int) - img).max() <= 1  # outside the matte: the input
    ema = SH.EMA(alpha=0.5)
    ema(np.zeros(3))
    assert np.allclose(ema(np.ones(3)), 0.5)


def test_previews() -> None:
    env, _, _ = W.sample(3, "sun", width=128)
    tm = P.tonemap(env)
    assert tm.dtype == np.uint8 and tm.shape == (64, 128, 3)
    ball = P.mirror_ball(env, 64)
    assert ball.shape == (64, 64, 3) and ball[0, 0].sum() == 0  # corners are outside the ball
    assert np.allclose(ball[32, 32], env[32, 64], rtol=0.2)  # the ball's centre reflects the front

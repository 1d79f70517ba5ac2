"""3DGS file formats: round trips, the real sample files, malformed input, fuzzing."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.base import EngineError
from engines.splat.formats import (
    SH_C0, GaussianScene, SceneFormatError, read_scene, validate_scene_file, write_ply, write_splat,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "splats"


def random_scene(n: int, degree: int, seed: int = 0, vdo: bool = False) -> GaussianScene:
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    return GaussianScene(
        rng.normal(size=(n, 3)).astype(np.float32), rng.normal(-3, 0.5, (n, 3)).astype(np.float32),
        rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=n).astype(np.float32),
        rng.normal(size=(n, k, 3)).astype(np.float32),
        rng.normal(size=(n, 4)).astype(np.float32) if vdo else None,
    )


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip_every_sh_degree(tmp_path: Path, degree: int) -> None:
    s = random_scene(37, degree, vdo=degree == 1)
    s.meta = {"wsr_variant": "lc", "wsr_sigma": 12.5}
    s.extra = {"segment": np.arange(37, dtype=np.int32)}
    write_ply(s, tmp_path / "a.ply")
    r = read_scene(tmp_path / "a.ply")
    assert r.sh_degree == degree and len(r) == 37
    for f in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(r, f), getattr(s, f))
    assert (r.vdo is not None) == (degree == 1)
    if r.vdo is not None:
        np.testing.assert_array_equal(r.vdo, s.vdo)
    np.testing.assert_array_equal(r.extra["segment"], s.extra["segment"])
    assert r.meta == {"wsr_variant": "lc", "wsr_sigma": 12.5}


def test_ply_f_rest_is_channel_major(tmp_path: Path) -> None:
    """f_rest_{c*(K-1)+j}: the first 3 f_rest of a degree-1 file are all red coefficients."""
    s = random_scene(2, 1)
    s.sh[:] = 0
    s.sh[:, 1:, 0] = 1.0  # red, all non-DC
    write_ply(s, tmp_path / "a.ply")
    head = (tmp_path / "a.ply").read_bytes()
    body = head[head.index(b"end_header\n") + 11:]
    row = np.frombuffer(body[: 4 * (6 + 3 + 9 + 1 + 3 + 4)], "<f4")
    np.testing.assert_array_equal(row[9:18], [1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_splat_round_trip_within_quantisation(tmp_path: Path) -> None:
    s = random_scene(50, 0)
    s.sh[:, 0] = np.random.default_rng(1).uniform(-1.5, 1.5, (50, 3))
    write_splat(s, tmp_path / "a.splat")
    assert (tmp_path / "a.splat").stat().st_size == 50 * 32
    r = read_scene(tmp_path / "a.splat")
    order = np.argsort(-(np.exp(s.log_scales.sum(1)) * s.opacities), kind="stable")
    np.testing.assert_allclose(r.means, s.means[order], atol=1e-6)
    np.testing.assert_allclose(r.log_scales, s.log_scales[order], atol=1e-5)
    np.testing.assert_allclose(r.dc_rgb(), s.dc_rgb()[order], atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(r.opacities, s.opacities[order], atol=1 / 255 + 1e-4)
    q0 = s.quats[order] / np.linalg.norm(s.quats[order], axis=1, keepdims=True)
    dots = np.abs((q0 * r.quats).sum(1))
    assert dots.min() > 0.995


def test_real_inria_sample_sh3_with_extra_property() -> None:
    s = read_scene(DATA / "fruit_drops_minimal.ply")
    assert len(s) == 4721 and s.sh_degree == 3
    assert list(s.extra) == ["transform"]
    assert np.isfinite(s.means).all()
    summary = validate_scene_file(DATA / "fruit_drops_minimal.ply")
    assert summary["n_gaussians"] == 4721 and summary["sh_degree"] == 3
    assert summary["extra_properties"] == ["transform"]


def test_real_splat_sample() -> None:
    s = read_scene(DATA / "minimal.splat")
    assert len(s) == 4
    np.testing.assert_allclose(s.means, [[-1, 0, -1], [0, 0, -1], [-1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(np.exp(s.log_scales), 0.1, rtol=1e-5)
    np.testing.assert_allclose(s.dc_rgb()[0], [85 / 255, 85 / 255, 128 / 255], atol=1e-6)
    np.testing.assert_allclose(s.opacities, 230 / 255, atol=1e-4)
    # bytes (128,128,128,255) decode to w=x=y=0, z=1 under w-first (see methods.md §10)
    np.testing.assert_allclose(s.quats, np.tile([0, 0, 0, 1.0], (4, 1)), atol=1e-2)


def _compressed_ply(path: Path, pos: np.ndarray, rgba: np.ndarray, sh: np.ndarray | None = None) -> None:
    """A minimal PlayCanvas compressed PLY (one chunk) built by hand; ``sh``: [n, 9] uint8 f_rest."""
    n = len(pos)
    lo, hi = pos.min(0), pos.max(0)
    t = (pos - lo) / (hi - lo)
    pp = (np.round(t[:, 0] * 2047).astype(np.uint32) << 21) | (np.round(t[:, 1] * 1023).astype(np.uint32) << 11) | \
        np.round(t[:, 2] * 2047).astype(np.uint32)
    # identity rotation: largest = slot 0 (rot_0 = w), the other three 0 -> ~0.5 in unorm
    half = 511
    pr = (np.uint32(0) << 30) | (half << 20) | (half << 10) | half
    ps = np.full(n, (2047 << 21) | (511 << 11) | 0, np.uint32)  # scale lerp: x=max, y~mid, z=min
    c = np.round(rgba * 255).astype(np.uint32)
    pc = (c[:, 0] << 24) | (c[:, 1] << 16) | (c[:, 2] << 8) | c[:, 3]
    chunk_names = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z", "min_scale_x", "min_scale_y", "min_scale_z",
                   "max_scale_x", "max_scale_y", "max_scale_z"]
    chunk = np.array([*lo, *hi, -5, -5, -5, -3, -3, -3], "<f4")
    head = "ply\nformat binary_little_endian 1.0\nelement chunk 1\n" + "".join(
        f"property float {c}\n" for c in chunk_names) + "element vertex %d\n" % n + "".join(
        f"property uint {c}\n" for c in ("packed_position", "packed_rotation", "packed_scale", "packed_color"))
    if sh is not None:
        head += f"element sh {n}\n" + "".join(f"property uchar f_rest_{i}\n" for i in range(sh.shape[1]))
    head += "end_header\n"
    v = np.stack([pp, np.full(n, pr, np.uint32), ps, pc], 1).astype("<u4")
    tail = b"" if sh is None else sh.astype(np.uint8).tobytes()
    path.write_bytes(head.encode() + chunk.tobytes() + v.tobytes() + tail)


def test_playcanvas_compressed_ply(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pos = rng.uniform(-1, 1, (20, 3))
    rgba = rng.uniform(0.1, 0.9, (20, 4))
    _compressed_ply(tmp_path / "c.ply", pos, rgba)
    s = read_scene(tmp_path / "c.ply")
    assert len(s) == 20
    np.testing.assert_allclose(s.means, pos, atol=2.0 / 1023)
    np.testing.assert_allclose(s.dc_rgb(), rgba[:, :3], atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(s.opacities, rgba[:, 3], atol=1 / 255 + 1e-4)
    q = s.quats / np.linalg.norm(s.quats, axis=1, keepdims=True)
    assert np.abs(q[:, 0]).min() > 0.999  # identity
    np.testing.assert_allclose(s.log_scales[:, 0], -3, atol=1e-5)
    np.testing.assert_allclose(s.log_scales[:, 2], -5, atol=1e-5)


def test_playcanvas_compressed_ply_with_sh(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (6, 9))
    _compressed_ply(tmp_path / "c.ply", rng.uniform(-1, 1, (6, 3)), rng.uniform(0.1, 0.9, (6, 4)), q)
    s = read_scene(tmp_path / "c.ply")
    assert s.sh_degree == 1
    want = (q / 256.0 - 0.5) * 8.0  # channel-major f_rest_{c*3+j}
    np.testing.assert_allclose(s.sh[:, 1:, :], want.reshape(6, 3, 3).transpose(0, 2, 1), atol=1e-6)


# ----------------------------------------------------------------------------- malformed input

def _ply_bytes(props: list[str], rows: np.ndarray, count: int | None = None) -> bytes:
    head = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(rows) if count is None else count}\n"
    head += "".join(f"property float {p}\n" for p in props) + "end_header\n"
    return head.encode() + rows.astype("<f4").tobytes()


BASE = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
        "rot_0", "rot_1", "rot_2", "rot_3"]


def _good_rows(n: int = 5) -> np.ndarray:
    r = np.zeros((n, len(BASE)), np.float32)
    r[:, 7:10] = -3
    r[:, 10] = 1
    return r


@pytest.mark.parametrize("case,needle", [
    ("missing", "lacks Gaussian properties"),
    ("rest7", "f_rest"),
    ("truncated", "truncated"),
    ("nan", "NaN"),
    ("inf", "NaN/inf"),
    ("mesh", "list properties"),
    ("points", "plain mesh"),
    ("cap", "cap"),
    ("magic", "not a PLY"),
    ("zeroquat", "zero-length"),
    ("hugepos", "absurd positions"),
    ("header", "end_header"),
])
def test_malformed_ply_errors(tmp_path: Path, case: str, needle: str) -> None:
    p = tmp_path / "bad.ply"
    rows = _good_rows()
    if case == "missing":
        p.write_bytes(_ply_bytes(BASE[:-1], rows[:, :-1]))
    elif case == "rest7":
        props = BASE + [f"f_rest_{i}" for i in range(7)]
        p.write_bytes(_ply_bytes(props, np.zeros((5, len(props)))))
    elif case == "truncated":
        p.write_bytes(_ply_bytes(BASE, rows)[:-10])
    elif case in ("nan", "inf"):
        rows[2, 0] = np.nan if case == "nan" else np.inf
        p.write_bytes(_ply_bytes(BASE, rows))
    elif case == "mesh":
        from engines.splat.planes import write_plane_mesh

        write_plane_mesh([{"center": [0, 0, 0], "u": [1, 0, 0], "v": [0, 1, 0], "extent": [1, 1]}], p)
        # the mesh has vertex (x,y,z,rgb) then faces: a plain mesh is rejected either way
        needle = "plain mesh"
    elif case == "points":
        p.write_bytes(_ply_bytes(["x", "y", "z"], np.zeros((4, 3))))
    elif case == "cap":
        p.write_bytes(_ply_bytes(BASE, rows, count=10**9))
    elif case == "magic":
        p.write_bytes(b"plx\n" + _ply_bytes(BASE, rows)[4:])
    elif case == "zeroquat":
        rows[1, 10:14] = 0
        p.write_bytes(_ply_bytes(BASE, rows))
    elif case == "hugepos":
        rows[1, 0] = 3e38
        p.write_bytes(_ply_bytes(BASE, rows))
    elif case == "header":
        p.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n")
    with pytest.raises(SceneFormatError, match=needle) as ei:
        read_scene(p, max_gaussians=1000)
    assert isinstance(ei.value, EngineError)
    assert "\n" not in str(ei.value)


def test_mesh_with_faces_first_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "m.ply"
    p.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement face 1\nproperty list uchar int vertex_indices\n"
                  b"element vertex 3\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
                  + b"\x03" + struct.pack("<3i", 0, 1, 2) + np.zeros(9, "<f4").tobytes())
    with pytest.raises(SceneFormatError, match="list properties"):
        read_scene(p)


def test_cap_applies_to_splat_and_is_configurable(tmp_path: Path) -> None:
    write_splat(random_scene(10, 0), tmp_path / "a.splat")
    assert len(read_scene(tmp_path / "a.splat", max_gaussians=10)) == 10
    with pytest.raises(SceneFormatError, match="cap"):
        read_scene(tmp_path / "a.splat", max_gaussians=9)
    with pytest.raises(SceneFormatError, match="cap"):
        validate_scene_file(tmp_path / "a.splat", max_gaussians=9)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_bad_splat_sizes(tmp_path: Path, size: int) -> None:
    p = tmp_path / "a.splat"
    p.write_bytes(b"\x01" * size)
    with pytest.raises(SceneFormatError, match="multiple of 32"):
        read_scene(p)


def test_splat_with_nan(tmp_path: Path) -> None:
    raw = bytearray((DATA / "minimal.splat").read_bytes())
    raw[0:4] = struct.pack("<f", float("nan"))
    (tmp_path / "a.splat").write_bytes(bytes(raw))
    with pytest.raises(SceneFormatError, match="NaN"):
        read_scene(tmp_path / "a.splat")


def test_big_endian_and_ascii_ply_read_by_name(tmp_path: Path) -> None:
    rows = _good_rows(3)
    rows[:, 0] = [1, 2, 3]
    rows[:, 3] = (0.75 - 0.5) / SH_C0
    order = list(reversed(range(len(BASE))))  # properties in a different order
    props = [BASE[i] for i in order]
    head = "ply\nformat binary_big_endian 1.0\nelement vertex 3\n" + "".join(f"property float {p}\n" for p in props)
    (tmp_path / "be.ply").write_bytes((head + "end_header\n").encode() + rows[:, order].astype(">f4").tobytes())
    s = read_scene(tmp_path / "be.ply")
    np.testing.assert_allclose(s.means[:, 0], [1, 2, 3])
    np.testing.assert_allclose(s.dc_rgb()[:, 0], 0.75, atol=1e-6)
    head_a = head.replace("binary_big_endian", "ascii") + "end_header\n"
    body = "\n".join(" ".join(str(float(v)) for v in r) for r in rows[:, order]) + "\n"
    (tmp_path / "a.ply").write_text(head_a + body)
    s2 = read_scene(tmp_path / "a.ply")
    np.testing.assert_allclose(s2.means, s.means)


# ----------------------------------------------------------------------------- fuzzing

def _valid_small_ply() -> bytes:
    s = random_scene(3, 1, seed=3)
    import tempfile

    with tempfile.TemporaryDirectory() as td:
        write_ply(s, Path(td) / "a.ply")
        return (Path(td) / "a.ply").read_bytes()


VALID = _valid_small_ply()
HEADER_END = VALID.index(b"end_header") + 11


def _check_reader(tmp: Path, blob: bytes, suffix: str) -> None:
    p = tmp / f"f{suffix}"
    p.write_bytes(blob)
    try:
        s = read_scene(p, max_gaussians=10_000)
    except SceneFormatError as e:
        assert str(e) and "\n" not in str(e)
        return
    # accepted: must be internally consistent and finite
    n = len(s)
    assert s.means.shape == (n, 3) and s.quats.shape == (n, 4) and s.sh.shape[0] == n
    assert np.isfinite(s.means).all() and np.isfinite(s.sh).all() and np.isfinite(s.opacity_logits).all()
    if n:  # and it renders without NaN
        import torch

        from engines.splat.render import orbit_camera, render

        with torch.no_grad():
            out = render(s, orbit_camera((0.0, 0.0, 0.0), 0, 0, 3.0, 60, 16, 16, "z"), "alpha")
        assert torch.isfinite(out["rgb"]).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutated_ply(tmp_path: Path, data: st.DataObject) -> None:
    blob = bytearray(VALID)
    op = data.draw(st.sampled_from(["flip", "truncate", "header", "splice"]))
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif op == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif op == "header":
        i = data.draw(st.integers(0, HEADER_END - 1))
        blob[i:i + 1] = data.draw(st.binary(min_size=0, max_size=6))
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=40))
    _check_reader(tmp_path, bytes(blob), ".ply")


VALID_SPLAT = (DATA / "minimal.splat").read_bytes()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(VALID_SPLAT) - 1), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(-40, 40))
def test_fuzz_mutated_splat(tmp_path: Path, flips: list[tuple[int, int]], resize: int) -> None:
    blob = bytearray(VALID_SPLAT)
    for i, v in flips:
        blob[i] = v
    blob = blob[:len(blob) + resize] if resize < 0 else blob + bytes(resize)
    _check_reader(tmp_path, bytes(blob), ".splat")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=200), st.sampled_from([".ply", ".splat", ".bin"]))
def test_fuzz_random_bytes(tmp_path: Path, blob: bytes, suffix: str) -> None:
    _check_reader(tmp_path, blob, suffix)
    _check_reader(tmp_path, b"ply\n" + blob, ".ply")

"""Portrait geometry and the relight engine on real photos (scikit-image's public-domain
astronaut portrait and non-portrait photos), plus the environment-map upload checks."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos (pip install scikit-image)")

from engines.base import EngineContext, EngineError  # noqa: E402
from engines.relight import hdr_io  # noqa: E402


@pytest.fixture(scope="module")
def models():  # noqa: ANN201
    from engines.relight.portrait import PortraitModels

    return PortraitModels()


def test_shipped_models_and_licence_are_present() -> None:
    from engines.relight.portrait import FILES, WEIGHTS

    for f in FILES.values():
        assert (WEIGHTS / f).stat().st_size > 100_000, f
    assert "Apache License" in (WEIGHTS / "LICENSE").read_text()
    assert "sha256" in (WEIGHTS / "SOURCE.md").read_text()


def test_astronaut_matte_face_and_normals(models) -> None:  # noqa: ANN001
    img = skdata.astronaut()  # [512, 512, 3]: a woman in an orange suit, face at the upper middle-left
    g = models.geometry(img)
    m = g.matte
    assert m[250:400, 100:300].mean() > 0.9  # the suit
    assert m[120:140, 200:250].mean() > 0.9  # the face
    assert m[20:60, 420:500].mean() < 0.1  # the wall by the shuttle
    assert g.face is not None and g.face.score > 0.7
    x0, y0, x1, y1 = g.face.box
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 200 and 50 < x1 - x0 < 160
    lm = g.face.landmarks
    assert lm.shape == (468, 3)
    # the nose tip is the landmark closest to the camera; the face's outline is farther back
    assert lm[:, 2].argmin() in (1, 4, 5, 195, 197) or lm[1, 2] < np.percentile(lm[:, 2], 5)
    n = g.normals
    assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-3)
    tip = lm[lm[:, 2].argmin()]  # the closest point of the face: the nose tip
    cy, cx = int(tip[1]), int(tip[0])
    assert n[cy - 1:cy + 2, cx - 1:cx + 2, 2].mean() < -0.85  # it faces the camera
    assert n[cy - 12:cy - 8, cx - 1:cx + 2, 1].mean() < -0.3  # the bridge above it slopes up (−y: up)
    assert n[cy + 4:cy + 8, cx - 1:cx + 2, 1].mean() > 0.5  # the underside looks down
    inside = (np.abs(n[..., 2]) > 0) & (g.matte > 0.5)
    ys, xs = np.mgrid[:512, :512]
    face = inside & (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
    assert np.median(n[face][:, 2]) < -0.6 and abs(n[face][:, 0].mean()) < 0.15  # a frontal face: toward the camera, symmetric
    left = lm[234].astype(int)  # the outline on the image's left side
    right = lm[454].astype(int)
    assert n[left[1], left[0] + 2, 0] < -0.2 and n[right[1], right[0] - 2, 0] > 0.2  # cheeks turn outward
    # body outline turns sideways, its inside faces the camera
    assert n[350, 60:100, 2].mean() < -0.8 or n[350, 200:260, 2].mean() < -0.9


@pytest.mark.parametrize("name", ["rocket", "coffee"])
def test_photos_without_people(models, name: str) -> None:  # noqa: ANN001
    img = getattr(skdata, name)()
    g = models.geometry(img)
    assert g.face is None
    assert g.matte.mean() < 0.3


def _relight(tmp_path: Path, src: Path, **kw) -> tuple[np.ndarray, dict]:  # noqa: ANN003
    from engines.relight.engine import RelightEngine
    from engines.relight.params import RelightParams

    work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    res = RelightEngine().run(RelightParams(portrait=str(src), **kw), EngineContext(work_dir=work))
    out = res.artifacts[0]
    if out.kind == "image":
        return np.asarray(Image.open(out.path).convert("RGB")), res.meta
    return np.zeros(1), res.meta


def test_relight_lights_the_side_the_light_comes_from(tmp_path: Path) -> None:
    src = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(src)
    base = np.asarray(Image.open(src), np.float32)
    gains = {}
    for env, yaw in (("studio-blue-right", 0.0), ("studio-blue-right", 180.0), ("sunset-left", 0.0)):
        out, meta = _relight(tmp_path, src, builtin=env, yaw=yaw, strength=1.0)
        assert out.shape == base.shape and meta["face_found"]
        gain = out.astype(np.float32).mean(-1) - base.mean(-1)  # [H, W]
        face = gain[90:170, 180:280]
        gains[(env, yaw)] = (face[:, :50].mean(), face[:, 50:].mean())  # image left half, right half of the face
        assert np.abs(out[20:60, 420:500].astype(np.float32) - base[20:60, 420:500]).mean() < 2  # background untouched
    # a light on the subject's right (the image's left) brightens the image-left half more; turned 180°, the other
    l0, r0 = gains[("studio-blue-right", 0.0)]
    l1, r1 = gains[("studio-blue-right", 180.0)]
    assert l0 > r0 and r1 > l1
    l2, r2 = gains[("sunset-left", 0.0)]
    assert r2 > l2


def test_relight_video_streams_and_keeps_length(tmp_path: Path) -> None:
    from engines.video import io as vio

    img = skdata.astronaut()
    clip = tmp_path / "clip.mp4"
    w = vio.Writer(clip, (128, 128), 12.0)
    for i in range(10):
        w.write(np.asarray(Image.fromarray(img[i * 4:i * 4 + 448, i * 4:i * 4 + 448]).resize((128, 128))))
    w.close()
    _, meta = _relight(tmp_path, clip, builtin="window-front-left", temporal_smoothing=0.5)
    assert meta["frames"] == 10 and meta["size"] == [128, 128] and meta["relight_fps"] > 0


def test_relight_bad_environment_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()[::4, ::4]).save(src)
    bad = tmp_path / "bad.hdr"
    bad.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 64 +X 128\n" + b"\x02\x02\x00\x80" + b"\x01" * 10)
    with pytest.raises(EngineError, match="environment map"):
        _relight(tmp_path, src, environment=str(bad))
    from pydantic import ValidationError

    from engines.relight.params import RelightParams

    for kw in ({"builtin": "nope"}, {"yaw": 400}, {"strength": -1}, {"mode": "x"}):
        with pytest.raises(ValidationError):
            RelightParams(portrait="x", **kw)


def test_uploaded_environment_maps_are_checked(tmp_path: Path) -> None:
    from studio.errors import UploadRejected
    from studio.uploads import sniff

    env = (np.random.default_rng(0).random((32, 64, 3)) * 50).astype(np.float32)
    hdr_io.write_hdr(tmp_path / "ok.hdr", env)
    hdr_io.write_exr(tmp_path / "ok.exr", env)
    for f, fmt in (("ok.hdr", "hdr"), ("ok.exr", "exr")):
        s = sniff(tmp_path / f, f, max_image_pixels=10_000, max_archive_bytes=1 << 20)
        assert s.kind == "hdr" and (s.width, s.height) == (64, 32) and s.meta["format"] == fmt
    huge = tmp_path / "huge.hdr"  # a header claiming 16384² pixels: refused before any allocation
    huge.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 16384 +X 16384\n" + b"\0" * 100)
    trunc = tmp_path / "trunc.hdr"
    trunc.write_bytes((tmp_path / "ok.hdr").read_bytes()[:200])
    exr = (tmp_path / "ok.exr").read_bytes()
    i = exr.index(b"dataWindow\0box2i\0") + len(b"dataWindow\0box2i\0") + 4
    big_exr = tmp_path / "big.exr"
    big_exr.write_bytes(exr[:i] + struct.pack("<4i", 0, 0, 9999, 9999) + exr[i + 16:])
    garbage_exr = tmp_path / "garbage.exr"
    garbage_exr.write_bytes(hdr_io.EXR_MAGIC + b"\x02\0\0\0" + b"\xff" * 300)
    for f, status in (("huge.hdr", 413), ("trunc.hdr", 400), ("big.exr", 413), ("garbage.exr", 400)):
        with pytest.raises(UploadRejected) as e:
            sniff(tmp_path / f, f, max_image_pixels=10_000, max_archive_bytes=1 << 20)
        assert e.value.status_code == status, (f, str(e.value))
        assert str(tmp_path) not in str(e.value)

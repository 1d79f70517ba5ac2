"""Relighting through the Studio's services (as the Relight tab and the REST API drive it): an
uploaded .hdr environment becomes an ``hdr`` asset and lights a portrait job; a clip is relit
with its sound; a cancelled clip leaves nothing behind; bad environment files are refused at
upload and change nothing."""
from __future__ import annotations

import io
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.errors import StudioError
from studio.wiring import build_runner

skdata = pytest.importorskip("skimage.data")


def _png(arr: np.ndarray) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    buf.seek(0)
    return buf


def test_uploaded_environment_lights_a_portrait_job(services, tmp_path: Path) -> None:  # noqa: ANN001
    from engines.relight import envworld, hdr_io

    env, meta, _ = envworld.sample(3, "studio", width=128)
    hdr_io.write_hdr(tmp_path / "studio.hdr", env)
    with open(tmp_path / "studio.hdr", "rb") as f:
        env_asset = services.assets.upload(f, "studio.hdr")
    assert env_asset.kind == "hdr" and (env_asset.width, env_asset.height) == (128, 64)
    portrait = services.assets.upload(_png(skdata.astronaut()[::2, ::2]), "astronaut.png")
    runner = build_runner(services)
    job = services.jobs.submit("relight", {"portrait": portrait.id, "environment": env_asset.id, "strength": 1.2},
                               origin="api", enqueue=False)
    assert runner.execute(job.id) == "completed", services.jobs.get(job.id).error
    done = services.jobs.get(job.id)
    roles = {a.meta.get("role"): a for a in done.assets}
    assert {"matte", "normals"} <= set(roles) and done.assets[0].kind == "image"
    assert done.result_meta["environment"] == "upload" and done.result_meta["face_found"] is True
    assert np.asarray(done.result_meta["sh"]).shape == (9, 3)
    relit = np.asarray(Image.open(services.assets.path(done.assets[0].id)).convert("RGB"), np.float32)
    base = skdata.astronaut()[::2, ::2].astype(np.float32)
    assert relit.shape == base.shape and relit[100:200, 50:150].mean() > base[100:200, 50:150].mean() + 3


def test_bad_environment_files_are_refused_at_upload(services) -> None:  # noqa: ANN001
    before = len(services.assets.list(limit=1000))
    for name, data in (("x.hdr", b"#?RADIANCE\n\n-Y 99999 +X 99999\n" + b"\0" * 64),
                       ("y.hdr", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4 +X 8\n" + b"\x01" * 20),
                       ("z.exr", b"\x76\x2f\x31\x01" + b"\x02\0\0\0" + b"junk\0" * 50)):
        with pytest.raises(StudioError):
            services.assets.upload(io.BytesIO(data), name)
    assert len(services.assets.list(limit=1000)) == before


def test_a_clip_is_relit_with_sound_and_a_cancel_leaves_nothing(services, tmp_path: Path) -> None:  # noqa: ANN001
    from engines.video import io as vio
    from engines.video.world import write_clip

    img = skdata.astronaut()
    frames = np.stack([np.asarray(Image.fromarray(img[i * 6:i * 6 + 400, i * 4:i * 4 + 400]).resize((96, 96)))
                       for i in range(12)])
    silent = write_clip(frames, tmp_path / "silent.mp4", fps=12.0, upscale=1)
    clip = tmp_path / "clip.mp4"
    subprocess.run([vio.ffmpeg(), "-hide_banner", "-nostdin", "-y", "-i", str(silent), "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", "-c:v", "copy", "-c:a", "aac", "-shortest", str(clip)],
                   capture_output=True, check=True, timeout=120)
    assert vio.probe(clip).has_audio  # a tone: it must survive the relight
    with open(clip, "rb") as f:
        asset = services.assets.upload(f, "clip.mp4")
    runner = build_runner(services)
    job = services.jobs.submit("relight", {"portrait": asset.id, "builtin": "window-front-left"}, origin="api",
                               enqueue=False)
    assert runner.execute(job.id) == "completed", services.jobs.get(job.id).error
    done = services.jobs.get(job.id)
    video = done.assets[0]
    assert video.kind == "video" and done.result_meta["frames"] == 12 and done.result_meta["audio"] is True
    info = vio.probe(services.assets.path(video.id))
    assert info.frames == 12 and info.has_audio and (info.width, info.height) == (96, 96)
    # cancelled half-way through a longer clip: no video, no partial file, no new asset
    long = write_clip(np.concatenate([frames] * 20), tmp_path / "long.mp4", fps=12.0, upscale=1)
    with open(long, "rb") as f:
        long_asset = services.assets.upload(f, "long.mp4")
    n_assets = len(services.assets.list(limit=1000))
    job2 = services.jobs.submit("relight", {"portrait": long_asset.id, "builtin": "sunset-left"}, origin="api",
                                enqueue=False)
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(runner.execute(job2.id)))
    t.start()
    t0 = time.time()
    while services.jobs.get(job2.id).progress < 0.05 and time.time() - t0 < 60:
        time.sleep(0.05)
    assert services.jobs.get(job2.id).status == "running"
    services.jobs.cancel(job2.id)
    t.join(60)
    assert out == ["canceled"] and services.jobs.get(job2.id).status == "canceled"
    assert len(services.assets.list(limit=1000)) == n_assets


def test_an_hdri_job_places_the_light_where_asked_and_refuses_bad_angles(services) -> None:  # noqa: ANN001
    """The words put the light (and the job says where); explicit angles override them; angles
    out of range are refused before anything is queued."""
    runner = build_runner(services)
    jobs_before = len(services.jobs.list(limit=1000))
    for bad in ({"light_azimuth": 500}, {"light_elevation": -45}, {"light_azimuth": "left"}):
        with pytest.raises(StudioError):
            services.jobs.submit("hdri", {"prompt": "noon sun", **bad}, origin="api", enqueue=False)
    assert len(services.jobs.list(limit=1000)) == jobs_before
    words = services.jobs.submit("hdri", {"prompt": "golden hour, orange sun low on my right", "steps": 10,
                                          "width": 128}, origin="api", enqueue=False)
    asked = services.jobs.submit("hdri", {"prompt": "golden hour, orange sun low on my right", "steps": 10,
                                          "width": 128, "light_azimuth": 150.0, "light_elevation": 10.0},
                                 origin="api", enqueue=False)
    for j in (words, asked):
        assert runner.execute(j.id) == "completed", services.jobs.get(j.id).error
    w, a = services.jobs.get(words.id), services.jobs.get(asked.id)
    assert w.result_meta["light_placed"]["from"] == "prompt"
    assert -130 <= w.result_meta["light_placed"]["azimuth_deg"] <= -50  # "on my right" = negative azimuth
    assert a.result_meta["light_placed"] == {"azimuth_deg": 150.0, "elevation_deg": 10.0, "from": "params"}

    def found(job) -> float:  # noqa: ANN001 - the dominant light the map itself shows
        pano = next(x for x in job.assets if x.meta.get("role") == "panorama_preview")
        return float(pano.meta["light"]["azimuth_deg"])

    assert abs(found(w) - w.result_meta["light_placed"]["azimuth_deg"]) < 30
    assert abs((found(a) - 150 + 180) % 360 - 180) < 30

"""video-edit on a tiny real InstructPix2Pix pipeline: streaming I/O with audio, world clips and
their metrics, cross-frame attention, cancel, and bad inputs refused with a reason."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.base import Cancelled, EngineContext, EngineError, ModelSpec
from engines.video import io as vio
from engines.video import metrics as VM
from engines.video import world as VW
from engines.video.attention import KeyFrameStore, install, uninstall
from engines.video.engine import VideoEditEngine
from engines.video.params import VideoEditParams


@pytest.fixture(scope="module")
def tiny_ip2p(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline, UNet2DConditionModel

    dest = tmp_path_factory.mktemp("models") / "tiny-ip2p"
    base = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    cfg = dict(base.unet.config)
    cfg["in_channels"] = 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg)
    pipe = StableDiffusionInstructPix2PixPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                                  unet=unet, scheduler=base.scheduler, safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(dest, safe_serialization=True)
    return dest


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    out = d / "src.mp4"
    subprocess.run([vio.ffmpeg(), "-y", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=12:duration=1", "-f", "lavfi",
                    "-i", "sine=frequency=440:duration=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-shortest", str(out)], capture_output=True, check=True)
    return out


def _ctx(tmp: Path, cancel_after: int | None = None, events: list | None = None) -> EngineContext:
    (tmp / "work").mkdir(parents=True, exist_ok=True)
    seen = events if events is not None else []
    cache: dict = {}

    def load(ref: str, key: str, build):  # noqa: ANN001, ANN202
        if (ref, key) not in cache:
            cache[(ref, key)] = build(ModelSpec(ref, "diffusers", Path(ref)))
        return cache[(ref, key)]

    return EngineContext(work_dir=tmp / "work", load_model=load, resolve_input=Path, report=seen.append,
                         is_cancelled=lambda: cancel_after is not None and
                         len([e for e in seen if e.message.startswith("frame")]) >= cancel_after)


def test_edits_a_clip_keeps_audio_and_frame_rate(tiny_ip2p: Path, clip_with_audio: Path, tmp_path: Path) -> None:
    events: list = []
    p = VideoEditParams(video=str(clip_with_audio), instruction="make it yellow", model=str(tiny_ip2p), steps=2,
                        resolution=32, max_frames=6)
    res = VideoEditEngine().run(p, _ctx(tmp_path, events=events))
    video = next(a for a in res.artifacts if a.kind == "video")
    info = vio.probe(video.path)
    assert info.has_audio and info.fps == pytest.approx(12.0, rel=0.05)
    assert res.meta["frames"] == 6 and (info.width, info.height) == (48, 32)
    assert any(a.kind == "image" for a in res.artifacts)
    assert [e.step for e in events if e.message.startswith("frame")][-1] == 6


def test_cross_frame_attention_reads_the_key_frame(tiny_ip2p: Path) -> None:
    """A frame edited while attending to a different key frame comes out different from the
    same frame edited alone, and with itself as the key frame the output is unchanged up to
    float error (attending to a copy of its own tokens is the same softmax)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_ip2p / "unet").eval()
    g = torch.Generator().manual_seed(0)
    x, k = torch.randn(1, 8, 16, 16, generator=g), torch.randn(1, 8, 16, 16, generator=g)
    ehs = torch.randn(1, 4, 32, generator=g)
    t = torch.tensor([10])
    with torch.no_grad():
        plain = unet(x, t, ehs).sample
        store = KeyFrameStore()
        old = install(unet, store)
        store.mode = "record"
        unet(x, t, ehs)
        assert store.tokens and store.nbytes() > 0
        store.mode = "use"
        same = unet(x, t, ehs).sample
        store.reset()
        store.mode = "record"
        unet(k, t, ehs)
        store.mode = "use"
        other = unet(x, t, ehs).sample
        uninstall(unet, old)
        again = unet(x, t, ehs).sample
    assert torch.allclose(same, plain, atol=1e-4)
    assert not torch.allclose(other, plain, atol=1e-3)
    assert torch.equal(again, plain)


def test_cancel_discards_the_partial_result(tiny_ip2p: Path, clip_with_audio: Path, tmp_path: Path) -> None:
    p = VideoEditParams(video=str(clip_with_audio), instruction="x", model=str(tiny_ip2p), steps=1, resolution=32)
    with pytest.raises(Cancelled):
        VideoEditEngine().run(p, _ctx(tmp_path, cancel_after=2))
    assert not list((tmp_path / "work").glob("*.mp4"))


def test_bad_inputs_are_refused_with_a_reason(tiny_ip2p: Path, tiny_model: Path, clip_with_audio: Path,
                                              tmp_path: Path) -> None:
    cases = {"text.mp4": b"not a video at all", "empty.mp4": b"",
             "trunc.mp4": clip_with_audio.read_bytes()[: clip_with_audio.stat().st_size // 3]}
    for name, data in cases.items():
        f = tmp_path / name
        f.write_bytes(data)
        with pytest.raises(EngineError, match="not a video|empty|cannot decode|no decodable"):
            VideoEditEngine().run(VideoEditParams(video=str(f), instruction="x", model=str(tiny_ip2p), steps=1),
                                  _ctx(tmp_path / name.replace(".", "_")))
    big = tmp_path / "big.mp4"
    subprocess.run([vio.ffmpeg(), "-y", "-f", "lavfi", "-i", "color=c=red:size=640x480:rate=1:duration=1", "-c:v",
                    "libx264", "-pix_fmt", "yuv420p", str(big)], capture_output=True, check=True)
    ctx = _ctx(tmp_path / "big")
    ctx.extras["video_max_side"] = 320
    with pytest.raises(EngineError, match="larger than the 320px limit"):
        VideoEditEngine().run(VideoEditParams(video=str(big), instruction="x", model=str(tiny_ip2p), steps=1), ctx)
    with pytest.raises(EngineError, match="not an InstructPix2Pix model"):  # a text-to-image model
        VideoEditEngine().run(VideoEditParams(video=str(clip_with_audio), instruction="x", model=str(tiny_model),
                                              steps=1), _ctx(tmp_path / "t2i"))


def test_world_clips_have_exact_edits_and_the_metrics_see_flicker(tmp_path: Path) -> None:
    c = VW.world_clip(3, frames=12)
    again = VW.world_clip(3, frames=12)
    assert np.array_equal(c.before, again.before) and c.instruction == again.instruction
    assert c.before.shape == (12, 64, 64, 3) and not np.array_equal(c.before, c.after)
    assert not np.array_equal(c.before[0], c.before[5])  # the object moves
    assert VM.flicker(c.after, c.after) == 0 and VM.gt_error(c.after, c.after) == 0
    noisy = np.clip(c.after.astype(int) + np.random.default_rng(0).integers(-25, 25, c.after.shape), 0, 255)
    assert VM.flicker(noisy, c.after) > 0.02
    steady = np.clip(c.after.astype(int) + 20, 0, 255)  # a constant offset is an error, not flicker
    assert VM.flicker(steady, c.after) < VM.gt_error(steady, c.after)
    path = VW.write_clip(c.before, tmp_path / "clip.mp4")
    info = vio.probe(path)
    assert info.frames == 12 and not info.has_audio
    frames = list(vio.read_frames(path, size=(64, 64)))
    assert len(frames) == 12 and np.abs(frames[0].astype(int) - c.before[0]).mean() < 12
    assert VM.edit_success([c.labels_after] * 3, c.labels_before, c.labels_after, c.attribute) == 1.0
    assert VM.edit_success([c.labels_before], c.labels_before, c.labels_after, c.attribute) == 0.0

"""The embedded InstructPix2Pix model: how it is made from the t2i U-Net (train_ip2p), that the
video-edit engine uses it for ``model="embedded"``, and that the shipped one learned to use its input frame."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engines.base import EngineContext, ModelSpec
from engines.video import io as vio
from engines.video.engine import EMBEDDED_DEFAULT, VideoEditEngine, embedded_spec, load_ip2p
from engines.video.params import VideoEditParams
from engines.world.paths import default_model_dir, ip2p_model_dir


def test_widened_unet_is_the_t2i_unet_at_init() -> None:
    """Zero-initialised image channels: whatever the image latent, the widened U-Net predicts
    exactly what the t2i U-Net predicts (the IP2P starting point)."""
    from diffusers import UNet2DConditionModel

    from engines.video.train_ip2p import widen_unet

    base = UNet2DConditionModel.from_pretrained(default_model_dir() / "unet").eval()
    wide = widen_unet(base).eval()
    assert wide.config.in_channels == 2 * base.config.in_channels == wide.conv_in.weight.shape[1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, 16, generator=g)  # [B, 8, 16, 16] noisy latent
    img = torch.randn(2, 8, 16, 16, generator=g) * 3  # [B, 8, 16, 16] image latent
    ehs = torch.randn(2, 40, 128, generator=g)
    t = torch.tensor([500, 20])
    with torch.no_grad():
        a = base(x, t, ehs).sample
        b = wide(torch.cat([x, img], 1), t, ehs).sample
    assert torch.allclose(a, b, atol=1e-5)
    wide.conv_in.weight.data[:, 8:] = 0.1  # once trained, the image matters
    with torch.no_grad():
        assert not torch.allclose(wide(torch.cat([x, img], 1), t, ehs).sample, a, atol=1e-3)


def test_training_writes_a_loadable_pipeline_and_resumes(tmp_path: Path) -> None:
    from engines.video.train_ip2p import train_ip2p

    r = train_ip2p(tmp_path, steps=2, eval_every=2, n_data=8, n_eval=4, batch=4)
    assert r["steps"] == 2
    best = tmp_path / "ip2p" / "best"
    rec = json.loads((best / "world_train.json").read_text())
    assert rec["step"] == 2 and 0.0 <= rec["edit_eval"]["edit_success"] <= 1.0
    loaded = load_ip2p(ModelSpec("t", "diffusers", best), "cpu", "float32")
    assert type(loaded.pipe).__name__ == "StableDiffusionInstructPix2PixPipeline"
    assert loaded.pipe.unet.config.in_channels == 16 and loaded.pipe.unet.dtype == torch.float32
    r2 = train_ip2p(tmp_path, steps=3, resume=True, eval_every=10, n_data=8, n_eval=4, batch=4)
    assert r2["steps"] == 3  # one more step from the checkpoint, not three from scratch
    log = (tmp_path / "ip2p" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:] if row.split(",")[4]] == ["2", "3"]


def test_the_embedded_edit_model_ships() -> None:
    """The weights are part of the package: a missing model is a packaging bug, not a skip."""
    assert (ip2p_model_dir() / "model_index.json").is_file()


def test_embedded_is_the_default_model_of_video_edit(tmp_path: Path) -> None:
    """``model`` defaults to ``embedded``; the Studio resolves that name to the t2i folder, and the
    engine swaps in the edit model."""
    from engines.video.world import world_clip, write_clip

    clip = write_clip(world_clip(5, frames=4).before, tmp_path / "c.mp4")
    p = VideoEditParams(video=str(clip), instruction="make the circle green", steps=2)
    assert p.model == "embedded"
    seen: list[ModelSpec] = []

    def load(ref: str, key: str, build):  # noqa: ANN001, ANN202 - what studio.model_manager hands over
        spec = ModelSpec("embedded", "embedded", default_model_dir())
        seen.append(spec)
        return build(spec)

    (tmp_path / "work").mkdir()
    res = VideoEditEngine().run(p, EngineContext(work_dir=tmp_path / "work", load_model=load))
    assert seen and res.meta["model"] == "embedded-world" and res.meta["frames"] == 4
    assert res.meta["cfg_distilled"] == (EMBEDDED_DEFAULT == "distilled")  # cfg_model="auto"
    info = vio.probe(next(a.path for a in res.artifacts if a.kind == "video"))
    assert (info.width, info.height) == (64, 64)
    assert embedded_spec().path == ip2p_model_dir()


def test_the_shipped_model_uses_the_input_frame() -> None:
    """On held-out world pairs the shipped model lands far closer to the exact edit than its
    starting point (the t2i U-Net widened, which ignores the input frame)."""
    from diffusers import UNet2DConditionModel

    from engines.world.models import load_judge
    from engines.world.paths import judge_dir
    from engines.video.train_ip2p import edit_eval, widen_unet

    pipe = load_ip2p(embedded_spec(), "cpu", "float32").pipe
    judge = load_judge(judge_dir())
    trained = edit_eval(pipe, judge, n=16, seed=4242)
    pipe.unet = widen_unet(UNet2DConditionModel.from_pretrained(default_model_dir() / "unet")).eval()
    start = edit_eval(pipe, judge, n=16, seed=4242)
    assert trained["gt_error"] < 0.6 * start["gt_error"], (trained, start)

"""The one-step adversarially distilled student of the embedded edit model (issue 15, MoViE step 3):
shipped, exactly one U-Net pass per frame whatever ``steps`` says, its image is the trainer's x0
prediction, still steered by both guidance scales, a clear error when it is missing, and the
video-edit engine runs it with ``cfg_model="one-step"``; the trainer saves a loadable student and
resumes. No figure here depends on timing (speed is the bench's job)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.base import EngineContext, EngineError, ModelNotFound, ModelSpec
from engines.video import distill_onestep as O
from engines.video.edit import FrameEditor
from engines.video.engine import VideoEditEngine, embedded_spec, load_ip2p, pipeline_kind
from engines.video.params import VideoEditParams
from engines.video.world import world_clip, write_clip


@pytest.fixture(scope="module")
def onestep():  # noqa: ANN201
    return load_ip2p(embedded_spec("one-step"), "cpu", "float32", "one-step")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return world_clip(2, frames=3).before  # [3, 64, 64, 3] uint8


def count_calls(unet: torch.nn.Module) -> tuple[list[int], object]:
    """Batch size of every U-Net forward (a forward hook)."""
    seen: list[int] = []
    h = unet.register_forward_hook(lambda _m, a, _o: seen.append(int(a[0].shape[0])))
    return seen, h


def test_the_one_step_student_ships() -> None:
    """Part of the package: a plain IP2P folder (guidance-embedding U-Net in fp16, a trailing
    DPM++ scheduler) + cfg_distill.json saying one_step at t=999 + its training record; < 40 MB."""
    d = O.onestep_model_dir()
    assert embedded_spec("one-step").path == d
    assert json.loads((d / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    cfg = json.loads((d / "cfg_distill.json").read_text())
    assert cfg["one_step"] is True and cfg["timestep"] == O.T_ONE == 999
    assert cfg["text_guidance_max"] > 7.5 and cfg["image_guidance_max"] > 2.5
    assert json.loads((d / "unet" / "config.json").read_text())["class_embed_type"] == "projection"
    rec = json.loads((d / "world_train.json").read_text())
    assert {"step", "edit_eval", "teacher_eval", "recipe"} <= set(rec)
    from safetensors import safe_open

    with safe_open(str(d / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys())
    assert sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) < 40 * 2**20


def test_one_unet_call_per_frame_and_the_image_is_the_x0_prediction(onestep, frames) -> None:  # noqa: ANN001
    """``steps=10`` asked, one U-Net call of batch 1 made, at t=999; the pipeline's latent is
    √ᾱ·x_T − √(1−ᾱ)·v of that call (what the trainer optimises)."""
    pipe = onestep.pipe
    assert isinstance(pipe, O.OneStepIP2PPipeline) and pipeline_kind(pipe) == "one-step"
    seen, h = count_calls(pipe.unet)
    try:
        with FrameEditor(pipe, "make the circle green", steps=10, consistency="none") as ed:
            out = ed.edit(frames[0])
    finally:
        h.remove()
    assert seen == [1] and ed.unet_passes_per_step == 1 and out.shape == (64, 64, 3)

    rec: dict[str, torch.Tensor] = {}

    def grab(_m, a, kw, o):  # noqa: ANN001, ANN202
        rec.update(x=a[0].clone(), t=torch.as_tensor(a[1]).clone(), v=o[0].clone())

    from PIL import Image

    h = pipe.unet.register_forward_hook(grab, with_kwargs=True)
    try:
        lat = pipe(prompt="make the circle green", image=Image.fromarray(frames[0]), num_inference_steps=25,
                   guidance_scale=3.0, image_guidance_scale=2.5, generator=torch.Generator().manual_seed(0),
                   output_type="latent").images  # [1, 8, 16, 16]
    finally:
        h.remove()
    assert int(rec["t"]) == 999
    x0 = O.x0_from_v(rec["x"][:, :8], rec["v"], pipe.scheduler.alphas_cumprod[999])
    assert torch.allclose(lat, x0, atol=1e-4)


def test_seeded_and_steered_by_both_scales(onestep, frames) -> None:  # noqa: ANN001
    def edit(seed: int = 0, s_t: float = 3.0, s_i: float = 2.5) -> np.ndarray:
        with FrameEditor(onestep.pipe, "make the circle green", text_guidance=s_t, image_guidance=s_i,
                         consistency="none", seed=seed) as ed:
            return ed.edit(frames[0]).astype(int)

    a = edit()
    assert np.array_equal(a, edit())  # seeded
    assert np.abs(a - edit(s_t=7.5)).mean() > 0.3  # text guidance steers
    assert np.abs(a - edit(s_i=1.2)).mean() > 0.3  # image guidance steers
    assert np.array_equal(edit(s_t=1.0, s_i=1.5), edit(s_t=0.5, s_i=4.0))  # guidance off: (1, 1)


def test_missing_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(O, "onestep_model_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(ModelNotFound, match="one-step.*distill_onestep --install"):
        embedded_spec("one-step")
    clip = write_clip(world_clip(5, frames=2).before, tmp_path / "c.mp4")
    (tmp_path / "work").mkdir()
    p = VideoEditParams(video=str(clip), instruction="make the circle green", cfg_model="one-step")
    with pytest.raises(ModelNotFound, match="one-step"):
        VideoEditEngine().run(p, EngineContext(work_dir=tmp_path / "work", load_model=lambda r, k, b: b(None)))


def test_engine_runs_the_one_step_student(tmp_path: Path, onestep) -> None:  # noqa: ANN001
    """cfg_model="one-step": one U-Net call per frame whatever ``steps``, said in the metadata;
    asking a one-step folder for "distilled" is an error naming what it is."""
    clip = write_clip(world_clip(5, frames=4).before, tmp_path / "c.mp4")

    keys: list[str] = []

    def load(ref: str, key: str, build):  # noqa: ANN001, ANN202 - what studio.model_manager hands over
        keys.append(key)
        return onestep

    (tmp_path / "work").mkdir()
    p = VideoEditParams(video=str(clip), instruction="make the circle green", steps=10, cfg_model="one-step",
                        text_guidance=3.0, image_guidance=2.5)
    seen, h = count_calls(onestep.pipe.unet)
    try:
        res = VideoEditEngine().run(p, EngineContext(work_dir=tmp_path / "work", load_model=load))
    finally:
        h.remove()
    assert keys and "one-step" in keys[0]
    m = res.meta
    assert m["frames"] == 4 and m["one_step"] is True and m["cfg_model"] == "one-step" and m["cfg_distilled"] is True
    assert m["steps"] == 1 and m["steps_requested"] == 10 and m["unet_passes_per_frame"] == 1
    assert seen == [1, 1, 1, 1]
    assert (tmp_path / "work" / "edited.mp4").stat().st_size > 0

    (tmp_path / "w2").mkdir()
    bad = VideoEditParams(video=str(clip), instruction="x", model="mine", cfg_model="distilled")
    with pytest.raises(EngineError, match="one-step student"):
        VideoEditEngine().run(bad, EngineContext(work_dir=tmp_path / "w2", load_model=lambda r, k, b: onestep))


def test_trainer_saves_a_loadable_student_and_resumes(tmp_path: Path) -> None:
    r = O.distill(tmp_path, steps=2, eval_every=2, n_eval=4, batch=2, n_data=6, n_targets=4, adv_start=1)
    assert r["steps"] == 2
    best = tmp_path / "ip2p_1step" / "best"
    rec = json.loads((best / "world_train.json").read_text())
    assert rec["step"] == 2 and 0.0 <= rec["edit_eval"]["3.0/2.5"]["edit_success"] <= 1.0
    loaded = load_ip2p(ModelSpec("s", "diffusers", best), "cpu", "float32")
    assert isinstance(loaded.pipe, O.OneStepIP2PPipeline) and loaded.pipe.unet.dtype == torch.float32
    r2 = O.distill(tmp_path, steps=3, resume=True, eval_every=10, n_eval=4, batch=2, n_data=6, n_targets=4)
    assert r2["steps"] == 3

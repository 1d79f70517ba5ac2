"""The CFG-distilled student of the embedded edit model (issue 15, MoViE multimodal CFG distillation):
shipped, one U-Net pass per step, seeded, steered by both guidance scales, cross-frame attention
and the video-edit engine work with it; the trainer starts from the teacher and resumes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.base import EngineContext, ModelSpec
from engines.video import cfg as C
from engines.video.edit import FrameEditor
from engines.video.engine import EMBEDDED_DEFAULT, VideoEditEngine, embedded_spec, load_ip2p
from engines.video.params import VideoEditParams
from engines.video.world import world_clip, write_clip


@pytest.fixture(scope="module")
def student():  # noqa: ANN201
    return load_ip2p(embedded_spec("distilled"), "cpu", "float32", "distilled")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return world_clip(3, frames=3).before  # [3, 64, 64, 3] uint8


def count_calls(unet: torch.nn.Module) -> tuple[list[int], object]:
    """Batch size of every U-Net forward (a forward hook)."""
    seen: list[int] = []
    h = unet.register_forward_hook(lambda _m, a, _o: seen.append(int(a[0].shape[0])))
    return seen, h


def test_the_student_ships() -> None:
    """Part of the package (a missing student is a packaging bug, not a skip): a plain IP2P
    folder whose U-Net has the guidance embedding, plus cfg_distill.json; fp16 U-Net ≤ 15 MB."""
    d = C.cfg_model_dir()
    assert (d / "model_index.json").is_file()
    assert json.loads((d / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    cfg = json.loads((d / C.CONFIG_NAME).read_text())
    assert cfg["n_freq"] == C.N_FREQ and cfg["text_guidance_max"] > 7.5 and cfg["image_guidance_max"] > 2.5
    unet_cfg = json.loads((d / "unet" / "config.json").read_text())
    assert unet_cfg["class_embed_type"] == "projection"
    assert unet_cfg["projection_class_embeddings_input_dim"] == C.feature_dim()
    w = d / "unet" / "diffusion_pytorch_model.safetensors"
    assert w.stat().st_size <= 15 * 2**20
    from safetensors import safe_open

    with safe_open(str(w), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys())
    assert embedded_spec("distilled").path == d


def test_student_starts_as_the_conditional_teacher() -> None:
    """Zero-initialised guidance embedding: at init, whatever the scales, the student predicts
    the teacher's conditional pass ε(c_I, c_T) exactly."""
    from diffusers import UNet2DConditionModel

    from engines.video.distill_cfg import student_from_teacher
    from engines.world.paths import ip2p_model_dir

    teacher = UNet2DConditionModel.from_pretrained(ip2p_model_dir() / "unet").float().eval()
    s = student_from_teacher(teacher).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 16, 16, generator=g)
    ehs = torch.randn(2, 40, 128, generator=g)
    t = torch.tensor([700, 30])
    feats = C.scale_features(torch.tensor([1.5, 4.0]), torch.tensor([7.5, 2.0]))
    with torch.no_grad():
        assert torch.allclose(s(x, t, ehs, class_labels=feats).sample, teacher(x, t, ehs).sample, atol=1e-5)


def test_student_from_a_teacher_built_in_code() -> None:
    """A U-Net constructed in code (not loaded) lists its unset arguments in diffusers'
    ``_use_default_values``; the student must still get its guidance embedding (the real-size
    speed bench builds its teacher this way)."""
    from diffusers import UNet2DConditionModel

    from engines.video.distill_cfg import student_from_teacher

    torch.manual_seed(0)
    teacher = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
                                   block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=12,
                                   attention_head_dim=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
    s = student_from_teacher(teacher).eval()
    assert s.class_embedding is not None and C.is_student_unet(s)
    x, ehs, t = torch.randn(1, 8, 8, 8), torch.randn(1, 5, 12), torch.tensor([300])
    with torch.no_grad():
        out = s(x, t, ehs, class_labels=C.scale_features(torch.tensor([1.5]), torch.tensor([7.5]))).sample
        assert torch.allclose(out, teacher(x, t, ehs).sample, atol=1e-5)


def test_one_unet_call_per_step(student, frames) -> None:  # noqa: ANN001
    """The student: one U-Net call of batch 1 per denoising step (the teacher: one of batch 3)."""
    assert isinstance(student.pipe, C.CFGDistilledIP2PPipeline)
    seen, h = count_calls(student.pipe.unet)
    try:
        with FrameEditor(student.pipe, "make the circle green", steps=4, consistency="none") as ed:
            ed.edit(frames[0])
    finally:
        h.remove()
    assert seen == [1, 1, 1, 1] and ed.unet_passes_per_step == 1
    teacher = load_ip2p(embedded_spec("teacher"), "cpu", "float32", "teacher")
    assert not isinstance(teacher.pipe, C.CFGDistilledIP2PPipeline)
    seen, h = count_calls(teacher.pipe.unet)
    try:
        with FrameEditor(teacher.pipe, "make the circle green", steps=4, consistency="none") as ed:
            ed.edit(frames[0])
    finally:
        h.remove()
    assert seen == [3, 3, 3, 3] and ed.unet_passes_per_step == 3


def test_seeded_and_steered_by_both_scales(student, frames) -> None:  # noqa: ANN001
    def edit(seed: int = 0, s_t: float = 7.5, s_i: float = 1.5) -> np.ndarray:
        with FrameEditor(student.pipe, "make the circle green", text_guidance=s_t, image_guidance=s_i, steps=3,
                         consistency="none", seed=seed) as ed:
            return ed.edit(frames[0]).astype(int)

    a = edit()
    assert np.array_equal(a, edit())  # seeded
    assert not np.array_equal(a, edit(seed=1))
    assert np.abs(a - edit(s_t=3.0)).mean() > 0.5  # text guidance steers
    assert np.abs(a - edit(s_i=3.0)).mean() > 0.5  # image guidance steers
    # guidance off, as in the teacher's pipeline (s_T ≤ 1): the conditional prediction, whatever s_I
    assert np.array_equal(edit(s_t=1.0, s_i=1.5), edit(s_t=0.5, s_i=4.0))


def test_cross_frame_attention_with_the_student(student, frames) -> None:  # noqa: ANN001
    """Key-frame tokens are recorded from the batch-1 pass and attended to by later frames."""
    with FrameEditor(student.pipe, "make the circle green", steps=2, consistency="keyframes") as ed:
        out = [ed.edit(f) for f in frames]
        toks = dict(ed.store.tokens)
    assert toks and all(t.shape[0] == 1 for t in toks.values())
    assert {k[1] for k in toks} == {0, 1}  # per denoising step
    with FrameEditor(student.pipe, "make the circle green", steps=2, consistency="none") as ed:
        plain = [ed.edit(f) for f in frames]
    assert np.array_equal(out[0], plain[0])  # the key frame itself is edited as usual
    assert not np.array_equal(out[2], plain[2])  # later frames look at it
    assert all(type(p).__name__ != "CrossFrameAttnProcessor" for p in student.pipe.unet.attn_processors.values())


def test_engine_runs_end_to_end_with_the_student(tmp_path: Path) -> None:
    clip = write_clip(world_clip(5, frames=4).before, tmp_path / "c.mp4")
    p = VideoEditParams(video=str(clip), instruction="make the circle green", steps=2, cfg_model="distilled")

    def load(ref: str, key: str, build):  # noqa: ANN001, ANN202 - what studio.model_manager hands over
        from engines.world.paths import default_model_dir

        assert "distilled" in key
        return build(ModelSpec("embedded", "embedded", default_model_dir()))

    (tmp_path / "work").mkdir()
    res = VideoEditEngine().run(p, EngineContext(work_dir=tmp_path / "work", load_model=load))
    assert res.meta["frames"] == 4 and res.meta["cfg_distilled"] is True and res.meta["unet_passes_per_step"] == 1
    assert (tmp_path / "work" / "edited.mp4").stat().st_size > 0
    auto = VideoEditParams(video=str(clip), instruction="x")
    assert auto.cfg_model == "auto" and EMBEDDED_DEFAULT in ("teacher", "distilled")


def test_trainer_saves_a_loadable_student_and_resumes(tmp_path: Path) -> None:
    from engines.video.distill_cfg import distill

    r = distill(tmp_path, steps=2, eval_every=2, n_eval=4, batch=4, n_data=8, traj_every=2, traj_pairs=2)
    assert r["steps"] == 2
    best = tmp_path / "ip2p_cfg" / "best"
    rec = json.loads((best / "world_train.json").read_text())
    assert rec["step"] == 2 and 0.0 <= rec["edit_eval"]["edit_success"] <= 1.0
    loaded = load_ip2p(ModelSpec("s", "diffusers", best), "cpu", "float32")
    assert isinstance(loaded.pipe, C.CFGDistilledIP2PPipeline) and loaded.pipe.unet.dtype == torch.float32
    r2 = distill(tmp_path, steps=3, resume=True, eval_every=10, n_eval=4, batch=4, n_data=8, traj_every=2,
                 traj_pairs=2)
    assert r2["steps"] == 3

"""video-edit params (light module: no torch import)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from engines.base import Params, input_field


class VideoEditParams(Params):
    video: str = input_field("the clip to edit (mp4, webm, mov, gif)", kinds=("video",))
    instruction: str = Field(..., min_length=1, max_length=500, description='what to change, e.g. "make the star yellow"')
    model: str = Field("embedded", min_length=1, description="an InstructPix2Pix-format model: 'embedded' (the "
                       "world's edit model), a registered name, a folder in the models directory, or a path")
    cfg_model: Literal["auto", "teacher", "distilled", "one-step"] = Field(
        "auto", description="teacher = 3 U-Net passes per step (classifier-free guidance); distilled = the "
        "CFG-distilled student, 1 pass per step with the guidance scales fed as an embedding (about 1.7x the "
        "frames per second, weaker edits); one-step = the adversarially distilled one-step student, 1 U-Net pass "
        "in total per frame (steps is ignored), the guidance scales still fed as an embedding; auto = the teacher "
        "for 'embedded', otherwise whatever the model folder is")
    text_guidance: float = Field(7.5, ge=0.0, le=30.0, description="s_T: how strongly to follow the instruction")
    image_guidance: float = Field(1.5, ge=0.0, le=10.0, description="s_I: how closely to keep the input frame")
    steps: int = Field(10, ge=1, le=100, description="denoising steps per frame (a one-step model always runs 1)")
    consistency: Literal["none", "keyframes"] = Field(
        "keyframes", description="keyframes = each frame's self-attention also attends to its key frame (steadier)")
    keyframe_every: int = Field(0, ge=0, le=10000, description="start a new key frame every N frames (0 = the first only)")
    max_frames: int = Field(240, ge=1, le=100000, description="stop after this many output frames")
    stride: int = Field(1, ge=1, le=30, description="edit every N-th source frame (output fps = source fps / N)")
    resolution: int = Field(0, ge=0, le=1024, description="short side in pixels (0 = the model's native size); "
                                                          "a multiple of 8")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="the same noise is used for every frame")

"""hdri and relight params (light module: no torch import)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from engines.base import Params, input_field
from engines.relight.environments import BUILTINS

BuiltinEnv = Literal[tuple(BUILTINS)]  # type: ignore[valid-type]


class HDRIParams(Params):
    prompt: str = Field(..., min_length=1, max_length=500,
                        description='where the light comes from and what it is, e.g. "sunset behind me on the left"')
    negative_prompt: str = Field("", max_length=500, description="what the map should not look like")
    model: str = Field("embedded", min_length=1, description="'embedded' (the HDR world's panorama model) or a "
                       "folder holding a model saved by engines.relight.train_hdri")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    steps: int = Field(20, ge=1, le=200, description="denoising steps")
    guidance_scale: float = Field(3.0, ge=0.0, le=30.0, description="how strongly to follow the prompt")
    width: int = Field(256, ge=64, le=4096, description="panorama width in pixels (height = width / 2); a multiple of 64")
    exposure: float = Field(1.0, gt=0.0, le=100.0, description="scales the radiance (absolute nits are arbitrary)")
    light_azimuth: float | None = Field(None, ge=-180.0, le=180.0, description="put the main light at this azimuth "
                                        "(degrees; 0 = in front of the subject, 90 = on their left, ±180 = behind); "
                                        "empty = where the prompt says")
    light_elevation: float | None = Field(None, ge=-10.0, le=90.0, description="and at this height above the "
                                          "horizon (degrees); empty = where the prompt says")

    @field_validator("width")
    @classmethod
    def _mult64(cls, v: int) -> int:
        if v % 64:
            raise ValueError(f"width must be a multiple of 64 (got {v})")
        return v


class RelightParams(Params):
    portrait: str = input_field("the photo or clip of a person to relight", kinds=("image", "video"))
    environment: str | None = input_field("an environment map: an hdri job's .hdr/.exr, an uploaded one, or an "
                                          "8-bit panorama (empty = the built-in below)", kinds=("hdr", "image"),
                                          default=None)
    builtin: BuiltinEnv = Field("sunset-left", description="built-in environment used when none is given")
    yaw: float = Field(0.0, ge=-180.0, le=180.0, description="turn the environment around the subject (degrees)")
    strength: float = Field(0.8, ge=0.0, le=3.0, description="how much light is added (0 = unchanged)")
    mode: Literal["add", "mul"] = Field("add", description="add = light-adding (keeps the photo's own light); "
                                        "mul = re-shade (replaces it)")
    temporal_smoothing: float = Field(0.4, ge=0.0, le=0.95, description="video: weight of past frames in the "
                                      "normals and matte (steadier, slower to follow motion)")
    max_side: int = Field(1024, ge=64, le=4096, description="longest side of the output in pixels")
    max_frames: int = Field(600, ge=1, le=100000, description="video: stop after this many frames")

"""T2I params (light module: no torch import, so listing schemas stays fast)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.base import INPUT_FILE_MARK, Params, input_field

SCHEDULERS = ("DPM++ 2M", "DPM++ 2M Karras", "Euler", "Euler a", "DDIM", "UniPC", "LCM", "model default")
Scheduler = Literal["DPM++ 2M", "DPM++ 2M Karras", "Euler", "Euler a", "DDIM", "UniPC", "LCM", "model default"]


class AdapterUse(BaseModel):
    """One adapter in a mix."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    adapter: str = Field(..., min_length=1, description="adapter asset id (or a local .safetensors path from the CLI)",
                         json_schema_extra={"format": INPUT_FILE_MARK, "x-asset-kinds": ["adapter", "safetensors"]})
    weight: float = Field(1.0, ge=-4.0, le=4.0, description="strength")
    name: str = Field("", max_length=120, description="display name (filled from the library)")


class T2IParams(Params):
    model: str = Field("embedded", description="model: 'embedded', a registered name, a local diffusers folder, "
                                               "a .safetensors file, or a hub id in the local cache")
    prompt: str = Field(..., min_length=1, max_length=4000, description="what to draw")
    negative_prompt: str = Field("", max_length=4000, description="what to avoid")
    steps: int = Field(20, ge=1, le=150, description="denoising steps")
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0,
                                         description="classifier-free guidance (CFG) scale; ≤1 = off; empty = the "
                                                     "model's own default (4 for the embedded world model, else 7)")
    width: int | None = Field(None, ge=32, le=2048, description="image width in pixels (default: the model's native size)")
    height: int | None = Field(None, ge=32, le=2048, description="image height in pixels (default: the model's native size)")
    seed: int = Field(-1, ge=-1, le=2**32 - 1, description="-1 = random; image k of a run uses seed + k")
    batch_size: int = Field(1, ge=1, le=16, description="images per pass")
    batch_count: int = Field(1, ge=1, le=32, description="passes (batch_size × batch_count images)")
    scheduler: Scheduler = Field("DPM++ 2M", description="sampler")
    clockwork: Literal["auto", "off", "reuse", "adaptor"] = Field(
        "auto", description="Clockwork (reuse of low-res U-Net features on non-clock steps): auto = the setting "
                            "this model's measured profile found to keep quality (single objects, colour binding "
                            "and relations; `studio bench layout --write-profile`), else off — never with adapters "
                            "or img2img; reuse = training-free; adaptor = learned adaptor (needs one trained for "
                            "this model; faster, at the profile's ≤ 2-point setting); off = every step in full")
    clock_period: int | None = Field(None, ge=2, le=16,
                                     description="Clockwork: a full U-Net pass every N steps; empty = the period "
                                                 "measured best for this model, sampler and step count "
                                                 "(`studio bench clockwork --write-profile`; images drawn region "
                                                 "by region get the profile's gentler regional setting, "
                                                 "`studio bench layout --write-profile`), else 2; a set period "
                                                 "holds for every image")
    layout: Literal["auto", "off"] = Field(
        "auto", description="auto: for a model that ships a prompt grammar (the embedded world model), read the "
                            "prompt into objects, give each its own cell (keeping named positions and relations "
                            "like 'left of') and draw each object in its own region from a caption in the "
                            "model's own words, so colours bind to the right object and other wordings work; "
                            "off: the prompt goes to the text encoder as typed. Other models, and any job with adapters (their "
                            "own words would be dropped), use the prompt as typed")
    init_image: str | None = input_field("img2img: start from this image (asset id or path)", kinds=("image",),
                                         default=None)
    strength: float = Field(0.75, ge=0.0, le=1.0, description="img2img: how much to change the init image")
    preview_every: int = Field(5, ge=0, le=150, description="live preview every N steps (0 = off)")
    adapters: list[AdapterUse] = Field(default_factory=list, max_length=16,
                                       description='adapters to mix: [{"adapter": ID, "weight": 0.8}, …] '
                                                   "(LoRA, SHiRA, FouRA)")
    adapter_mode: Literal["fused", "unfused", "composite"] = Field(
        "fused", description="fused = merged into the weights (no per-step cost; SHiRA switches by scatter); "
                             "unfused = LoRA applied on the fly (SHiRA and FouRA always run fused); "
                             "composite = with 2+ adapters, each runs on its own and their effects are added "
                             "(keeps each adapter's concept in a mix; n+1 U-Net passes per step)")

    @model_validator(mode="after")
    def _check(self) -> "T2IParams":
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and v % 8:
                raise ValueError(f"{name} must be a multiple of 8 (got {v})")
        if self.adapter_mode == "composite" and self.clockwork in ("reuse", "adaptor") and len(self.adapters) > 1:
            raise ValueError("Clockwork cannot run with a composite adapter mix (its feature cache is per pass): "
                             "choose clockwork off or adapter_mode fused")
        if self.init_image is None and self.strength != 0.75:
            raise ValueError("strength only applies with init_image (img2img)")
        return self

"""Params of the adapter engines (light module: no torch import)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engines.base import Params, input_field

DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


class AdapterTrainParams(Params):
    model: str = Field("embedded", description="base model the adapter is trained for")
    dataset: str | None = input_field(
        "training images: a .zip (or a folder, from the CLI) of images with optional same-name .txt captions",
        kinds=("archive",), default=None)
    demo: Literal["none", "striped-style", "dotted-style", "outlined-style", "new-concept"] = Field(
        "none", description="a ready-made dataset from the embedded world instead of your own images")
    name: str = Field("", max_length=120, description="adapter name (default: method + trigger)")
    method: Literal["lora", "shira", "foura"] = Field("lora", description="adapter type")
    trigger: str = Field("", max_length=60, description="trigger word, substituted for {trigger} in the template")
    caption_template: str = Field("{caption}", max_length=500,
                                  description="caption for each image; {caption} = its .txt caption, {trigger}")
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS),
                               description="U-Net Linear layers to adapt (name suffixes)")
    rank: int = Field(8, ge=1, le=256, description="LoRA / FouRA rank")
    density: float = Field(0.02, ge=0.001, le=0.25, description="SHiRA: fraction of each target weight trained")
    mask_type: Literal["random", "weight", "gradient", "snip", "structured"] = Field(
        "random", description="SHiRA mask: random, weight magnitude, gradient, SNIP or structured")
    preserve: float = Field(
        0.0, ge=0.0, le=0.75,
        description="mix-ready training: share of each batch whose caption has the trigger swapped for a made-up "
                    "word, with the base model's own prediction as target, so the adapter acts only on its "
                    "trigger and disturbs other adapters' words less when mixed (0 = off; costs one extra "
                    "forward pass on that share)")
    steps: int = Field(400, ge=1, le=100000, description="optimisation steps")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="learning rate (AdamW)")
    batch_size: int = Field(4, ge=1, le=64, description="images per step")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random seed")
    sample_every: int = Field(100, ge=0, le=100000, description="sample preview every N steps (0 = off)")
    sample_prompt: str = Field("", max_length=500, description="prompt for sample previews (default: first caption)")
    checkpoint_every: int = Field(50, ge=1, le=100000, description="checkpoint for resume every N steps")

    @model_validator(mode="after")
    def _check(self) -> "AdapterTrainParams":
        if (self.dataset is None) == (self.demo == "none"):
            raise ValueError("give exactly one of dataset (your images) or demo (a built-in dataset)")
        if "{trigger}" in self.caption_template and not self.trigger:
            raise ValueError("caption_template uses {trigger} but no trigger word is set")
        if self.preserve > 0 and not self.trigger:
            raise ValueError("preserve (mix-ready training) needs a trigger word to swap out")
        if not self.targets:
            raise ValueError("targets must name at least one layer")
        return self

"""Params of the ``personalize`` engine (light module: no torch import)."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from engines.base import Params, input_field

DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "time_emb_proj"]
MIN_GOOD = 3
MAX_PHOTOS = 30
_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_CLASS = re.compile(r"^[A-Za-z][A-Za-z -]{0,39}$")


class Photo(Params):
    image: str = input_field("one photo of your subject", kinds=("image",))
    name: str = Field("", max_length=200, description="the photo's file name, for its verdict (default: the asset id)")


class PersonalizeParams(Params):
    model: str = Field("embedded", description="base model the personal adapter is trained for")
    photos: list[Photo] = Field(default_factory=list, max_length=MAX_PHOTOS,
                                description=f"3–{MAX_PHOTOS} photos of the subject (uploaded images)")
    photos_zip: str | None = input_field(
        "or: a .zip of the photos (from the CLI also a folder)", kinds=("archive",), default=None)
    demo: bool = Field(False, description="use the embedded world's demo subject (a creature the model never saw) "
                                          "instead of your photos")
    name: str = Field("", max_length=120, description="adapter name (default: subject + class word)")
    subject_word: str = Field("sks", description="the rare word that will mean your subject in prompts")
    class_word: str = Field("toy", description="what the subject is (person, dog, toy, …): keeps the prior")
    instance_prompt: str = Field("a photo of {subject} {class}", max_length=300,
                                 description="caption of every photo; {subject} and {class} are filled in")
    method: Literal["lora", "shira"] = Field("lora", description="adapter type")
    rank: int = Field(4, ge=1, le=128, description="LoRA rank")
    density: float = Field(0.02, ge=0.001, le=0.25, description="SHiRA: fraction of each target weight trained")
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS),
                               description="U-Net Linear layers to adapt (name suffixes)")
    hollow: int = Field(1, ge=0, le=3, description=(
        "Hollowed-Net levels removed during training (0 = plain training of the full U-Net; k = the mid block "
        "and the k innermost down/up blocks, whose outputs are pre-computed to disk): less training memory"))
    steps: int = Field(200, ge=1, le=20000, description="optimisation steps")
    learning_rate: float | None = Field(None, gt=0, le=1.0, description=(
        "learning rate (AdamW); empty: 1e-3, or 3e-3 for hollowed LoRA, which adapts fewer layers and takes "
        "a larger step without losing the prompt (docs/benchmarks.md, Personalization)"))
    batch_size: int = Field(1, ge=1, le=16, description="photos per step")
    resolution: int | None = Field(None, ge=32, le=2048, description="training resolution in pixels "
                                                                    "(default: the model's own)")
    crop: Literal["smart", "center"] = Field("smart", description="square crop: around the subject (smart) or centre")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random seed")
    prior_preservation: Literal["off", "on"] = Field(
        "off", description="also train on class images made by the base model, so the class word keeps its meaning")
    prior_weight: float = Field(1.0, ge=0.0, le=10.0, description="weight of the prior-preservation loss")
    class_images: int = Field(50, ge=4, le=1000, description="class images to generate (cached per model + class)")
    caption_dropout: float = Field(0.1, ge=0.0, le=0.5, description="share of rows trained with the empty prompt "
                                                                      "(classifier-free guidance keeps working)")
    samples_every: int = Field(50, ge=0, le=20000, description="sample previews every N steps (0 = off)")
    checkpoint_every: int = Field(25, ge=1, le=20000, description="checkpoint for resume every N steps")
    check_only: bool = Field(False, description="only check the photos (a verdict per photo), train nothing")

    @model_validator(mode="after")
    def _check(self) -> "PersonalizeParams":
        if self.demo and (self.photos or self.photos_zip):
            raise ValueError("give your photos or demo, not both")
        if not self.demo and not self.photos and not self.photos_zip:
            raise ValueError("give photos (3 or more), a photos_zip, or demo")
        if not _WORD.match(self.subject_word):
            raise ValueError("subject_word must be one word of letters/digits (e.g. sks)")
        if not _CLASS.match(self.class_word):
            raise ValueError("class_word must be a short word or two of letters (e.g. dog, stuffed toy)")
        if "{subject}" not in self.instance_prompt:
            raise ValueError("instance_prompt must contain {subject}")
        if not self.targets:
            raise ValueError("targets must name at least one layer")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_rate(cls, data: object) -> object:
        """An empty learning rate becomes the measured default for this method and hollow."""
        if isinstance(data, dict) and data.get("learning_rate") is None:
            try:
                hollow = int(data.get("hollow", 1))
            except (TypeError, ValueError):
                return data  # the field's own validation reports the bad hollow
            data = dict(data) | {"learning_rate": default_learning_rate(str(data.get("method", "lora")), hollow)}
        return data

    def caption(self, context: str = "") -> str:
        """The instance caption, with an optional context phrase (the demo photos know theirs)."""
        base = self.instance_prompt.replace("{subject}", self.subject_word).replace("{class}", self.class_word)
        return f"{base} {context}".strip()

    def class_prompt(self) -> str:
        return self.instance_prompt.replace("{subject} ", "").replace("{subject}", "").replace(
            "{class}", self.class_word).strip()


def default_learning_rate(method: str, hollow: int) -> float:
    """Why per mode: hollowed LoRA adapts fewer layers. On the embedded model (bench/personalize.py;
    chosen on seeds 0-9, checked on 20 fresh ones) hollowed LoRA at 3e-3 learned the subject better
    than plain LoRA at 1e-3 and kept the prompt, while plain LoRA at 5e-3 overwrote the prompt's
    context. SHiRA was not measured at other rates: 1e-3."""
    return 3e-3 if hollow and method == "lora" else 1e-3

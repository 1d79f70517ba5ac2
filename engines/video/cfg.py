"""Multimodal classifier-free-guidance distillation (MoViE, methods.md §8 step 2): the runtime side.

An InstructPix2Pix teacher needs three U-Net passes per denoising step (the diffusers formula):

    ε̃ = ε(∅, ∅) + s_I · [ε(c_I, ∅) − ε(∅, ∅)] + s_T · [ε(c_I, c_T) − ε(c_I, ∅)]

The CFG-distilled student is the same U-Net with one more input: the two guidance scales
(s_I, s_T), as a Fourier feature vector (:func:`scale_features`) projected by a small MLP and
added to the time embedding (diffusers ``class_embed_type="projection"``, fed as
``class_labels``). It predicts ε̃ in ONE pass, on the conditional batch only.

A student folder is an ordinary ``StableDiffusionInstructPix2PixPipeline`` folder (its U-Net
config says ``class_embed_type: "projection"``) plus ``cfg_distill.json`` (:data:`CONFIG_NAME`:
the feature recipe and the scale ranges it was trained on). :func:`as_cfg_pipeline` turns a loaded
pipeline into :class:`CFGDistilledIP2PPipeline`, which takes the same arguments as the teacher's
pipeline (``guidance_scale`` = s_T, ``image_guidance_scale`` = s_I) and runs one pass per step.
Trained by ``python -m engines.video.distill_cfg``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

CONFIG_NAME = "cfg_distill.json"
N_FREQ = 4


def cfg_model_dir() -> Path:
    """The shipped CFG-distilled student of the embedded edit model."""
    from engines.world.paths import WEIGHTS

    return WEIGHTS / "ip2p_cfg"


def feature_dim(n_freq: int = N_FREQ) -> int:
    return 2 * (2 * n_freq + 1)


def scale_features(s_i: torch.Tensor, s_t: torch.Tensor, n_freq: int = N_FREQ) -> torch.Tensor:
    """(s_I [B], s_T [B]) -> [B, 2·(2F+1)]: per scale x = log(1 + s) and sin/cos(2^k·π·x / 4),
    k < F. log1p spreads the useful range (1 … 15) evenly and is defined at 0."""
    s = torch.stack([torch.as_tensor(s_i, dtype=torch.float32), torch.as_tensor(s_t, dtype=torch.float32)], -1)
    x = torch.log1p(s.clamp(min=0))  # [B, 2]
    freq = (2.0 ** torch.arange(n_freq, dtype=torch.float32)) * math.pi / 4  # [F]
    ang = x[..., None] * freq  # [B, 2, F]
    return torch.cat([x[..., None], ang.sin(), ang.cos()], -1).flatten(1)  # [B, 2·(2F+1)]


def effective_scales(s_t: float, s_i: float, cfg: dict[str, Any]) -> tuple[float, float]:
    """The (s_T, s_I) the student is asked for. Like the teacher's pipeline, guidance is off
    unless s_T > 1 and s_I ≥ 1 (then the teacher runs the conditional pass only, which is the
    formula at (1, 1)); scales above the trained range are clamped to it."""
    if not (s_t > 1.0 and s_i >= 1.0):
        return 1.0, 1.0
    return min(float(s_t), cfg["text_guidance_max"]), min(float(s_i), cfg["image_guidance_max"])


def read_config(path: Path) -> dict[str, Any] | None:
    """The folder's ``cfg_distill.json``, or None when it is not a CFG-distilled student."""
    f = Path(path) / CONFIG_NAME
    return json.loads(f.read_text()) if f.is_file() else None


def is_student_unet(unet: Any) -> bool:
    return getattr(unet.config, "class_embed_type", None) == "projection"


class CFGDistilledIP2PPipeline(StableDiffusionInstructPix2PixPipeline):
    """The InstructPix2Pix pipeline for a CFG-distilled U-Net: the same call as the teacher's
    (``guidance_scale`` = s_T, ``image_guidance_scale`` = s_I), one U-Net pass per step: the
    scales reach the U-Net as ``class_labels`` (a forward pre-hook for the duration of the call),
    and the pipeline's own three-way guidance is switched off (``guidance_scale=1``)."""

    cfg_distill: dict[str, Any] = {}

    def __call__(self, *args: Any, guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
                 **kwargs: Any) -> Any:
        s_t, s_i = effective_scales(guidance_scale, image_guidance_scale, self.cfg_distill)
        feats = scale_features(torch.tensor([s_i]), torch.tensor([s_t]), self.cfg_distill.get("n_freq", N_FREQ))

        def feed(_mod: Any, a: tuple, kw: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            sample = a[0] if a else kw["sample"]
            kw["class_labels"] = feats.to(sample.device, sample.dtype).expand(sample.shape[0], -1)
            return a, kw

        handle = self.unet.register_forward_pre_hook(feed, with_kwargs=True)
        try:
            return super().__call__(*args, guidance_scale=1.0, image_guidance_scale=image_guidance_scale, **kwargs)
        finally:
            handle.remove()


def as_cfg_pipeline(pipe: Any, cfg: dict[str, Any]) -> CFGDistilledIP2PPipeline:
    """The same components as ``pipe``, run as a :class:`CFGDistilledIP2PPipeline`."""
    names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor",
             "image_encoder")
    out = CFGDistilledIP2PPipeline(**{k: v for k, v in pipe.components.items() if k in names},
                                   requires_safety_checker=False)
    out.cfg_distill = dict(cfg)
    out.set_progress_bar_config(disable=True)
    return out

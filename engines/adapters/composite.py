"""Composite adapter mixes: each adapter runs on its own and their effects are added in ε-space.

Fusing adapters trained apart (summing their weight deltas) loses part of each concept: in the
fused network one adapter's delta changes the features the other one's delta was trained on
(issue 18: about half of a concept is lost). The composite mix never puts two adapters in the
network at once. Each U-Net call is made once with no adapter and once with each adapter alone
(at its weight), and the noise predictions are combined as

    ε_mix = ε_base + Σ_i (ε_i − ε_base)

so on a prompt with adapter A's trigger, A's effect is exactly what it is alone, plus whatever
the others do to that prompt: little, for adapters trained mix-ready (``preserve``: the adapter
reproduces the base model away from its trigger). This is the "sum of scores" form of the
multi-LoRA composition methods (LoRA Composite, Zhong et al. 2024, averages the adapters' guided
scores instead; the average dilutes each effect by the number of adapters). It costs n + 1 U-Net
passes per call for n adapters; the fused sum costs one.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


def mix_ready(path: Any) -> bool | None:
    """Whether the Studio trained this adapter mix-ready (``preserve`` > 0; None: not a Studio
    adapter). Composite mixing suits mix-ready adapters: a plainly trained one changes prompts
    without its trigger too, and the composite adds that change in full."""
    import json

    from engines.adapters.lora_io import read_header

    try:
        meta = read_header(path)[1]
        # LoRA/FouRA: a "studio" JSON entry; SHiRA: one JSON value per key
        studio = json.loads(meta["studio"]) if "studio" in meta else {k: json.loads(v) for k, v in meta.items()
                                                                        if k == "preserve"}
    except (ValueError, OSError):
        return None
    if not isinstance(studio, dict) or not isinstance(studio.get("preserve"), (int, float)):
        return None
    return studio["preserve"] > 0


class CompositeMix:
    """Context manager: while open, ``loaded.pipe.unet`` computes the composite prediction of
    ``uses`` (``AdapterUse``s, applied one at a time by ``apply``, normally ``apply_adapters``
    in unfused mode so switching costs no weight rewrite for LoRA; SHiRA/FouRA switch by scatter).
    ``passes`` counts U-Net passes made (for benches and tests)."""

    def __init__(self, loaded: Any, uses: Sequence[Any], apply: Callable[..., Any] | None = None) -> None:
        from engines.adapters.apply import apply_adapters

        if len(uses) < 2:
            raise ValueError("a composite mix needs two or more adapters")
        self.loaded, self.uses = loaded, list(uses)
        self.apply = apply or apply_adapters
        self.passes = 0
        self.info: list[dict[str, Any]] = []
        self._orig: Any = None

    def __enter__(self) -> "CompositeMix":
        unet = self.loaded.pipe.unet
        self._orig = unet.forward
        # check every adapter fits (a clear error before any step), and record what was mixed
        for u in self.uses:
            info, _, undo = self.apply(self.loaded, [u], "unfused")
            undo()
            self.info += [i | {"mix_ready": mix_ready(u.path)} for i in info]
        unet.forward = self._forward  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.loaded.pipe.unet.forward = self._orig  # type: ignore[method-assign]

    def _one(self, uses: list[Any], args: tuple, kwargs: dict) -> torch.Tensor:
        _, _, undo = self.apply(self.loaded, uses, "unfused")
        try:
            out = self._orig(*args, **{**kwargs, "return_dict": False})[0]  # ε [B, C, h, w]
        finally:
            undo()
        self.passes += 1
        return out

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return_dict = kwargs.pop("return_dict", True)
        base = self._one([], args, kwargs)
        mix = base.clone()
        for u in self.uses:
            mix += self._one([u], args, kwargs) - base  # ε_base + Σ_i (ε_i − ε_base)
        return UNet2DConditionOutput(sample=mix) if return_dict else (mix,)

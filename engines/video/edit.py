"""One frame at a time through an InstructPix2Pix pipeline: what the engine streams through and
what the benchmark measures (the model's own frames, before any video codec)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from engines.video.attention import KeyFrameStore, install, uninstall


class FrameEditor:
    """Edits frames [H, W, 3] uint8 with one instruction and setting. Every frame gets the same
    noise (``seed``). With ``consistency="keyframes"`` cross-frame attention is installed on the
    U-Net for the editor's lifetime (use it as a context manager: the pipeline is shared and
    gets its own processors back): frame 0 — and every ``keyframe_every``-th frame, if set — is
    a key frame whose self-attention tokens the following frames also attend to.
    ``check`` is called before every denoising step (raise there to cancel).

    ``pipe`` is a teacher (``StableDiffusionInstructPix2PixPipeline``: three U-Net passes per step,
    batched as one call of batch 3) or a CFG-distilled student
    (:class:`engines.video.cfg.CFGDistilledIP2PPipeline`, from ``engine.load_ip2p``: one pass of
    batch 1, the scales fed as an embedding); the call and the parameters are the same. Cross-frame
    attention records and matches key-frame tokens per batch row, so it works at either batch."""

    def __init__(self, pipe: Any, instruction: str, *, text_guidance: float = 7.5, image_guidance: float = 1.5,
                 steps: int = 10, consistency: str = "keyframes", keyframe_every: int = 0, seed: int = 0,
                 check: Callable[[], None] = lambda: None) -> None:
        if consistency not in ("none", "keyframes"):
            raise ValueError(f"consistency must be 'none' or 'keyframes', not {consistency!r}")
        self.pipe, self.instruction, self.check = pipe, instruction, check
        self.kw = dict(num_inference_steps=steps, guidance_scale=text_guidance, image_guidance_scale=image_guidance)
        self.consistency, self.keyframe_every, self.seed = consistency, keyframe_every, seed
        self.store = KeyFrameStore()
        self.unet_passes_per_step = 1 if getattr(pipe, "cfg_distill", None) or not (
            text_guidance > 1 and image_guidance >= 1) else 3
        self._old: dict[str, Any] | None = None
        self._embeds: tuple[Any, Any] | None = None  # (instruction, "") text states, encoded once per clip
        self.i = 0

    def __enter__(self) -> "FrameEditor":
        if self.consistency == "keyframes":
            self._old = install(self.pipe.unet, self.store)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.store.reset()
        self.store.mode = "off"
        if self._old is not None:
            uninstall(self.pipe.unet, self._old)
            self._old = None

    def edit(self, frame: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 -> the edited frame [H, W, 3] uint8 (H, W multiples of 8)."""
        import torch
        from PIL import Image

        st = self.store
        if self._old is not None:
            key = self.i == 0 or bool(self.keyframe_every and self.i % self.keyframe_every == 0)
            if key:
                st.reset()
            st.mode, st.step = ("record" if key else "use"), 0

        def on_step(_p: Any, s: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            self.check()
            st.step = s + 1
            return kw

        self.check()
        gen = torch.Generator(device="cpu").manual_seed(self.seed)  # the same noise for every frame
        with torch.inference_mode():
            if self._embeds is None:  # the instruction is the same for every frame: encode it once
                enc = self.pipe._encode_prompt
                dev = self.pipe._execution_device
                self._embeds = (enc(self.instruction, dev, 1, False), enc("", dev, 1, False))  # [1, L, D] each
            pe, ne = self._embeds
            out = self.pipe(image=Image.fromarray(frame), prompt_embeds=pe, negative_prompt_embeds=ne, generator=gen,
                            callback_on_step_end=on_step, output_type="np", **self.kw).images[0]  # [H, W, 3] in [0, 1]
        self.i += 1
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)

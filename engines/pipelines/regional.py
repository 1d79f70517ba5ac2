"""Regional prompting: each region of the image denoised under its own prompt, in one U-Net pass.

Why: a small text encoder (and even SD1.5's) binds attributes poorly when one prompt names
several objects ("a red square and a blue circle" gives two red squares, or a purple blend). The
regional form of composable / multi-region diffusion (MultiDiffusion, Bar-Tal et al. 2023;
layout-grounded generation, Lian et al. 2023) sidesteps it: on every step the conditional
prediction is a per-pixel mix of the predictions under each region's prompt,
``ε_c(x) = Σ_r w_r ⊙ ε(x, text_r)``, with weights that sum to one at each latent pixel; the
unconditional half of classifier-free guidance is unchanged.

``Regional`` installs this on a U-Net through hooks on its call (a pre-hook registered first
widens the batch, a forward hook folds it back), so it composes with Clockwork (which sees and
caches the widened batch consistently on every step) and with composite adapter mixes (which
wrap ``forward``). Works for SD1.x/2.x-shaped U-Nets; extra conditioning tensors (SDXL's pooled
text and time ids) are repeated from each image's own conditional row.
"""
from __future__ import annotations

from typing import Any

import torch


class Regional:
    """Context manager: while open, each call of ``unet`` on a batch of B images (2B with
    classifier-free guidance, unconditional rows first, as diffusers pipelines order them) gives
    for image b the mix ``Σ_r weights[b, r] * ε(x_b, embeds[b, r])`` instead of its own
    conditional prediction.

    embeds: (B, R, L, D) text states per image and region (pad unused regions with any states
    and weight 0); weights: (B, R, h, w) at the latent resolution, summing to 1 over R."""

    def __init__(self, unet: Any, embeds: torch.Tensor, weights: torch.Tensor) -> None:
        if embeds.ndim != 4 or weights.ndim != 4 or embeds.shape[:2] != weights.shape[:2]:
            raise ValueError(f"embeds (B, R, L, D) and weights (B, R, h, w) disagree: {tuple(embeds.shape)} "
                             f"vs {tuple(weights.shape)}")
        self.unet, self.embeds, self.weights = unet, embeds, weights
        self.B, self.R = embeds.shape[:2]
        self._hooks: list[Any] = []
        self._lead: int | None = None  # unconditional rows of the current call (B with CFG, else 0)
        self.calls = 0

    def __enter__(self) -> "Regional":
        self._hooks.append(self.unet.register_forward_pre_hook(self._widen, with_kwargs=True, prepend=True))
        self._hooks.append(self.unet.register_forward_hook(self._fold, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    # -- hooks -----------------------------------------------------------------------------
    def _widen(self, _m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args, kwargs = list(args), dict(kwargs)
        sample = kwargs["sample"] if "sample" in kwargs else args[0]  # (N, C, h, w), N = B or 2B
        n = sample.shape[0]
        if n not in (self.B, 2 * self.B):
            raise RuntimeError(f"regional prompting was set up for {self.B} images, the U-Net got {n} rows")
        lead = self.B if n == 2 * self.B else 0  # unconditional rows kept as they are
        B, R = self.B, self.R

        def widen(t: Any) -> Any:
            """(N, ...) -> (lead + B·R, ...): each conditional row repeated per region."""
            if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != n:
                return t
            return torch.cat([t[:lead], t[lead:].repeat_interleave(R, dim=0)])

        ehs_key = "encoder_hidden_states"
        ehs = kwargs[ehs_key] if ehs_key in kwargs else args[2]  # (N, L, D)
        emb = self.embeds.to(ehs.dtype).to(ehs.device)  # (B, R, L', D)
        if emb.shape[-1] != ehs.shape[-1]:
            raise RuntimeError(f"region text states have width {emb.shape[-1]}, the U-Net expects {ehs.shape[-1]}")
        length = max(emb.shape[2], ehs.shape[1])
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[-2]))  # noqa: E731
        new_ehs = torch.cat([pad(ehs[:lead]), pad(emb.reshape(B * R, emb.shape[2], emb.shape[3]))])
        if "sample" in kwargs:
            kwargs["sample"] = widen(sample)
        else:
            args[0] = widen(sample)
        if len(args) > 1 and isinstance(args[1], torch.Tensor):
            args[1] = widen(args[1])
        if isinstance(kwargs.get("timestep"), torch.Tensor):
            kwargs["timestep"] = widen(kwargs["timestep"])
        if ehs_key in kwargs:
            kwargs[ehs_key] = new_ehs
        else:
            args[2] = new_ehs
        if isinstance(kwargs.get("added_cond_kwargs"), dict):
            kwargs["added_cond_kwargs"] = {k: widen(v) for k, v in kwargs["added_cond_kwargs"].items()}
        if kwargs.get("timestep_cond") is not None:
            kwargs["timestep_cond"] = widen(kwargs["timestep_cond"])
        self._lead = lead
        self.calls += 1
        return tuple(args), kwargs

    def _fold(self, _m: Any, _args: tuple, kwargs: dict, out: Any) -> Any:
        assert self._lead is not None
        lead = self._lead
        eps = out[0] if isinstance(out, tuple) else out.sample  # (lead + B·R, C, h, w)
        B, R = self.B, self.R
        per = eps[lead:].reshape(B, R, *eps.shape[1:])  # (B, R, C, h, w)
        w = self.weights.to(eps.dtype).to(eps.device)
        if w.shape[-2:] != eps.shape[-2:]:
            w = torch.nn.functional.interpolate(w, size=eps.shape[-2:], mode="bilinear", align_corners=False)
            w = w / w.sum(1, keepdim=True).clamp_min(1e-6)
        mixed = (per * w[:, :, None]).sum(1)  # (B, C, h, w)
        res = torch.cat([eps[:lead], mixed])
        if isinstance(out, tuple):
            return (res,) + tuple(out[1:])
        out.sample = res
        return out


def mix_weights(masks: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Per-pixel region weights (R, h, w) summing to 1 from soft region masks (R, h, w) in [0, 1].

    Inside region r its prompt dominates; where no region reaches (the background) every
    region's prompt — each of which describes the same background there — counts equally."""
    m = masks.clamp(0, 1)  # (R, h, w)
    m = m + (1 - m.amax(0, keepdim=True)) / m.shape[0] + floor
    return m / m.sum(0, keepdim=True)


@torch.no_grad()
def encode_texts(pipe: Any, texts: list[str]) -> torch.Tensor:
    """(N, L, D) text-encoder states for ``texts`` as the pipeline would encode a prompt."""
    embeds, _ = pipe.encode_prompt(texts, pipe.device, 1, False)
    return embeds


def build(pipe: Any, captions: list[list[str]], masks: list[Any], own: list[str]) -> Regional | None:
    """A ``Regional`` for a batch: image b has regions ``captions[b]`` with soft masks
    ``masks[b]`` ((R_b, h, w) at the latent resolution); an image with no regions keeps its own
    prompt ``own[b]`` everywhere. None when no image has two or more regions (plain is the same
    and cheaper)."""
    if max((len(c) for c in captions), default=0) < 2:
        return None
    R = max(len(c) for c in captions)
    h, w = next(m.shape[-2:] for m, c in zip(masks, captions) if len(c) >= 2)
    texts: list[str] = []
    weights = torch.zeros(len(captions), R, h, w)  # (B, R, h, w)
    for b, (caps, m) in enumerate(zip(captions, masks)):
        if len(caps) < 1:
            caps, wb = [own[b]], torch.ones(1, h, w)
        else:
            wb = mix_weights(torch.as_tensor(m, dtype=torch.float32))  # (R_b, h, w)
        texts += caps + [caps[0]] * (R - len(caps))  # padding regions carry weight 0
        weights[b, :len(caps)] = wb
    embeds = encode_texts(pipe, texts)  # (B·R, L, D)
    return Regional(pipe.unet, embeds.reshape(len(captions), R, *embeds.shape[1:]), weights)

"""Cross-frame attention: each frame's self-attention also attends to its key frame.

Frames are edited one at a time (streaming), so the key frame's self-attention inputs are
recorded per layer and per denoising step while the key frame is edited, and every later
frame concatenates them to its own keys and values at the same layer and step. Appearance
decided on the key frame (the new colour, texture) is then looked up rather than re-invented
per frame, which is what keeps edits steady across frames. Tokens are [B, N, C] with the
pipeline's batch: 3 for a guided teacher (each guidance branch attends to its own key-frame
branch), 1 for a CFG-distilled student; a frame whose batch differs from the recorded key frame's
just uses its own tokens. Cross-attention (text) layers keep
diffusers' own processor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class KeyFrameStore:
    """Recorded key-frame tokens: (layer, step) -> hidden states [B, N, C]."""

    mode: str = "off"  # off | record | use
    step: int = 0
    tokens: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tokens.values())

    def reset(self) -> None:
        self.tokens.clear()


class CrossFrameAttnProcessor:
    def __init__(self, store: KeyFrameStore, name: str, fallback: Any) -> None:
        self.store, self.name, self.fallback = store, name, fallback

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        st = self.store
        if encoder_hidden_states is not None or st.mode == "off" or hidden_states.ndim != 3 or \
                attention_mask is not None or attn.spatial_norm is not None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        key = (self.name, st.step)
        ctx = hidden_states  # [B, N, C]
        if st.mode == "record":
            st.tokens[key] = hidden_states.detach()
        elif st.mode == "use" and key in st.tokens and st.tokens[key].shape == hidden_states.shape:
            ctx = torch.cat([hidden_states, st.tokens[key]], dim=1)  # [B, 2N, C]
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            ctx = attn.group_norm(ctx.transpose(1, 2)).transpose(1, 2)
        b, n, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(ctx), attn.to_v(ctx)
        h = attn.heads
        q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))  # [B, heads, N, d]
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d]
        out = out.transpose(1, 2).reshape(b, n, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(unet: torch.nn.Module, store: KeyFrameStore) -> dict[str, Any]:
    """Put cross-frame processors on every self-attention (attn1); returns the old processors
    so :func:`uninstall` can put them back (the cached pipeline is shared across jobs)."""
    old = dict(unet.attn_processors)
    new = {name: CrossFrameAttnProcessor(store, name, proc) if name.endswith("attn1.processor") else proc
           for name, proc in old.items()}
    unet.set_attn_processor(new)
    return old


def uninstall(unet: torch.nn.Module, old: dict[str, Any]) -> None:
    unet.set_attn_processor(old)

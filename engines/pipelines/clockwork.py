"""Clockwork Diffusion for any diffusers ``UNet2DConditionModel``.

The U-Net is split at a downsampling: with ``depth`` d ≥ 1, the high-res part (conv_in, time
embedding, ``down_blocks[:d]``, ``up_blocks[-d:]``, output head) runs every step; the low-res
part (``down_blocks[d:]``, ``mid_block``, ``up_blocks[:-d]``) runs only on clock steps (every
``period`` calls, the first always). On the other steps each low-res block returns what
it produced at the last full step (training-free "reuse"), or — in "adaptor" mode — the
low-res output ``r_out`` (the output of ``up_blocks[-d-1]``, which feeds ``up_blocks[-d]``)
is predicted by a light adaptor φ(r_in, r_out(t+1), t_emb, pooled text), where ``r_in``
is this step's output of ``down_blocks[d-1]``. Depth 1 (the first downsampling) is the
paper's split for SD; a deeper cut recomputes more each step (slower cheap steps, smaller
error) — which one pays off depends on where a model spends its time, so it is measured
per model (``bench/clockwork.py``) rather than fixed.

Depth 0 cuts inside the top level: only conv_in, the last layer of ``up_blocks[-1]`` (its
last resnet and, in SD's cross-attention blocks, the attention after it) and the head run
every step; ``r_out`` is the output of the layer before that one and ``r_in`` is conv_in's
output (full resolution; the adaptor strides it down). This is the cheapest cheap step a
U-Net allows (DeepCache's branch 0 recomputes the same layers), so on small U-Nets whose
cost sits in the low-res levels it is the cut where a learned adaptor can buy speed.

Block lists come from the model itself, so SD1.x/2.x/SDXL and the embedded model all work.
Patches are installed only inside ``with Clockwork(...)`` and removed on exit.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ClockworkAdaptor(nn.Module):
    """φ: stride-2 conv over r_out(t+1) (full res) + 1×1 over r_in (half res), plus projected
    t-embedding and pooled text, two t-conditioned ResBlocks, transposed conv back, and a
    residual onto r_out(t+1). Small by design (a few % of the U-Net)."""

    def __init__(self, c_out: int, c_in: int, t_dim: int, text_dim: int, hidden: int = 64, depth: int = 1) -> None:
        super().__init__()
        self.config = {"c_out": c_out, "c_in": c_in, "t_dim": t_dim, "text_dim": text_dim, "hidden": hidden,
                       "depth": depth}
        self.down = nn.Conv2d(c_out, hidden, 3, stride=2, padding=1)
        # depth ≥ 1: r_in is already at half resolution; depth 0: r_in is conv_in's full-res output
        self.inp = nn.Conv2d(c_in, hidden, 1) if depth >= 1 else nn.Conv2d(c_in, hidden, 3, stride=2, padding=1)
        self.cond = nn.Linear(t_dim + text_dim, hidden)
        self.blocks = nn.ModuleList([_ResBlock(hidden, t_dim + text_dim) for _ in range(2)])
        self.up = nn.ConvTranspose2d(hidden, c_out, 4, stride=2, padding=1)
        nn.init.zeros_(self.up.weight)  # starts as identity reuse
        nn.init.zeros_(self.up.bias)

    def forward(self, r_in: torch.Tensor, r_prev: torch.Tensor, temb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # r_in: [B, c_in, h/2, w/2] (depth 0: [B, c_in, h, w])  r_prev: [B, c_out, h, w]
        # temb: [B, t_dim]  text: [B, text_dim]
        cond = torch.cat([temb, text], -1)  # [B, t_dim + text_dim]
        x = self.down(r_prev)  # [B, hidden, h/2, w/2]
        xi = self.inp(r_in)  # [B, hidden, h/2, w/2]
        if x.shape[-2:] != xi.shape[-2:]:
            x = nn.functional.interpolate(x, size=xi.shape[-2:], mode="nearest")
        x = x + xi + self.cond(cond)[:, :, None, None]
        for blk in self.blocks:
            x = blk(x, cond)
        d = self.up(x)  # [B, c_out, h, w]
        if d.shape[-2:] != r_prev.shape[-2:]:
            d = nn.functional.interpolate(d, size=r_prev.shape[-2:], mode="nearest")
        return r_prev + d


class _ResBlock(nn.Module):
    def __init__(self, ch: int, cond_dim: int) -> None:
        super().__init__()
        groups = 8 if ch % 8 == 0 else 1
        self.n1 = nn.GroupNorm(groups, ch)
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.t = nn.Linear(cond_dim, ch)
        self.n2 = nn.GroupNorm(groups, ch)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.c1(nn.functional.silu(self.n1(x)))
        h = h + self.t(cond)[:, :, None, None]
        h = self.c2(nn.functional.silu(self.n2(h)))
        return x + h


def adaptor_for(unet: Any, hidden: int = 64, depth: int = 1) -> ClockworkAdaptor:
    """An untrained adaptor sized for ``unet`` cut at ``depth``."""
    _check_depth(unet, depth)
    c_out = _up_out_channels(unet, depth)
    c_in = unet.conv_in.out_channels if depth == 0 else unet.config.block_out_channels[depth - 1]
    t_dim = unet.time_embedding.linear_2.out_features
    text_dim = unet.config.cross_attention_dim
    if isinstance(text_dim, (list, tuple)):
        text_dim = text_dim[0]
    return ClockworkAdaptor(c_out, c_in, t_dim, int(text_dim), hidden, depth)


def _check_depth(unet: Any, depth: int) -> None:
    if depth < 0 or len(unet.down_blocks) <= depth or len(unet.up_blocks) <= depth:
        raise ValueError(f"Clockwork depth {depth} needs a U-Net with more than {depth} resolution levels")
    if depth == 0 and len(unet.up_blocks[-1].resnets) < 2:
        raise ValueError("Clockwork depth 0 needs at least two layers in the last up block")


def _top_layers(unet: Any) -> list[Any]:
    """``up_blocks[-1]``'s layers in call order (resnet, then its attention if the block has them)."""
    blk = unet.up_blocks[-1]
    attns = list(getattr(blk, "attentions", None) or [])
    out: list[Any] = []
    for i, r in enumerate(blk.resnets):
        out.append(r)
        if i < len(attns):
            out.append(attns[i])
    return out


def _top_cached(unet: Any) -> list[Any]:
    """Depth 0: the layers of ``up_blocks[-1]`` before its last resnet (skipped on cheap steps)."""
    layers = _top_layers(unet)
    return layers[:layers.index(unet.up_blocks[-1].resnets[-1])]


def r_in_block(unet: Any, depth: int = 1) -> Any:
    """The module whose output is the low-res path's input at ``depth``."""
    return unet.conv_in if depth == 0 else unet.down_blocks[depth - 1]


def r_out_block(unet: Any, depth: int = 1) -> Any:
    """The module whose output is the low-res path's result at ``depth``."""
    return _top_cached(unet)[-1] if depth == 0 else unet.up_blocks[-depth - 1]


def _up_out_channels(unet: Any, depth: int = 1) -> int:
    if depth == 0:
        return unet.up_blocks[-1].resnets[-2].out_channels
    blk = r_out_block(unet, depth)
    if getattr(blk, "upsamplers", None):
        return blk.upsamplers[0].channels
    return blk.resnets[-1].out_channels


def first_tensor(out: Any) -> torch.Tensor:
    """A block's output tensor (down blocks return tuples, attentions ``(hidden,)`` or an output object)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return out[0]
    return out.sample


class Clockwork:
    """Context manager installing the clock on ``unet`` for one pipeline call.

    mode: "reuse" (identity adaptor) or "adaptor" (needs ``adaptor``; its depth is used).
    ``depth``: resolution levels that run every step (reuse mode).
    ``warmup``: the first calls of each trajectory that always run in full (the coarse layout forms
    there). A candidate for images drawn region by region; on the embedded model a shorter period
    kept binding better at the same cost (docs/embedded-world.md), so the shipped profile uses none.
    After the call, ``full_steps`` / ``cheap_steps`` say what ran.
    """

    def __init__(self, unet: Any, period: int = 2, mode: str = "reuse", adaptor: ClockworkAdaptor | None = None,
                 depth: int = 1, warmup: int = 0) -> None:
        if period < 1:
            raise ValueError("clock period must be ≥ 1")
        if warmup < 0:
            raise ValueError("clock warmup must be ≥ 0")
        if mode == "adaptor" and adaptor is None:
            raise ValueError("adaptor mode needs a trained adaptor")
        if mode == "adaptor":
            depth = int(adaptor.config.get("depth", 1))  # type: ignore[union-attr]
        _check_depth(unet, depth)
        self.unet = unet
        self.depth = depth
        self.period = period
        self.warmup = warmup
        self.mode = mode
        self.adaptor = adaptor
        # down_blocks[d-1]'s downsampler only feeds the low-res path: reuse skips it too; the
        # adaptor needs it fresh (its output is r_in)
        cut = r_in_block(unet, depth)
        if depth == 0:
            self.low = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks[:-1]) + _top_cached(unet)
        else:
            first_down = list(getattr(cut, "downsamplers", None) or []) if mode == "reuse" else []
            self.low = first_down + list(unet.down_blocks[depth:]) + [unet.mid_block] + list(unet.up_blocks[:-depth])
        self.r_out_block = r_out_block(unet, depth)
        self.r_in_block = cut
        self.calls = 0
        self.full = True
        self.full_steps = 0
        self.cheap_steps = 0
        self.cache: dict[int, Any] = {}
        self._saved: list[tuple[nn.Module, Any]] = []
        self._hooks: list[Any] = []
        self._r_in: torch.Tensor | None = None
        self._temb: torch.Tensor | None = None
        self._text: torch.Tensor | None = None
        self._last_t: float | None = None
        self._batch: int | None = None

    # -- install / remove ----------------------------------------------------------------
    def __enter__(self) -> "Clockwork":
        self._hooks.append(self.unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True))
        self._hooks.append(self.r_in_block.register_forward_hook(self._grab_r_in))
        self._hooks.append(self.unet.time_embedding.register_forward_hook(self._grab_temb))
        for m in self.low:
            orig = m.forward
            self._saved.append((m, orig))
            m.forward = self._patched(m, orig)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        for m, orig in self._saved:
            m.forward = orig  # type: ignore[method-assign]
        self._hooks.clear()
        self._saved.clear()
        self.cache.clear()

    # -- hooks -----------------------------------------------------------------------------
    def _on_unet_call(self, _m: nn.Module, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t_val = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t) if t is not None else None
        sample = kwargs.get("sample", args[0] if args else None)
        batch = sample.shape[0] if isinstance(sample, torch.Tensor) else None
        # A new trajectory (timesteps only fall within one) or a new batch shape restarts the clock.
        if (t_val is not None and self._last_t is not None and t_val >= self._last_t) or batch != self._batch:
            self.calls = 0
            self.cache.clear()
        self._last_t, self._batch = t_val, batch
        self.full = self.calls < self.warmup or (self.calls - self.warmup) % self.period == 0 or not self.cache
        self.calls += 1
        if self.full:
            self.full_steps += 1
        else:
            self.cheap_steps += 1
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        self._text = ehs.mean(1) if ehs is not None else None  # [B, D] pooled text

    def _grab_r_in(self, _m: nn.Module, _inp: Any, out: Any) -> None:
        self._r_in = first_tensor(out)

    def _grab_temb(self, _m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        self._temb = out

    def _patched(self, m: nn.Module, orig: Any) -> Any:
        key = id(m)
        is_r_out = m is self.r_out_block

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.full:
                out = orig(*args, **kwargs)
                self.cache[key] = out
                return out
            cached = self.cache[key]
            if is_r_out and self.mode == "adaptor":
                assert self.adaptor is not None and self._r_in is not None and self._temb is not None
                prev = first_tensor(cached)
                text = self._text if self._text is not None else torch.zeros(
                    prev.shape[0], self.adaptor.config["text_dim"], device=prev.device, dtype=prev.dtype)
                est = self.adaptor(self._r_in, prev, self._temb.to(prev.dtype), text.to(prev.dtype))
                out = est if isinstance(cached, torch.Tensor) else (est,) if isinstance(cached, tuple) else \
                    type(cached)(sample=est)
                self.cache[key] = out  # chain: the next cheap step starts from this estimate
                return out
            return cached

        return forward


def _entry(profile: dict[str, Any] | None, sampler: str, steps: int, mode: str) -> dict[str, Any] | None:
    """The profile entry for (sampler, mode) at the largest measured step count ≤ ``steps``."""
    table = ((profile or {}).get("choices") or {}).get(sampler) or {}
    below = sorted((int(k) for k, v in table.items() if str(k).isdigit() and mode in (v or {}) and int(k) <= steps))
    return (table[str(below[-1])][mode] or {}) if below else None


def choose_setting(profile: dict[str, Any] | None, sampler: str, steps: int, mode: str,
                   regional: bool = False, sub: str | None = None) -> dict[str, Any]:
    """The measured Clockwork setting for (sampler, steps, mode) from a model's profile:
    ``{"period": P | None, "depth": d, "adaptor": file name | None, "warmup": w}``.

    Profile: {"choices": {sampler: {str(steps): {mode: {"period": P, "depth": d, "adaptor": F,
    "layout": {...}}}}}}. An unmeasured step count takes the choice of the largest measured count
    below it (fewer steps tolerate less skipping, so never borrow from a longer schedule); an
    unmeasured sampler gets nothing (error depends on the solver). ``adaptor`` names an adaptor
    file beside the model's weights (a plain ``*.safetensors`` name; anything else is ignored), so
    one model can carry adaptors distilled for different step counts. With ``regional`` (an image
    drawn region by region, where the clock that keeps single objects costs binding) the entry's
    ``layout`` sub-setting (written by ``studio bench layout --write-profile``) replaces it when
    there is one; ``sub`` names another sub-setting (``holding``: single objects under
    ``clockwork=auto``) to read the same way."""
    import re

    sub = "layout" if regional else sub

    out: dict[str, Any] = {"period": None, "depth": 1, "adaptor": None, "warmup": 0}
    entry = _entry(profile, sampler, steps, mode)
    if entry is None:
        return out
    if sub and isinstance(entry.get(sub), dict):
        entry = entry[sub]
    p, d, a, w = entry.get("period"), entry.get("depth"), entry.get("adaptor"), entry.get("warmup")
    if isinstance(p, int) and (1 if sub else 2) <= p <= 16:  # 1: a sub-setting that runs in full
        out["period"] = p
    if isinstance(d, int) and 0 <= d <= 4:
        out["depth"] = d
    if isinstance(a, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,100}\.safetensors", a) and not a.startswith("."):
        out["adaptor"] = a
    if isinstance(w, int) and 0 <= w <= steps:
        out["warmup"] = w
    return out


def holding_setting(profile: dict[str, Any] | None, sampler: str, steps: int, mode: str,
                    regional: bool = False) -> dict[str, Any] | None:
    """The profile's quality-holding setting for (sampler, steps, mode), in ``choose_setting``'s
    form: for images of one object the entry's ``holding`` sub-setting, for images drawn region by
    region its ``layout`` one — each chosen by ``studio bench layout --write-profile`` to keep
    the quality of those images (single objects with every attribute right; colour binding and
    relations) within tolerance of Clockwork off, on the templates and on other wordings. None
    where the profile has none (``clockwork=auto`` then runs such images without Clockwork)."""
    sub = "layout" if regional else "holding"
    if not isinstance((_entry(profile, sampler, steps, mode) or {}).get(sub), dict):
        return None
    return choose_setting(profile, sampler, steps, mode, sub=sub)


def auto_setting(profile: dict[str, Any] | None, sampler: str, steps: int,
                 adaptor_ok: Any) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """What ``clockwork=auto`` runs: (mode, setting for images of one object, setting for images
    drawn region by region), preferring the adaptor (more quality per skipped step) where
    ``adaptor_ok(file name | None)`` finds its file, else reuse; regional images run in full
    (period 1, same adaptor) where no layout setting was measured. None: nothing qualifies."""
    for mode in ("adaptor", "reuse"):
        s = holding_setting(profile, sampler, steps, mode)
        if s is None or (s["period"] or 1) < 2 or (mode == "adaptor" and not adaptor_ok(s.get("adaptor"))):
            continue
        return mode, s, holding_setting(profile, sampler, steps, mode, regional=True) or s | {"period": 1, "warmup": 0}
    return None


def choose_period(profile: dict[str, Any] | None, sampler: str, steps: int, mode: str, default: int = 2) -> int:
    """The measured period for (sampler, steps, mode), else ``default`` (see ``choose_setting``)."""
    p = choose_setting(profile, sampler, steps, mode)["period"]
    return default if p is None else int(p)


def load_adaptor(path: Any, device: str = "cpu", dtype: Any = None) -> ClockworkAdaptor:
    """Load an adaptor saved by ``save_adaptor`` (safetensors with its config in the metadata)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "clockwork_config" not in meta:
        raise ValueError(f"{path} is not a Clockwork adaptor (no clockwork_config metadata)")
    cfg = json.loads(meta["clockwork_config"])
    a = ClockworkAdaptor(**cfg)
    a.load_state_dict(load_file(str(path)))
    return a.to(device=device, dtype=dtype).eval()


def save_adaptor(adaptor: ClockworkAdaptor, path: Any, extra: dict[str, Any] | None = None) -> None:
    import json

    from safetensors.torch import save_file

    meta = {"clockwork_config": json.dumps(adaptor.config)} | {k: json.dumps(v) for k, v in (extra or {}).items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in adaptor.state_dict().items()}, str(path), metadata=meta)

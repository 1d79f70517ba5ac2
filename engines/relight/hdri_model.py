"""The embedded text → 360° HDR panorama model (EdgeRelight360's generator, at CPU size).

Two parts, both working in the **PQ domain** (SMPTE ST 2084, ``engines.relight.pq``): linear
radiance in nits is PQ-encoded to codes in [0, 1], so a sun ~thousands of times brighter than
the sky is a code near 0.9 next to a sky near 0.2 instead of a number 10³ times larger.

* ``PQAutoencoder`` — a small convolutional autoencoder on PQ maps (3 × 64 × 128 →
  8 × 8 × 16 latents, 8× down).
* a tiny ``diffusers.UNet2DConditionModel`` (the same code shape as Stable Diffusion) over
  those latents (plus 3 azimuth/elevation coordinate channels, ``coord_map``), cross-attending to ``WordTextEncoder`` states: a word tokenizer (vocabulary
  = the envworld caption words and their paraphrases; unknown words are dropped, never an
  error) and a 2-layer transformer. Classifier-free guidance (trained with caption dropout);
  the negative prompt is the unconditional branch.

Seamless wrap: every convolution of both networks pads circularly along the width (azimuth)
and by replication along the height (poles) — ``make_seamless``; attention is global, so the
equirectangular seam is not special anywhere in the model.

Public API (used by the engine wrapper): :func:`load`, :class:`HDRIModel` (``generate``,
``unknown_words``), :class:`GenerationCancelled`, :data:`DEFAULT_DIR`, :func:`evaluate`.
Nothing is held in module globals.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.relight import envworld, metrics, pq
from engines.relight.sphere import rotate_yaw, to_angles

DEFAULT_DIR = Path(__file__).resolve().parent / "weights" / "hdri"
NATIVE_W, NATIVE_H = 128, 64
MAX_TOKENS = 32
PAD, BOS = 0, 1  # token ids; words start at 2
TEXT_DIM = 128
EVAL_SEED_BASE = 900_000_000  # held-out scenes (training uses seeds below 100 000 000)
PARA_SEED_BASE = 950_000_000  # held-out scenes for the paraphrase set


class GenerationCancelled(RuntimeError):
    """Raised by :meth:`HDRIModel.generate` when ``is_cancelled()`` returns True (checked before
    every denoising step and before decoding)."""


# -- seamless convolutions -------------------------------------------------------------------
class SeamlessConv2d(nn.Conv2d):
    """A Conv2d whose padding is circular along W (azimuth wraps) and replicate along H (poles).
    Same parameters/state_dict as ``nn.Conv2d``."""

    seam_pad: tuple[int, int] = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ph, pw = self.seam_pad
        if pw:
            x = F.pad(x, (pw, pw, 0, 0), mode="circular")
        if ph:
            x = F.pad(x, (0, 0, ph, ph), mode="replicate")
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def make_seamless(module: nn.Module) -> nn.Module:
    """Turn every padded ``nn.Conv2d`` inside ``module`` into a :class:`SeamlessConv2d` in place
    (weights untouched). Works on diffusers U-Nets as well as our own modules."""
    for m in module.modules():
        if type(m) is nn.Conv2d and m.padding != (0, 0):
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise ValueError(f"unsupported conv padding {m.padding!r}/{m.padding_mode}")
            m.__class__ = SeamlessConv2d
            m.seam_pad = tuple(int(p) for p in m.padding)  # type: ignore[assignment]
            m.padding = (0, 0)
    return module


# -- autoencoder -----------------------------------------------------------------------------
def _conv(i: int, o: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, stride=stride, padding=k // 2)


class ResBlock(nn.Module):
    def __init__(self, i: int, o: int, groups: int = 8) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(groups, i), _conv(i, o)
        self.n2, self.c2 = nn.GroupNorm(groups, o), _conv(o, o)
        self.skip = nn.Conv2d(i, o, 1) if i != o else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class PQAutoencoder(nn.Module):
    """PQ map (B, 3, H, W) in [0, 1] ↔ latents (B, C, H/8, W/8). Decoder output is a PQ code
    (clamp to [0, 1] before ``pq.decode``)."""

    def __init__(self, ch: tuple[int, ...] = (16, 32, 64, 64), latent_channels: int = 8) -> None:
        super().__init__()
        enc: list[nn.Module] = [_conv(3, ch[0]), ResBlock(ch[0], ch[0])]
        for a, b in zip(ch, ch[1:]):
            enc += [_conv(a, b, stride=2), ResBlock(b, b)]
        enc += [nn.GroupNorm(8, ch[-1]), nn.SiLU(), _conv(ch[-1], latent_channels)]
        dec: list[nn.Module] = [_conv(latent_channels, ch[-1]), ResBlock(ch[-1], ch[-1])]
        for a, b in zip(ch[::-1], ch[::-1][1:]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(a, b), ResBlock(b, b)]
        dec += [nn.GroupNorm(8, ch[0]), nn.SiLU(), _conv(ch[0], 3)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.down = 2 ** (len(ch) - 1)
        make_seamless(self)

    def encode(self, code: torch.Tensor) -> torch.Tensor:
        return self.encoder(code * 2 - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * 0.5 + 0.5


# -- text ------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


class WordTokenizer:
    """Whole-word tokenizer over a fixed vocabulary; unknown words are dropped."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = list(vocab)
        self.ids = {w: i + 2 for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab) + 2

    def unknown(self, text: str) -> list[str]:
        out: list[str] = []
        for w in words(text):
            if w not in self.ids and w not in out:
                out.append(w)
        return out

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Padded ids [N, MAX_TOKENS]: BOS then the known words (truncated)."""
        out = torch.full((len(texts), MAX_TOKENS), PAD, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [BOS] + [self.ids[w] for w in words(t) if w in self.ids]
            ids = ids[:MAX_TOKENS]
            out[i, :len(ids)] = torch.tensor(ids)
        return out


class WordTextEncoder(nn.Module):
    """Token embeddings + positions → a small bidirectional transformer → states [N, L, D]."""

    def __init__(self, vocab_size: int, dim: int = TEXT_DIM, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(MAX_TOKENS, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.tr = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.tok(ids) + self.pos.weight[None, : ids.shape[1]]
        x = self.tr(x, src_key_padding_mask=ids == PAD)
        return self.norm(x) * (ids != PAD)[..., None]


def build_unet(cfg: dict[str, Any]):  # noqa: ANN201 - diffusers type
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=(cfg["latent_h"], cfg["latent_w"]),
        in_channels=cfg["latent_channels"] + COORD_CHANNELS + int(cfg.get("layout_channels", 0)),
        out_channels=cfg["latent_channels"],
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(cfg["unet_channels"]), layers_per_block=1, cross_attention_dim=TEXT_DIM,
        attention_head_dim=8, norm_num_groups=8, addition_embed_type="text", addition_embed_type_num_heads=4,
    )
    return make_seamless(unet)


COORD_CHANNELS = 3


def coord_map(h: int, w: int) -> torch.Tensor:
    """(1, 3, h, w): sin φ, cos φ (azimuth) and cos θ (= sin elevation) at the cell centres, in
    the ``sphere`` frame. Circular padding makes the convolutions blind to absolute azimuth
    (a roll of the input just rolls the output), so without these channels the U-Net could not
    put a light "on my left"; sin/cos wrap, so they add no seam."""
    theta = math.pi * (torch.arange(h, dtype=torch.float32) + 0.5) / h
    phi = 2 * math.pi * ((torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5)
    return torch.stack([torch.sin(phi)[None].expand(h, w), torch.cos(phi)[None].expand(h, w),
                        torch.cos(theta)[:, None].expand(h, w)])[None]


def with_coords(lat: torch.Tensor, layout: torch.Tensor | None = None) -> torch.Tensor:
    """The U-Net's input: latents (B, C, h, w) plus the coordinate channels (and, for models
    with a light layout, its (B, 1, h, w) spot channel)."""
    c = coord_map(lat.shape[2], lat.shape[3]).to(lat.device, lat.dtype)
    parts = [lat, c.expand(lat.shape[0], -1, -1, -1)]
    if layout is not None:
        parts.append(layout.to(lat.device, lat.dtype))
    return torch.cat(parts, 1)


def scheduler_config() -> dict[str, Any]:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction", steps_offset=1)


def default_config(vocab: list[str]) -> dict[str, Any]:
    return {"format": "studio-hdri-1", "native_width": NATIVE_W, "native_height": NATIVE_H, "latent_channels": 8,
            "latent_h": NATIVE_H // 8, "latent_w": NATIVE_W // 8, "ae_channels": [16, 32, 64, 64],
            "unet_channels": [40, 80, 120], "text_layers": 2, "latent_scale": 1.0, "vocab": vocab,
            "scheduler": scheduler_config()}


# -- captions and paraphrases ----------------------------------------------------------------
# Ways to say each part of a direction; the first of each list is envworld's own wording.
SIDE_WORDS = {
    "front": ["in front of me", "in front", "ahead of me", "ahead", "facing me", "before me"],
    "behind": ["behind me", "behind", "at my back", "from behind", "behind my back", "back"],
    "left": ["on my left", "on the left", "to my left", "left side", "to the left", "from the left", "on my left side"],
    "right": ["on my right", "on the right", "to my right", "right side", "to the right", "from the right",
              "on my right side"],
}
ABOVE_WORDS = ["right above me", "overhead", "above", "directly above", "straight above me", "above me",
               "directly overhead", "straight up"]
HEIGHT_WORDS = {"low": ["low", "low down", "near the horizon", "on the horizon", "low in the sky"],
                "high": ["high", "high up", "high in the sky", "up high"], "mid": ["", "", "mid height", "halfway up"]}
KIND_WORDS = {
    "sun": ["sunny day, the sun", "a clear blue sky, the sun", "noon sun", "midday sun", "bright sunshine from",
            "sun", "the sun", "daylight, sun", "sunny sky with the sun", "summer sun", "a blue sky and the sun"],
    "sunset": ["sunset, the sun", "sunset", "dusk", "evening sun", "golden hour", "sundown", "setting sun",
               "orange sunset", "golden hour, warm sun", "evening, sun setting", "twilight sun"],
    "night": ["night, the moon", "moonlit night", "the moon", "moonlight", "night sky with the moon", "a full moon",
              "dark night, moon", "nighttime, moon"],
    "studio": ["studio with a {c} light", "a {c} studio light", "{c} key light", "a {c} softbox",
               "photo studio, {c} lamp", "{c} spotlight", "a {c} light"],
    "room": ["a room with a window", "window", "indoor window light", "daylight from a window", "interior, window",
             "a bright window", "window light"],
}
OVERCAST_WORDS = ["overcast", "cloudy", "a grey sky", "overcast sky", "cloudy day", "an overcast sky, soft light",
                  "grey overcast day, diffuse light", "clouds, even light"]
COLOR_WORDS = {"white": ["white", "neutral"], "warm": ["warm", "tungsten", "warm yellow"], "cool": ["cool", "cold"],
               "red": ["red"], "green": ["green"], "blue": ["blue"], "orange": ["orange", "amber"],
               "purple": ["purple", "violet"]}
EXTRA_WORDS = ["and", "with", "light", "lit", "from", "my", "me", "the", "a", "sky", "bright", "soft", "day",
               "lamp", "left", "right", "front", "sunlight", "sunrise", "morning", "dawn", "moon", "lights",
               "environment", "hdri", "panorama", "scene", "outdoors", "outside", "indoors", "inside", "yellow",
               "pink", "strong", "dim", "dark", "hard", "key", "fill", "rim", "is", "of", "in", "on", "at", "to"]


def _direction_class(d: np.ndarray) -> tuple[str, list[str]]:
    """(height class, side keys) with envworld.where's thresholds."""
    el, az = (math.degrees(float(v)) for v in to_angles(np.asarray(d, float)))
    if el > 70:
        return "above", []
    a = abs(az)
    lr = "left" if az > 0 else "right"
    if a <= 30:
        sides = ["front"]
    elif a >= 150:
        sides = ["behind"]
    elif 60 <= a <= 120:
        sides = [lr]
    else:
        sides = ["front" if a < 60 else "behind", lr]
    return ("low" if el < 15 else "high" if el > 45 else "mid"), sides


def where_paraphrase(d: np.ndarray, rng: np.random.Generator, drop_height: bool = False) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    height, sides = _direction_class(d)
    if height == "above":
        return pick(ABOVE_WORDS)
    side = " ".join(pick(SIDE_WORDS[s]) for s in sides)
    if len(sides) == 2 and rng.random() < 0.3:
        side = f"{sides[0]} {sides[1]}".replace("behind", "back")  # "front left", "back right"
    h = "" if drop_height else pick(HEIGHT_WORDS[height])
    return f"{h} {side}".strip() if rng.random() < 0.7 else f"{side} {h}".strip()


def paraphrase(meta: dict[str, Any], rng: np.random.Generator) -> str:
    """A free wording of the scene's dominant light (and extra studio lights) with the phrase
    variants above: "sunset behind me on the left", "a red studio light to my right"."""
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    kind = meta["kind"]
    if kind == "overcast":
        return pick(OVERCAST_WORDS)
    lights = meta["lights"]
    dom = lights[meta["dominant"]]
    drop_h = kind in ("sunset", "room") and rng.random() < 0.5  # always low anyway
    w = where_paraphrase(np.array(dom["direction"]), rng, drop_h)
    head = pick(KIND_WORDS[kind]).replace("{c}", pick(COLOR_WORDS.get(dom["color"], [dom["color"]])))
    text = f"{head} {w}" if rng.random() < 0.8 else f"{w}, {head}"
    if kind == "studio":
        for j, o in enumerate(lights):
            if j != meta["dominant"]:
                text += f", {pick(['a', 'and a', 'plus a'])} {pick(COLOR_WORDS[o['color']])} " \
                        f"{pick(['light', 'fill light', 'lamp'])} {where_paraphrase(np.array(o['direction']), rng)}"
    return text


def scene_from_meta(meta: dict[str, Any]) -> envworld.EnvScene:
    lights = [envworld.Light(lt["kind"], np.array(lt["direction"], float), tuple(lt["rgb"]), lt["color"],
                             float(lt["nits"]), float(lt["size_deg"])) for lt in meta["lights"]]
    return envworld.EnvScene(meta["kind"], lights, dict(meta["sky"]), meta.get("seed", 0))


def transform_meta(meta: dict[str, Any], yaw: float, flip: bool) -> dict[str, Any]:
    """The metadata of the map rolled by ``yaw`` radians of azimuth (then mirrored left↔right)."""
    out = dict(meta, lights=[])
    for lt in meta["lights"]:
        d = rotate_yaw(np.array(lt["direction"], float), yaw)
        if flip:
            d = d * np.array([-1.0, 1.0, 1.0])
        out["lights"].append(dict(lt, direction=[float(v) for v in d]))
    return out


def describe(meta: dict[str, Any], rng: np.random.Generator, p_paraphrase: float = 0.5) -> str:
    """A training caption: envworld's own wording, or (with ``p_paraphrase``) a paraphrase."""
    if rng.random() < p_paraphrase:
        return paraphrase(meta, rng)
    return envworld.caption(scene_from_meta(meta), rng)


def build_vocab(n: int = 3000) -> list[str]:
    """Every word of envworld captions and of the paraphrase tables, plus common extras."""
    vocab: set[str] = set(EXTRA_WORDS)
    for table in (SIDE_WORDS, HEIGHT_WORDS, KIND_WORDS, COLOR_WORDS):
        for xs in table.values():
            for x in xs:
                vocab.update(words(x))
    for xs in (ABOVE_WORDS, OVERCAST_WORDS, list(envworld.COLORS), ["daylight", "back"]):
        for x in xs:
            vocab.update(words(x))
    rng = np.random.default_rng(12345)
    for i in range(n):
        scene = envworld.sample_scene(rng)
        vocab.update(words(envworld.caption(scene, rng)))
        vocab.update(words(paraphrase(scene.meta(), rng)))
    return sorted(vocab)


# -- the model -------------------------------------------------------------------------------
def resample_pq(code: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) with the width wrapping (azimuth) and the height clamped."""
    _, _, H, W = code.shape
    if (h, w) == (H, W):
        return code
    x = (torch.arange(w, dtype=torch.float64) + 0.5) * W / w - 0.5
    x0 = torch.floor(x)
    fx = (x - x0).to(code.dtype)
    i0, i1 = x0.long() % W, (x0.long() + 1) % W
    code = code[..., i0] * (1 - fx) + code[..., i1] * fx
    y = ((torch.arange(h, dtype=torch.float64) + 0.5) * H / h - 0.5).clamp(0, H - 1)
    y0 = torch.floor(y).clamp(max=H - 2) if H > 1 else torch.zeros_like(y)
    fy = (y - y0).to(code.dtype)[:, None]
    j0, j1 = y0.long(), (y0.long() + 1).clamp(max=H - 1)
    return code[..., j0, :] * (1 - fy) + code[..., j1, :] * fy


class HDRIModel:
    """Loaded networks plus generation. Build with :func:`load`."""

    def __init__(self, cfg: dict[str, Any], ae: PQAutoencoder, unet: nn.Module, text: WordTextEncoder,
                 device: str = "cpu", prior: nn.Module | None = None) -> None:
        self.cfg, self.ae, self.unet, self.text, self.device = cfg, ae, unet, text, device
        self.prior = prior  # light_prior.LightPrior when cfg["layout_channels"]
        self.tokenizer = WordTokenizer(cfg["vocab"])

    @torch.no_grad()
    def light_direction(self, prompt: str, seed: int = 0) -> np.ndarray | None:
        """Where the words put the dominant light (unit [3], ``sphere`` frame: +x = the subject's
        left, +y up, +z in front), or None (no light named / a model without a layout prior)."""
        if self.prior is None or not prompt.strip():
            return None
        from engines.relight import light_prior as LP

        mean, logit = self.prior(self.tokenizer([prompt]).to(self.device))
        return LP.choose_direction(mean[0].double().cpu().numpy(), float(torch.sigmoid(logit[0])), seed)

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` outside the vocabulary (they are ignored by generation)."""
        return self.tokenizer.unknown(prompt)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.text(self.tokenizer(prompts).to(self.device))

    @torch.no_grad()
    def encode_pq(self, code: torch.Tensor) -> torch.Tensor:
        """PQ maps (B, 3, 64, 128) → scaled diffusion latents (B, 8, 8, 16)."""
        return self.ae.encode(code.to(self.device)) * self.cfg["latent_scale"]

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents → PQ codes (B, 3, 64, 128) clamped to [0, 1]."""
        return self.ae.decode(z / self.cfg["latent_scale"]).clamp(0, 1)

    def scheduler(self):  # noqa: ANN201 - diffusers type
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler(**self.cfg["scheduler"], algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="trailing")

    @torch.no_grad()
    def generate(self, prompt: str, negative_prompt: str = "", seed: int = 0, steps: int = 20,
                 guidance_scale: float = 3.0, width: int = 256, exposure: float = 1.0,
                 progress: Callable[[int, int], None] | None = None,
                 is_cancelled: Callable[[], bool] | None = None,
                 light_direction: np.ndarray | None = None) -> np.ndarray:
        """Linear radiance float32 [width/2, width, 3] in nits for ``prompt``.

        Denoises 8×16 latents (a native 64×128 map) with DPM-Solver++ (``steps``) and classifier-free guidance
        (``negative_prompt`` is the unconditional branch), decodes to PQ codes, resizes them in
        PQ space (wrapping in azimuth) to ``width``, decodes PQ to nits and multiplies by
        ``exposure`` (clamped to [0, 10000] nits). ``progress(i, steps)`` after each step;
        ``is_cancelled()`` is checked before each step and raises :class:`GenerationCancelled`
        (a ``progress`` callback may also raise its own exception to stop). Same arguments →
        the same map. ``light_direction`` (unit [3]) places the dominant light there instead of
        where the words put it (models with a layout prior only)."""
        width = int(width)
        if width < 8 or width % 2:
            raise ValueError(f"width must be an even number ≥ 8, got {width}")
        steps = max(1, int(steps))
        cond = self.encode_text([prompt])
        uncond = self.encode_text([negative_prompt or ""])
        emb = torch.cat([uncond, cond])
        sched = self.scheduler()
        sched.set_timesteps(steps)
        gen = torch.Generator("cpu").manual_seed(int(seed))
        c, h, w = self.cfg["latent_channels"], self.cfg["latent_h"], self.cfg["latent_w"]
        layout = None
        if light_direction is not None and self.prior is None:
            raise ValueError("this HDRI model has no light layout; it cannot place the light at a given direction")
        if self.prior is not None:  # unconditional branch: no spot, as trained with dropped captions
            from engines.relight import light_prior as LP

            spot = light_direction if light_direction is not None else self.light_direction(prompt, seed)
            layout = LP.layout_map([None, spot], h, w, float(self.cfg.get("layout_kappa", LP.KAPPA)))  # [2, 1, h, w]
        lat = torch.randn((1, c, h, w), generator=gen).to(self.device) * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            if is_cancelled is not None and is_cancelled():
                raise GenerationCancelled(f"cancelled at step {i}/{steps}")
            x = with_coords(sched.scale_model_input(torch.cat([lat, lat]), t), layout)
            out = self.unet(x, t, encoder_hidden_states=emb).sample
            u, cnd = out.chunk(2)
            lat = sched.step(u + guidance_scale * (cnd - u), t, lat).prev_sample
            if progress is not None:
                progress(i + 1, steps)
        if is_cancelled is not None and is_cancelled():
            raise GenerationCancelled(f"cancelled at step {steps}/{steps}")
        code = resample_pq(self.decode_latents(lat).double().cpu(), width // 2, width)
        nits = pq.decode(code.clamp(0, 1))[0].permute(1, 2, 0).numpy() * float(exposure)
        return np.clip(nits, 0.0, pq.PEAK_NITS).astype(np.float32)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(path)).items()}


FILES = ("config.json", "ae.safetensors", "unet.safetensors", "text.safetensors")


def build(cfg: dict[str, Any]) -> tuple[PQAutoencoder, nn.Module, WordTextEncoder]:
    ae = PQAutoencoder(tuple(cfg["ae_channels"]), cfg["latent_channels"])
    unet = build_unet(cfg)
    text = WordTextEncoder(len(cfg["vocab"]) + 2, layers=cfg["text_layers"])
    return ae, unet, text


def build_prior(cfg: dict[str, Any]) -> nn.Module:
    from engines.relight.light_prior import LightPrior

    return LightPrior(len(cfg["vocab"]) + 2)


def load(model_dir: Path = DEFAULT_DIR, device: str = "cpu") -> HDRIModel:
    """Load a trained model directory (config.json + ae/unet/text .safetensors)."""
    model_dir = Path(model_dir)
    files = FILES + (("prior.safetensors",) if _has_layout(model_dir) else ())
    missing = [f for f in files if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"HDRI model weights not found in {model_dir} (missing {', '.join(missing)}); "
            "train them with `python -m engines.relight.train_hdri`")
    cfg = json.loads((model_dir / "config.json").read_text())
    ae, unet, text = build(cfg)
    ae.load_state_dict(_load_state(model_dir / "ae.safetensors"))
    unet.load_state_dict(_load_state(model_dir / "unet.safetensors"))
    text.load_state_dict(_load_state(model_dir / "text.safetensors"))
    prior = None
    if cfg.get("layout_channels"):
        prior = build_prior(cfg)
        prior.load_state_dict(_load_state(model_dir / "prior.safetensors"))
    for m in (ae, unet, text, prior):
        if m is not None:
            m.to(device).eval().requires_grad_(False)
    return HDRIModel(cfg, ae, unet, text, device, prior)


def _has_layout(model_dir: Path) -> bool:
    try:
        return bool(json.loads((model_dir / "config.json").read_text()).get("layout_channels"))
    except (OSError, ValueError):
        return False


# -- evaluation ------------------------------------------------------------------------------
def eval_scenes(n: int, seed: int = 0, base: int = EVAL_SEED_BASE) -> list[tuple[dict[str, Any], np.random.Generator]]:
    """Held-out scenes, kinds cycling evenly (seeds disjoint from training's)."""
    out = []
    for i in range(n):
        s = base + seed * 100_000 + i
        rng = np.random.default_rng(s)
        scene = envworld.sample_scene(rng, envworld.KINDS[i % len(envworld.KINDS)])
        scene.seed = s
        out.append((scene, rng))
    return out


def _median_ci(xs: list[float], seed: int, n_boot: int = 2000) -> list[float] | None:
    """95 % percentile-bootstrap interval of the median (seeded)."""
    if len(xs) < 5:
        return None
    a = np.asarray(xs, np.float64)
    rng = np.random.default_rng([seed, 95])
    meds = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    return [round(float(np.percentile(meds, 2.5)), 2), round(float(np.percentile(meds, 97.5)), 2)]


def evaluate(model: HDRIModel, n: int = 48, seed: int = 0, steps: int = 20, width: int = 256,
             guidance_scale: float = 3.0) -> dict[str, Any]:
    """Scores on held-out envworld captions (and on a held-out paraphrase set):
    light-direction error (degrees, vs the scene's true dominant light; overcast skipped),
    colour error (chromaticity L1 of the generated light vs the true colour), dynamic range of
    sun prompts (peak / median luminance), seam error (and an interior column jump to compare),
    seconds per map; with a layout prior the direction error split in two: the prior's direction
    vs the truth (reading the words) and the map's light vs the prior's direction (placing it)."""
    def run(prompts_scenes: list[tuple[str, envworld.EnvScene]], seed_off: int) -> dict[str, list[float]]:
        res: dict[str, list[float]] = {"dir": [], "col": [], "dr": [], "seam": [], "inner": [], "sec": [],
                                       "text": [], "place": []}
        for i, (prompt, scene) in enumerate(prompts_scenes):
            t0 = time.perf_counter()
            env = model.generate(prompt, seed=seed_off + i, steps=steps, width=width, guidance_scale=guidance_scale)
            res["sec"].append(time.perf_counter() - t0)
            res["seam"].append(metrics.seam_error(env))
            res["inner"].append(metrics.column_jump(env, env.shape[1] // 4))
            if scene.kind == "overcast":
                continue
            lt = scene.dominant
            est = metrics.dominant_direction(env)
            res["dir"].append(metrics.angle_deg(est, lt.direction))
            spot = model.light_direction(prompt, seed_off + i)
            if spot is not None:  # the error split: reading the words vs placing the light
                res["text"].append(metrics.angle_deg(spot, lt.direction))
                res["place"].append(metrics.angle_deg(est, spot))
            res["col"].append(metrics.color_error(env, est, np.array(lt.rgb)))
            if scene.kind == "sun":
                res["dr"].append(metrics.dynamic_range(env))
        return res

    scenes = eval_scenes(n, seed)
    base = run([(envworld.caption(s, rng), s) for s, rng in scenes], seed * 1000)
    para_scenes = eval_scenes(n, seed, PARA_SEED_BASE)
    para = run([(paraphrase(s.meta(), rng), s) for s, rng in para_scenes], seed * 1000 + 500)
    med = lambda xs: float(np.median(xs)) if xs else float("nan")  # noqa: E731
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {
        "n": n, "steps": steps, "width": width, "guidance_scale": guidance_scale,
        "hdri_light_dir_error_deg": med(base["dir"]), "hdri_light_dir_error_deg_mean": mean(base["dir"]),
        "hdri_color_error": med(base["col"]), "hdri_color_error_mean": mean(base["col"]),
        "hdri_dynamic_range": med(base["dr"]), "seam_error": mean(base["seam"]),
        "interior_column_jump": mean(base["inner"]), "hdri_seconds": mean(base["sec"]),
        "hdri_light_dir_error_deg_paraphrase": med(para["dir"]),
        "hdri_light_dir_error_deg_paraphrase_mean": mean(para["dir"]),
        "n_direction_scored": len(base["dir"]), "n_paraphrase_scored": len(para["dir"]),
        "hdri_light_dir_error_deg_ci95": _median_ci(base["dir"], seed),
        "hdri_light_dir_error_deg_paraphrase_ci95": _median_ci(para["dir"], seed),
        "layout_text_dir_error_deg": med(base["text"]), "layout_placement_error_deg": med(base["place"]),
        "layout_text_dir_error_deg_paraphrase": med(para["text"]),
        "layout_placement_error_deg_paraphrase": med(para["place"]),
    }

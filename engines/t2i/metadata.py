"""Provenance in PNGs: an A1111-compatible ``parameters`` text chunk plus a JSON chunk."""
from __future__ import annotations

import json
from typing import Any

STUDIO_KEY = "studio"

A1111_SAMPLER = {"DPM++ 2M Karras": ("DPM++ 2M", "Karras")}


def a1111_parameters(p: dict[str, Any], seed: int, width: int, height: int, model_name: str, model_hash: str,
                     version: str = "Studio", adapters: list[dict[str, Any]] | None = None) -> str:
    """The infotext A1111, Civitai and ComfyUI readers parse: prompt, negative, then key: value pairs."""
    sampler, schedule = A1111_SAMPLER.get(p["scheduler"], (p["scheduler"], None))
    pairs = [("Steps", p["steps"]), ("Sampler", sampler)]
    if schedule:
        pairs.append(("Schedule type", schedule))
    pairs += [("CFG scale", _num(p["guidance_scale"])), ("Seed", seed), ("Size", f"{width}x{height}"),
              ("Model hash", model_hash[:10]), ("Model", model_name)]
    if p.get("init_image"):
        pairs.append(("Denoising strength", _num(p["strength"])))
    if adapters:
        pairs.append(("Adapters", ", ".join(f"{a['name']}:{a['weight']:g}" for a in adapters)))
        pairs.append(("Adapter mode", p.get("adapter_mode", "fused")))
    if p.get("clockwork", "off") != "off" and p.get("clock_period"):
        pairs.append(("Clockwork", f"{p['clockwork']}/{p['clock_period']}"))
    pairs.append(("Version", version))
    text = p["prompt"]
    if p.get("negative_prompt"):
        text += f"\nNegative prompt: {p['negative_prompt']}"
    return text + "\n" + ", ".join(f"{k}: {_quote(v)}" for k, v in pairs)


def _num(v: float) -> str:
    return f"{v:g}"


def _quote(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if ("," in s or ":" in s or "\n" in s) else s


def pnginfo(parameters: str, studio: dict[str, Any]):  # noqa: ANN201
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text(STUDIO_KEY, json.dumps(studio, sort_keys=True))
    return info


def read_png_metadata(path: str) -> dict[str, Any]:
    from PIL import Image

    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    out: dict[str, Any] = {"parameters": text.get("parameters")}
    if STUDIO_KEY in text:
        out[STUDIO_KEY] = json.loads(text[STUDIO_KEY])
    return out

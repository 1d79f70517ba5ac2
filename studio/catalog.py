"""What engines exist and what params they take (for API, UI and CLI alike)."""
from __future__ import annotations

from typing import Any

from engines import registry


def engine_list() -> list[dict[str, Any]]:
    out = []
    for name in registry.names():
        cls = registry.get(name)
        out.append({"name": name, "title": cls.title or name, "description": cls.description,
                    "idempotent": cls.idempotent, "params_schema": cls.params_model.model_json_schema()})
    return out


def engine_schema(name: str) -> dict[str, Any] | None:
    """The params JSON schema of one engine, or None when it is not installed."""
    try:
        return registry.get(name).params_model.model_json_schema()
    except (KeyError, ImportError):
        return None


def model_facts(spec_path: Any) -> dict[str, Any]:
    """What the UI needs to know about a model folder without loading it: native size (from the
    U-Net and VAE configs), default guidance, and the vocabulary of the embedded world model."""
    import json
    from pathlib import Path

    p = Path(spec_path)
    facts: dict[str, Any] = {"native": None, "guidance": 7.0, "vocabulary": None, "grammar": False}
    if not p.is_dir():
        return facts
    try:
        unet = json.loads((p / "unet" / "config.json").read_text())
        vae = json.loads((p / "vae" / "config.json").read_text())
        facts["native"] = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from engines.world.compose import speaks_world

    facts["grammar"] = speaks_world(p)  # the t2i engine reads its prompts into objects (layout=auto)
    if (p / "world_train.json").is_file():  # the embedded world family
        from engines.world import generator as g

        facts["guidance"] = 4.0
        facts["vocabulary"] = {
            "shape": list(g.SHAPES), "colour": list(g.COLORS), "background": [f"on a {b} background" for b in g.BACKGROUNDS],
            "position": [f"in the {p}" if p == "center" else f"at the {p}" for p in g.POSITIONS],
            "size": list(g.SIZES), "style": list(g.STYLES), "words": g.world_words()}
    return facts


def prompt_reading(prompt: str) -> tuple[str, list[str]] | None:
    """How the t2i engine reads a prompt for a model with the world grammar (layout=auto): the
    objects it will draw, and the words it will not use; None when it names no known shape."""
    from engines.world.prompt_parse import parse

    parsed = parse(prompt[:4000])
    return None if parsed is None else (parsed.describe(), parsed.ignored)


def unknown_words(prompt: str, words: list[str]) -> list[str]:
    """Prompt words a model's vocabulary does not have (it would silently ignore them)."""
    import re

    known = set(words)
    seen: list[str] = []
    for w in re.findall(r"[a-z]+", prompt.lower()):
        if w not in known and w not in seen:
            seen.append(w)
    return seen


def sample_scenes() -> list[Any]:
    """Ready-to-render Gaussian-splat scenes shipped with the splat engine (paths)."""
    from pathlib import Path

    try:
        import engines.splat as splat
    except ImportError:
        return []
    folder = Path(splat.__file__).resolve().parent / "samples"
    return sorted(p for p in folder.glob("*") if p.suffix in (".ply", ".splat"))

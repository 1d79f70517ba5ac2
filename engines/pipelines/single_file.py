"""Single-file (A1111 / Civitai ``.safetensors``) checkpoints with no network.

diffusers' ``from_single_file`` needs the base model's diffusers configs (model_index, scheduler,
unet, vae, text encoders, tokenizers); without ``config=`` it looks them up on the hub or in its
cache. The Studio ships them in ``engines/pipelines/configs/<family>/`` (written from the documented
architectures) and passes a materialised copy with ``local_files_only=True``.

Tokenizers: CLIP's BPE vocabulary is data, not architecture. ``configs/clip/merges.txt.gz`` holds
the first 48,894 merges of CLIP's ``bpe_simple_vocab_16e6`` (MIT; taken from the
``open_clip_torch`` wheel); ``vocab.json`` is rebuilt from it exactly as CLIP builds its
vocabulary (256 byte symbols, the same with ``</w>``, one token per merge, two specials = 49,408).
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
FAMILIES = ("sd15", "sd2", "sd2-base", "sdxl")
N_MERGES = 49408 - 256 * 2 - 2  # vocab = bytes + bytes</w> + merges + 2 specials


def bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2/CLIP scheme), in CLIP's vocabulary
    order: the printable bytes first, then the others (mapped above U+0100)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    out = {b: chr(b) for b in keep}
    for extra, b in enumerate(b for b in range(256) if b not in out):
        out[b] = chr(256 + extra)
    return out


def write_clip_tokenizer_files(dest: Path) -> int:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` into ``dest``; returns the vocab size."""
    text = gzip.decompress((CONFIGS / "clip" / "merges.txt.gz").read_bytes()).decode("utf-8")
    lines = text.split("\n")
    merges = [m for m in lines[1:] if m][:N_MERGES]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                     encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab)


def materialize(family: str, dest: Path) -> Path:
    """A complete diffusers config folder for ``family`` at ``dest`` (configs + tokenizer files)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; one of {', '.join(FAMILIES)}")
    shutil.copytree(CONFIGS / family, dest, dirs_exist_ok=True)
    for tok in sorted(dest.glob("tokenizer*")):
        write_clip_tokenizer_files(tok)
    return dest


def detect_family(path: Path) -> str:
    """SD1.x / SD2.x / SDXL from the checkpoint's keys and shapes (no tensor data is read).
    SD2 768-v and 512-base share weights' shapes; the v-prediction 768 model is the default (as
    in diffusers), a file name with ``base`` or ``512`` picks the epsilon 512 one."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        if any(k.startswith("conditioner.embedders.1.") for k in keys):
            return "sdxl"
        if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
            raise ValueError("SDXL refiner checkpoints are not supported (base models only)")
        k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
        ctx_dim = f.get_slice(k).get_shape()[-1] if k in keys else None
        openclip = any(k.startswith("cond_stage_model.model.") for k in keys)
    if ctx_dim == 1024 or openclip:
        stem = path.stem.lower()
        return "sd2-base" if ("base" in stem or "512" in stem) else "sd2"
    if ctx_dim == 768 or any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    raise ValueError("not a Stable Diffusion 1.x/2.x/XL checkpoint in the original (LDM) key layout")


def load_single_file(path: Path, dtype: object, family: str | None = None, config_dir: Path | None = None) -> object:
    """``from_single_file`` with the shipped configs (or ``config_dir``), never touching the network."""
    import tempfile

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family = family or detect_family(path)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    with tempfile.TemporaryDirectory(prefix="studio-sdcfg-") as td:
        cfg = config_dir or materialize(family, Path(td) / family)
        pipe = cls.from_single_file(str(path), config=str(cfg), dtype=dtype, local_files_only=True)
    return pipe

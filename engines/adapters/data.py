"""Training data for adapters: a user's images + captions, or demo sets from the world."""
from __future__ import annotations

import zipfile
from pathlib import Path

from PIL import Image

from engines.base import EngineError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp"}
MAX_IMAGES = 5000


def load_folder(folder: Path, template: str, trigger: str) -> list[tuple[Image.Image, str]]:
    items = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXT or p.name.startswith("."):
            continue
        try:
            im = Image.open(p).convert("RGB")
        except OSError as e:
            raise EngineError(f"cannot read training image {p.name}: {e}") from None
        txt = p.with_suffix(".txt")
        cap = txt.read_text().strip() if txt.is_file() else ""
        items.append((im, template.format(caption=cap, trigger=trigger).strip(" ,")))
        if len(items) > MAX_IMAGES:
            raise EngineError(f"more than {MAX_IMAGES} training images")
    if not items:
        raise EngineError("the dataset has no images (png, jpg, webp)")
    if any(not c for _, c in items):
        raise EngineError("some images have no caption: add .txt files or a caption_template with {trigger}")
    return items


def load_dataset(path: Path, work: Path, template: str, trigger: str) -> list[tuple[Image.Image, str]]:
    if path.is_dir():
        return load_folder(path, template, trigger)
    try:
        with zipfile.ZipFile(path) as z:
            dest = work / "dataset"
            z.extractall(dest)  # entries were checked for unsafe paths and bombs at upload
    except zipfile.BadZipFile as e:
        raise EngineError(f"dataset is not a valid zip: {e}") from None
    return load_folder(dest, template, trigger)


STYLE_DEMOS = {"striped-style": ("striped", "stripez"), "dotted-style": ("dotted", "dotz"),
               "outlined-style": ("outlined", "outlinez")}


def demo_dataset(name: str, trigger: str, n: int = 32) -> list[tuple[Image.Image, str]]:
    """``new-concept``: the world's unseen sprite ("zorb" or the trigger) in varied poses.
    ``<style>-style`` (striped, dotted, outlined): single objects in that surface style,
    captioned with no style word (which the base model reads as solid) plus ", in <trigger>
    style" — so the adapter, not the caption, has to bring the style."""
    from engines.world import generator as g

    if name == "new-concept":
        word = trigger or "zorb"
        return [(Image.fromarray(s.image), s.caption) for s in g.subject_samples(n, seed=0, name=word)]
    if name in STYLE_DEMOS:
        style, default_word = STYLE_DEMOS[name]
        word = trigger or default_word
        out = []
        i = 0
        while len(out) < n:
            s = g.make_sample(seed=7, index=i)
            i += 1
            if s.scene.primary.style != style or len(s.scene.objects) != 1:
                continue
            out.append((Image.fromarray(s.image), f"{g.plain_caption(s.scene)}, in {word} style"))
        return out
    raise EngineError(f"unknown demo dataset {name!r}")

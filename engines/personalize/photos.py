"""Photo checks: every photo gets a verdict; good ones come out square, RGB, at the training size.

People drop whatever their phone or camera made: rotated JPEGs (EXIF orientation), PNGs with
transparency, CMYK or 16-bit files, screenshots, duplicates, the odd text file or truncated
download. A bad photo never silently kills a job: it is listed with the reason and skipped; the
caller refuses to train with fewer than ``MIN_GOOD`` good ones. Files are only ever read, never
extracted: zip members are streamed by name, so a crafted path cannot write anywhere.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 60 << 20  # one photo file
MAX_PIXELS = 64_000_000  # width × height read from the header, before any decoding
MAX_ZIP_ENTRIES = 500
MAX_RATIO = 200  # uncompressed / compressed per zip member (photos barely compress)
SKIP_NAMES = ("__MACOSX/", ".DS_Store", "Thumbs.db")
TEXT_EXT = {".txt", ".json", ".md"}


@dataclass
class Verdict:
    name: str
    ok: bool
    message: str
    notes: list[str] = field(default_factory=list)
    sha256: str | None = None  # of the decoded pixels (duplicates are the same picture, any container)
    size: tuple[int, int] | None = None  # original (width, height) after EXIF rotation

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "message": self.message, "notes": self.notes,
                "size": list(self.size) if self.size else None}


@dataclass
class CheckedPhotos:
    verdicts: list[Verdict]
    images: list[Image.Image]  # good photos, RGB, resolution × resolution, in verdict order

    @property
    def good(self) -> int:
        return len(self.images)

    def summary(self) -> str:
        bad = [v for v in self.verdicts if not v.ok]
        s = f"{self.good} good photo{'s' * (self.good != 1)}"
        if bad:
            s += f", {len(bad)} skipped (" + "; ".join(f"{v.name}: {v.message}" for v in bad[:6]) + \
                 (", …" if len(bad) > 6 else "") + ")"
        return s


def iter_sources(path: Path, *, max_file_bytes: int = MAX_FILE_BYTES) -> Iterator[tuple[str, bytes | str]]:
    """(display name, file bytes or a reason it cannot be read) for a file, folder or zip."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")
                 and p.suffix.lower() not in TEXT_EXT]
        if len(files) > MAX_ZIP_ENTRIES:
            yield path.name, f"more than {MAX_ZIP_ENTRIES} files"
            return
        for p in files:
            rel = p.relative_to(path).as_posix()
            n = p.stat().st_size
            yield rel, p.read_bytes() if n <= max_file_bytes else f"file too large ({n >> 20} MB)"
        return
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        yield from _zip_members(path, max_file_bytes)
        return
    n = path.stat().st_size
    yield path.name, path.read_bytes() if n <= max_file_bytes else f"file too large ({n >> 20} MB)"


def _zip_members(path: Path, max_file_bytes: int) -> Iterator[tuple[str, bytes | str]]:
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        yield path.name, f"not a valid zip ({e})"
        return
    with z:
        infos = [i for i in z.infolist() if not i.is_dir() and not any(s in i.filename for s in SKIP_NAMES)
                 and not Path(i.filename).name.startswith(".") and Path(i.filename).suffix.lower() not in TEXT_EXT]
        if len(infos) > MAX_ZIP_ENTRIES:
            yield path.name, f"zip has more than {MAX_ZIP_ENTRIES} files"
            return
        for info in infos:
            name = info.filename.replace("\\", "/").lstrip("/")  # shown only; nothing is written to disk
            if info.file_size > max_file_bytes:
                yield name, f"file too large ({info.file_size >> 20} MB uncompressed)"
                continue
            if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_RATIO and info.file_size > 1 << 20:
                yield name, "looks like a zip bomb (compresses too well to be a photo)"
                continue
            try:
                with z.open(info) as f:
                    data = f.read(max_file_bytes + 1)  # the header's size may lie
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as e:
                yield name, f"cannot read from the zip ({e})"
                continue
            yield name, data if len(data) <= max_file_bytes else "file too large"


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """RGB image and notes on what was fixed; ValueError with a user-facing reason otherwise."""
    notes: list[str] = []
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ValueError("decompression bomb (far too many pixels)") from None
    except UnidentifiedImageError:
        raise ValueError("not an image (or a format Pillow cannot read)") from None
    w, h = im.size
    if w * h > max_pixels or w <= 0 or h <= 0:
        raise ValueError(f"decompression bomb: {w}×{h} pixels is over the {max_pixels // 1_000_000} MP limit")
    if getattr(im, "n_frames", 1) > 1:
        notes.append("first frame of an animation")
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"unreadable: truncated or corrupt file ({msg})") from None
    orient = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    if orient not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"EXIF orientation {orient} applied")
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a / hi * 255), 0, 255).astype(np.uint8), "L")
        notes.append(f"{'16' if hi > 255 else '32'}-bit converted to 8-bit")
        mode = "L"
    if mode == "CMYK":
        im = im.convert("RGB")
        notes.append("CMYK converted to RGB")
    elif mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba).convert("RGB")
            notes.append("transparency flattened onto white")
        else:
            im = rgba.convert("RGB")
    if im.mode in ("L", "1"):
        notes.append("greyscale")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im, notes


def square_crop(im: Image.Image, how: str = "smart") -> tuple[int, int, int, int]:
    """The largest square box: centred, or ("smart", face-free) centred on what differs from
    the border colour and has edges — where a subject on a plain-ish background is."""
    w, h = im.size
    s = min(w, h)
    if how != "smart" or w == h:
        return ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    small = im.copy()
    small.thumbnail((128, 128))
    a = np.asarray(small, dtype=np.float32) / 255.0  # [h', w', 3]
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # [k, 3]
    diff = np.abs(a - np.median(border, axis=0)).sum(-1)  # [h', w'] how unlike the background
    gy, gx = np.gradient(a.mean(-1))
    score = diff + 2.0 * np.hypot(gx, gy)  # [h', w']
    if float(score.sum()) <= 1e-6:
        return square_crop(im, "center")
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    cx = float((score * xs).sum() / score.sum()) * w / a.shape[1]
    cy = float((score * ys).sum() / score.sum()) * h / a.shape[0]
    x0 = int(round(min(max(cx - s / 2, 0), w - s)))
    y0 = int(round(min(max(cy - s / 2, 0), h - s)))
    return (x0, y0, x0 + s, y0 + s)


def check_photos(sources: list[tuple[str, bytes | str]], resolution: int, crop: str = "smart",
                 *, max_pixels: int = MAX_PIXELS) -> CheckedPhotos:
    """A verdict per source and the good photos cropped and resized to ``resolution``."""
    verdicts: list[Verdict] = []
    images: list[Image.Image] = []
    seen: dict[str, str] = {}
    min_side = max(16, resolution // 2)
    for name, data in sources:
        if isinstance(data, str):
            verdicts.append(Verdict(name, False, data))
            continue
        try:
            im, notes = decode(data, max_pixels=max_pixels)
        except ValueError as e:
            verdicts.append(Verdict(name, False, str(e)))
            continue
        digest = hashlib.sha256(f"{im.size}".encode() + im.tobytes()).hexdigest()
        if digest in seen:
            verdicts.append(Verdict(name, False, f"duplicate of {seen[digest]}", sha256=digest, size=im.size))
            continue
        seen[digest] = name
        w, h = im.size
        if min(w, h) < min_side:
            verdicts.append(Verdict(name, False, f"too small: {w}×{h}, needs at least {min_side} px on the short side",
                                    notes, digest, im.size))
            continue
        box = square_crop(im, crop)
        if w != h:
            notes.append(f"{crop} crop to {box[2] - box[0]}² at ({box[0]}, {box[1]})")
        if min(w, h) < resolution:
            notes.append(f"upscaled from {min(w, h)} px")
        out = im.crop(box).resize((resolution, resolution), Image.LANCZOS)
        images.append(out)
        verdicts.append(Verdict(name, True, "ok" + (": " + ", ".join(notes) if notes else ""), notes, digest, im.size))
    return CheckedPhotos(verdicts, images)


def contact_sheet(checked: CheckedPhotos, sources: list[tuple[str, bytes | str]], dest: Path, cell: int = 96) -> Path:
    """Thumbnails of every photo with a green (used) or red (skipped) frame, for the UI."""
    from PIL import ImageDraw

    n = max(1, len(checked.verdicts))
    cols = min(6, n)
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * cell), (40, 40, 40))
    good = iter(checked.images)
    for i, v in enumerate(checked.verdicts):
        x, y = (i % cols) * cell, (i // cols) * cell
        if v.ok:
            thumb = next(good).resize((cell - 8, cell - 8), Image.LANCZOS)
            sheet.paste(thumb, (x + 4, y + 4))
        d = ImageDraw.Draw(sheet)
        d.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2], outline=(40, 200, 80) if v.ok else (230, 50, 50),
                    width=3)
        if not v.ok:
            d.line([x + 8, y + 8, x + cell - 8, y + cell - 8], fill=(230, 50, 50), width=3)
            d.line([x + cell - 8, y + 8, x + 8, y + cell - 8], fill=(230, 50, 50), width=3)
    sheet.save(dest)
    return dest

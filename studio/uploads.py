"""Sniff and validate incoming files before anything is stored.

The type comes from the bytes, not the filename (except formats with no magic number,
like ``.splat``). Each check is bounded in memory and time: images are checked for
decompression bombs before decoding, archives for ratio/size/path bombs.
"""
from __future__ import annotations

import json
import struct
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import UploadRejected


@dataclass
class Sniffed:
    kind: str
    mime: str
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


IMAGE_MIMES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def sniff(path: Path, filename: str, *, max_image_pixels: int, max_archive_bytes: int) -> Sniffed:
    """Identify and validate ``path``; raise UploadRejected with a one-line reason that names
    the client's file name, never a server path."""
    try:
        return _sniff(Path(path), filename, max_image_pixels=max_image_pixels, max_archive_bytes=max_archive_bytes)
    except UploadRejected as e:
        msg = str(e)
        for p in {str(path), str(Path(path).resolve()), Path(path).name}:
            msg = msg.replace(p, Path(filename).name[:80] or "upload")
        raise UploadRejected(msg[:400], e.status_code) from None


_HEAVY = threading.BoundedSemaphore(2)  # at most two decodes at once: bounded memory under parallel uploads


def _sniff(path: Path, filename: str, *, max_image_pixels: int, max_archive_bytes: int) -> Sniffed:
    with open(path, "rb") as f:
        head = f.read(64)
    size = path.stat().st_size
    if size == 0:
        raise UploadRejected("empty file", 400)
    name = filename.lower()
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head[:3] == b"\xff\xd8\xff" or \
            (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[:6] in (b"GIF87a", b"GIF89a"):
        return _image(path, max_image_pixels)
    if head.startswith((b"#?RADIANCE", b"#?RGBE", b"\x76\x2f\x31\x01")):
        return _hdr(path, max_image_pixels)
    if head.startswith(b"ply\n") or head.startswith(b"ply\r\n"):
        return _ply(path)
    if head[:4] == b"PK\x03\x04":
        return _zip(path, max_archive_bytes)
    if head[4:8] == b"ftyp":
        return Sniffed("video", "video/mp4")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return Sniffed("video", "video/webm")
    if name.endswith(".safetensors"):
        return _safetensors(path, size)
    if name.endswith(".splat"):
        if size % 32:
            raise UploadRejected(f".splat size {size} is not a multiple of 32 bytes (truncated?)", 400)
        return Sniffed("splat", "application/octet-stream", meta={"format": "splat", "n_gaussians": size // 32})
    raise UploadRejected("unsupported file type (accepted: png, jpeg, webp, gif, hdr, exr, ply, splat, "
                         "safetensors, mp4, webm, zip)")


def _image(path: Path, max_pixels: int) -> Sniffed:
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format or ""
                w, h = im.size
                if w * h > max_pixels:
                    raise UploadRejected(f"image of {w}x{h} pixels exceeds the {max_pixels} pixel limit", 413)
                im.verify()  # PNG: walks every chunk and checks its CRC, so truncation fails here
            with _HEAVY, Image.open(path) as im:
                frames = getattr(im, "n_frames", 1)
                if fmt == "JPEG":
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # decode at 1/8: reads it all, 1/64 memory
                if fmt != "PNG":
                    im.load()  # a truncated file fails here
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UploadRejected(f"image rejected as a decompression bomb: {e}", 413) from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise UploadRejected(f"corrupt or unreadable image: {e}", 400) from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if fmt not in IMAGE_MIMES:
        raise UploadRejected(f"unsupported image format {fmt}")
    return Sniffed("image", IMAGE_MIMES[fmt], w, h, frames if frames > 1 else None)


def _hdr(path: Path, max_pixels: int) -> Sniffed:
    """Radiance .hdr / OpenEXR environment maps: sized from the header before anything is
    allocated, then decoded in full in a helper process (a truncated or malformed body fails)."""
    from engines.relight import hdr_io

    exr = open(path, "rb").read(4) == hdr_io.EXR_MAGIC
    try:
        w, h = (hdr_io.exr_size if exr else hdr_io.hdr_size)(path)
    except hdr_io.HDRFormatError as e:
        raise UploadRejected(f"invalid {'EXR' if exr else 'HDR'} file: {e}", 400) from None
    if w * h > max_pixels:
        raise UploadRejected(f"environment map of {w}x{h} pixels exceeds the {max_pixels} pixel limit", 413)
    try:
        off_process(_check_env_map, path)
    except UploadRejected:
        raise
    except Exception as e:
        raise UploadRejected(f"invalid {'EXR' if exr else 'HDR'} file: {str(e).splitlines()[0][:200]}", 400) from None
    return Sniffed("hdr", "image/x-exr" if exr else "image/vnd.radiance", w, h, meta={"format": "exr" if exr else "hdr"})


def _check_env_map(path: Path) -> dict[str, Any]:
    import numpy as np

    from engines.relight import hdr_io

    env = hdr_io.read_any(path)
    if env.ndim != 3 or env.shape[2] != 3 or not np.isfinite(env).all():
        raise ValueError("the map is not a finite RGB image")
    return {"shape": list(env.shape)}


def _ply(path: Path) -> Sniffed:
    try:
        from engines.splat.formats import validate_scene_file
    except ImportError:  # splat engine not installed: header check only
        validate_scene_file = None
    if validate_scene_file is not None:
        try:
            summary = off_process(validate_scene_file, path)
        except UploadRejected:
            raise
        except Exception as e:
            raise UploadRejected(f"invalid Gaussian-splat PLY: {e}", 400) from None
        return Sniffed("splat", "application/x-ply", meta=dict(summary) if isinstance(summary, dict) else {})
    with open(path, "rb") as f:
        header = f.read(64 * 1024)
    if b"end_header" not in header:
        raise UploadRejected("PLY header has no end_header", 400)
    return Sniffed("splat", "application/x-ply")


def _safetensors(path: Path, size: int) -> Sniffed:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise UploadRejected("not a safetensors file (too short)", 400)
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 * 1024 * 1024):
            raise UploadRejected("not a safetensors file (bad header length)", 400)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UploadRejected("not a safetensors file (header is not JSON)", 400) from None
    if not isinstance(header, dict):
        raise UploadRejected("not a safetensors file (header is not an object)", 400)
    data_len = size - 8 - n
    tensors = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise UploadRejected(f"safetensors entry {key!r} has no data_offsets", 400) from None
        if not (0 <= start <= end <= data_len):
            raise UploadRejected(f"safetensors entry {key!r} points outside the file (truncated?)", 400)
        tensors += 1
    meta = header.get("__metadata__") or {}
    return Sniffed("safetensors", "application/octet-stream",
                   meta={"tensors": tensors, "metadata": meta if isinstance(meta, dict) else {}})


def _zip(path: Path, max_bytes: int) -> Sniffed:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > 20000:
                raise UploadRejected(f"archive has {len(infos)} entries (limit 20000)", 413)
            total = 0
            for i in infos:
                n = i.filename
                if n.startswith(("/", "\\")) or ".." in Path(n).parts or ":" in n:
                    raise UploadRejected(f"archive entry with unsafe path {n!r}", 400)
                total += i.file_size
                if i.compress_size and i.file_size / i.compress_size > 1000 and i.file_size > 10 << 20:
                    raise UploadRejected(f"archive entry {n!r} looks like a zip bomb", 413)
            if total > max_bytes:
                raise UploadRejected(f"archive expands to {total} bytes (limit {max_bytes})", 413)
            bad = z.testzip()
            if bad is not None:
                raise UploadRejected(f"archive entry {bad!r} is corrupt", 400)
    except zipfile.BadZipFile as e:
        raise UploadRejected(f"corrupt zip archive: {e}", 400) from None
    return Sniffed("archive", "application/zip", meta={"entries": len(infos), "uncompressed": total})


_POOL: list[Any] = []
_POOL_LOCK = threading.Lock()
PARSE_TIMEOUT_S = 120.0


def off_process(fn: Any, *args: Any, timeout: float = PARSE_TIMEOUT_S) -> Any:
    """Run a heavy parser in a helper process: a 20 MB ASCII PLY takes seconds of pure
    Python, which in the web process would hold the GIL and stall every other request.
    A crash or timeout of the helper rejects the file; the pool is rebuilt next time."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with _POOL_LOCK:
        if not _POOL:
            import atexit

            _POOL.append(cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")))
            atexit.register(_POOL[0].shutdown, wait=False, cancel_futures=True)  # before interpreter teardown
        pool = _POOL[0]
    try:
        return pool.submit(fn, *args).result(timeout=timeout)
    except (cf.TimeoutError, cf.process.BrokenProcessPool) as e:
        with _POOL_LOCK:
            if _POOL and _POOL[0] is pool:
                _POOL.clear()
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        raise UploadRejected("file took too long to check" if isinstance(e, cf.TimeoutError)
                             else "file could not be checked (the checker ran out of memory?)", 413) from None

"""HDR files from wheels only: Radiance RGBE (.hdr) written and read here, OpenEXR float32
through the ``openexr`` wheel. (imageio routes both to OpenCV and reads them back as uint8.)"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

MAX_SIDE = 16384  # refuse absurd headers before allocating
HEADER_LIMIT = 64 * 1024


class HDRFormatError(ValueError):
    """A file that is not a well-formed HDR image."""


# -- Radiance RGBE ---------------------------------------------------------------------------
def to_rgbe(rgb: np.ndarray) -> np.ndarray:
    """float [H, W, 3] (≥ 0) → uint8 [H, W, 4]: shared exponent, 8-bit mantissas (≤ 0.8 % error)."""
    rgb = np.nan_to_num(np.maximum(rgb, 0.0), nan=0.0, posinf=0.0).astype(np.float32)
    m = rgb.max(axis=2)  # [H, W]
    mant, exp = np.frexp(m)  # m = mant · 2^exp, mant in [0.5, 1)
    scale = np.where(m > 1e-32, mant * 256.0 / np.maximum(m, 1e-38), 0.0)
    out = np.zeros(rgb.shape[:2] + (4,), np.uint8)
    out[..., :3] = np.clip(rgb * scale[..., None], 0, 255).astype(np.uint8)
    out[..., 3] = np.where(m > 1e-32, np.clip(exp + 128, 0, 255), 0).astype(np.uint8)
    return out


def from_rgbe(rgbe: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] → float32 [H, W, 3] (mantissa centred in its bin, as Radiance does)."""
    e = rgbe[..., 3].astype(np.int32)
    f = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0).astype(np.float32)  # 2^(e-128) / 256
    return ((rgbe[..., :3].astype(np.float32) + 0.5) * f[..., None]) * (e[..., None] > 0)


def _rle_channel(row: np.ndarray) -> bytes:
    """Radiance's run-length coding of one channel of one scanline."""
    out = bytearray()
    n, i = len(row), 0
    while i < n:
        run = 1  # a run of equal bytes starting at i
        while i + run < n and run < 127 and row[i + run] == row[i]:
            run += 1
        if run >= 4:
            out += bytes((128 + run, int(row[i])))
            i += run
            continue
        j = i  # literal bytes until the next run of ≥ 4 (or 128 bytes)
        while j < n and j - i < 128:
            k = 1
            while j + k < n and k < 4 and row[j + k] == row[j]:
                k += 1
            if k >= 4:
                break
            j += 1
        out += bytes((j - i,)) + row[i:j].tobytes()
        i = j
    return bytes(out)


def write_hdr(path: Path, rgb: np.ndarray) -> None:
    """Write linear RGB [H, W, 3] as a run-length coded Radiance file."""
    h, w, _ = rgb.shape
    rgbe = to_rgbe(rgb)
    parts = [f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\nSOFTWARE=Studio\n\n-Y {h} +X {w}\n".encode()]
    rle = 8 <= w < 0x8000
    for y in range(h):
        if rle:
            parts.append(bytes((2, 2, w >> 8, w & 255)))
            parts.extend(_rle_channel(rgbe[y, :, c]) for c in range(4))
        else:
            parts.append(rgbe[y].tobytes())
    Path(path).write_bytes(b"".join(parts))


def read_hdr(path: Path) -> np.ndarray:
    """Radiance .hdr (flat or new-style RLE, -Y H +X W orientation) → float32 [H, W, 3]."""
    data = Path(path).read_bytes()
    if not data.startswith((b"#?RADIANCE", b"#?RGBE")):
        raise HDRFormatError("not a Radiance HDR file")
    head_end = data.find(b"\n\n", 0, HEADER_LIMIT)
    if head_end < 0:
        raise HDRFormatError("HDR header too long or unterminated")
    header = data[:head_end].decode("latin-1")
    if "FORMAT=" in header and "32-bit_rle_rgbe" not in header:
        raise HDRFormatError("only 32-bit_rle_rgbe Radiance files are supported (not XYZE)")
    line_end = data.find(b"\n", head_end + 2)
    m = re.fullmatch(r"-Y (\d+) \+X (\d+)", data[head_end + 2:line_end].decode("latin-1").strip())
    if not m:
        raise HDRFormatError("unsupported HDR orientation (expected '-Y H +X W')")
    h, w = int(m.group(1)), int(m.group(2))
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise HDRFormatError(f"HDR size {w}x{h} outside 1..{MAX_SIDE}")
    buf = np.frombuffer(data, np.uint8, offset=line_end + 1)
    out = np.zeros((h, w, 4), np.uint8)
    pos = 0
    try:
        for y in range(h):
            if 8 <= w < 0x8000 and buf[pos] == 2 and buf[pos + 1] == 2 and not buf[pos + 2] & 0x80:
                if (int(buf[pos + 2]) << 8 | int(buf[pos + 3])) != w:
                    raise HDRFormatError(f"scanline {y}: length mismatch")
                pos += 4
                for c in range(4):
                    x = 0
                    while x < w:
                        count = int(buf[pos])
                        pos += 1
                        if count > 128:
                            count -= 128
                            if x + count > w:
                                raise HDRFormatError(f"scanline {y}: run overflows the row")
                            out[y, x:x + count, c] = buf[pos]
                            pos += 1
                        else:
                            if count == 0 or x + count > w:
                                raise HDRFormatError(f"scanline {y}: bad literal count")
                            if pos + count > len(buf):
                                raise IndexError
                            out[y, x:x + count, c] = buf[pos:pos + count]
                            pos += count
                        x += count
            else:  # flat scanline
                if pos + 4 * w > len(buf):
                    raise HDRFormatError("HDR file truncated")
                out[y] = buf[pos:pos + 4 * w].reshape(w, 4)
                pos += 4 * w
    except IndexError:
        raise HDRFormatError("HDR file truncated") from None
    return from_rgbe(out)


def hdr_size(path: Path) -> tuple[int, int]:
    """(width, height) from a Radiance header alone (cheap; refuses what read_hdr refuses)."""
    with open(path, "rb") as f:
        data = f.read(HEADER_LIMIT + 64)
    if not data.startswith((b"#?RADIANCE", b"#?RGBE")):
        raise HDRFormatError("not a Radiance HDR file")
    head_end = data.find(b"\n\n", 0, HEADER_LIMIT)
    if head_end < 0:
        raise HDRFormatError("HDR header too long or unterminated")
    line_end = data.find(b"\n", head_end + 2)
    m = re.fullmatch(r"-Y (\d+) \+X (\d+)", data[head_end + 2:line_end if line_end > 0 else None].decode("latin-1").strip())
    if not m:
        raise HDRFormatError("unsupported HDR orientation (expected '-Y H +X W')")
    return int(m.group(2)), int(m.group(1))


EXR_MAGIC = b"\x76\x2f\x31\x01"


def exr_size(path: Path) -> tuple[int, int]:
    """(width, height) of an OpenEXR file's data window, parsed from its header by hand so a
    hostile file is sized before the library allocates anything."""
    with open(path, "rb") as f:
        data = f.read(HEADER_LIMIT)
    if not data.startswith(EXR_MAGIC):
        raise HDRFormatError("not an OpenEXR file")
    pos = 8
    while True:
        end = data.find(b"\0", pos)
        if end < 0:
            raise HDRFormatError("EXR header too long or truncated")
        name = data[pos:end]
        if not name:
            break
        tend = data.find(b"\0", end + 1)
        if tend < 0 or tend + 5 > len(data):
            raise HDRFormatError("EXR header truncated")
        (size,) = np.frombuffer(data[tend + 1:tend + 5], "<i4")
        start = tend + 5
        if size < 0 or start + size > len(data):
            raise HDRFormatError("EXR header attribute overflows the header")
        if name == b"dataWindow" and size == 16:
            x0, y0, x1, y1 = (int(v) for v in np.frombuffer(data[start:start + 16], "<i4"))
            w, h = x1 - x0 + 1, y1 - y0 + 1
            if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
                raise HDRFormatError(f"EXR size {w}x{h} outside 1..{MAX_SIDE}")
            return w, h
        pos = start + int(size)
    raise HDRFormatError("EXR header has no dataWindow")


def read_any(path: Path) -> np.ndarray:
    """A Radiance .hdr or OpenEXR file → float32 [H, W, 3] linear radiance."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(EXR_MAGIC):
        return read_exr(path)
    return read_hdr(path)


# -- OpenEXR --------------------------------------------------------------------------------
def write_exr(path: Path, rgb: np.ndarray) -> None:
    """float32 RGB EXR (ZIP compressed) — exact round trip."""
    import OpenEXR

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    channels = {"RGB": np.ascontiguousarray(rgb.astype(np.float32))}
    with OpenEXR.File(header, channels) as f:
        f.write(str(path))


def read_exr(path: Path) -> np.ndarray:
    import OpenEXR

    try:
        with OpenEXR.File(str(path)) as f:
            ch = f.channels()
            if "RGB" in ch:
                return np.asarray(ch["RGB"].pixels, np.float32)
            return np.stack([np.asarray(ch[c].pixels, np.float32) for c in "RGB"], -1)
    except (KeyError, RuntimeError, OSError) as e:
        raise HDRFormatError(f"cannot read EXR: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

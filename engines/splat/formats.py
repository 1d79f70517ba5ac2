"""3DGS scene files: INRIA ``.ply`` (by property name), antimatter15 ``.splat`` and
PlayCanvas compressed ``.ply`` (read only).

Everything is numpy-only so the upload validator stays cheap. The PLY header is parsed
here rather than by plyfile so that counts are capped and truncation detected *before*
any data is read; a malformed file raises :class:`SceneFormatError` (an ``EngineError``)
with a one-line message.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineError

SH_C0 = 0.28209479177387814
DEFAULT_MAX_GAUSSIANS = 5_000_000
MAX_HEADER_BYTES = 64 * 1024
# f_rest_* count -> SH degree (3 channels x (K-1) non-DC coefficients, K=(deg+1)^2)
_REST_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3}

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class SceneFormatError(EngineError):
    """A scene file that is not a readable Gaussian-splat scene."""

    error_type = "bad_scene_file"


@dataclass
class GaussianScene:
    """A 3DGS scene in file conventions (numpy, float32).

    means: [N, 3]; log_scales: [N, 3]; quats: [N, 4] (w, x, y, z, not necessarily unit);
    opacity_logits: [N]; sh: [N, K, 3] with K=(degree+1)^2, coefficient 0 is the DC term.
    ``vdo``: optional [N, Kv] view-dependent-opacity SH (WSR scenes). ``meta`` carries
    renderer hints such as ``wsr_variant``/``wsr_sigma``/``wsr_bg_weight``; ``extra`` keeps
    unknown per-Gaussian properties so a round trip loses nothing.
    """

    means: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray
    vdo: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[1]))) - 1

    @property
    def opacities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.opacity_logits.astype(np.float64))).astype(np.float32)

    def dc_rgb(self) -> np.ndarray:
        """[N, 3] base colour in 0..1 (DC term only)."""
        return np.clip(0.5 + SH_C0 * self.sh[:, 0, :], 0.0, 1.0)

    def subset(self, idx: np.ndarray) -> "GaussianScene":
        return GaussianScene(
            self.means[idx], self.log_scales[idx], self.quats[idx], self.opacity_logits[idx], self.sh[idx],
            None if self.vdo is None else self.vdo[idx], dict(self.meta),
            {k: v[idx] for k, v in self.extra.items()},
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Robust (1st/99th percentile) bounds of the centres: floaters don't blow up cameras."""
        if len(self) == 0:
            return np.zeros(3, np.float32), np.ones(3, np.float32)
        lo = np.percentile(self.means, 1, axis=0)
        hi = np.percentile(self.means, 99, axis=0)
        return lo.astype(np.float32), hi.astype(np.float32)


def make_scene(means: Any, log_scales: Any, quats: Any, opacity_logits: Any, sh: Any, **kw: Any) -> GaussianScene:
    """Build a scene with dtype/shape normalisation (sh may be [N,3] for degree 0)."""
    sh = np.asarray(sh, np.float32)
    if sh.ndim == 2:
        sh = sh[:, None, :]
    return GaussianScene(
        np.asarray(means, np.float32).reshape(-1, 3), np.asarray(log_scales, np.float32).reshape(-1, 3),
        np.asarray(quats, np.float32).reshape(-1, 4), np.asarray(opacity_logits, np.float32).reshape(-1), sh, **kw,
    )


# ----------------------------------------------------------------------------- PLY header

@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]]  # (name, numpy type); list props have type "list"


def _parse_header(raw: bytes) -> tuple[str, list[_Element], list[str], int]:
    """Returns (format, elements, comments, data offset)."""
    if not raw.startswith(b"ply"):
        raise SceneFormatError("not a PLY file (missing 'ply' magic)")
    end = raw.find(b"end_header")
    if end < 0:
        raise SceneFormatError("PLY header has no end_header (truncated or not a PLY)")
    nl = raw.find(b"\n", end)
    if nl < 0:
        raise SceneFormatError("PLY header is truncated")
    try:
        text = raw[:end].decode("ascii")
    except UnicodeDecodeError:
        raise SceneFormatError("PLY header is not ASCII") from None
    fmt = ""
    elements: list[_Element] = []
    comments: list[str] = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if not parts:
            continue
        kw = parts[0]
        if kw == "format":
            if len(parts) < 2 or parts[1] not in ("binary_little_endian", "binary_big_endian", "ascii"):
                raise SceneFormatError(f"unsupported PLY format line {line.strip()!r}")
            fmt = parts[1]
        elif kw == "comment" or kw == "obj_info":
            comments.append(line[len(kw):].strip())
        elif kw == "element":
            if len(parts) != 3 or not re.fullmatch(r"\d{1,12}", parts[2]):
                raise SceneFormatError(f"bad PLY element line {line.strip()!r}")
            elements.append(_Element(parts[1], int(parts[2]), []))
        elif kw == "property":
            if not elements:
                raise SceneFormatError("PLY property before any element")
            if len(parts) == 3 and parts[1] in _PLY_TYPES:
                elements[-1].props.append((parts[2], _PLY_TYPES[parts[1]]))
            elif len(parts) == 5 and parts[1] == "list":
                elements[-1].props.append((parts[4], "list"))
            else:
                raise SceneFormatError(f"bad PLY property line {line.strip()!r}")
        else:
            raise SceneFormatError(f"unexpected PLY header line {line.strip()[:40]!r}")
    if not fmt:
        raise SceneFormatError("PLY header has no format line")
    names = [p for e in elements for p, _ in e.props]
    if len(elements) != len({e.name for e in elements}):
        raise SceneFormatError("PLY header repeats an element")
    for e in elements:
        pn = [p for p, _ in e.props]
        if len(pn) != len(set(pn)):
            raise SceneFormatError(f"PLY element {e.name!r} repeats a property")
    del names
    return fmt, elements, comments, nl + 1


def _read_elements(path: Path, wanted: set[str], max_count: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read the scalar-only elements in ``wanted`` (and everything before them) as structured arrays."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
        fmt, elements, comments, off = _parse_header(head)
        for e in elements:
            if e.count > max_count and e.name in wanted:
                raise SceneFormatError(f"PLY declares {e.count:,} {e.name} entries, above the cap of {max_count:,}")
        out: dict[str, np.ndarray] = {}
        if fmt == "ascii":
            f.seek(off)
            lines = f.read().decode("ascii", errors="replace").split("\n")
            pos = 0
            for e in elements:
                if not (wanted - out.keys()):
                    break
                if any(t == "list" for _, t in e.props):
                    raise SceneFormatError(f"PLY element {e.name!r} has list properties (a mesh, not a splat scene)")
                rows = lines[pos:pos + e.count]
                pos += e.count
                if len(rows) < e.count:
                    raise SceneFormatError(f"PLY data is truncated in element {e.name!r}")
                dt = np.dtype([(p, t) for p, t in e.props])
                try:
                    vals = np.array([r.split() for r in rows], dtype=np.float64).reshape(e.count, len(e.props))
                except ValueError:
                    raise SceneFormatError(f"PLY ascii data is malformed in element {e.name!r}") from None
                arr = np.empty(e.count, dt)
                for j, (p, _) in enumerate(e.props):
                    arr[p] = vals[:, j]
                out[e.name] = arr
            return out, comments
        endian = "<" if fmt == "binary_little_endian" else ">"
        for e in elements:
            if not (wanted - out.keys()):
                break
            if any(t == "list" for _, t in e.props):
                raise SceneFormatError(f"PLY element {e.name!r} has list properties (a mesh, not a splat scene)")
            dt = np.dtype([(p, endian + t) for p, t in e.props])
            nbytes = dt.itemsize * e.count
            if off + nbytes > size:
                raise SceneFormatError(
                    f"PLY data is truncated: element {e.name!r} needs {nbytes:,} bytes, {max(0, size - off):,} left")
            f.seek(off)
            arr = np.frombuffer(f.read(nbytes), dtype=dt, count=e.count)
            out[e.name] = arr.astype(dt.newbyteorder("=")) if endian == ">" else arr
            off += nbytes
    return out, comments


def _meta_from_comments(comments: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for c in comments:
        m = re.fullmatch(r"studio\.(\w+)\s*=\s*(\S+)", c)
        if m:
            k, v = m.groups()
            try:
                meta[k] = float(v)
            except ValueError:
                meta[k] = v
    return meta


# ----------------------------------------------------------------------------- readers

def _check_finite(scene: GaussianScene) -> None:
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        a = getattr(scene, name)
        if not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).reshape(a.shape[0], -1).any(axis=1).sum()) if a.size else 0
            raise SceneFormatError(f"scene has NaN/inf values in {name} ({bad} Gaussians)")
    if scene.vdo is not None and not np.isfinite(scene.vdo).all():
        raise SceneFormatError("scene has NaN/inf values in view-dependent opacity")
    if not len(scene):
        return
    # finite but absurd values overflow float32 maths downstream (inf * 0 = NaN pixels)
    if (np.abs(scene.log_scales) > 30).any():
        raise SceneFormatError("scene has absurd scales (|log scale| > 30)")
    if (np.abs(scene.means) > 1e9).any():
        raise SceneFormatError("scene has absurd positions (|x| > 1e9)")
    if (np.abs(scene.sh) > 1e4).any():
        raise SceneFormatError("scene has absurd colour coefficients (|SH| > 1e4)")
    qn = np.linalg.norm(scene.quats.astype(np.float64), axis=1)
    if (qn < 1e-12).any() or (qn > 1e18).any():
        raise SceneFormatError("scene has zero-length or absurd rotation quaternions")


def _fields(arr: np.ndarray, names: list[str]) -> np.ndarray:
    return np.stack([arr[n].astype(np.float32) for n in names], axis=1)


def read_inria_vertices(v: np.ndarray, meta: dict[str, Any]) -> GaussianScene:
    names = set(v.dtype.names or ())
    base = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [n for n in base if n not in names]
    if missing:
        if {"x", "y", "z"} <= names and "f_dc_0" not in names:
            raise SceneFormatError("PLY has points but no Gaussian properties (a plain mesh/point cloud, not a splat)")
        raise SceneFormatError(f"PLY vertex element lacks Gaussian properties: {', '.join(missing[:6])}")
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda s: (len(s), s))
    idx = sorted(int(n[7:]) for n in rest if n[7:].isdigit())
    if idx != list(range(len(rest))):
        raise SceneFormatError("PLY f_rest_* properties are not numbered 0..N-1")
    if len(rest) not in _REST_TO_DEGREE:
        raise SceneFormatError(f"PLY has {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    k = (_REST_TO_DEGREE[len(rest)] + 1) ** 2
    n = v.shape[0]
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0, :] = _fields(v, ["f_dc_0", "f_dc_1", "f_dc_2"])
    if k > 1:
        r = _fields(v, [f"f_rest_{i}" for i in range(len(rest))]).reshape(n, 3, k - 1)  # channel-major
        sh[:, 1:, :] = r.transpose(0, 2, 1)
    vdo_names = sorted((x for x in names if x.startswith("vdo_")), key=lambda s: (len(s), s))
    vdo = _fields(v, vdo_names) if vdo_names else None
    if vdo is not None and round(math.sqrt(vdo.shape[1])) ** 2 != vdo.shape[1]:
        raise SceneFormatError("PLY vdo_* (view-dependent opacity) count is not a square")
    known = set(base) | set(rest) | set(vdo_names) | {"nx", "ny", "nz"}
    extra = {x: np.asarray(v[x]).copy() for x in (v.dtype.names or ()) if x not in known}
    scene = GaussianScene(
        _fields(v, ["x", "y", "z"]), _fields(v, ["scale_0", "scale_1", "scale_2"]),
        _fields(v, ["rot_0", "rot_1", "rot_2", "rot_3"]), v["opacity"].astype(np.float32), sh, vdo, meta, extra,
    )
    return scene


def _unorm(v: np.ndarray, bits: int) -> np.ndarray:
    return (v & ((1 << bits) - 1)).astype(np.float32) / float((1 << bits) - 1)


def read_compressed_vertices(els: dict[str, np.ndarray], meta: dict[str, Any]) -> GaussianScene:
    """PlayCanvas compressed PLY: 256-splat chunks with min/max boxes and packed uint32 attributes."""
    ch, v = els["chunk"], els["vertex"]
    need = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
    if any(n not in (v.dtype.names or ()) for n in need):
        raise SceneFormatError("compressed PLY vertex element lacks packed_* properties")
    n = v.shape[0]
    if ch.shape[0] * 256 < n:
        raise SceneFormatError("compressed PLY has too few chunks for its vertices")
    ci = np.arange(n) // 256
    c = {k: ch[k].astype(np.float32)[ci] for k in (ch.dtype.names or ())}
    try:
        pp, pr, ps, pc = (v[k].astype(np.uint32) for k in need)

        def lerp3(p: np.ndarray, pre: str) -> np.ndarray:
            t = np.stack([_unorm(p >> 21, 11), _unorm(p >> 11, 10), _unorm(p, 11)], 1)
            lo = np.stack([c[f"min_{pre}x"], c[f"min_{pre}y"], c[f"min_{pre}z"]], 1)
            hi = np.stack([c[f"max_{pre}x"], c[f"max_{pre}y"], c[f"max_{pre}z"]], 1)
            return lo + t * (hi - lo)

        means = lerp3(pp, "")
        log_scales = lerp3(ps, "scale_")
        norm = 1.0 / (math.sqrt(2) * 0.5)
        a, b, cc = ((_unorm(pr >> s, 10) - 0.5) * norm for s in (20, 10, 0))
        m = np.sqrt(np.clip(1.0 - (a * a + b * b + cc * cc), 0.0, None))
        largest = (pr >> 30).astype(np.int64)
        # the four slots are rot_0..rot_3 (w, x, y, z) with the largest one dropped
        quats = np.zeros((n, 4), np.float32)
        rest = np.stack([a, b, cc], 1)
        for L in range(4):
            sel = largest == L
            cols = [i for i in range(4) if i != L]
            quats[np.ix_(sel, cols)] = rest[sel]
            quats[sel, L] = m[sel]
        rgba = np.stack([_unorm(pc >> 24, 8), _unorm(pc >> 16, 8), _unorm(pc >> 8, 8), _unorm(pc, 8)], 1)
        if "min_r" in c:
            lo = np.stack([c["min_r"], c["min_g"], c["min_b"]], 1)
            hi = np.stack([c["max_r"], c["max_g"], c["max_b"]], 1)
            rgba[:, :3] = lo + rgba[:, :3] * (hi - lo)
    except KeyError as e:
        raise SceneFormatError(f"compressed PLY chunk element lacks {e.args[0]!r}") from None
    sh_el = els.get("sh")
    k = 1
    rest = None
    if sh_el is not None and sh_el.shape[0] == n:
        nr = len(sh_el.dtype.names or ())
        if nr in _REST_TO_DEGREE:
            k = (_REST_TO_DEGREE[nr] + 1) ** 2
            raw = _fields(sh_el, [f"f_rest_{i}" for i in range(nr)])
            rest = (raw / 256.0 - 0.5) * 8.0 if sh_el.dtype[0] == np.uint8 else raw
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0, :] = (rgba[:, :3] - 0.5) / SH_C0
    if rest is not None:
        sh[:, 1:, :] = rest.reshape(n, 3, k - 1).transpose(0, 2, 1)
    alpha = np.clip(rgba[:, 3], 1e-6, 1 - 1e-6)
    opac = np.log(alpha / (1 - alpha)).astype(np.float32)
    return GaussianScene(means, log_scales.astype(np.float32), quats, opac, sh, None, meta, {})


def read_ply(path: str | Path, max_gaussians: int = DEFAULT_MAX_GAUSSIANS) -> GaussianScene:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    _, elements, _, _ = _parse_header(head)
    names = {e.name for e in elements}
    if "vertex" not in names:
        raise SceneFormatError("PLY has no vertex element")
    wanted = {"chunk", "vertex"} | ({"sh"} if "sh" in names else set()) if "chunk" in names else {"vertex"}
    els, comments = _read_elements(path, wanted, max_gaussians)
    meta = _meta_from_comments(comments)
    scene = read_compressed_vertices(els, meta) if "chunk" in names else read_inria_vertices(els["vertex"], meta)
    _check_finite(scene)
    return scene


def read_splat(path: str | Path, max_gaussians: int = DEFAULT_MAX_GAUSSIANS) -> GaussianScene:
    path = Path(path)
    size = path.stat().st_size
    if size == 0 or size % 32:
        raise SceneFormatError(f".splat size {size} bytes is not a positive multiple of 32 (truncated or not a .splat)")
    n = size // 32
    if n > max_gaussians:
        raise SceneFormatError(f".splat holds {n:,} splats, above the cap of {max_gaussians:,}")
    raw = np.fromfile(path, dtype=np.uint8).reshape(n, 32)
    f = raw[:, :24].copy().view("<f4").reshape(n, 6).astype(np.float32)
    if not np.isfinite(f).all():
        raise SceneFormatError(".splat has NaN/inf positions or scales")
    scales = f[:, 3:6]
    if (scales <= 0).any():
        raise SceneFormatError(".splat has non-positive scales")
    rgba = raw[:, 24:28].astype(np.float32) / 255.0
    q = (raw[:, 28:32].astype(np.float32) - 128.0) / 128.0  # w, x, y, z
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(qn > 1e-8, q / np.maximum(qn, 1e-8), np.array([1, 0, 0, 0], np.float32))
    a = np.clip(rgba[:, 3], 1e-4, 1 - 1e-4)
    scene = GaussianScene(
        f[:, :3].copy(), np.log(scales).astype(np.float32), q.astype(np.float32),
        np.log(a / (1 - a)).astype(np.float32), ((rgba[:, :3] - 0.5) / SH_C0)[:, None, :].astype(np.float32),
    )
    _check_finite(scene)
    return scene


def read_scene(path: str | Path, max_gaussians: int = DEFAULT_MAX_GAUSSIANS) -> GaussianScene:
    """Read a ``.ply`` or ``.splat`` (sniffed by magic, not only by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise SceneFormatError(f"scene file not found: {path.name}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:3] == b"ply":
        return read_ply(path, max_gaussians)
    if path.suffix.lower() == ".ply":
        raise SceneFormatError("not a PLY file (missing 'ply' magic)")
    if path.suffix.lower() == ".splat" or path.suffix == "":
        return read_splat(path, max_gaussians)
    raise SceneFormatError(f"unsupported scene file type {path.suffix!r} (use .ply or .splat)")


def validate_scene_file(path: str | Path, max_gaussians: int = DEFAULT_MAX_GAUSSIANS) -> dict[str, Any]:
    """Validate an uploaded scene; returns a small summary or raises SceneFormatError."""
    path = Path(path)
    scene = read_scene(path, max_gaussians)
    if len(scene) == 0:
        raise SceneFormatError("scene has no Gaussians")
    lo, hi = scene.means.min(0), scene.means.max(0)
    return {
        "format": "splat" if path.suffix.lower() == ".splat" else "ply",
        "n_gaussians": len(scene),
        "sh_degree": scene.sh_degree,
        "view_dependent_opacity": scene.vdo is not None,
        "bbox_min": [float(x) for x in lo],
        "bbox_max": [float(x) for x in hi],
        "extra_properties": sorted(scene.extra),
        "meta": dict(scene.meta),
    }


# ----------------------------------------------------------------------------- writers

def write_ply(scene: GaussianScene, path: str | Path) -> Path:
    """INRIA layout (x y z nx ny nz f_dc f_rest opacity scale rot), plus vdo_* and extras."""
    path = Path(path)
    n, k = len(scene), scene.sh.shape[1]
    cols: list[tuple[str, np.ndarray]] = []
    for i, a in enumerate("xyz"):
        cols.append((a, scene.means[:, i]))
    for a in ("nx", "ny", "nz"):
        cols.append((a, np.zeros(n, np.float32)))
    for i in range(3):
        cols.append((f"f_dc_{i}", scene.sh[:, 0, i]))
    rest = scene.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))
    for i in range(rest.shape[1]):
        cols.append((f"f_rest_{i}", rest[:, i]))
    cols.append(("opacity", scene.opacity_logits))
    for i in range(3):
        cols.append((f"scale_{i}", scene.log_scales[:, i]))
    for i in range(4):
        cols.append((f"rot_{i}", scene.quats[:, i]))
    if scene.vdo is not None:
        for i in range(scene.vdo.shape[1]):
            cols.append((f"vdo_{i}", scene.vdo[:, i]))
    extra_dt = []
    for name, arr in scene.extra.items():
        extra_dt.append((name, arr.dtype.newbyteorder("<").str))
    dt = np.dtype([(c, "<f4") for c, _ in cols] + extra_dt)
    data = np.empty(n, dt)
    for c, a in cols:
        data[c] = a
    for name, arr in scene.extra.items():
        data[name] = arr
    inv = {v: k2 for k2, v in reversed(list(_PLY_TYPES.items()))}
    lines = ["ply", "format binary_little_endian 1.0"]
    for key, val in scene.meta.items():
        if re.fullmatch(r"\w+", str(key)) and re.fullmatch(r"\S+", str(val)):
            lines.append(f"comment studio.{key}={val}")
    lines.append(f"element vertex {n}")
    for name in dt.names or ():
        lines.append(f"property {inv[dt[name].str[1:]]} {name}")
    lines.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("ascii"))
        f.write(data.tobytes())
    return path


def write_splat(scene: GaussianScene, path: str | Path) -> Path:
    """antimatter15 32-byte layout, sorted by descending volume x opacity (DC colour only)."""
    path = Path(path)
    n = len(scene)
    order = np.argsort(-(np.exp(scene.log_scales.astype(np.float64).sum(1)) * scene.opacities), kind="stable")
    out = np.zeros((n, 32), np.uint8)
    f = np.concatenate([scene.means, np.exp(scene.log_scales)], 1).astype("<f4")[order]
    out[:, :24] = f.view(np.uint8).reshape(n, 24)
    rgb = np.clip((0.5 + SH_C0 * scene.sh[order, 0, :]) * 255, 0, 255)
    out[:, 24:27] = rgb.astype(np.uint8)
    out[:, 27] = np.clip(scene.opacities[order] * 255, 0, 255).astype(np.uint8)
    q = scene.quats[order] / np.linalg.norm(scene.quats[order], axis=1, keepdims=True)
    out[:, 28:32] = np.clip(q * 128 + 128, 0, 255).astype(np.uint8)
    out.tofile(path)
    return path


def write_scene(scene: GaussianScene, path: str | Path) -> Path:
    return write_splat(scene, path) if Path(path).suffix.lower() == ".splat" else write_ply(scene, path)

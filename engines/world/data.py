"""Cached training sets rendered from the generator (rendering is ~4 ms/image; the VAE and
U-Net revisit each image many times, so render once into ``.npz`` under the scratch dir)."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from engines.world import generator as g

# Scene encoding: per object (shape, color, size, position, style), up to 2 objects, then
# background and object count. Lets training re-caption scenes with fresh wording each epoch.
_KEYS = ("shape", "color", "size", "position", "style")


def encode_scene(scene: g.Scene) -> np.ndarray:
    row = np.full(12, -1, np.int16)
    for k, o in enumerate(scene.objects[:2]):
        for j, key in enumerate(_KEYS):
            row[k * 5 + j] = g.ATTRIBUTES[key].index(getattr(o, key))
    row[10] = list(g.BACKGROUNDS).index(scene.background)
    row[11] = len(scene.objects)
    return row


def decode_scene(row: np.ndarray) -> g.Scene:
    objs = []
    for k in range(int(row[11])):
        vals = {key: g.ATTRIBUTES[key][int(row[k * 5 + j])] for j, key in enumerate(_KEYS)}
        objs.append(g.Obj(**vals))
    return g.Scene(list(g.BACKGROUNDS)[int(row[10])], tuple(objs))


def _chunk(args: tuple[int, int, int, str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, start, n, split, p_two = args
    imgs = np.empty((n, g.SIZE, g.SIZE, 3), np.uint8)
    masks = np.empty((n, g.SIZE, g.SIZE), np.uint8)
    scenes = np.empty((n, 12), np.int16)
    for i, s in enumerate(g.samples(seed, n, split, p_two, start=start)):
        imgs[i], masks[i], scenes[i] = s.image, np.rint(s.mask * 255), encode_scene(s.scene)
    return imgs, masks, scenes


def dataset(cache_dir: Path, name: str, seed: int, n: int, split: str, p_two: float,
            workers: int = 2) -> dict[str, np.ndarray]:
    """images (N, 64, 64, 3) uint8, masks (N, 64, 64) uint8, scenes (N, 12) int16."""
    path = Path(cache_dir) / f"data-{name}-{seed}-{n}-{split}-{p_two}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    step = 1000
    jobs = [(seed, s, min(step, n - s), split, p_two) for s in range(0, n, step)]
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_chunk, jobs))
    out = {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(("images", "masks", "scenes"))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.rename(path)
    return out


def to_tensor(imgs: np.ndarray):  # noqa: ANN201 - torch imported lazily (data rendering needs none)
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    import torch

    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0


def label_indices(scenes: np.ndarray) -> dict[str, np.ndarray]:
    """Primary-object labels (what the judge reads) as class indices per attribute."""
    return {"shape": scenes[:, 0], "color": scenes[:, 1], "size": scenes[:, 2],
            "position": scenes[:, 3], "style": scenes[:, 4], "background": scenes[:, 10]}

"""Optimise Gaussians from posed images (NeRF-synthetic layout) with either renderer in the loop.

Small-scale 3DGS training meant for CPU: random init inside the cameras' common view volume,
Adam on all attributes, L1 loss, periodic densification (clone/split the Gaussians with the
largest accumulated positional gradients) and pruning of transparent ones. WSR training also
learns the depth scale sigma, the background weight w_B and (LC) per-Gaussian view-dependent
opacity, all written to the output ``.ply``.
"""
from __future__ import annotations

import json
import math
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engines.splat.formats import SH_C0, SceneFormatError
from engines.splat.render import Camera, SplatTensors, WSRConfig, camera_from_c2w_blender, render

View = tuple[Camera, torch.Tensor]  # camera, image [H, W, 3] in 0..1


class DatasetError(SceneFormatError):
    error_type = "bad_dataset"


@dataclass
class ReconConfig:
    steps: int = 300
    mode: str = "alpha"  # alpha | wsr
    wsr_variant: str = "lc"
    n_init: int = 3000
    max_gaussians: int = 20000
    densify_every: int = 50
    densify_until: float = 0.7  # fraction of steps
    densify_frac: float = 0.15  # share of Gaussians cloned/split per densification
    prune_opacity: float = 0.02
    sh_degree: int = 0
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lr_scale: float = 1.0
    seed: int = 0


def _open_root(path: Path, tmp: Path) -> Path:
    """A directory, or a .zip extracted (safely) into ``tmp``; returns the folder holding transforms*.json."""
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError("image set must be a directory or a .zip with transforms.json and images")
        with zipfile.ZipFile(path) as z:
            total = 0
            for info in z.infolist():
                name = Path(info.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise DatasetError("zip contains unsafe paths")
                total += info.file_size
                if total > 2 << 30:
                    raise DatasetError("zip expands to more than 2 GiB")
            z.extractall(tmp)
        path = tmp
    if not path.is_dir():
        raise DatasetError(f"image set not found: {path.name}")
    for cand in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if any((cand / f).is_file() for f in ("transforms.json", "transforms_train.json")):
            return cand
    raise DatasetError("no transforms.json / transforms_train.json in the image set")


def _load_split(root: Path, doc: dict, max_side: int, bg: tuple[float, float, float]) -> list[View]:
    from PIL import Image

    try:
        fov_x = float(doc["camera_angle_x"])
        frames = doc["frames"]
    except (KeyError, TypeError, ValueError):
        raise DatasetError("transforms json lacks camera_angle_x or frames") from None
    views = []
    for fr in frames:
        try:
            rel = str(fr["file_path"])
            c2w = np.asarray(fr["transform_matrix"], np.float64)
        except (KeyError, TypeError, ValueError):
            raise DatasetError("a frame lacks file_path or transform_matrix") from None
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise DatasetError("a frame's transform_matrix is not a finite 4x4 matrix")
        p = (root / rel).resolve()
        if root.resolve() not in p.parents:
            raise DatasetError("a frame's file_path leaves the image set")
        if not p.is_file():
            for ext in (".png", ".jpg", ".jpeg"):
                if p.with_name(p.name + ext).is_file():
                    p = p.with_name(p.name + ext)
                    break
        if not p.is_file():
            raise DatasetError(f"image {rel!r} is missing")
        try:
            im = Image.open(p)
            im.load()
        except Exception:  # noqa: BLE001 - PIL raises many types for a bad image
            raise DatasetError(f"image {rel!r} is not a readable image") from None
        scale = min(1.0, max_side / max(im.size))
        if scale < 1.0:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        a = np.asarray(im.convert("RGBA"), np.float32) / 255.0
        rgb = a[..., :3] * a[..., 3:] + np.asarray(bg, np.float32) * (1 - a[..., 3:])
        views.append((camera_from_c2w_blender(c2w, fov_x, im.width, im.height), torch.from_numpy(rgb)))
    if not views:
        raise DatasetError("transforms json has no frames")
    return views


def load_dataset(path: str | Path, max_side: int = 64, background: tuple[float, float, float] = (0, 0, 0),
                 holdout_every: int = 8) -> tuple[list[View], list[View]]:
    """(train views, test views). Uses transforms_{train,test}.json when present, else
    transforms.json with every ``holdout_every``-th frame held out."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as td:
        root = _open_root(path, Path(td))

        def doc(name: str) -> dict | None:
            f = root / name
            if not f.is_file():
                return None
            try:
                return json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DatasetError(f"{name} is not valid JSON") from None

        tr = doc("transforms_train.json")
        if tr is not None:
            te = doc("transforms_test.json")
            return (_load_split(root, tr, max_side, background),
                    _load_split(root, te, max_side, background) if te else [])
        allv = _load_split(root, doc("transforms.json") or {}, max_side, background)
        if len(allv) < 2 * holdout_every:
            return allv, []
        test = allv[::holdout_every]
        train = [v for i, v in enumerate(allv) if i % holdout_every]
        return train, test


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _scene_volume(views: list[View]) -> tuple[np.ndarray, float]:
    """Point nearest to all optical axes (least squares) and a radius for init."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    centers = []
    for cam, _ in views:
        R = cam.viewmat[:3, :3].double().numpy()
        c = cam.center.double().numpy()
        d = R[2]  # camera forward in world
        M = np.eye(3) - np.outer(d, d)
        A += M
        b += M @ c
        centers.append(c)
    try:
        p = np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        p = np.mean(centers, 0)
    dist = float(np.median([np.linalg.norm(c - p) for c in centers]))
    fov = 2 * math.atan(0.5 * views[0][0].width / views[0][0].fx)
    return p, dist * math.tan(fov / 2) * 1.1


class _Model:
    """Trainable tensors + Adam; rebuilt after densification (moments are dropped)."""

    def __init__(self, t: SplatTensors, cfg: ReconConfig, extent: float, wsr_state: dict[str, torch.Tensor]):
        self.cfg, self.extent = cfg, extent
        self.p = {k: getattr(t, k).detach().clone().requires_grad_(True)
                  for k in ("means", "log_scales", "quats", "opacity_logits", "sh")}
        if t.vdo is not None:
            self.p["vdo"] = t.vdo.detach().clone().requires_grad_(True)
        self.wsr = wsr_state
        lr = cfg.lr_scale
        groups = [
            {"params": [self.p["means"]], "lr": 2e-3 * extent * lr},
            {"params": [self.p["log_scales"]], "lr": 1e-2 * lr},
            {"params": [self.p["quats"]], "lr": 2e-3 * lr},
            {"params": [self.p["opacity_logits"]], "lr": 5e-2 * lr},
            {"params": [self.p["sh"]], "lr": 1e-2 * lr},
        ]
        if "vdo" in self.p:
            groups.append({"params": [self.p["vdo"]], "lr": 5e-3 * lr})
        if wsr_state:
            groups.append({"params": list(wsr_state.values()), "lr": 1e-2 * lr})
        self.opt = torch.optim.Adam(groups, eps=1e-15)
        self.grad_acc = torch.zeros(len(self))
        self.grad_n = torch.zeros(len(self))

    def __len__(self) -> int:
        return int(self.p["means"].shape[0])

    def tensors(self) -> SplatTensors:
        return SplatTensors(self.p["means"], self.p["log_scales"], self.p["quats"], self.p["opacity_logits"],
                            self.p["sh"], self.p.get("vdo"))


def _wsr_cfg(cfg: ReconConfig, state: dict[str, torch.Tensor]) -> WSRConfig | None:
    if cfg.mode != "wsr":
        return None
    return WSRConfig(cfg.wsr_variant, state["log_sigma"].exp(), state["log_bg_weight"].exp())


def reconstruct(train: list[View], cfg: ReconConfig,
                on_step: Callable[[int, int, float], None] | None = None,
                live: dict | None = None) -> SplatTensors:
    """Optimise a scene; ``on_step(step, total, loss)`` runs after every step (cancel/progress hook).
    ``live["model"]()`` (when a dict is given) returns the current tensors, for previews."""
    if cfg.mode not in ("alpha", "wsr"):
        raise ValueError(f"unknown mode {cfg.mode!r}")
    g = torch.Generator().manual_seed(cfg.seed)
    centre, r = _scene_volume(train)
    n = cfg.n_init
    means = torch.from_numpy(centre).float() + (torch.rand(n, 3, generator=g) * 2 - 1) * r
    spacing = 2 * r / n ** (1 / 3)
    K = (cfg.sh_degree + 1) ** 2
    sh = torch.zeros(n, K, 3)
    sh[:, 0] = (torch.rand(n, 3, generator=g) * 0.4 + 0.3 - 0.5) / SH_C0
    init = SplatTensors(means, torch.full((n, 3), math.log(spacing * 0.5)),
                        torch.tensor([1.0, 0, 0, 0]).repeat(n, 1), torch.full((n,), math.log(0.1 / 0.9)), sh)
    wsr_state: dict[str, torch.Tensor] = {}
    if cfg.mode == "wsr":
        far = max(float((cam.center - torch.from_numpy(centre).float()).norm()) for cam, _ in train) + 2 * r
        wsr_state = {"log_sigma": torch.tensor(math.log(far * 1.5), requires_grad=True),
                     "log_bg_weight": torch.tensor(math.log(0.02), requires_grad=True)}
        if cfg.wsr_variant == "lc":
            init.vdo = torch.zeros(n, 4)
            init.vdo[:, 0] = 1.0 / SH_C0
    model = _Model(init, cfg, r, wsr_state)
    if live is not None:
        live["model"] = lambda: model.tensors()
    bg = torch.tensor(cfg.background)
    until = int(cfg.densify_until * cfg.steps)
    perm = torch.randperm(len(train), generator=g)
    for step in range(cfg.steps):
        cam, img = train[int(perm[step % len(train)])]
        if step % len(train) == len(train) - 1:
            perm = torch.randperm(len(train), generator=g)
        out = render(model.tensors(), cam, cfg.mode, ("rgb",), bg, _wsr_cfg(cfg, wsr_state))
        loss = (out["rgb"] - img).abs().mean()
        model.opt.zero_grad(set_to_none=True)
        loss.backward()
        gm = model.p["means"].grad
        if gm is not None:
            model.grad_acc += gm.norm(dim=1)
            model.grad_n += (gm.abs().sum(1) > 0).float()
        model.opt.step()
        with torch.no_grad():
            model.p["log_scales"].clamp_(max=math.log(0.25 * r))
        if on_step is not None:
            on_step(step + 1, cfg.steps, float(loss.detach()))
        if step + 1 < until and (step + 1) % cfg.densify_every == 0:
            model = _densify(model, cfg, r, wsr_state, g)
    t = model.tensors()
    out_t = SplatTensors(*(x.detach() if x is not None else None for x in
                           (t.means, t.log_scales, t.quats, t.opacity_logits, t.sh, t.vdo)))
    if cfg.mode == "wsr":
        out_t.meta.update(wsr_variant=cfg.wsr_variant, wsr_sigma=round(float(wsr_state["log_sigma"].detach().exp()), 6),
                          wsr_bg_weight=round(float(wsr_state["log_bg_weight"].detach().exp()), 6))
    return out_t


@torch.no_grad()
def _densify(model: _Model, cfg: ReconConfig, r: float, wsr_state: dict[str, torch.Tensor],
             g: torch.Generator) -> _Model:
    p = {k: v.detach() for k, v in model.p.items()}
    keep = torch.sigmoid(p["opacity_logits"]) > cfg.prune_opacity
    score = model.grad_acc / model.grad_n.clamp_min(1)
    score[~keep] = -1
    n_keep = int(keep.sum())
    budget = max(0, min(int(cfg.densify_frac * n_keep), cfg.max_gaussians - n_keep))
    pick = torch.topk(score, min(budget, len(score))).indices if budget else torch.zeros(0, dtype=torch.long)
    pick = pick[score[pick] > 0]
    big = p["log_scales"][pick].exp().max(1).values > 0.02 * r
    new: dict[str, list[torch.Tensor]] = {k: [v[keep]] for k, v in p.items()}
    if len(pick):
        src = {k: v[pick] for k, v in p.items()}
        # split big ones: sample a new centre inside the Gaussian, shrink both
        from engines.splat.render import quat_to_rotmat

        R = quat_to_rotmat(src["quats"])
        s = src["log_scales"].exp()
        off = (R @ (torch.randn(len(pick), 3, 1, generator=g) * s[..., None]))[..., 0]
        moved = src["means"] + off * big[:, None].float()
        shrink = torch.where(big[:, None], src["log_scales"] - math.log(1.6), src["log_scales"])
        for k, v in src.items():
            new[k].append(moved if k == "means" else shrink if k == "log_scales" else v)
        # the originals of split Gaussians shrink too
        kept_idx = torch.nonzero(keep).squeeze(1)
        pos = torch.full((len(keep),), -1, dtype=torch.long)
        pos[kept_idx] = torch.arange(len(kept_idx))
        tgt = pos[pick[big]]
        new["log_scales"][0][tgt] -= math.log(1.6)
    merged = {k: torch.cat(v) for k, v in new.items()}
    t = SplatTensors(merged["means"], merged["log_scales"], merged["quats"], merged["opacity_logits"], merged["sh"],
                     merged.get("vdo"))
    return _Model(t, cfg, model.extent, wsr_state)


def evaluate(t: SplatTensors, views: list[View], cfg: ReconConfig) -> float:
    """Mean PSNR over ``views`` rendered with the training mode."""
    if not views:
        return float("nan")
    wsr = None
    if cfg.mode == "wsr":
        wsr = WSRConfig(t.meta.get("wsr_variant", cfg.wsr_variant), t.meta.get("wsr_sigma"),
                        t.meta.get("wsr_bg_weight", 0.02))
    vals = []
    with torch.no_grad():
        for cam, img in views:
            vals.append(psnr(render(t, cam, cfg.mode, ("rgb",), cfg.background, wsr)["rgb"], img))
    return float(np.mean(vals))

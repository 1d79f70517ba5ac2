"""Train the per-object judge (``objjudge.ObjJudge``) that the compositional WorldEval reads with.

Data: multi-object world scenes (1–3 objects in distinct cells, all (shape, colour) pairs, wider
position jitter than the training world so generated misplacements still land in the right
cell), with exact per-cell labels from the generator. A share of every batch comes from the
shipped VAE's reconstructions of the same scenes: generated images are decoded by that VAE, so
the judge must read its slightly soft stripes and dots as well as crisp renders.

``python -m engines.world.train_objjudge [--steps N] [--out DIR] [--install] [--resume]`` writes
``<out>/objjudge/model/objjudge.{safetensors,json}`` (``<out>`` defaults to
``$STUDIO_DATA_DIR/world-train``); ``--install`` copies the two files into
``engines/world/weights/judge/`` next to the primary-object judge (nothing else there changes).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.world import generator as g
from engines.world.data import to_tensor
from engines.world.objjudge import META_FILE, OBJ_HEADS, WEIGHTS_FILE, ObjJudge, read_scenes
from engines.world.paths import default_model_dir, judge_dir, train_dir
from engines.world.train_common import Checkpoint, Log, plot_loss, say, stage_dir

DEFAULT_STEPS = 3000
BATCH = 32


def render_set(seed: int, n: int) -> dict[str, np.ndarray]:
    """images (N, 64, 64, 3) uint8, cells (N, 9, 4) int8 class indices per ``OBJ_HEADS``
    (-1: empty cell), background (N,) int8. Deterministic in (seed, i)."""
    imgs = np.empty((n, g.SIZE, g.SIZE, 3), np.uint8)
    cells = np.full((n, len(g.CELLS), len(OBJ_HEADS)), -1, np.int8)
    bgs = np.empty(n, np.int8)
    for i in range(n):
        sc = g.sample_multi_scene(np.random.default_rng([seed, i, 13]))
        imgs[i] = g.render(sc)[0]
        bgs[i] = list(g.BACKGROUNDS).index(sc.background)
        for k, lab in enumerate(g.cell_labels(sc)):
            if lab is not None:
                cells[i, k] = [g.ATTRIBUTES[h].index(lab[h]) for h in OBJ_HEADS]
    return {"images": imgs, "cells": cells, "background": bgs}


def cached_set(out: Path, seed: int, n: int) -> dict[str, np.ndarray]:
    path = Path(out) / "objjudge" / f"data-{seed}-{n}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    d = render_set(seed, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **d)
    tmp.rename(path)
    return d


def load_vae(vae_dir: Path | None = None):  # noqa: ANN201
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(vae_dir or default_model_dir() / "vae"), local_files_only=True).eval()


def cached_recon(out: Path, name: str, images: np.ndarray, vae) -> np.ndarray:  # noqa: ANN001
    """VAE reconstructions (posterior mean) of ``images``, cached as uint8 (N, 64, 64, 3)."""
    from engines.world.eval import reconstruct

    path = Path(out) / "objjudge" / f"recon-{name}-{len(images)}.npy"
    if path.exists():
        return np.load(path)
    rec = reconstruct(vae, to_tensor(images))  # (N, 3, 64, 64) in [0, 1]
    arr = (rec.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.save(path, arr)
    return arr


def loss_fn(o: dict[str, torch.Tensor], cells: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Presence BCE on every cell, attribute CE on occupied cells, background CE.
    cells (B, 9, 4) long with -1 for empty; bg (B,) long."""
    occ = cells[..., 0] >= 0  # (B, 9)
    loss = F.binary_cross_entropy_with_logits(o["present"], occ.float()) + F.cross_entropy(o["background"], bg)
    for j, h in enumerate(OBJ_HEADS):
        loss = loss + F.cross_entropy(o[h][occ], cells[..., j][occ])
    return loss


@torch.no_grad()
def objjudge_accuracy(model: ObjJudge, images: np.ndarray, cells: np.ndarray, bgs: np.ndarray) -> dict[str, float]:
    """Per-attribute accuracy on occupied cells, presence accuracy over all cells, background,
    and ``scene_exact`` (every cell's presence and every object's attributes right)."""
    reads = read_scenes(model, to_tensor(images), threshold=0.5)
    n_obj = ok_pres = n_cells = exact = 0
    hits = {h: 0 for h in OBJ_HEADS}
    bg_ok = 0
    for (bg, dets), c, b in zip(reads, cells, bgs):
        found = {g.CELLS.index(d.position): d for d in dets}
        all_ok = True
        for k in range(len(g.CELLS)):
            occ = c[k, 0] >= 0
            n_cells += 1
            ok_pres += int(occ == (k in found))
            all_ok &= occ == (k in found)
            if occ:
                n_obj += 1
                d = found.get(k)
                for j, h in enumerate(OBJ_HEADS):
                    right = d is not None and d.get(h) == g.ATTRIBUTES[h][c[k, j]]
                    hits[h] += int(right)
                    all_ok &= right
        bg_ok += int(bg == list(g.BACKGROUNDS)[b])
        exact += int(all_ok)
    res = {h: round(hits[h] / n_obj, 4) for h in OBJ_HEADS}
    res.update(present=round(ok_pres / n_cells, 4), background=round(bg_ok / len(cells), 4),
               scene_exact=round(exact / len(cells), 4), n_images=len(cells), n_objects=n_obj)
    return res


def train_objjudge(out: Path, steps: int = DEFAULT_STEPS, resume: bool = False, install: bool = False,
                   n_data: int = 16000, n_recon: int = 6000, n_eval: int = 2000, recon_share: float = 1 / 3) -> dict:
    """``recon_share``: fraction of each batch drawn from VAE reconstructions (of the first
    ``n_recon`` scenes). The shipped judge: 3,000 steps at 1/3, then resumed to 5,000 at 1/2."""
    torch.manual_seed(0)
    work = stage_dir(out, "objjudge")
    t0 = time.time()
    data = cached_set(out, seed=21, n=n_data)
    vae = load_vae()
    recon = cached_recon(out, "train", data["images"][:n_recon], vae)
    say(f"objjudge data ready: {n_data} scenes, {n_recon} reconstructions ({time.time() - t0:.0f}s)")
    x_all = to_tensor(data["images"])  # (N, 3, 64, 64)
    x_rec = to_tensor(recon)  # (R, 3, 64, 64)
    cells = torch.from_numpy(data["cells"].astype(np.int64))  # (N, 9, 4)
    bgs = torch.from_numpy(data["background"].astype(np.int64))  # (N,)
    model = ObjJudge()
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    ckpt = Checkpoint(work, model=model, opt=opt)
    start = ckpt.resume(resume)["step"]
    log = Log(work / "log.csv", ["step", "loss"])
    model.train()
    t1 = time.time()
    for step in range(start, steps):
        gen = torch.Generator().manual_seed(1000003 * 7 + step)  # per-step seed: resume sees the same batches
        idx = torch.randint(0, len(x_all), (BATCH,), generator=gen)
        x = x_all[idx]
        # part of the batch: the VAE's reconstruction of the same scene (same labels)
        use_rec = (torch.rand(BATCH, generator=gen) < recon_share) & (idx < len(x_rec))
        if use_rec.any():
            x[use_rec] = x_rec[idx[use_rec]]
        if step % 2:  # light blur, as train_judge: generated images are a little soft
            x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) * 0.5 + x * 0.5
        x = (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        lr = 2e-3 * min(1.0, (step + 1) / 150) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.97 + 0.03)
        for pg in opt.param_groups:
            pg["lr"] = lr
        loss = loss_fn(model(x), cells[idx], bgs[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            log.row(step=step, loss=loss.item())
        if step % 250 == 0 or step == steps - 1:
            say(f"objjudge step {step} loss {loss.item():.4f} ({time.time() - t1:.0f}s)")
            ckpt.save(step + 1)
    model.eval()
    fresh = render_set(seed=54321, n=n_eval)  # seed never used for training
    acc = objjudge_accuracy(model, fresh["images"], fresh["cells"], fresh["background"])
    n_r = min(1000, n_eval)
    rec_imgs = cached_recon(out, "eval", fresh["images"][:n_r], vae)
    acc_rec = objjudge_accuracy(model, rec_imgs, fresh["cells"][:n_r], fresh["background"][:n_r])
    say(f"objjudge on fresh renders: {acc}")
    say(f"objjudge on VAE reconstructions: {acc_rec}")
    from safetensors.torch import save_file

    dst = work / "model"
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dst / WEIGHTS_FILE))
    meta = {f"accuracy_fresh_{n_eval}": acc, f"accuracy_vae_recon_{n_r}": acc_rec, "steps": steps, "batch": BATCH,
            "width": 48, "train_seconds": round(time.time() - t1, 1), "n_data": n_data, "n_recon": n_recon,
            "cells": g.CELLS, "attributes": {h: g.ATTRIBUTES[h] for h in OBJ_HEADS + ("background",)},
            "recon_share_last_run": recon_share,
            "commands": ["python -m engines.world.train_objjudge --steps 3000",
                         "python -m engines.world.train_objjudge --resume --steps 5000 --recon-share 0.5"],
            "note": "per 3x3 cell: presence, shape, colour, size, style; plus background"}
    (dst / META_FILE).write_text(json.dumps(meta, indent=2))
    plot_loss(log, "objjudge", ["loss"], "per-object judge: summed losses", install)
    if install:
        install_files(dst, judge_dir())
        say(f"installed the per-object judge into {judge_dir()}")
    return meta


def install_files(src: Path, dst: Path) -> None:
    """Copy the two objjudge files into ``dst`` (each replaced atomically; the primary-object
    judge's files next to them are left alone)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, META_FILE):
        tmp = dst / (name + ".tmp")
        shutil.copyfile(src / name, tmp)
        tmp.replace(dst / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.world.train_objjudge",
                                 description="Train the per-object judge of the compositional WorldEval.")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--out", type=Path, default=None, help="default: $STUDIO_DATA_DIR/world-train")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--install", action="store_true", help="copy the result into engines/world/weights/judge/")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recon-share", type=float, default=1 / 3, help="fraction of each batch from VAE reconstructions")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = train_objjudge(args.out or train_dir(), args.steps, args.resume, args.install,
                          recon_share=args.recon_share)
    print(json.dumps({k: v for k, v in meta.items() if k.startswith("accuracy")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

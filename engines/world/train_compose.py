"""A bounded compositional fine-tune of the shipped U-Net (and text encoder), for a *candidate*
model: it never writes into ``engines/world/weights``.

The shipped model saw two objects only in far-apart cells, always with per-object positions,
and never a relation between objects. Here the captions of two-object scenes also come without
positions ("a red square and a blue circle"), with only some attributes, and as relations
("a red square to the left of a blue circle", "... above ..."); two-object scenes also use
neighbouring cells. The paraphrase wording of the eval is *not* trained on (it stays held out).

``python -m engines.world.train_compose --out DIR [--steps N] [--max-minutes M] [--resume]``
starts from ``engines/world/weights/sd`` and exports the EMA model to ``DIR/compose/candidate``
(a StableDiffusionPipeline dir) at the end or when the wall-clock bound is reached.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.world import data as D
from engines.world import generator as g
from engines.world import models as M
from engines.world.paths import default_model_dir, train_dir
from engines.world.train_common import Checkpoint, Log, say, stage_dir, tokenize


def compose_scene(rng: np.random.Generator) -> g.Scene:
    """Half single-object scenes (as the base training), a quarter far-apart pairs (as the base
    training), a quarter pairs in any two distinct cells (neighbours allowed)."""
    r = rng.random()
    if r < 0.5:
        return g.sample_scene(rng, "train", 0.0)
    if r < 0.75:
        return g.sample_scene(rng, "train", 1.0)
    while True:
        sc = g.sample_multi_scene(rng, 2, "train", jitter=2.0, slack=1.0)
        if len(sc.objects) == 2:
            return sc


def holding_relations(a: g.Obj, b: g.Obj) -> list[str]:
    return [r for r in g.RELATIONS if g.relation_holds(r, a.position, b.position)]


def compose_caption(scene: g.Scene, rng: np.random.Generator) -> str:
    """Single objects: the base templates. Pairs: a third each base templates, pair wording
    without positions (size/style each named half the time), a true relation in either order."""
    if len(scene.objects) == 1:
        return g.caption(scene, rng)
    r = rng.random()
    if r < 1 / 3:
        return g.caption(scene, rng)
    if r < 2 / 3:
        return g.pair_caption(scene, positions=False, size=bool(rng.random() < 0.5), style=bool(rng.random() < 0.5))
    a, b = scene.objects if rng.random() < 0.5 else scene.objects[::-1]
    rels = holding_relations(a, b)
    return g.relation_caption(a, rels[rng.integers(len(rels))], b, scene.background)


def _data(out: Path, vae, n: int, seed: int = 31) -> tuple[torch.Tensor, np.ndarray]:  # noqa: ANN001
    """latents (N, 8, 16, 16) float16 and scenes (N, 12) int16 (``data.encode_scene``), cached."""
    path = Path(out) / "compose" / f"data-{seed}-{n}.npz"
    if path.exists():
        with np.load(path) as z:
            return torch.from_numpy(z["latents"]), z["scenes"]
    scenes = np.empty((n, 12), np.int16)
    lat = []
    for s in range(0, n, 256):
        imgs = []
        for i in range(s, min(n, s + 256)):
            sc = compose_scene(np.random.default_rng([seed, i]))
            scenes[i] = D.encode_scene(sc)
            imgs.append(g.render(sc)[0])
        with torch.no_grad():
            x = D.to_tensor(np.stack(imgs)) * 2 - 1  # (b, 3, 64, 64) in [-1, 1]
            lat.append((vae.encode(x).latent_dist.mean * vae.config.scaling_factor).half())  # (b, 8, 16, 16)
    z = torch.cat(lat)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, latents=z.numpy(), scenes=scenes)
    tmp.rename(path)
    return z, scenes


def train_compose(out: Path, steps: int = 3000, resume: bool = False, max_minutes: float = 55.0,
                  n_data: int = 16000, base_lr: float = 1.5e-4) -> dict:
    """Fine-tune from the shipped weights: v-prediction, min-SNR-5, 10 % empty captions, EMA
    0.999 seeded with the shipped weights; LR warm-up 100 steps then cosine to 10 % at ``steps``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from engines.world.tokenizer import load_tokenizer
    from engines.world.train_unet import _pipeline, export_pipeline

    torch.manual_seed(0)
    t_start = time.time()
    src = default_model_dir()
    work = stage_dir(out, "compose")
    vae = AutoencoderKL.from_pretrained(src / "vae", local_files_only=True).eval()
    tok = load_tokenizer(src / "tokenizer")
    te = CLIPTextModel.from_pretrained(src / "text_encoder", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(src / "unet", local_files_only=True)
    ema_te = CLIPTextModel.from_pretrained(src / "text_encoder", local_files_only=True).eval().requires_grad_(False)
    ema_unet = UNet2DConditionModel.from_pretrained(src / "unet", local_files_only=True).eval().requires_grad_(False)
    lat, scenes = _data(out, vae, n_data)
    say(f"compose data ready: {len(lat)} latents ({time.time() - t_start:.0f}s)")
    noise_sched = DDPMScheduler(**M.scheduler_configs()[0])
    fast = [p for n, p in unet.named_parameters() if "attn2" in n or "add_embedding" in n]
    fast_ids = {id(p) for p in fast}
    slow = [p for p in unet.parameters() if id(p) not in fast_ids]
    opt = torch.optim.AdamW([{"params": slow, "mult": 1.0}, {"params": fast, "mult": 2.0},
                             {"params": list(te.parameters()), "mult": 0.25}], lr=base_lr, weight_decay=1e-2)
    ckpt = Checkpoint(work, unet=unet, te=te, opt=opt, ema_unet=ema_unet, ema_te=ema_te)
    start = ckpt.resume(resume)["step"]
    log = Log(work / "log.csv", ["step", "loss", "lr"])
    ac = noise_sched.alphas_cumprod  # (1000,)
    snr = ac / (1 - ac)
    empty = tokenize(tok, [""])[0]
    ema_pairs = list(zip(ema_unet.parameters(), unet.parameters())) + list(zip(ema_te.parameters(), te.parameters()))
    unet.train(); te.train()
    bs, t0, step = 32, time.time(), start
    for step in range(start, steps):
        if (time.time() - t_start) / 60 > max_minutes:
            say(f"wall-clock bound of {max_minutes} min reached at step {step}")
            break
        rng = np.random.default_rng([16, step])
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        lr_f = min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for pg in opt.param_groups:
            pg["lr"] = base_lr * pg["mult"] * lr_f
        idx = rng.integers(0, len(lat), bs)
        x0 = lat[idx].float()  # (B, 8, 16, 16)
        ids = tokenize(tok, [compose_caption(D.decode_scene(scenes[i]), rng) for i in idx])  # (B, 40)
        ids[torch.from_numpy(rng.random(bs) < 0.1)] = empty
        cond = te(input_ids=ids).last_hidden_state  # (B, 40, 128)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.where(torch.rand(bs, generator=gen) < 0.5, torch.randint(0, 1000, (bs,), generator=gen),
                        torch.randint(400, 1000, (bs,), generator=gen))
        pred = unet(noise_sched.add_noise(x0, noise, t), t, cond).sample
        w = torch.clamp(snr[t], max=5.0) / (snr[t] + 1)  # min-SNR-5 for v-prediction
        loss = (((pred - noise_sched.get_velocity(x0, noise, t)) ** 2).mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in ema_pairs:
                e.lerp_(p, 1 - 0.999)
        if step % 25 == 0:
            log.row(step=step, loss=loss.item(), lr=base_lr * lr_f)
        if step % 250 == 0:
            say(f"compose step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % 500 == 0:
            ckpt.save(step + 1)
    else:
        step = steps
    ckpt.save(step)
    dst = work / "candidate"
    export_pipeline(_pipeline(vae, ema_te, tok, ema_unet), dst)
    rec = {"from": str(src), "steps_done": step, "steps_planned": steps, "base_lr": base_lr, "n_data": n_data,
           "train_seconds": round(time.time() - t0, 1)}
    (dst / "world_train.json").write_text(json.dumps(rec, indent=2))
    say(f"exported the candidate to {dst}: {rec}")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.world.train_compose", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="default: $STUDIO_DATA_DIR/world-train")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--max-minutes", type=float, default=55.0, help="wall-clock bound incl. data rendering")
    ap.add_argument("--n-data", type=int, default=16000)
    ap.add_argument("--lr", type=float, default=1.5e-4)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(train_compose(args.out or train_dir(), args.steps, args.resume, args.max_minutes,
                                   args.n_data, args.lr)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

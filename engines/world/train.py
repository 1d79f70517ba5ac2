"""Train the embedded world's models: ``python -m engines.world.train STAGE [--resume] [--steps N] [--out DIR]``.

Stages (each reproducible from fixed seeds, checkpointed, resumable with ``--resume``):

- ``judge``: WorldEval's CNN on fresh generator images -> ``engines/world/weights/judge/``.
- ``vae``:   AutoencoderKL, loss weighted towards object pixels, until ≥30 dB; then the gate
             (judge accuracy on reconstructions) is measured and written to ``vae/gate.json``.
- ``text``:  head start for the CLIP text encoder: predict every attribute from the caption.
- ``unet``:  UNet2DConditionModel on cached latents (v-prediction, min-SNR, EMA, higher LR on
             cross-attention). Refuses to start unless the VAE gate passed. Exports the EMA
             model as a StableDiffusionPipeline dir and copies it into
             ``engines/world/weights/sd/`` whenever the quick WorldEval score improves.
- ``all``:   the above in order.

Everything goes to ``--out`` (default ``.cache/world-train/``): ``<stage>/state.pt``
(checkpoint), ``<stage>/log.csv`` (losses), loss-curve PNGs to ``docs/img/world-*.png``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.world import data as D
from engines.world import generator as g
from engines.world import models as M
from engines.world.paths import default_model_dir, judge_dir, scratch_dir

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
STAGES = ("judge", "vae", "text", "unet")


# ---------------------------------------------------------------- utilities

class Log:
    """Append-only CSV log (survives resumes) plus a loss-curve PNG on demand."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path, self.fields = path, fields
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a", newline="")
        self.w = csv.DictWriter(self.f, fields)
        if new:
            self.w.writeheader()

    def row(self, **kw: float) -> None:
        self.w.writerow({k: kw.get(k, "") for k in self.fields})
        self.f.flush()

    def plot(self, png: Path, keys: list[str], title: str, logy: bool = True) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = list(csv.DictReader(self.path.open()))
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for k in keys:
            pts = [(float(r["step"]), float(r[k])) for r in rows if r.get(k) not in (None, "")]
            if not pts:
                continue
            x, y = np.array(pts).T
            if len(y) > 50:  # running mean for readability
                w = max(1, len(y) // 50)
                y = np.convolve(y, np.ones(w) / w, mode="valid")
                x = x[w - 1:]
            ax.plot(x, y, label=k)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
        plt.close(fig)


def _save_state(path: Path, **state: object) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _to_tensor(imgs: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0


def _say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------- judge

def train_judge(out: Path, steps: int, resume: bool) -> dict:
    """Judge on single-object images of every (shape, colour) pair, incl. the held-out ones."""
    torch.manual_seed(0)
    work = out / "judge"
    work.mkdir(parents=True, exist_ok=True)
    data = D.dataset(out, "judge", seed=1, n=24000, split="all", p_two=0.0)
    x_all = _to_tensor(data["images"])
    y_all = {k: torch.from_numpy(v.astype(np.int64)) for k, v in D.label_indices(data["scenes"]).items()}
    model = M.Judge()
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    start = 0
    if resume and (work / "state.pt").exists():
        st = torch.load(work / "state.pt", weights_only=False)
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        start = st["step"]
    log = Log(work / "log.csv", ["step", "loss"])
    gen = torch.Generator().manual_seed(start)
    model.train()
    t0 = time.time()
    for step in range(start, steps):
        idx = torch.randint(0, len(x_all), (64,), generator=gen)
        x = x_all[idx]
        # light augmentation (blur/noise) so the judge also reads slightly soft VAE outputs
        if step % 2:
            x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) * 0.5 + x * 0.5
        x = (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        lr = 2e-3 * min(1.0, (step + 1) / 150) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.97 + 0.03)
        for pg in opt.param_groups:
            pg["lr"] = lr
        logits = model(x)
        loss = sum(F.cross_entropy(logits[h], y_all[h][idx]) for h in M.Judge.HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            log.row(step=step, loss=loss.item())
        if step % 200 == 0 or step == steps - 1:
            _say(f"judge step {step} loss {float(loss):.4f} ({time.time() - t0:.0f}s)")
            _save_state(work / "state.pt", model=model.state_dict(), opt=opt.state_dict(), step=step + 1)
    model.eval()
    acc = judge_accuracy(model, n=2000, seed=12345)
    _say(f"judge accuracy on fresh images: {acc}")
    from safetensors.torch import save_file

    dst = judge_dir()
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dst / "judge.safetensors"))
    meta = {"accuracy_fresh_2000": acc, "steps": steps, "train_seconds": round(time.time() - t0, 1),
            "attributes": {h: g.ATTRIBUTES[h] for h in M.Judge.HEADS},
            "note": "reads the primary (first-named) object of single-object scenes"}
    (dst / "judge.json").write_text(json.dumps(meta, indent=2))
    log.plot(DOCS_IMG / "world-judge-loss.png", ["loss"], "judge: summed cross-entropy")
    return meta


@torch.no_grad()
def judge_accuracy(model: M.Judge, n: int, seed: int, transform=None) -> dict[str, float]:  # noqa: ANN001
    """Per-attribute accuracy on ``n`` fresh single-object images (split "all")."""
    ss = list(g.samples(seed, n, "all"))
    x = _to_tensor(np.stack([s.image for s in ss]))
    if transform is not None:
        x = transform(x)
    pred = M.judge_predict(model, x)
    return {h: round(float(np.mean([p == s.labels[h] for p, s in zip(pred[h], ss)])), 4) for h in M.Judge.HEADS}


# ---------------------------------------------------------------- vae

def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


@torch.no_grad()
def _recon(vae, x: torch.Tensor, batch: int = 128) -> torch.Tensor:  # noqa: ANN001
    """(N, 3, 64, 64) in [0, 1] -> reconstructions via the posterior mean."""
    outs = []
    for i in range(0, len(x), batch):
        z = vae.encode(x[i:i + batch] * 2 - 1).latent_dist.mean
        outs.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    return torch.cat(outs)


def train_vae(out: Path, steps: int, resume: bool) -> dict:
    """AutoencoderKL on 32×32 crops (it is fully convolutional), object-weighted L1+L2, tiny KL."""
    torch.manual_seed(0)
    work = out / "vae"
    work.mkdir(parents=True, exist_ok=True)
    data = D.dataset(out, "train", seed=2, n=40000, split="train", p_two=0.15)
    imgs, masks = data["images"], data["masks"]
    vae = M.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), 1e-3, weight_decay=0.0)
    start = 0
    if resume and (work / "state.pt").exists():
        st = torch.load(work / "state.pt", weights_only=False)
        vae.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); start = st["step"]
    log = Log(work / "log.csv", ["step", "loss", "psnr_val"])
    val = _to_tensor(np.stack([s.image for s in g.samples(99, 256, "all", p_two=0.15)]))
    rng = np.random.default_rng([3, start])
    t0 = time.time()
    vae.train()
    for step in range(start, steps):
        lr = 1e-3 * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1)
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = rng.integers(0, len(imgs), 32)
        ox, oy = rng.integers(0, 33, 2)  # one crop offset per batch (multiple of nothing: any)
        x = _to_tensor(imgs[idx, oy:oy + 32, ox:ox + 32])
        m = torch.from_numpy(masks[idx, oy:oy + 32, ox:ox + 32]).float()[:, None] / 255.0
        m = F.max_pool2d(m, 3, 1, 1)  # include the edge pixels around objects
        w = 1.0 + 4.0 * m  # (B, 1, 32, 32)
        post = vae.encode(x * 2 - 1).latent_dist
        rec = vae.decode(post.sample()).sample
        err = rec - (x * 2 - 1)
        loss = ((err.abs() + err ** 2) * w).mean() / w.mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            log.row(step=step, loss=loss.item())
        if step % 250 == 0 or step == steps - 1:
            vae.eval()
            p = _psnr(_recon(vae, val), val)
            vae.train()
            log.row(step=step, psnr_val=p)
            _say(f"vae step {step} loss {float(loss):.4f} val PSNR {p:.2f} dB ({time.time() - t0:.0f}s)")
            _save_state(work / "state.pt", model=vae.state_dict(), opt=opt.state_dict(), step=step + 1)
            if p >= 33.0:  # comfortably past the 30 dB target: stop early (deterministic)
                _say("val PSNR ≥ 33 dB: stopping early")
                break
    vae.eval()
    # scaling factor: unit variance latents, as SD does with 0.18215
    with torch.no_grad():
        z = vae.encode(_to_tensor(imgs[:1024]) * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(work / "model", safe_serialization=True)
    # the gate needs the judge; when the judge is trained in parallel, the unet stage re-runs it
    gate = recon_gate(vae, n=1000) if (judge_dir() / "judge.safetensors").exists() else None
    p = _psnr(_recon(vae, val), val)
    res = {"psnr_val_db": round(p, 2), "gate": gate, "steps": steps, "scaling_factor": vae.config.scaling_factor,
           "train_seconds": round(time.time() - t0, 1)}
    (work / "gate.json").write_text(json.dumps(res, indent=2))
    log.plot(DOCS_IMG / "world-vae-loss.png", ["loss"], "VAE: object-weighted L1+L2 loss")
    _say(f"vae done: {res}")
    return res


def recon_gate(vae, n: int = 1000, seed: int = 4242) -> dict:  # noqa: ANN001
    """Judge accuracy on VAE reconstructions of fresh real images; passes if every scored
    attribute is read at ≥ 0.95."""
    judge = M.load_judge(judge_dir())
    acc = judge_accuracy(judge, n, seed, transform=lambda x: _recon(vae, x))
    ss = list(g.samples(seed, min(n, 512), "all"))
    x = _to_tensor(np.stack([s.image for s in ss]))
    psnr = _psnr(_recon(vae, x), x)
    # The gate (issue 3) is the judge reading every scored attribute at ≥ 95 %; the 30 dB PSNR
    # target is reported beside it (size is not a scored attribute).
    return {"accuracy": acc, "psnr_db": round(psnr, 2), "psnr_target_met": psnr >= 30.0, "n": n,
            "passed": bool(all(v >= 0.95 for k, v in acc.items() if k != "size"))}


# ---------------------------------------------------------------- text encoder head start

_TEXT_HEADS = [("shape", 0), ("color", 1), ("size", 2), ("position", 3), ("style", 4)]


def _text_targets(scenes: list[g.Scene]) -> dict[str, torch.Tensor]:
    """Class indices for both objects (second object: extra class "none") and the background."""
    rows = np.stack([D.encode_scene(s) for s in scenes]).astype(np.int64)
    t = {}
    for name, j in _TEXT_HEADS:
        t[f"a_{name}"] = torch.from_numpy(rows[:, j])
        second = rows[:, 5 + j]
        t[f"b_{name}"] = torch.from_numpy(np.where(second < 0, len(g.ATTRIBUTES[name]), second))
    t["background"] = torch.from_numpy(rows[:, 10])
    return t


def _tokenize(tok, captions: list[str]) -> torch.Tensor:  # noqa: ANN001
    return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def train_text(out: Path, steps: int, resume: bool) -> dict:
    """Pretrain the CLIP text encoder to name every attribute from a caption (linear heads on
    the EOS state), so cross-attention starts from features that already separate attributes."""
    from engines.world.tokenizer import load_tokenizer, write_tokenizer

    torch.manual_seed(0)
    work = out / "text"
    write_tokenizer(work / "tokenizer")
    tok = load_tokenizer(work / "tokenizer")
    te = M.build_text_encoder(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.model_max_length)
    heads = torch.nn.ModuleDict()
    for name, _ in _TEXT_HEADS:
        heads[f"a_{name}"] = torch.nn.Linear(M.TEXT_DIM, len(g.ATTRIBUTES[name]))
        heads[f"b_{name}"] = torch.nn.Linear(M.TEXT_DIM, len(g.ATTRIBUTES[name]) + 1)
    heads["background"] = torch.nn.Linear(M.TEXT_DIM, len(g.BACKGROUNDS))
    params = list(te.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, 1e-3, weight_decay=0.01)
    start = 0
    if resume and (work / "state.pt").exists():
        st = torch.load(work / "state.pt", weights_only=False)
        te.load_state_dict(st["model"]); heads.load_state_dict(st["heads"]); opt.load_state_dict(st["opt"])
        start = st["step"]
    log = Log(work / "log.csv", ["step", "loss", "acc"])
    t0 = time.time()
    correct: list[float] = [st["acc"]] if start and "acc" in st else [float("nan")]
    te.train()
    for step in range(start, steps):
        rng = np.random.default_rng([5, step])
        scenes = [g.sample_scene(rng, "all", p_two=0.3) for _ in range(64)]
        caps = [g.caption(s, rng, drop=False) for s in scenes]
        ids = _tokenize(tok, caps)
        pooled = te(input_ids=ids).pooler_output  # (B, 128): the EOS token's state
        tg = _text_targets(scenes)
        loss = 0.0
        correct = []
        for k, h in heads.items():
            lg = h(pooled)
            loss = loss + F.cross_entropy(lg, tg[k])
            correct.append(float((lg.argmax(1) == tg[k]).float().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            log.row(step=step, loss=loss.item(), acc=float(np.mean(correct)))
        if step % 250 == 0 or step == steps - 1:
            _say(f"text step {step} loss {float(loss):.4f} mean head acc {np.mean(correct):.3f} ({time.time() - t0:.0f}s)")
            _save_state(work / "state.pt", model=te.state_dict(), heads=heads.state_dict(), opt=opt.state_dict(),
                        step=step + 1, acc=float(np.mean(correct)))
    te.save_pretrained(work / "model", safe_serialization=True)
    log.plot(DOCS_IMG / "world-text-loss.png", ["loss"], "text encoder head start: attribute cross-entropy")
    res = {"final_mean_head_acc": float(np.mean(correct)), "steps": steps, "train_seconds": round(time.time() - t0, 1)}
    (work / "result.json").write_text(json.dumps(res, indent=2))
    return res


# ---------------------------------------------------------------- unet

def _pipeline(vae, te, tok, unet):  # noqa: ANN001, ANN202
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DPMSolverMultistepScheduler(**M.scheduler_configs()[1]),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def export_pipeline(pipe, dst: Path) -> None:  # noqa: ANN001
    """Save atomically (write to a sibling dir, then swap) so readers never see half a model."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; ship the world's vocab.json/merges.txt too
    from engines.world.tokenizer import load_tokenizer, write_tokenizer

    write_tokenizer(tmp / "tokenizer")
    load_tokenizer(tmp / "tokenizer")  # asserts the size
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def _latents(out: Path, vae, imgs: np.ndarray) -> np.ndarray:  # noqa: ANN001
    path = out / "unet" / f"latents-{len(imgs)}.npy"
    if path.exists():
        return np.load(path)
    zs = []
    with torch.no_grad():
        for i in range(0, len(imgs), 256):
            z = vae.encode(_to_tensor(imgs[i:i + 256]) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
            zs.append(z.half().numpy())
    z = np.concatenate(zs)  # (N, 8, 16, 16) float16
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, z)
    return z


def train_unet(out: Path, steps: int, resume: bool, eval_every: int = 1000, decay_from: int | None = None) -> dict:
    """v-prediction DDPM training with min-SNR-5 weighting, 10% empty captions (for CFG), EMA,
    cross-attention and the pooled-text embedding at 2× the base LR, text encoder fine-tuned.

    The LR is constant after warm-up so a run can be extended; `decay_from` starts a cosine decay to
    10% ending at `steps` (a pure function of the step, so resuming keeps the same schedule)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel

    from engines.world.eval import quick_eval
    from engines.world.tokenizer import load_tokenizer

    torch.manual_seed(0)
    work = out / "unet"
    work.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(out / "vae" / "model").eval()
    gate = recon_gate(vae, n=1000)  # always re-measured with the current judge
    rec = json.loads((out / "vae" / "gate.json").read_text())
    rec["gate"] = gate
    (out / "vae" / "gate.json").write_text(json.dumps(rec, indent=2))
    _say(f"VAE gate: {gate}")
    if not gate["passed"]:
        raise SystemExit(f"VAE gate not passed ({gate}): train the VAE longer first")
    tok = load_tokenizer(out / "text" / "tokenizer")
    te = CLIPTextModel.from_pretrained(out / "text" / "model")
    data = D.dataset(out, "train", seed=2, n=40000, split="train", p_two=0.15)
    lat = torch.from_numpy(_latents(out, vae, data["images"]))
    scenes = data["scenes"]
    unet = M.build_unet(sample_size=lat.shape[-1])
    noise_sched = DDPMScheduler(**M.scheduler_configs()[0])
    fast = [p for n, p in unet.named_parameters() if "attn2" in n or "add_embedding" in n]
    fast_ids = {id(p) for p in fast}
    slow = [p for p in unet.parameters() if id(p) not in fast_ids]
    base_lr = 6e-4
    opt = torch.optim.AdamW([{"params": slow, "lr": base_lr, "mult": 1.0},
                             {"params": fast, "lr": 2 * base_lr, "mult": 2.0},
                             {"params": list(te.parameters()), "lr": 1e-4, "mult": 0.25}], weight_decay=1e-2)
    ema_unet = M.build_unet(sample_size=lat.shape[-1]).eval().requires_grad_(False)
    ema_unet.load_state_dict(unet.state_dict())
    ema_te = CLIPTextModel.from_pretrained(out / "text" / "model").eval().requires_grad_(False)
    start, best = 0, -1.0
    if resume and (work / "state.pt").exists():
        st = torch.load(work / "state.pt", weights_only=False)
        unet.load_state_dict(st["unet"]); te.load_state_dict(st["te"]); opt.load_state_dict(st["opt"])
        ema_unet.load_state_dict(st["ema_unet"]); ema_te.load_state_dict(st["ema_te"])
        start, best = st["step"], st.get("best", -1.0)
        _say(f"resumed at step {start} (best quick-eval overall {best})")
    log = Log(work / "log.csv", ["step", "loss", "lr", "samples_per_s", "eval_overall", "eval_unseen_overall"])
    ac = noise_sched.alphas_cumprod  # (1000,)
    snr = ac / (1 - ac)
    empty = _tokenize(tok, [""])[0]
    ema_pairs = list(zip(ema_unet.parameters(), unet.parameters())) + list(zip(ema_te.parameters(), te.parameters()))
    unet.train(); te.train()
    t0, t_last, bs = time.time(), time.time(), 32
    for step in range(start, steps):
        rng = np.random.default_rng([6, step])
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        warm = min(1.0, (step + 1) / 300)
        if decay_from is not None and step >= decay_from:
            frac = (step - decay_from) / max(1, steps - decay_from)
            warm *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
        for pg in opt.param_groups:
            pg["lr"] = base_lr * pg["mult"] * warm
        idx = rng.integers(0, len(lat), bs)
        x0 = lat[idx].float()  # (B, 8, 16, 16)
        caps = [g.caption(D.decode_scene(scenes[i]), rng) for i in idx]
        ids = _tokenize(tok, caps)
        ids[torch.from_numpy(rng.random(bs) < 0.1)] = empty  # unconditional for CFG
        cond = te(input_ids=ids).last_hidden_state  # (B, 40, 128)
        noise = torch.randn(x0.shape, generator=gen)
        # half the batch uniform, half from the noisier 60% where layout and colour are decided
        t = torch.where(torch.rand(bs, generator=gen) < 0.5, torch.randint(0, 1000, (bs,), generator=gen),
                        torch.randint(400, 1000, (bs,), generator=gen))
        xt = noise_sched.add_noise(x0, noise, t)
        target = noise_sched.get_velocity(x0, noise, t)
        pred = unet(xt, t, cond).sample
        w = torch.clamp(snr[t], max=5.0) / (snr[t] + 1)  # min-SNR-5 for v-prediction
        loss = (((pred - target) ** 2).mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in ema_pairs:
                e.lerp_(p, 1 - decay)
        if step % 25 == 0:
            now = time.time()
            sps = 25 * bs / max(now - t_last, 1e-6) if step > start else 0.0
            t_last = now
            log.row(step=step, loss=loss.item(), lr=base_lr * warm, samples_per_s=round(sps, 1))
        if step % 250 == 0:
            _say(f"unet step {step} loss {float(loss):.4f} ({time.time() - t0:.0f}s)")
        last = step == steps - 1
        due = (step + 1) % eval_every == 0 or ((step + 1) in (500, 1500)) or last
        if due:
            _save_state(work / "state.pt", unet=unet.state_dict(), te=te.state_dict(), opt=opt.state_dict(),
                        ema_unet=ema_unet.state_dict(), ema_te=ema_te.state_dict(), step=step + 1, best=best)
            pipe = _pipeline(vae, ema_te, tok, ema_unet)
            export_pipeline(pipe, work / "export-latest")
            r = quick_eval(pipe)
            log.row(step=step + 1, eval_overall=r["overall"], eval_unseen_overall=r["unseen"]["overall"])
            _say(f"unet step {step + 1} quick eval: {json.dumps(r)}")
            if r["overall"] > best:
                best = r["overall"]
                (work / "export-latest" / "world_train.json").write_text(json.dumps(
                    {"step": step + 1, "quick_eval": r, "train_seconds_this_run": round(time.time() - t0, 1)}, indent=2))
                export_pipeline(pipe, work / "best")
                dst = default_model_dir()
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name("sd.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(work / "best", tmp)
                shutil.copy(work / "export-latest" / "world_train.json", tmp / "world_train.json")
                old = dst.with_name("sd.old")
                shutil.rmtree(old, ignore_errors=True)
                if dst.exists():
                    dst.rename(old)
                tmp.rename(dst)
                shutil.rmtree(old, ignore_errors=True)
                _say(f"copied improved model (overall {best:.3f}) to {dst}")
                _save_state(work / "state.pt", unet=unet.state_dict(), te=te.state_dict(), opt=opt.state_dict(),
                            ema_unet=ema_unet.state_dict(), ema_te=ema_te.state_dict(), step=step + 1, best=best)
            log.plot(DOCS_IMG / "world-unet-loss.png", ["loss"], "U-Net: min-SNR weighted v-prediction MSE")
            unet.train(); te.train()
    return {"best_quick_eval_overall": best, "steps": steps}


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.world.train", description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=STAGES + ("all",))
    ap.add_argument("--resume", action="store_true", help="continue from <out>/<stage>/state.pt")
    ap.add_argument("--steps", type=int, default=None, help="total steps for the stage (default per stage)")
    ap.add_argument("--out", type=Path, default=scratch_dir())
    ap.add_argument("--decay-from", type=int, default=None,
                    help="unet: cosine-decay the LR to 10%% from this step to --steps (default: constant)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    stages = STAGES if args.stage == "all" else (args.stage,)
    defaults = {"judge": 1800, "vae": 2500, "text": 400, "unet": 20000}
    for st in stages:
        fn = {"judge": train_judge, "vae": train_vae, "text": train_text, "unet": train_unet}[st]
        t = time.time()
        if st == "unet":
            train_unet(args.out, args.steps or defaults[st], args.resume, decay_from=args.decay_from)
        else:
            fn(args.out, args.steps or defaults[st], args.resume)
        _say(f"stage {st} took {time.time() - t:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Stage ``unet``: UNet2DConditionModel on cached latents — v-prediction DDPM with min-SNR-5
weighting, 10 % empty captions (for CFG), EMA, cross-attention and the pooled-text embedding at
2× the base LR, text encoder fine-tuned. Refuses to start unless the VAE gate passes (re-measured
with the run's judge). Every ``eval_every`` steps it exports the EMA model as a
StableDiffusionPipeline to ``<out>/unet/export-latest``, runs the quick WorldEval, and keeps the
best in ``<out>/unet/best``; with ``install`` the best is also swapped into
``engines/world/weights/sd/`` whenever it improves."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from engines.world import data as D
from engines.world import generator as g
from engines.world import models as M
from engines.world.eval import prompt_set, quick_eval, recon_gate
from engines.world.paths import default_model_dir
from engines.world.train_common import (Checkpoint, Log, install_dir, plot_loss, say, stage_dir, swap_in, tokenize,
                                        trained_judge)

DEFAULT_STEPS = 20000


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
    swap_in(tmp, dst)


def _latents(out: Path, vae, imgs: np.ndarray) -> np.ndarray:  # noqa: ANN001
    path = Path(out) / "unet" / f"latents-{len(imgs)}.npy"
    if path.exists():
        return np.load(path)
    zs = []
    with torch.no_grad():
        for i in range(0, len(imgs), 256):
            z = vae.encode(D.to_tensor(imgs[i:i + 256]) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
            zs.append(z.half().numpy())
    z = np.concatenate(zs)  # (N, 8, 16, 16) float16
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, z)
    return z


def vae_gate(out: Path, vae, n: int) -> dict:  # noqa: ANN001
    """Re-measure the VAE gate with the run's current judge and record it in ``vae/gate.json``."""
    gate = recon_gate(vae, n=n, judge_path=trained_judge(out))
    path = Path(out) / "vae" / "gate.json"
    rec = json.loads(path.read_text()) if path.is_file() else {}
    rec["gate"] = gate
    path.write_text(json.dumps(rec, indent=2))
    return gate


def train_unet(out: Path, steps: int = DEFAULT_STEPS, resume: bool = False, install: bool = False,
               eval_every: int = 1000, decay_from: int | None = None, n_data: int = 40000, n_gate: int = 1000,
               eval_prompts: tuple[int, int] = (32, 16)) -> dict:
    """The LR is constant after warm-up so a run can be extended; ``decay_from`` starts a cosine
    decay to 10 % ending at ``steps`` (a pure function of the step, so resuming keeps the same
    schedule). ``eval_prompts``: (seen, unseen) prompts of the quick WorldEval."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel

    from engines.world.tokenizer import load_tokenizer

    torch.manual_seed(0)
    work = stage_dir(out, "unet")
    vae = AutoencoderKL.from_pretrained(Path(out) / "vae" / "model").eval()
    gate = vae_gate(out, vae, n_gate)
    say(f"VAE gate: {gate}")
    if not gate["passed"]:
        raise SystemExit(f"VAE gate not passed ({gate}): train the VAE longer first")
    judge_path = trained_judge(out)
    prompts = prompt_set(*eval_prompts)
    tok = load_tokenizer(Path(out) / "text" / "tokenizer")
    te = CLIPTextModel.from_pretrained(Path(out) / "text" / "model")
    data = D.dataset(out, "train", seed=2, n=n_data, split="train", p_two=0.15)
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
    ema_te = CLIPTextModel.from_pretrained(Path(out) / "text" / "model").eval().requires_grad_(False)
    ckpt = Checkpoint(work, unet=unet, te=te, opt=opt, ema_unet=ema_unet, ema_te=ema_te)
    st = ckpt.resume(resume)
    start, best = st["step"], st.get("best", -1.0)
    log = Log(work / "log.csv", ["step", "loss", "lr", "samples_per_s", "eval_overall", "eval_unseen_overall"])
    ac = noise_sched.alphas_cumprod  # (1000,)
    snr = ac / (1 - ac)
    empty = tokenize(tok, [""])[0]
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
        ids = tokenize(tok, caps)
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
            say(f"unet step {step} loss {float(loss):.4f} ({time.time() - t0:.0f}s)")
        due = (step + 1) % eval_every == 0 or ((step + 1) in (500, 1500)) or step == steps - 1
        if not due:
            continue
        ckpt.save(step + 1, best=best)
        pipe = _pipeline(vae, ema_te, tok, ema_unet)
        export_pipeline(pipe, work / "export-latest")
        r = quick_eval(pipe, judge_path, prompts)
        log.row(step=step + 1, eval_overall=r["overall"], eval_unseen_overall=r["unseen"]["overall"])
        say(f"unet step {step + 1} quick eval: {json.dumps(r)}")
        if r["overall"] > best:
            best = r["overall"]
            record = work / "export-latest" / "world_train.json"
            record.write_text(json.dumps({"step": step + 1, "quick_eval": r,
                                          "train_seconds_this_run": round(time.time() - t0, 1)}, indent=2))
            export_pipeline(pipe, work / "best")
            shutil.copy(record, work / "best" / "world_train.json")
            say(f"best so far (overall {best:.3f}): {work / 'best'}")
            if install:
                install_dir(work / "best", default_model_dir())
                say(f"installed it into {default_model_dir()}")
            ckpt.save(step + 1, best=best)
        plot_loss(log, "unet", ["loss"], "U-Net: min-SNR weighted v-prediction MSE", install)
        unet.train(); te.train()
    return {"best_quick_eval_overall": best, "steps": steps, "best": str(work / "best")}

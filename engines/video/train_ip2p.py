"""The embedded InstructPix2Pix model: the world's text-to-image U-Net taught to edit.

``python -m engines.video.train_ip2p [--steps N] [--max-minutes M] [--resume] [--out DIR] [--install]``

Recipe (Brooks et al., InstructPix2Pix): start from the embedded t2i U-Net
(``engines/world/weights/sd``) with ``conv_in`` widened from 8 to 16 input channels — noisy
latent + the input image's latent — the extra 8 zero-initialised, so at step 0 the model is
exactly the t2i model ignoring the image. VAE and text encoder are the embedded ones, frozen
(the edit model shares their latent space and vocabulary). Data: world edit pairs posed like
video frames (:func:`engines.video.world.world_pair`: colour, style, shape, background edits),
instruction as the text; the text, the image or both are dropped 5 % each so both classifier-
free guidances (s_T, s_I) work. Loss: plain v-prediction MSE (half the timesteps drawn from the
noisier 60 %, where the input image decides the layout); EMA weights are evaluated and exported.

Every ``eval_every`` steps the EMA model is exported as a ``StableDiffusionInstructPix2PixPipeline``
and scored on held-out world pairs (judge-read ``edit_success``, ``gt_error``); the best is kept in
``<out>/ip2p/best`` and, with ``--install``, copied to ``engines/world/weights/ip2p`` (U-Net stored
in float16 to keep the package small; it loads as float32). Seeded per step; resumable.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.world import models as M
from engines.world.paths import default_model_dir, ip2p_model_dir, train_dir
from engines.world.train_common import (Checkpoint, Log, install_dir, plot_loss, say, stage_dir, swap_in,
                                        tokenize)

DEFAULT_STEPS = 6000
DEFAULT_PAIRS = 6000
DATA_SEED, EVAL_SEED = 1501, 9151  # disjoint seeds: evaluation pairs are never trained on
DROP = 0.05  # each of: text only, image only, both


def widen_unet(unet):  # noqa: ANN001, ANN201
    """A copy of a t2i U-Net whose ``conv_in`` takes [noisy latent, image latent]
    (2× the channels); the new input weights are zero so the output is unchanged at init."""
    from diffusers import UNet2DConditionModel

    cfg = dict(unet.config)
    c = cfg["in_channels"]
    cfg["in_channels"] = 2 * c
    new = UNet2DConditionModel.from_config(cfg)
    sd = unet.state_dict()
    w = sd["conv_in.weight"]  # [C_out, c, 3, 3]
    sd["conv_in.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)  # [C_out, 2c, 3, 3]
    new.load_state_dict(sd)
    return new


def pair_data(out: Path, n: int, seed: int = DATA_SEED) -> dict[str, np.ndarray]:
    """``n`` world edit pairs, rendered once and cached: before/after [N, 64, 64, 3] uint8 and
    the instructions."""
    from engines.video.world import world_pair

    path = Path(out) / f"pairs-{seed}-{n}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    b = np.empty((n, 64, 64, 3), np.uint8)
    a = np.empty_like(b)
    instr = []
    for i in range(n):
        p = world_pair(seed, i)
        b[i], a[i] = p.before, p.after
        instr.append(p.instruction)
        if i % 2000 == 0:
            say(f"rendered {i}/{n} pairs")
    d = {"before": b, "after": a, "instruction": np.array(instr)}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **d)
    tmp.rename(path)
    return d


@torch.no_grad()
def encode(vae, imgs: np.ndarray, scale: bool) -> torch.Tensor:  # noqa: ANN001
    """uint8 [N, 64, 64, 3] -> latents [N, 8, 16, 16]: the distribution's mode, times the VAE
    scaling factor for diffusion targets, unscaled for the image condition (as the diffusers
    IP2P pipeline feeds it)."""
    zs = []
    for i in range(0, len(imgs), 256):
        x = torch.from_numpy(imgs[i:i + 256]).permute(0, 3, 1, 2).float() / 127.5 - 1  # [B, 3, 64, 64]
        zs.append(vae.encode(x).latent_dist.mode())
    z = torch.cat(zs)
    return z * vae.config.scaling_factor if scale else z


def pair_latents(work: Path, vae, data: dict[str, np.ndarray], base: Path) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """(image-condition latents, target latents) [N, 8, 16, 16] each, cached next to the pairs
    (keyed by the VAE weights' size and mtime: a retrained VAE re-encodes)."""
    f = next((Path(base) / "vae").glob("*.safetensors"))
    st = f.stat()
    path = Path(work) / f"latents-{len(data['before'])}-{st.st_size}-{st.st_mtime_ns}.pt"
    if path.exists():
        z = torch.load(path)
        return z["img"], z["tgt"]
    z = {"img": encode(vae, data["before"], scale=False), "tgt": encode(vae, data["after"], scale=True)}
    torch.save(z, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return z["img"], z["tgt"]


def ip2p_pipeline(vae, te, tok, unet):  # noqa: ANN001, ANN201
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
        scheduler=DPMSolverMultistepScheduler(**M.scheduler_configs()[1]), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def edit_eval(pipe, judge, n: int = 64, seed: int = EVAL_SEED, steps: int = 10, text_guidance: float = 7.5,  # noqa: ANN001
              image_guidance: float = 1.5, batch: int = 32) -> dict[str, float]:
    """Edit ``n`` held-out world pairs; ``edit_success``: the judge reads the instructed
    attribute as the target and the rest as kept; ``gt_error``: mean |edit − truth| in [0, 1];
    ``by_attribute``: edit_success per edited attribute."""
    from PIL import Image

    from engines.video import metrics as VM
    from engines.video.world import world_pair

    pairs = [world_pair(seed, i) for i in range(n)]
    outs = []
    for i in range(0, n, batch):
        chunk = pairs[i:i + batch]
        gen = torch.Generator().manual_seed(seed + i)
        im = pipe(prompt=[p.instruction for p in chunk], image=[Image.fromarray(p.before) for p in chunk],
                  num_inference_steps=steps, guidance_scale=text_guidance, image_guidance_scale=image_guidance,
                  generator=gen, output_type="np").images  # [B, 64, 64, 3] in [0, 1]
        outs.append((np.clip(im, 0, 1) * 255 + 0.5).astype(np.uint8))
    out = np.concatenate(outs)
    labels = VM.judge_labels(judge, out)
    ok = [VM.edit_success([lab], p.labels_before, p.labels_after, p.attribute) for lab, p in zip(labels, pairs)]
    by = {a: round(float(np.mean([o for o, p in zip(ok, pairs) if p.attribute == a])), 4)
          for a in sorted({p.attribute for p in pairs})}
    gt = np.stack([p.after for p in pairs])
    return {"edit_success": round(float(np.mean(ok)), 4), "gt_error": round(VM.gt_error(out, gt), 4),
            "by_attribute": by, "n": n, "steps": steps, "text_guidance": text_guidance,
            "image_guidance": image_guidance}


def save_pipeline(pipe, dst: Path, half_unet: bool = False) -> None:  # noqa: ANN001
    """Save atomically; ``half_unet`` stores the U-Net weights as float16 (half the bytes; loaders
    cast back to their dtype)."""
    from safetensors.torch import load_file, save_file

    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    from engines.world.tokenizer import write_tokenizer

    write_tokenizer(tmp / "tokenizer")  # transformers 5 saves only tokenizer.json
    if half_unet:
        f = tmp / "unet" / "diffusion_pytorch_model.safetensors"
        save_file({k: v.half() for k, v in load_file(str(f)).items()}, str(f), metadata={"format": "pt"})
    swap_in(tmp, dst)


def train_ip2p(out: Path, steps: int = DEFAULT_STEPS, resume: bool = False, install: bool = False,
               max_minutes: float = 0.0, eval_every: int = 400, n_data: int = DEFAULT_PAIRS, n_eval: int = 64,
               base: Path | None = None, batch: int = 32, lr: float = 5e-4, ema_decay: float = 0.995) -> dict:
    """Train until ``steps`` or ``max_minutes`` of wall time in this run (0 = no limit), whichever
    comes first; evaluation and checkpointing happen at every ``eval_every`` and at the stop.
    The new ``conv_in`` learns at 2× ``lr`` (it starts from zero); ``ema_decay`` is short (0.995)
    because runs are short (a few thousand steps)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from engines.world.paths import judge_dir
    from engines.world.tokenizer import load_tokenizer

    torch.manual_seed(0)
    t0 = time.time()
    base = Path(base or default_model_dir())
    work = stage_dir(out, "ip2p")
    vae = AutoencoderKL.from_pretrained(base / "vae").eval().requires_grad_(False)
    te = CLIPTextModel.from_pretrained(base / "text_encoder").eval().requires_grad_(False)
    tok = load_tokenizer(base / "tokenizer")
    judge = M.load_judge(judge_dir())
    data = pair_data(work, n_data)
    z_img, z_tgt = pair_latents(work, vae, data, base)
    instr = [str(s) for s in data["instruction"]]
    vocab = sorted(set(instr))
    with torch.no_grad():
        emb = torch.cat([te(input_ids=tokenize(tok, vocab[i:i + 256])).last_hidden_state
                         for i in range(0, len(vocab), 256)])  # [V, 40, 128]: the text encoder is frozen
        empty = te(input_ids=tokenize(tok, [""])).last_hidden_state  # [1, 40, 128]
    row = torch.tensor([vocab.index(s) for s in instr])  # [N]
    unet = widen_unet(UNet2DConditionModel.from_pretrained(base / "unet"))
    ema = widen_unet(UNet2DConditionModel.from_pretrained(base / "unet")).eval().requires_grad_(False)
    first = [unet.conv_in.weight, unet.conv_in.bias]
    rest = [p for n, p in unet.named_parameters() if not n.startswith("conv_in.")]
    opt = torch.optim.AdamW([{"params": first, "mult": 2.0}, {"params": rest, "mult": 1.0}], lr=lr, weight_decay=1e-2)
    noise_sched = DDPMScheduler(**M.scheduler_configs()[0])
    ckpt = Checkpoint(work, unet=unet, ema=ema, opt=opt)
    st = ckpt.resume(resume)
    start, best = st["step"], st.get("best", -1.0)
    log = Log(work / "log.csv", ["step", "loss", "lr", "samples_per_s", "edit_success", "gt_error"])
    pairs = list(zip(ema.parameters(), unet.parameters()))
    unet.train()
    t_last, step = time.time(), start
    stop = False
    while step < steps and not stop:
        rng = np.random.default_rng([15, step])
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        warm = min(1.0, (step + 1) / 200)
        for pg in opt.param_groups:
            pg["lr"] = lr * warm * pg["mult"]
        idx = torch.from_numpy(rng.integers(0, len(z_tgt), batch))
        x0, cimg = z_tgt[idx], z_img[idx].clone()  # [B, 8, 16, 16] each
        cond = emb[row[idx]].clone()  # [B, 40, 128]
        u = rng.random(batch)
        drop_t = torch.from_numpy((u < DROP) | ((u >= 2 * DROP) & (u < 3 * DROP)))  # text only, or both
        drop_i = torch.from_numpy((u >= DROP) & (u < 3 * DROP))  # image only, or both
        cond[drop_t] = empty[0]
        cimg[drop_i] = 0.0
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.where(torch.rand(batch, generator=gen) < 0.5, torch.randint(0, 1000, (batch,), generator=gen),
                        torch.randint(400, 1000, (batch,), generator=gen))
        xt = noise_sched.add_noise(x0, noise, t)
        pred = unet(torch.cat([xt, cimg], 1), t, cond).sample  # [B, 16, 16, 16] in -> [B, 8, 16, 16]
        # plain v-MSE, not the t2i stage's min-SNR weights: those scale the noisiest steps by ~SNR
        # (≈ 0), which is where the input image tells the model the most (the whole layout), and
        # a run weighted that way had not learned to use the image after 700 steps
        loss = ((pred - noise_sched.get_velocity(x0, noise, t)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in pairs:
                e.lerp_(p, 1 - decay)
        step += 1
        if step % 25 == 0:
            now = time.time()
            log.row(step=step, loss=loss.item(), lr=lr * warm, samples_per_s=round(25 * batch / max(now - t_last, 1e-6), 1))
            t_last = now
        if step % 250 == 0:
            say(f"ip2p step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        stop = bool(max_minutes) and time.time() - t0 > max_minutes * 60
        if not (step % eval_every == 0 or step == steps or stop):
            continue
        ckpt.save(step, best=best)
        pipe = ip2p_pipeline(vae, te, tok, ema)
        r = edit_eval(pipe, judge, n=n_eval)
        log.row(step=step, edit_success=r["edit_success"], gt_error=r["gt_error"])
        say(f"ip2p step {step} eval: {json.dumps(r)}")
        score = r["edit_success"] - 0.01 * r["gt_error"]  # ties (early: all 0) go to the closer edit
        if score > best:
            best = score
            save_pipeline(pipe, work / "best", half_unet=True)
            (work / "best" / "world_train.json").write_text(json.dumps(
                {"step": step, "edit_eval": r, "train_seconds_this_run": round(time.time() - t0, 1),
                 "base": "engines/world/weights/sd (conv_in widened 8 -> 16, new channels zero)",
                 "data": f"{n_data} world_pair({DATA_SEED}, i) pairs; eval world_pair({EVAL_SEED}, i)"}, indent=2))
            say(f"best so far (edit_success {r['edit_success']:.3f}, gt_error {r['gt_error']:.4f}): {work / 'best'}")
            if install:
                install_dir(work / "best", ip2p_model_dir())
                say(f"installed it into {ip2p_model_dir()}")
            ckpt.save(step, best=best)
        plot_loss(log, "ip2p", ["loss"], "InstructPix2Pix: v-prediction MSE", install)
        unet.train()
    return {"best_score": best, "steps": step, "best": str(work / "best"),
            "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.video.train_ip2p", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop after this much wall time (0 = none)")
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--n-data", type=int, default=DEFAULT_PAIRS, help="world edit pairs rendered for training")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/ip2p/state.pt")
    ap.add_argument("--out", type=Path, default=None, help="default: $STUDIO_DATA_DIR/world-train")
    ap.add_argument("--install", action="store_true", help="copy the best model to engines/world/weights/ip2p")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    r = train_ip2p(args.out or train_dir(), args.steps, args.resume, args.install, args.max_minutes,
                   args.eval_every, args.n_data)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One-step adversarially distilled student of the embedded edit model (MoViE step 3, ADD-style),
keeping the guidance-scale conditioning: the runtime pipeline and the trainer.

``python -m engines.video.distill_onestep [--steps N] [--max-minutes M] [--resume] [--out DIR] [--install]``

Runtime: a one-step student folder is a CFG-distilled student folder (``engines.video.cfg``: U-Net
with the (s_I, s_T) guidance embedding, ``cfg_distill.json``) whose json says ``"one_step": true``
and the ``timestep`` it starts from (999). :class:`OneStepIP2PPipeline` takes the teacher's call
and runs exactly ONE U-Net pass per frame: a DPM++ scheduler with trailing spacing at one step
starts at t = 999 and its single update (to σ = 0) returns the U-Net's x0 prediction
x̂0 = √ᾱ·x_T − √(1−ᾱ)·v — the same x̂0 the trainer optimises (:func:`x0_from_v`).

Training (Sauer et al., Adversarial Diffusion Distillation, adapted):

- generator: initialised from the CFG-distilled student (``engines/world/weights/ip2p_cfg``), fed
  pure noise at t = 999, the frame's latent, the instruction and the scale features; its x̂0 is
  the edit;
- distillation loss: MSE between x̂0 and the *teacher's* guided 10-step DPM++ result for the same
  noise, pair and (s_I, s_T) (the three-pass embedded model, ``engines/world/weights/ip2p``),
  precomputed once into a seeded cache of ``n_targets`` samples (ADD instead re-noises x̂0 and
  takes the teacher's one-step denoised estimate; the cached multi-step result is the cheaper,
  lower-variance target at this size — see docs/video.md);
- adversarial loss: a small conditional patch discriminator on latents (:class:`LatentDisc`,
  spectral norm, trained from scratch — ADD uses a frozen DINOv2 feature network with trainable
  heads; none exists for this world), conditioned on the input frame's latent and the
  instruction (projection), hinge loss. Real samples: the world's exact edits of the same pairs;
  fake: x̂0, and the exact edit under a mismatched instruction (so it must read the
  instruction). The generator's adversarial term is weighted by the requested text guidance
  (0 at s_T = 1, 1 from s_T = 3): at low s_T the teacher edits weakly and the student must
  follow it, so edit-strength control is kept. Its weight is set adaptively against the
  distillation gradient at the U-Net's last layer (as VQGAN does), times ``adv_weight``.

Every ``eval_every`` steps the EMA generator is scored like the CFG student (64 held-out pairs,
s_T/s_I 7.5/1.5 and 3/2.5, ``teacher_gap`` against the teacher's 10-step images); the best is
kept in ``<out>/ip2p_1step/best`` and, with ``--install``, swapped into
``engines/world/weights/ip2p_1step``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.video import cfg as C

T_ONE = 999  # the one timestep the student runs at (pure noise for this schedule: √ᾱ = 0.068)
DEFAULT_STEPS = 4000
N_TARGETS = 2048
TEACHER_STEPS = 10


def onestep_model_dir() -> Path:
    """The shipped one-step student of the embedded edit model."""
    from engines.world.paths import WEIGHTS

    return WEIGHTS / "ip2p_1step"


def is_one_step(cfg: dict[str, Any] | None) -> bool:
    return bool(cfg and cfg.get("one_step"))


def one_step_scheduler(config: Any) -> Any:
    """DPM++ with trailing spacing: at one step its only timestep is 999 and its update to σ = 0
    returns the model's x0 prediction (first order at the last step)."""
    from diffusers import DPMSolverMultistepScheduler

    cfg = dict(config)
    cfg.update(timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True,
               algorithm_type="dpmsolver++")
    return DPMSolverMultistepScheduler.from_config(cfg)


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """v-prediction -> x0: √ᾱ·x_t − √(1−ᾱ)·v (all [B, C, h, w])."""
    a = torch.as_tensor(alpha_bar, dtype=x_t.dtype)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


class OneStepIP2PPipeline(C.CFGDistilledIP2PPipeline):
    """The CFG-distilled pipeline forced to one step (whatever ``num_inference_steps`` asks):
    one U-Net pass of batch 1 per frame, the scales fed as the embedding."""

    def __call__(self, *args: Any, num_inference_steps: int = 1, **kwargs: Any) -> Any:
        return super().__call__(*args, num_inference_steps=1, **kwargs)


def as_one_step_pipeline(pipe: Any, cfg: dict[str, Any]) -> OneStepIP2PPipeline:
    """The same components as ``pipe`` with the one-step scheduler, run as :class:`OneStepIP2PPipeline`."""
    names = ("vae", "text_encoder", "tokenizer", "unet", "safety_checker", "feature_extractor", "image_encoder")
    sched = one_step_scheduler(pipe.scheduler.config)
    sched.set_timesteps(1)
    t = int(cfg.get("timestep", T_ONE))
    if int(sched.timesteps[0]) != t:
        raise ValueError(f"one-step scheduler starts at t={int(sched.timesteps[0])}, the student was trained at {t}")
    out = OneStepIP2PPipeline(scheduler=sched, **{k: v for k, v in pipe.components.items() if k in names},
                              requires_safety_checker=False)
    out.cfg_distill = dict(cfg)
    out.set_progress_bar_config(disable=True)
    return out


class LatentDisc(nn.Module):
    """Conditional patch discriminator on 16×16 latents: [x0 ‖ image latent] -> 4×4 logits, plus a
    projection term <h, W·text> with the instruction's mean token state (Miyato & Koyama)."""

    def __init__(self, channels: int = 8, text_dim: int = 128, width: int = 64) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        w = width
        self.body = nn.Sequential(
            sn(nn.Conv2d(2 * channels, w, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),  # 8×8
            sn(nn.Conv2d(2 * w, 2 * w, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2))  # 4×4
        self.out = sn(nn.Conv2d(4 * w, 1, 1))
        self.embed = sn(nn.Linear(text_dim, 4 * w))

    def forward(self, x0: torch.Tensor, cimg: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x0 [B, C, h, w] (scaled latent), cimg [B, C, h, w] (image latent), text [B, L, D] -> [B, h/4, w/4]."""
        h = self.body(torch.cat([x0, cimg], 1))  # [B, 4w, h/4, w/4]
        e = self.embed(text.mean(1))  # [B, 4w]
        return self.out(h)[:, 0] + (h * e[:, :, None, None]).sum(1)


def adv_scale_weight(s_t: torch.Tensor) -> torch.Tensor:
    """[B] -> [B]: 0 at s_T = 1 (no text guidance asked: follow the teacher only), 1 from s_T = 3."""
    return (torch.log(s_t.clamp(min=1.0)) / np.log(3.0)).clamp(0, 1)


@torch.no_grad()
def teacher_sample(teacher: Any, noise: torch.Tensor, cimg: torch.Tensor, cond: torch.Tensor, empty: torch.Tensor,
                   s_i: torch.Tensor, s_t: torch.Tensor, steps: int = TEACHER_STEPS) -> torch.Tensor:
    """The teacher's guided DPM++ sampler (what its pipeline runs, per-sample scales): noise
    [B, C, h, w] -> x0 [B, C, h, w] (scaled latent)."""
    from diffusers import DPMSolverMultistepScheduler

    from engines.video.distill_cfg import guided
    from engines.world import models as M

    sched = DPMSolverMultistepScheduler(**M.scheduler_configs()[1])
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        tt = t.expand(len(x))
        eps = guided(teacher, torch.cat([x, cimg], 1), tt, cond, empty, s_i, s_t)
        x = sched.step(eps, t, x).prev_sample
    return x


def sample_target_scales(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_I [n], s_T [n]): 70 % as the CFG student was trained (log-uniform, 10 % of those (1, 1)),
    30 % exactly one of the two settings the Studio offers (7.5/1.5 the engine default, 3/2.5 the
    Video tab's), where most edits are made."""
    from engines.video.distill_cfg import SETTINGS, sample_scales

    s_i, s_t = sample_scales(rng, n)
    pick = rng.random(n) < 0.3
    which = rng.integers(0, len(SETTINGS), n)
    for k, (st, si) in enumerate(SETTINGS):
        m = torch.from_numpy(pick & (which == k))
        s_t[m], s_i[m] = st, si
    return s_i, s_t


def target_cache(work: Path, teacher: Any, z_img: torch.Tensor, emb: torch.Tensor, row: torch.Tensor,
                 empty: torch.Tensor, n: int, teacher_stamp: str, chunk: int = 32) -> dict[str, torch.Tensor]:
    """``n`` seeded (pair, noise, scales) and the teacher's 10-step guided result for each, made
    once (chunk k seeded by k, so the cache is the same whoever makes it) and kept in ``work``:
    idx [n], noise [n, C, h, w], s_i [n], s_t [n], x0 [n, C, h, w]."""
    from engines.world.train_common import say

    path = Path(work) / f"targets-{n}-{teacher_stamp}.pt"
    if path.exists():
        return torch.load(path)
    parts: list[dict[str, torch.Tensor]] = []
    t0 = time.time()
    for k in range(0, n, chunk):
        b = min(chunk, n - k)
        rng = np.random.default_rng([19, k])
        idx = torch.from_numpy(rng.integers(0, len(z_img), b))
        s_i, s_t = sample_target_scales(rng, b)
        noise = torch.randn((b, *z_img.shape[1:]), generator=torch.Generator().manual_seed(int(rng.integers(1 << 62))))
        x0 = teacher_sample(teacher, noise, z_img[idx], emb[row[idx]], empty, s_i, s_t)
        parts.append({"idx": idx, "noise": noise, "s_i": s_i, "s_t": s_t, "x0": x0})
        if (k // chunk) % 8 == 0:
            say(f"teacher targets {k + b}/{n} ({time.time() - t0:.0f}s)")
    cache = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    torch.save(cache, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return cache


def _stamp(d: Path) -> str:
    f = next((Path(d) / "unet").glob("*.safetensors"))
    return f"{f.stat().st_size}-{f.stat().st_mtime_ns}"


def distill(out: Path, steps: int = DEFAULT_STEPS, resume: bool = False, install: bool = False,
            max_minutes: float = 0.0, eval_every: int = 100, n_eval: int = 64, batch: int = 24,
            lr: float = 1e-4, lr_d: float = 2e-4, ema_decay: float = 0.99, adv_weight: float = 0.5,
            adv_start: int = 100, n_targets: int = N_TARGETS, n_data: int = 6000,
            teacher_dir: Path | None = None, init_dir: Path | None = None) -> dict:
    """Train until ``steps`` or ``max_minutes`` of wall time in this run (counted from the start:
    the target cache, made once, included); evaluation and a checkpoint every ``eval_every`` steps
    and at the stop."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from engines.video.distill_cfg import _same_vae, evaluate, images, save_student, score
    from engines.video.train_ip2p import EVAL_SEED, ip2p_pipeline, pair_data, pair_latents
    from engines.video.world import world_pair
    from engines.world import models as M
    from engines.world.paths import ip2p_model_dir, judge_dir
    from engines.world.tokenizer import load_tokenizer
    from engines.world.train_common import Checkpoint, Log, install_dir, plot_loss, say, stage_dir, tokenize

    torch.manual_seed(0)
    t0 = time.time()
    tdir = Path(teacher_dir or ip2p_model_dir())
    idir = Path(init_dir or C.cfg_model_dir())
    work = stage_dir(out, "ip2p_1step")
    vae = AutoencoderKL.from_pretrained(tdir / "vae").eval().requires_grad_(False)
    te = CLIPTextModel.from_pretrained(tdir / "text_encoder").eval().requires_grad_(False)
    tok = load_tokenizer(tdir / "tokenizer")
    teacher = UNet2DConditionModel.from_pretrained(tdir / "unet").float().eval().requires_grad_(False)
    judge = M.load_judge(judge_dir())
    data = pair_data(stage_dir(out, "ip2p"), n_data)  # the teacher's pairs and latent cache
    z_img, z_tgt = pair_latents(stage_dir(out, "ip2p"), vae, data, _same_vae(tdir))  # [N, 8, 16, 16] each
    instr = [str(s) for s in data["instruction"]]
    vocab = sorted(set(instr))
    with torch.no_grad():
        emb = torch.cat([te(input_ids=tokenize(tok, vocab[i:i + 256])).last_hidden_state
                         for i in range(0, len(vocab), 256)])  # [V, L, D]
        empty = te(input_ids=tokenize(tok, [""])).last_hidden_state  # [1, L, D]
    row = torch.tensor([vocab.index(s) for s in instr])  # [N]
    t_cache = time.time()
    cache = target_cache(work, teacher, z_img, emb, row, empty, n_targets, _stamp(tdir))
    say(f"target cache: {len(cache['idx'])} samples ({time.time() - t_cache:.0f}s)")

    init_cfg = C.read_config(idir)
    gen_unet = UNet2DConditionModel.from_pretrained(idir / "unet").float()
    ema = UNet2DConditionModel.from_pretrained(idir / "unet").float().eval().requires_grad_(False)
    disc = LatentDisc(z_tgt.shape[1], emb.shape[-1])
    opt = torch.optim.AdamW(gen_unet.parameters(), lr=lr, weight_decay=0.0)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr_d, betas=(0.0, 0.99))
    ckpt = Checkpoint(work, unet=gen_unet, ema=ema, disc=disc, opt=opt, opt_d=opt_d)
    st = ckpt.resume(resume)
    start, best = st["step"], st.get("best", -1.0)
    log = Log(work / "log.csv", ["step", "loss_distill", "loss_g_adv", "loss_d", "d_real", "d_fake", "adv_lambda",
                                 "samples_per_s", "edit_success", "teacher_gap"])
    meta = {k: v for k, v in (init_cfg or {}).items() if k not in ("method", "teacher")} | {
        "method": "one-step adversarial distillation (ADD-style, MoViE step 3), guidance-scale conditioned",
        "one_step": True, "timestep": T_ONE, "teacher": tdir.name, "init": idir.name}
    from diffusers import DDPMScheduler

    alpha_bar = DDPMScheduler(**M.scheduler_configs()[0]).alphas_cumprod[T_ONE]
    sched_cfg = ip2p_pipeline(vae, te, tok, teacher).scheduler.config

    def as_pipe(unet: Any) -> OneStepIP2PPipeline:
        p = ip2p_pipeline(vae, te, tok, unet)
        p.scheduler = one_step_scheduler(sched_cfg)
        return as_one_step_pipeline(p, meta)

    # the teacher's evaluation images (deterministic: cached across runs)
    pairs = [world_pair(EVAL_SEED, i) for i in range(n_eval)]
    from engines.video.distill_cfg import SETTINGS

    tfile = work / f"teacher-eval-{n_eval}-{_stamp(tdir)}.npz"
    if tfile.exists():
        with np.load(tfile) as z:
            teacher_imgs = {s: z[f"{s[0]}/{s[1]}"] for s in SETTINGS}
    else:
        tpipe = ip2p_pipeline(vae, te, tok, teacher)
        teacher_imgs = {s: images(tpipe, pairs, *s, steps=TEACHER_STEPS, seed=EVAL_SEED) for s in SETTINGS}
        np.savez(tfile, **{f"{s[0]}/{s[1]}": v for s, v in teacher_imgs.items()})
    teacher_eval = {f"{s_t}/{s_i}": score(teacher_imgs[(s_t, s_i)], pairs, judge) for s_t, s_i in SETTINGS}
    say(f"teacher: {json.dumps(teacher_eval)}")
    if start == 0:  # where the generator starts: the CFG student run for one step
        r0 = evaluate(as_pipe(ema), judge, pairs, teacher_imgs)
        log.row(step=0, edit_success=r0["edit_success"], teacher_gap=r0["teacher_gap"])
        say(f"1step step 0 eval: {json.dumps(r0)}")

    ema_pairs = list(zip(ema.parameters(), gen_unet.parameters()))
    last = gen_unet.conv_out.weight
    gen_unet.train()
    disc.train()
    t_last, step, stop = time.time(), start, False
    n_cache = len(cache["idx"])
    while step < steps and not stop:
        rng = np.random.default_rng([18, step])
        warm = min(1.0, (step + 1) / 100)
        for pg in opt.param_groups:
            pg["lr"] = lr * warm
        j = torch.from_numpy(rng.integers(0, n_cache, batch))
        idx = cache["idx"][j]
        noise, target = cache["noise"][j], cache["x0"][j]  # [B, 8, 16, 16] each
        cimg, cond = z_img[idx], emb[row[idx]]  # [B, 8, 16, 16], [B, L, D]
        s_i, s_t = cache["s_i"][j], cache["s_t"][j]
        tt = torch.full((batch,), T_ONE)
        v = gen_unet(torch.cat([noise, cimg], 1), tt, cond, class_labels=C.scale_features(s_i, s_t)).sample
        x0 = x0_from_v(noise, v, alpha_bar)  # [B, 8, 16, 16]
        loss_dist = ((x0 - target) ** 2).mean()
        adv_on = step >= adv_start and adv_weight > 0
        # discriminator: real = the exact edit; fake = x̂0 and the exact edit under a wrong instruction
        real = z_tgt[idx]
        wrong = cond.roll(1, 0)
        d_real = disc(real, cimg, cond)
        d_fake = disc(x0.detach(), cimg, cond)
        d_wrong = disc(real, cimg, wrong)
        loss_d = (torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
                  + 0.5 * torch.relu(1 + d_wrong).mean())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        lam = torch.tensor(0.0)
        loss_adv = torch.tensor(0.0)
        if adv_on:
            w = adv_scale_weight(s_t)  # [B]
            loss_adv = -(disc(x0, cimg, cond).flatten(1).mean(1) * w).mean()
            g_d = torch.autograd.grad(loss_dist, last, retain_graph=True)[0]
            g_a = torch.autograd.grad(loss_adv, last, retain_graph=True)[0]
            lam = (g_d.norm() / (g_a.norm() + 1e-6)).clamp(0, 100).detach() * adv_weight
        loss = loss_dist + lam * loss_adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen_unet.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in ema_pairs:
                e.lerp_(p, 1 - decay)
        step += 1
        if step % 10 == 0:
            now = time.time()
            log.row(step=step, loss_distill=loss_dist.item(), loss_g_adv=loss_adv.item(), loss_d=loss_d.item(),
                    d_real=d_real.mean().item(), d_fake=d_fake.mean().item(), adv_lambda=float(lam),
                    samples_per_s=round(10 * batch / max(now - t_last, 1e-6), 1))
            t_last = now
        if step % 50 == 0:
            say(f"1step step {step} distill {loss_dist.item():.4f} adv {loss_adv.item():.3f} (λ {float(lam):.3f}) "
                f"D {loss_d.item():.3f} ({time.time() - t0:.0f}s)")
        stop = bool(max_minutes) and time.time() - t0 > max_minutes * 60
        if not (step % eval_every == 0 or step == steps or stop):
            continue
        ckpt.save(step, best=best)
        pipe = as_pipe(ema)
        r = evaluate(pipe, judge, pairs, teacher_imgs)
        log.row(step=step, edit_success=r["edit_success"], teacher_gap=r["teacher_gap"])
        say(f"1step step {step} eval: {json.dumps(r)}")
        val = r["edit_success"] - 0.1 * r["teacher_gap"]
        if val > best:
            best = val
            save_student(pipe, work / "best", meta)
            (work / "best" / "world_train.json").write_text(json.dumps(
                {"step": step, "edit_eval": r, "teacher_eval": teacher_eval, "teacher_steps": TEACHER_STEPS,
                 "train_seconds_this_run": round(time.time() - t0, 1),
                 "recipe": {"batch": batch, "lr": lr, "lr_d": lr_d, "ema_decay": ema_decay, "adv_weight": adv_weight,
                            "adv_start": adv_start, "n_targets": n_targets, "timestep": T_ONE,
                            "distill_target": f"teacher ({tdir.name}) guided {TEACHER_STEPS}-step DPM++ x0, same noise",
                            "discriminator": "LatentDisc: conditional patch D on latents, spectral norm, hinge",
                            "scales": "70 % log-uniform s_T in [1, 12] x s_I in [1, 5] (10 % of those (1, 1)), "
                                      "30 % exactly 7.5/1.5 or 3/2.5"},
                 "base": f"engines/world/weights/{idir.name} (the CFG-distilled student)"}, indent=2))
            say(f"best so far (edit_success {r['edit_success']:.3f}, gap {r['teacher_gap']:.4f}): {work / 'best'}")
            if install:
                install_dir(work / "best", onestep_model_dir())
                say(f"installed it into {onestep_model_dir()}")
            ckpt.save(step, best=best)
        plot_loss(log, "ip2p_1step", ["loss_distill", "loss_d"], "one-step distillation: MSE to the teacher, D hinge",
                  install)
        gen_unet.train()
    return {"best_score": best, "steps": step, "best": str(work / "best"), "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    from engines.world.paths import train_dir

    ap = argparse.ArgumentParser(prog="python -m engines.video.distill_onestep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop after this much wall time (0 = none)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--adv-weight", type=float, default=0.5, help="0 = distillation only (no discriminator term)")
    ap.add_argument("--n-targets", type=int, default=N_TARGETS, help="teacher targets precomputed (seeded, cached)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default / OMP_NUM_THREADS)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/ip2p_1step/state.pt")
    ap.add_argument("--out", type=Path, default=None, help="default: $STUDIO_DATA_DIR/world-train")
    ap.add_argument("--install", action="store_true", help="swap the best student into engines/world/weights/ip2p_1step")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    r = distill(args.out or train_dir(), args.steps, args.resume, args.install, args.max_minutes, args.eval_every,
                batch=args.batch, lr=args.lr, adv_weight=args.adv_weight, n_targets=args.n_targets)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

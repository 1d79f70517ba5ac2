"""Multimodal CFG distillation of the embedded edit model: a one-pass student.

``python -m engines.video.distill_cfg [--steps N] [--max-minutes M] [--resume] [--out DIR] [--install]``

Teacher: the embedded InstructPix2Pix model (``engines/world/weights/ip2p``), three passes per
step. Student (:mod:`engines.video.cfg`): the teacher's U-Net plus a guidance embedding — Fourier
features of (s_I, s_T) through a 2-layer MLP (diffusers ``class_embed_type="projection"``) added
to the time embedding. Initialised from the teacher with the MLP's output layer zero, so at step
0 it is exactly the teacher's conditional pass ε(c_I, c_T).

Data: the teacher's own training pairs (``world_pair(1501, i)``, cached latents), noised to a
random timestep (uniform over the 1000 training timesteps), and — for ``traj_frac`` of each batch —
states from the teacher's guided 10-step DPM++ trajectories on those pairs (what the sampler
really visits at high guidance, regenerated every ``traj_every`` steps). Scales: s_T and s_I
log-uniform in [1, ``T_MAX``] × [1, ``I_MAX``], 10 % exactly (1, 1). Loss: MSE between the
student's one pass and the teacher's guided prediction ε̃ (the three passes combined with
IP2P's formula) — v-prediction space, the space the sampler uses.

Every ``eval_every`` steps the EMA student is scored like the teacher (``train_ip2p.edit_eval``,
64 held-out pairs, 10 steps) at s_T/s_I 7.5/1.5 (IP2P's default) and 3/2.5 (the Video tab's),
with ``teacher_gap``: mean |student image − teacher image| on the same pairs and noise. The best
(highest mean edit_success, ties to the smaller gap) is kept in ``<out>/ip2p_cfg/best`` and with
``--install`` swapped into ``engines/world/weights/ip2p_cfg`` (a complete pipeline folder: the
teacher's VAE, text encoder, tokenizer and scheduler copied; U-Net in float16).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.video import cfg as C
from engines.world.paths import ip2p_model_dir, train_dir
from engines.world.train_common import Checkpoint, Log, install_dir, plot_loss, say, stage_dir, tokenize

DEFAULT_STEPS = 4000
T_MAX, I_MAX = 12.0, 5.0
SETTINGS = ((7.5, 1.5), (3.0, 2.5))  # (s_T, s_I) evaluated


def student_from_teacher(teacher):  # noqa: ANN001, ANN201
    """The teacher's U-Net with a zero-output guidance embedding (``class_embed_type="projection"``,
    input = :func:`engines.video.cfg.scale_features`): at init it predicts ε(c_I, c_T) exactly."""
    from diffusers import UNet2DConditionModel

    # not the "_" keys: diffusers' ``_use_default_values`` would make from_config drop our overrides
    cfg = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
    cfg["class_embed_type"] = "projection"
    cfg["projection_class_embeddings_input_dim"] = C.feature_dim()
    student = UNet2DConditionModel.from_config(cfg)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("class_embedding.") for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.class_embedding.linear_2.weight)
    torch.nn.init.zeros_(student.class_embedding.linear_2.bias)
    return student.to(dtype=torch.float32)


def _same_vae(tdir: Path) -> Path:
    """The t2i folder when the teacher's VAE is byte-identical to it (it is trained frozen), so
    the latents the teacher's training cached are reused; else the teacher's folder."""
    import hashlib

    from engines.world.paths import default_model_dir

    def sha(d: Path) -> str:
        f = next((d / "vae").glob("*.safetensors"), None)
        return hashlib.sha256(f.read_bytes()).hexdigest() if f else ""

    return default_model_dir() if sha(default_model_dir()) == sha(tdir) else tdir


def sample_scales(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_I [n], s_T [n]): log-uniform in [1, I_MAX] × [1, T_MAX]; 10 % exactly (1, 1)."""
    s_t = np.exp(rng.uniform(0, np.log(T_MAX), n))
    s_i = np.exp(rng.uniform(0, np.log(I_MAX), n))
    one = rng.random(n) < 0.1
    s_t[one], s_i[one] = 1.0, 1.0
    return torch.from_numpy(s_i).float(), torch.from_numpy(s_t).float()


@torch.no_grad()
def guided(teacher, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, empty: torch.Tensor,  # noqa: ANN001
           s_i: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
    """The teacher's guided prediction for U-Net inputs ``x`` [B, 16, h, w] (noisy latent ‖ image
    latent): its three passes in one batch, combined as the diffusers IP2P pipeline does."""
    b = len(x)
    c = x.shape[1] // 2
    uncond = torch.cat([x[:, :c], torch.zeros_like(x[:, c:])], 1)
    e = empty.expand(b, -1, -1)
    out = teacher(torch.cat([x, x, uncond]), torch.cat([t, t, t]), torch.cat([cond, e, e])).sample
    e_c, e_i, e_u = out.chunk(3)
    si, st = s_i.view(-1, 1, 1, 1), s_t.view(-1, 1, 1, 1)
    return e_u + st * (e_c - e_i) + si * (e_i - e_u)


@torch.no_grad()
def trajectory_states(pipe, data: dict[str, np.ndarray], idx: np.ndarray, s_t: float, s_i: float,  # noqa: ANN001
                      seed: int, steps: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the teacher's guided sampler on pairs ``idx`` and record what its U-Net was fed at
    every step: (x [steps·B, 16, h, w], t [steps·B], text embeddings [steps·B, L, D]) of the
    conditional third of each batch."""
    from PIL import Image

    rec: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    b = len(idx)

    def grab(_m, a, kw):  # noqa: ANN001, ANN202
        x, t = a[0], a[1] if len(a) > 1 else kw["timestep"]
        ehs = a[2] if len(a) > 2 else kw["encoder_hidden_states"]
        rec.append((x[:b].clone(), torch.as_tensor(t).expand(b).clone(), ehs[:b].clone()))

    h = pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pipe(prompt=[str(data["instruction"][i]) for i in idx], image=[Image.fromarray(data["before"][i]) for i in idx],
             num_inference_steps=steps, guidance_scale=s_t, image_guidance_scale=s_i,
             generator=torch.Generator().manual_seed(seed), output_type="latent")
    finally:
        h.remove()
    return tuple(torch.cat(z) for z in zip(*rec))  # type: ignore[return-value]


def images(pipe, pairs, s_t: float, s_i: float, steps: int = 10, seed: int = 0, batch: int = 32) -> np.ndarray:  # noqa: ANN001
    from PIL import Image

    out = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        im = pipe(prompt=[p.instruction for p in chunk], image=[Image.fromarray(p.before) for p in chunk],
                  num_inference_steps=steps, guidance_scale=s_t, image_guidance_scale=s_i,
                  generator=torch.Generator().manual_seed(seed + i), output_type="np").images
        out.append(np.clip(im, 0, 1))
    return np.concatenate(out)  # [N, H, W, 3] in [0, 1]


def score(imgs: np.ndarray, pairs, judge) -> dict:  # noqa: ANN001
    """``train_ip2p.edit_eval``'s scores for edits already made (float [N, H, W, 3] in [0, 1])."""
    from engines.video import metrics as VM

    out = (np.clip(imgs, 0, 1) * 255 + 0.5).astype(np.uint8)
    labels = VM.judge_labels(judge, out)
    ok = [VM.edit_success([lab], p.labels_before, p.labels_after, p.attribute) for lab, p in zip(labels, pairs)]
    by = {a: round(float(np.mean([o for o, p in zip(ok, pairs) if p.attribute == a])), 4)
          for a in sorted({p.attribute for p in pairs})}
    return {"edit_success": round(float(np.mean(ok)), 4),
            "gt_error": round(VM.gt_error(out, np.stack([p.after for p in pairs])), 4), "by_attribute": by}


def evaluate(pipe, judge, pairs, teacher_imgs: dict) -> dict:  # noqa: ANN001
    """Scores at each of SETTINGS (the images ``edit_eval`` would make: same pairs, same seeds)
    plus ``teacher_gap``: mean |student image − teacher image| (same pairs, same noise)."""
    from engines.video.train_ip2p import EVAL_SEED

    r: dict = {}
    for s_t, s_i in SETTINGS:
        im = images(pipe, pairs, s_t, s_i, seed=EVAL_SEED)
        r[f"{s_t}/{s_i}"] = score(im, pairs, judge) | {
            "teacher_gap": round(float(np.abs(im - teacher_imgs[(s_t, s_i)]).mean()), 4)}
    per = list(r.values())
    r["edit_success"] = round(float(np.mean([v["edit_success"] for v in per])), 4)
    r["teacher_gap"] = round(float(np.mean([v["teacher_gap"] for v in per])), 4)
    return r


def save_student(pipe, dst: Path, meta: dict) -> None:  # noqa: ANN001
    """A plain StableDiffusionInstructPix2PixPipeline folder (U-Net in float16) + cfg_distill.json."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from engines.video.train_ip2p import save_pipeline

    base = StableDiffusionInstructPix2PixPipeline(**{k: v for k, v in pipe.components.items() if k in (
        "vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor")},
        requires_safety_checker=False)
    dst = Path(dst)
    save_pipeline(base, dst, half_unet=True)
    (dst / C.CONFIG_NAME).write_text(json.dumps(meta, indent=2))


def distill(out: Path, steps: int = DEFAULT_STEPS, resume: bool = False, install: bool = False,
            max_minutes: float = 0.0, eval_every: int = 300, n_eval: int = 64, batch: int = 32,
            lr: float = 1e-4, ema_decay: float = 0.99, traj_frac: float = 0.5, traj_every: int = 40,
            teacher_dir: Path | None = None, n_data: int = 6000, traj_pairs: int = 16) -> dict:
    """Distil until ``steps`` or ``max_minutes`` of wall time in this run; evaluation and a
    checkpoint at every ``eval_every`` steps and at the stop."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from engines.world import models as M
    from engines.video.train_ip2p import EVAL_SEED, ip2p_pipeline, pair_data, pair_latents
    from engines.video.world import world_pair
    from engines.world.paths import judge_dir
    from engines.world.tokenizer import load_tokenizer
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    t0 = time.time()
    tdir = Path(teacher_dir or ip2p_model_dir())
    work = stage_dir(out, "ip2p_cfg")
    vae = AutoencoderKL.from_pretrained(tdir / "vae").eval().requires_grad_(False)
    te = CLIPTextModel.from_pretrained(tdir / "text_encoder").eval().requires_grad_(False)
    tok = load_tokenizer(tdir / "tokenizer")
    teacher = UNet2DConditionModel.from_pretrained(tdir / "unet").float().eval().requires_grad_(False)
    judge = M.load_judge(judge_dir())
    data = pair_data(stage_dir(out, "ip2p"), n_data)  # the teacher's pairs and latent cache
    z_img, z_tgt = pair_latents(stage_dir(out, "ip2p"), vae, data, _same_vae(tdir))
    instr = [str(s) for s in data["instruction"]]
    vocab = sorted(set(instr))
    with torch.no_grad():
        emb = torch.cat([te(input_ids=tokenize(tok, vocab[i:i + 256])).last_hidden_state
                         for i in range(0, len(vocab), 256)])  # [V, L, D]
        empty = te(input_ids=tokenize(tok, [""])).last_hidden_state  # [1, L, D]
    row = torch.tensor([vocab.index(s) for s in instr])
    student = student_from_teacher(teacher)
    ema = student_from_teacher(teacher).eval().requires_grad_(False)
    new = list(student.class_embedding.parameters())
    rest = [p for n, p in student.named_parameters() if not n.startswith("class_embedding.")]
    opt = torch.optim.AdamW([{"params": new, "mult": 10.0}, {"params": rest, "mult": 1.0}], lr=lr, weight_decay=0.0)
    noise_sched = DDPMScheduler(**M.scheduler_configs()[0])
    ckpt = Checkpoint(work, unet=student, ema=ema, opt=opt)
    st = ckpt.resume(resume)
    start, best = st["step"], st.get("best", -1.0)
    log = Log(work / "log.csv", ["step", "loss", "loss_traj", "lr", "samples_per_s", "edit_success", "teacher_gap"])
    teacher_pipe = ip2p_pipeline(vae, te, tok, teacher)
    cfg_meta = {"method": "multimodal CFG distillation (MoViE)", "features": "log1p + sin/cos(2^k pi x / 4)",
                "n_freq": C.N_FREQ, "scales_order": ["image_guidance", "text_guidance"],
                "text_guidance_max": T_MAX, "image_guidance_max": I_MAX, "teacher": str(tdir.name)}

    # the teacher's evaluation: once per run (deterministic)
    pairs = [world_pair(EVAL_SEED, i) for i in range(n_eval)]
    teacher_imgs = {s: images(teacher_pipe, pairs, *s, seed=EVAL_SEED) for s in SETTINGS}
    teacher_eval = {f"{s_t}/{s_i}": score(teacher_imgs[(s_t, s_i)], pairs, judge) for s_t, s_i in SETTINGS}
    say(f"teacher: {json.dumps(teacher_eval)}")

    pairs_ema = list(zip(ema.parameters(), student.parameters()))
    student.train()
    pool: tuple[torch.Tensor, ...] | None = None
    t_last, step, stop = time.time(), start, False
    n_traj = int(round(batch * traj_frac))
    while step < steps and not stop:
        rng = np.random.default_rng([16, step])
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        warm = min(1.0, (step + 1) / 100)
        for pg in opt.param_groups:
            pg["lr"] = lr * warm * pg["mult"]
        if n_traj and (pool is None or step % traj_every == 0):
            ti = rng.integers(0, len(z_tgt), traj_pairs)
            s_i0, s_t0 = sample_scales(rng, 1)
            pool = trajectory_states(teacher_pipe, data, ti, float(s_t0[0]), float(s_i0[0]), int(rng.integers(1 << 30)))
        nd = batch - n_traj
        idx = torch.from_numpy(rng.integers(0, len(z_tgt), nd))
        x0, cimg, cond = z_tgt[idx], z_img[idx], emb[row[idx]]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (nd,), generator=gen)
        x = torch.cat([noise_sched.add_noise(x0, noise, t), cimg], 1)  # [nd, 16, h, w]
        if n_traj:
            pj = torch.from_numpy(rng.integers(0, len(pool[0]), n_traj))
            x, t, cond = torch.cat([x, pool[0][pj]]), torch.cat([t, pool[1][pj].long()]), torch.cat([cond, pool[2][pj]])
        s_i, s_t = sample_scales(rng, batch)
        target = guided(teacher, x, t, cond, empty, s_i, s_t)
        pred = student(x, t, cond, class_labels=C.scale_features(s_i, s_t)).sample
        err = ((pred - target) ** 2).flatten(1).mean(1)  # [B]
        loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in pairs_ema:
                e.lerp_(p, 1 - decay)
        step += 1
        if step % 10 == 0:
            now = time.time()
            log.row(step=step, loss=err[:nd].mean().item(), loss_traj=err[nd:].mean().item() if n_traj else "",
                    lr=lr * warm, samples_per_s=round(10 * batch / max(now - t_last, 1e-6), 1))
            t_last = now
        if step % 50 == 0:
            say(f"cfg step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        stop = bool(max_minutes) and time.time() - t0 > max_minutes * 60
        if not (step % eval_every == 0 or step == steps or stop):
            continue
        ckpt.save(step, best=best)
        pipe = C.as_cfg_pipeline(ip2p_pipeline(vae, te, tok, ema), cfg_meta)
        r = evaluate(pipe, judge, pairs, teacher_imgs)
        log.row(step=step, edit_success=r["edit_success"], teacher_gap=r["teacher_gap"])
        say(f"cfg step {step} eval: {json.dumps(r)}")
        val = r["edit_success"] - 0.1 * r["teacher_gap"]
        if val > best:
            best = val
            save_student(pipe, work / "best", cfg_meta)
            (work / "best" / "world_train.json").write_text(json.dumps(
                {"step": step, "edit_eval": r, "teacher_eval": teacher_eval,
                 "train_seconds_this_run": round(time.time() - t0, 1),
                 "recipe": {"batch": batch, "lr": lr, "ema_decay": ema_decay, "traj_frac": traj_frac,
                            "traj_every": traj_every, "text_guidance": [1.0, T_MAX], "image_guidance": [1.0, I_MAX]},
                 "base": f"engines/world/weights/{tdir.name} (+ guidance embedding, output layer zero)"}, indent=2))
            say(f"best so far (edit_success {r['edit_success']:.3f}, gap {r['teacher_gap']:.4f}): {work / 'best'}")
            if install:
                install_dir(work / "best", C.cfg_model_dir())
                say(f"installed it into {C.cfg_model_dir()}")
            ckpt.save(step, best=best)
        plot_loss(log, "ip2p_cfg", ["loss", "loss_traj"], "CFG distillation: MSE to the guided teacher", install)
        student.train()
    return {"best_score": best, "steps": step, "best": str(work / "best"), "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.video.distill_cfg", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop after this much wall time (0 = none)")
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--traj-frac", type=float, default=0.5, help="share of each batch from teacher trajectories")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/ip2p_cfg/state.pt")
    ap.add_argument("--out", type=Path, default=None, help="default: $STUDIO_DATA_DIR/world-train")
    ap.add_argument("--install", action="store_true", help="swap the best student into engines/world/weights/ip2p_cfg")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    r = distill(args.out or train_dir(), args.steps, args.resume, args.install, args.max_minutes, args.eval_every,
                batch=args.batch, lr=args.lr, traj_frac=args.traj_frac)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

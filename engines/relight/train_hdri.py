"""Train the embedded text → 360° HDR panorama model (``engines.relight.hdri_model``) on CPU.

    python -m engines.relight.train_hdri [--resume] [--out DIR] [--scenes N] [--ae-steps N]
        [--dm-steps N] [--ae-minutes M] [--dm-minutes M] [--prior-steps N] [--init-from DIR]
        [--no-layout] [--threads N] [--no-install]

Stages (each checkpoints into ``<out>/<stage>/state.pt``; ``--resume`` continues from them):

1. ``data``: ``--scenes`` envworld maps (seeds ``seed·10⁶ + i``, below the held-out eval
   seeds), rendered at 128×64 with 4× supersampling, PQ-encoded (float16) + metadata.
2. ``ae``: the PQ autoencoder — L1 in PQ with extra weight on emitters (codes > 0.5) so a
   2° sun keeps its peak; random azimuth rolls and mirror flips.
3. ``latents``: every map and its mirror image encoded once; ``latent_scale`` = 1/std.
   ``dec``: the decoder alone is fine-tuned (encoder frozen, latents unchanged) to restore
   emitter peaks: a separate L1 on bright pixels and on each map's peak code.
4. ``prior``: the light-layout prior (``light_prior``): captions alone → the dominant light's
   mean direction and whether there is one; fresh world scenes at any yaw every batch, half
   paraphrased. Skipped with ``--no-layout``.
5. ``dm_layout`` (``dm`` with ``--no-layout``): U-Net + text encoder, v-prediction DDPM loss,
   latents rolled by whole latent columns (exact for the circular AE: 8 px = 22.5°) with the
   captions re-worded for the rotated lights; half of the captions are paraphrases; 10 %
   dropped to "" for classifier-free guidance; the U-Net also gets the true light's spot
   (``light_prior.layout_map``). ``--init-from`` warm-starts it from an installed model. EMA
   weights are shipped.

Then the model is written (fp16 safetensors + config.json with provenance) into a temporary
directory and swapped into ``engines/relight/weights/hdri`` atomically (``--no-install`` keeps it
in ``<out>/model``).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.relight import envworld, pq
from engines.relight import hdri_model as M
from engines.world.train_common import Checkpoint, Log, say, swap_in


def default_out() -> Path:
    return Path(os.environ.get("STUDIO_DATA_DIR") or Path.home() / ".studio").expanduser() / "hdri-train"


# -- data ------------------------------------------------------------------------------------
def make_data(work: Path, n: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    f, mf = work / "data.npy", work / "meta.json"
    if f.exists() and mf.exists():
        metas = json.loads(mf.read_text())
        if len(metas) == n:
            return np.load(f), metas
    say(f"rendering {n} envworld maps")
    data = np.zeros((n, 3, M.NATIVE_H, M.NATIVE_W), np.float16)
    metas = []
    for i in range(n):
        s = seed * 1_000_000 + i
        rng = np.random.default_rng(s)
        scene = envworld.sample_scene(rng)
        scene.seed = s
        img = envworld.render(scene, M.NATIVE_W, supersample=4)
        data[i] = pq.encode(img.astype(np.float64)).transpose(2, 0, 1)
        metas.append(scene.meta())
        if (i + 1) % 1000 == 0:
            say(f"  {i + 1}/{n}")
    np.save(work / "data.tmp.npy", data)
    (work / "data.tmp.npy").replace(f)
    mf.write_text(json.dumps(metas))
    return data, metas


# -- stages ----------------------------------------------------------------------------------
def lr_at(step: int, total: int, base: float, warm: int = 100) -> float:
    if step < warm:
        return base * (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def ae_loss(ae: M.PQAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    z = ae.encode(x)
    y = ae.decode(z)
    w = 1.0 + 8.0 * (x > 0.5).float()  # emitters: the sun/moon/lamps must keep their peak code
    l1 = (w * (y - x).abs()).mean()
    reg = 1e-4 * z.pow(2).mean()
    d = (y - x).detach().abs()
    return l1 + reg, {"l1": float(d.mean()), "bright": float(d[x > 0.5].mean())
                      if bool((x > 0.5).any()) else 0.0}


def train_ae(work: Path, data: np.ndarray, cfg: dict, steps: int, minutes: float, batch: int, resume: bool,
             seed: int) -> M.PQAutoencoder:
    torch.manual_seed(seed)
    ae = M.PQAutoencoder(tuple(cfg["ae_channels"]), cfg["latent_channels"])
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3, weight_decay=0.0)
    ck = Checkpoint(work, ae=ae, opt=opt)
    st = ck.resume(resume)
    step = st["step"]
    if st.get("done"):
        return ae.eval()
    log = Log(work / "log.csv", ["step", "loss", "l1", "bright", "lr"])
    rng = np.random.default_rng(seed + step)
    t0 = time.time()
    while step < steps and time.time() - t0 < minutes * 60:
        idx = rng.integers(len(data), size=batch)
        x = torch.from_numpy(data[idx].astype(np.float32))
        x = torch.roll(x, int(rng.integers(M.NATIVE_W)), dims=3)
        if rng.random() < 0.5:
            x = x.flip(3)
        lr = lr_at(step, steps, 2e-3)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, parts = ae_loss(ae, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            log.row(step=step, loss=float(loss.detach()), lr=lr, **parts)
        if step % 50 == 0:
            say(f"ae {step}/{steps} loss {float(loss.detach()):.4f} l1 {parts['l1']:.4f} bright {parts['bright']:.4f}")
        if step % 100 == 0:
            ck.save(step)
    ck.save(step, done=True)
    say(f"ae done at step {step}")
    return ae.eval()


def finetune_decoder(work: Path, ae: M.PQAutoencoder, data: np.ndarray, metas: list[dict], steps: int,
                     minutes: float, batch: int, resume: bool, seed: int) -> M.PQAutoencoder:
    """Second AE stage, encoder frozen (so the diffusion latents do not change): the decoder
    learns to put back the emitters' peaks. A 2° sun covers a handful of the 8192 pixels, so a
    plain L1 barely sees it; here the pixels brighter than code 0.6 get their own mean L1 term
    and each map's per-channel peak code its own term, and half of each batch are sun, sunset
    or night maps (small disks)."""
    ae.encoder.requires_grad_(False)
    ae.decoder.requires_grad_(True)
    opt = torch.optim.AdamW(ae.decoder.parameters(), lr=5e-4, weight_decay=0.0)
    ck = Checkpoint(work, ae=ae, opt=opt)
    st = ck.resume(resume)
    step = st["step"]
    if st.get("done"):
        return ae.eval()
    disks = np.array([i for i, m in enumerate(metas) if m["kind"] in ("sun", "sunset", "night")])
    log = Log(work / "log.csv", ["step", "loss", "l1", "bright", "peak", "lr"])
    rng = np.random.default_rng(seed + 31 * step + 5)
    t0 = time.time()
    ae.train()
    while step < steps and time.time() - t0 < minutes * 60:
        idx = np.concatenate([rng.integers(len(data), size=batch // 2), rng.choice(disks, size=batch - batch // 2)])
        x = torch.from_numpy(data[idx].astype(np.float32))
        x = torch.roll(x, int(rng.integers(M.NATIVE_W)), dims=3)
        if rng.random() < 0.5:
            x = x.flip(3)
        with torch.no_grad():
            z = ae.encode(x)
        y = ae.decode(z)
        err = (y - x).abs()
        bright = x > 0.6
        l1 = err.mean()
        lb = err[bright].mean() if bool(bright.any()) else l1 * 0
        peak = (y.flatten(2).amax(2) - x.flatten(2).amax(2)).abs().mean()
        loss = l1 + 0.5 * lb + 0.5 * peak
        lr = lr_at(step, steps, 5e-4, warm=20)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.decoder.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            log.row(step=step, loss=float(loss.detach()), l1=float(l1.detach()), bright=float(lb.detach()),
                    peak=float(peak.detach()), lr=lr)
        if step % 50 == 0:
            say(f"dec {step}/{steps} l1 {float(l1.detach()):.4f} bright {float(lb.detach()):.4f} peak {float(peak.detach()):.4f}")
        if step % 100 == 0:
            ck.save(step)
    ck.save(step, done=True)
    say(f"decoder fine-tune done at step {step}")
    return ae.eval()


@torch.no_grad()
def encode_all(work: Path, ae: M.PQAutoencoder, data: np.ndarray) -> torch.Tensor:
    f = work / "latents.pt"
    if f.exists():
        z = torch.load(f)
        if len(z) == 2 * len(data):
            return z
    say("encoding latents")
    out = []
    for i in range(0, len(data), 64):
        x = torch.from_numpy(data[i:i + 64].astype(np.float32))
        out.append(torch.stack([ae.encode(x), ae.encode(x.flip(3))], 1))  # [b, 2, C, h, w]
    z = torch.cat(out).flatten(0, 1)  # even: original, odd: mirrored
    torch.save(z, work / "latents.tmp.pt")
    (work / "latents.tmp.pt").replace(f)
    return z


def init_from(unet: torch.nn.Module, text: torch.nn.Module, model_dir: Path) -> None:
    """Warm start from an installed model: same weights; input channels the old U-Net did not
    have (the layout spot) start at zero, so the warm-started net begins as the old one."""
    old_u = M._load_state(Path(model_dir) / "unet.safetensors")
    w = old_u["conv_in.weight"]  # [C_out, C_in_old, 3, 3]
    new = unet.state_dict()["conv_in.weight"]
    if w.shape != new.shape:
        grown = torch.zeros_like(new)
        grown[:, : w.shape[1]] = w
        old_u["conv_in.weight"] = grown
    unet.load_state_dict(old_u)
    text.load_state_dict(M._load_state(Path(model_dir) / "text.safetensors"))
    say(f"warm start from {model_dir}")


def train_dm(work: Path, lat: torch.Tensor, metas: list[dict], cfg: dict, steps: int, minutes: float, batch: int,
             resume: bool, seed: int, init: Path | None = None,
             lr_base: float = 1e-3) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """With ``cfg["layout_channels"]`` the U-Net also gets the true dominant light's spot
    (``light_prior.layout_map``; none for overcast, for dropped captions and for another 5 %)."""
    from diffusers import DDPMScheduler

    from engines.relight import light_prior as LP

    torch.manual_seed(seed)
    unet = M.build_unet(cfg)
    text = M.WordTextEncoder(len(cfg["vocab"]) + 2, layers=cfg["text_layers"])
    if init is not None:
        init_from(unet, text, init)
    use_layout = bool(cfg.get("layout_channels"))
    ema_u, ema_t = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr_base, weight_decay=1e-4)
    ck = Checkpoint(work, unet=unet, text=text, ema_u=ema_u, ema_t=ema_t, opt=opt)
    st = ck.resume(resume)
    step = st["step"]
    if st.get("done") and step >= steps:  # a larger --dm-steps extends a finished run
        return ema_u, ema_t, step
    tok = M.WordTokenizer(cfg["vocab"])
    sched = DDPMScheduler(**cfg["scheduler"])
    metas_f = [M.transform_meta(m, 0.0, True) for m in metas]
    wl = cfg["latent_w"]
    log = Log(work / "log.csv", ["step", "loss", "lr"])
    rng = np.random.default_rng(seed + 7919 * step + 1)
    t0 = time.time()
    run = 0.0
    while step < steps and time.time() - t0 < minutes * 60:
        idx = rng.integers(len(lat), size=batch)
        shifts = rng.integers(wl, size=batch)
        x0 = torch.stack([torch.roll(lat[i], int(k), dims=2) for i, k in zip(idx, shifts)])
        caps, spots = [], []
        for i, k in zip(idx, shifts):
            meta = (metas_f if i % 2 else metas)[i // 2]
            meta = M.transform_meta(meta, 2 * math.pi * int(k) / wl, False)
            drop = rng.random() < 0.1
            caps.append("" if drop else M.describe(meta, rng, 0.5))
            spots.append(None if drop or rng.random() < 0.05 else LP.dominant_of(meta))
        ids = tok(caps)
        layout = LP.layout_map(spots, x0.shape[2], x0.shape[3], cfg.get("layout_kappa", LP.KAPPA)) if use_layout else None
        noise = torch.randn_like(x0)
        t = torch.from_numpy(rng.integers(0, sched.config.num_train_timesteps, size=batch)).long()
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        lr = lr_at(step, steps, lr_base, warm=150 if init is None else 50)
        for g in opt.param_groups:
            g["lr"] = lr
        pred = unet(M.with_coords(xt, layout), t, encoder_hidden_states=text(ids)).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        d = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, m in ((ema_u, unet), (ema_t, text)):
                for pe, pm in zip(e.parameters(), m.parameters()):
                    pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        lv = float(loss.detach())
        run = 0.98 * run + 0.02 * lv if step > 1 else lv
        if step % 20 == 0:
            log.row(step=step, loss=lv, lr=lr)
        if step % 100 == 0:
            say(f"dm {step}/{steps} loss {run:.4f} ({(time.time() - t0) / 60:.1f} min)")
        if step % 200 == 0:
            ck.save(step)
    ck.save(step, done=step >= steps)
    say(f"dm stopped at step {step}")
    return ema_u, ema_t, step


def train_prior(work: Path, cfg: dict, steps: int, minutes: float, batch: int, resume: bool,
                seed: int) -> tuple[torch.nn.Module, dict]:
    """The light-layout prior (``light_prior.LightPrior``) on captions alone — no images, so
    every batch is fresh world scenes at any yaw, either handedness, half paraphrased.
    Returns the EMA prior and its held-out scores."""
    from engines.relight import light_prior as LP

    torch.manual_seed(seed + 17)
    prior = M.build_prior(cfg)
    ema = copy.deepcopy(prior).requires_grad_(False)
    opt = torch.optim.AdamW(prior.parameters(), lr=2e-3, weight_decay=1e-4)
    ck = Checkpoint(work, prior=prior, ema=ema, opt=opt)
    st = ck.resume(resume)
    step = st["step"]
    tok = M.WordTokenizer(cfg["vocab"])
    log = Log(work / "log.csv", ["step", "loss", "lr"])
    rng = np.random.default_rng(seed + 104729 * step + 3)

    def batch_of(r: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        caps, tgt, pres = [], np.zeros((n, 3), np.float32), np.zeros(n, np.float32)
        for j in range(n):
            meta = envworld.sample_scene(r).meta()
            meta = M.transform_meta(meta, float(r.uniform(-math.pi, math.pi)), bool(r.random() < 0.5))
            caps.append(M.describe(meta, r, 0.5))
            d = LP.dominant_of(meta)
            if d is not None:
                tgt[j], pres[j] = d, 1.0
        return tok(caps), torch.from_numpy(tgt), torch.from_numpy(pres)

    t0 = time.time()
    while step < steps and time.time() - t0 < minutes * 60:
        ids, tgt, pres = batch_of(rng, batch)
        lr = lr_at(step, steps, 2e-3, warm=50)
        for g in opt.param_groups:
            g["lr"] = lr
        mean, logit = prior(ids)
        loss = LP.prior_loss(mean, logit, tgt, pres)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        opt.step()
        step += 1
        d = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), prior.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        if step % 20 == 0:
            log.row(step=step, loss=float(loss.detach()), lr=lr)
        if step % 200 == 0:
            say(f"prior {step}/{steps} loss {float(loss.detach()):.4f} ({(time.time() - t0) / 60:.1f} min)")
            ck.save(step)
    ck.save(step, done=step >= steps)
    ema.eval()
    scores = prior_scores(ema, tok, seed)
    say(f"prior stopped at step {step}: {scores}")
    return ema, scores


@torch.no_grad()
def prior_scores(prior: torch.nn.Module, tok: M.WordTokenizer, seed: int, n: int = 2000) -> dict:
    """Median angle between the prior's layout direction and the true dominant light on held-out
    scenes (envworld captions and paraphrases), and how often it calls light vs none right."""
    from engines.relight import light_prior as LP

    out: dict[str, float] = {}
    for name, p_para, base in (("caption", 0.0, M.EVAL_SEED_BASE), ("paraphrase", 1.0, M.PARA_SEED_BASE)):
        errs, right = [], 0
        for i in range(n):
            r = np.random.default_rng(base + 7 + seed * 100_000 + i)
            meta = envworld.sample_scene(r).meta()
            mean, logit = prior(tok([M.describe(meta, r, p_para)]))
            d = LP.choose_direction(mean[0].double().numpy(), float(torch.sigmoid(logit[0])), i)
            truth = LP.dominant_of(meta)
            right += (d is None) == (truth is None)
            if d is not None and truth is not None:
                errs.append(math.degrees(math.acos(float(np.clip(d @ truth, -1, 1)))))
        out[f"prior_dir_error_deg_{name}"] = float(np.median(errs))
        out[f"prior_light_vs_none_accuracy_{name}"] = right / n
    return out


# -- export ----------------------------------------------------------------------------------
def export(dst: Path, cfg: dict, ae: torch.nn.Module, unet: torch.nn.Module, text: torch.nn.Module,
           prior: torch.nn.Module | None = None) -> None:
    from safetensors.torch import save_file

    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, m in (("ae", ae), ("unet", unet), ("text", text), ("prior", prior)):
        if m is None:
            continue
        save_file({k: v.detach().half().contiguous() for k, v in m.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    swap_in(tmp, dst)
    say(f"installed {dst} ({sum(f.stat().st_size for f in dst.iterdir()) / 1e6:.2f} MB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=default_out())
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", type=int, default=4000)
    ap.add_argument("--ae-steps", type=int, default=650)
    ap.add_argument("--ae-minutes", type=float, default=13)
    ap.add_argument("--ae-batch", type=int, default=16)
    ap.add_argument("--dec-steps", type=int, default=400)
    ap.add_argument("--dec-minutes", type=float, default=9)
    ap.add_argument("--stop-after", choices=["dec"], default=None, help="stop after the decoder fine-tune")
    ap.add_argument("--dm-steps", type=int, default=3300)
    ap.add_argument("--dm-minutes", type=float, default=42)
    ap.add_argument("--dm-batch", type=int, default=32)
    ap.add_argument("--dm-lr", type=float, default=1e-3)
    ap.add_argument("--no-layout", action="store_true", help="no light-layout prior / spot channel (the old model)")
    ap.add_argument("--prior-steps", type=int, default=3000)
    ap.add_argument("--prior-minutes", type=float, default=15)
    ap.add_argument("--prior-batch", type=int, default=256)
    ap.add_argument("--init-from", type=Path, default=None,
                    help="warm-start the U-Net and text encoder from this installed model (same vocabulary)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--dest", type=Path, default=M.DEFAULT_DIR)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    out = Path(a.out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    data, metas = make_data(out / "data", a.scenes, a.seed)
    cfg = M.default_config(M.build_vocab())
    if a.init_from is not None:
        old = json.loads((a.init_from / "config.json").read_text())
        if old["vocab"] != cfg["vocab"]:
            raise SystemExit(f"{a.init_from} has another vocabulary; cannot warm-start from it")
    if not a.no_layout:
        from engines.relight import light_prior as LP

        cfg["layout_channels"], cfg["layout_kappa"] = 1, LP.KAPPA
    (out / "ae").mkdir(exist_ok=True)
    ae = train_ae(out / "ae", data, cfg, a.ae_steps, a.ae_minutes, a.ae_batch, a.resume, a.seed)
    ae.requires_grad_(False)
    lat = encode_all(out / "ae", ae, data)
    scale = float(1.0 / lat.std())
    (out / "dec").mkdir(exist_ok=True)
    ae = finetune_decoder(out / "dec", ae, data, metas, a.dec_steps, a.dec_minutes, a.ae_batch, a.resume, a.seed)
    ae.requires_grad_(False)
    if a.stop_after == "dec":
        return 0
    cfg["latent_scale"] = scale
    prior, prior_eval = None, {}
    if not a.no_layout:
        (out / "prior").mkdir(exist_ok=True)
        prior, prior_eval = train_prior(out / "prior", cfg, a.prior_steps, a.prior_minutes, a.prior_batch, a.resume,
                                        a.seed)
    stage = "dm" if a.no_layout else "dm_layout"
    (out / stage).mkdir(exist_ok=True)
    unet, text, dm_steps = train_dm(out / stage, lat * scale, metas, cfg, a.dm_steps, a.dm_minutes, a.dm_batch,
                                    a.resume, a.seed, a.init_from, a.dm_lr)
    cfg["provenance"] = {
        "trained_by": "python -m engines.relight.train_hdri", "date": dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds"), "seed": a.seed, "data": f"{a.scenes} envworld maps (seeds {a.seed}·10⁶ + i), "
        f"{M.NATIVE_W}×{M.NATIVE_H}, PQ; azimuth rolls, mirror flips, paraphrased captions",
        "ae_steps": a.ae_steps, "ae_batch": a.ae_batch, "decoder_finetune_steps": a.dec_steps, "dm_steps": dm_steps, "dm_steps_planned": a.dm_steps,
        "dm_batch": a.dm_batch, "wall_minutes_this_run": round((time.time() - t_start) / 60, 1),
        "eval_seeds": f"held out: ≥ {M.EVAL_SEED_BASE}",
        "dm_lr": a.dm_lr, "dm_warm_start": str(a.init_from) if a.init_from else None,
    }
    if prior is not None:
        cfg["provenance"] |= {"prior_steps": a.prior_steps, "prior_batch": a.prior_batch, **prior_eval}
    dst = out / "model" if a.no_install else a.dest
    export(dst, cfg, ae, unet, text, prior)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``personalize`` engine: a personal LoRA/SHiRA from 3–30 photos of one subject.

Stages (each shown in progress, each cancellable within one step, each resumable):
photo checks → class images (prior preservation; cached per model + class prompt) →
pre-compute (Hollowed Net: the deep middle's output for every planned step, to disk) →
training (plain: the full U-Net; hollowed: the kept outer blocks only) → transfer into the full
U-Net → samples of the subject in new contexts, and the adapter for the library.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

from engines.base import Artifact, Engine, EngineContext, EngineError, EngineResult, ModelSpec
from engines.personalize.params import MIN_GOOD, PersonalizeParams

EXT = {"lora": ".safetensors", "shira": ".shira.safetensors"}
SAMPLE_CONTEXTS = ["on a beach", "in a forest", "in the snow", "on a city street"]


def native_resolution(spec: ModelSpec) -> int:
    """The model's own image size, read from its configs (no weights loaded)."""
    if spec.kind != "single_file" and (spec.path / "unet" / "config.json").is_file():
        unet = json.loads((spec.path / "unet" / "config.json").read_text())
        vae = json.loads((spec.path / "vae" / "config.json").read_text())
        return int(unet.get("sample_size", 64)) * 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    return 512


def is_world_model(spec: ModelSpec) -> bool:
    return spec.kind != "single_file" and (spec.path / "world_train.json").is_file()


class PersonalizeEngine(Engine):
    name = "personalize"
    title = "Personalize"
    description = ("Train a personal adapter on 3–30 photos of one subject (a subject word, photo checks, prior "
                   "preservation); Hollowed-Net mode trains with about inference memory. Resumable.")
    params_model = PersonalizeParams
    idempotent = True  # an interrupted run resumes from its pre-computed tensors and last checkpoint
    model_params = ("model",)

    def run(self, p: PersonalizeParams, ctx: EngineContext) -> EngineResult:
        import torch

        with torch.enable_grad():  # grad mode is per-thread state a previous job may have switched off
            return self._run(p, ctx)

    # -- photos ----------------------------------------------------------------------------------
    def _sources(self, p: PersonalizeParams, ctx: EngineContext) -> tuple[list[tuple[str, bytes | str]], dict[str, str]]:
        """(name, bytes or reason) per photo, and the demo photos' context phrases by name."""
        from engines.personalize.photos import iter_sources

        if p.demo:
            from engines.personalize.demo import demo_photos

            out, contexts = [], {}
            for i, (im, context, lab) in enumerate(demo_photos()):
                buf = io.BytesIO()
                im.save(buf, "PNG")
                name = f"demo-{i:02d}.png"
                out.append((name, buf.getvalue()))
                contexts[name] = context
            return out, contexts
        sources: list[tuple[str, bytes | str]] = []
        for ph in p.photos:
            try:
                path = ctx.resolve_input(ph.image)
            except Exception as e:  # the asset vanished: a verdict, not a crash
                sources.append((str(ph.image)[:40], f"cannot open: {e}"))
                continue
            sources.extend((ph.name or n, data) for n, data in iter_sources(Path(path)))
        if p.photos_zip:
            sources.extend(iter_sources(Path(ctx.resolve_input(p.photos_zip))))
        return sources, {}

    def _check(self, p: PersonalizeParams, ctx: EngineContext, res: int) -> tuple[Any, list[Artifact], list[str]]:
        from engines.personalize.photos import check_photos, contact_sheet
        from engines.personalize.train import write_json

        sources, contexts = self._sources(p, ctx)
        checked = check_photos(sources, res, p.crop)
        verdicts = [v.to_json() for v in checked.verdicts]
        arts = [Artifact(write_json(ctx.work_dir / "photos.json", verdicts), "json", "application/json",
                         {"title": "photo checks", "good": checked.good}),
                Artifact(contact_sheet(checked, sources, ctx.work_dir / "photos.png"), "image", "image/png",
                         {"title": "photo checks: used (green) and skipped (red)"})]
        captions = [p.caption(contexts.get(v.name, "")) for v in checked.verdicts if v.ok]
        return checked, arts, captions

    # -- the run ---------------------------------------------------------------------------------
    def _run(self, p: PersonalizeParams, ctx: EngineContext) -> EngineResult:
        import torch

        from engines.personalize.hollow import Store, boundary, check_supported, hollow_out, kept_fraction
        from engines.plots import loss_plot
        from engines.personalize.train import (Data, PersonalTrainer, make_batch, peak_mb,
                                               release_memory)
        from engines.pipelines import load_pipeline

        t_start = time.perf_counter()
        spec = ctx.model_spec(p.model)  # training builds a private copy; the worker's cache is untouched
        res = p.resolution or native_resolution(spec)
        ctx.progress(0, 1, "checking photos")
        checked, photo_arts, captions = self._check(p, ctx, res)
        summary = checked.summary()
        if p.check_only:
            return EngineResult(photo_arts, {"photos": [v.to_json() for v in checked.verdicts], "good": checked.good,
                                             "summary": summary, "enough": checked.good >= MIN_GOOD})
        if checked.good < MIN_GOOD:
            raise EngineError(f"need at least {MIN_GOOD} good photos, got {summary}")
        ctx.check_cancelled()

        n_class = p.class_images if p.prior_preservation == "on" else 0
        pre_steps = p.steps if p.hollow else 0
        total = n_class + pre_steps + p.steps
        ctx.progress(0, total, f"loading model · photos: {summary}")
        loaded = load_pipeline(spec, ctx.device, "float32")
        pipe = loaded.pipe
        check_supported(pipe.unet, p.hollow)
        model_hash = loaded.model_hash
        world = is_world_model(spec)
        from engines.pipelines import default_guidance

        guidance = default_guidance(spec.path) if spec.kind != "single_file" else 7.0

        class_imgs, class_counts = [], {"generated": 0, "reused": 0}
        if n_class:
            class_imgs, class_counts = self._class_images(p, ctx, pipe, model_hash, res, guidance, total)
        data = self._encode(pipe, p, checked.images, captions, class_imgs)
        sched_cfg = dict(pipe.scheduler.config)
        T = int(sched_cfg.get("num_train_timesteps", 1000))
        state = ctx.state_dir
        unet = pipe.unet
        store, pre_s, kept = None, 0.0, 1.0
        if p.hollow:
            from diffusers import DDPMScheduler

            kept = kept_fraction(unet, p.hollow)
            root = (state or ctx.work_dir) / f"hollow-k{p.hollow}"
            key = hashlib.sha256(json.dumps([model_hash, res, p.seed, p.batch_size, p.caption_dropout, n_class,
                                             p.hollow, captions, [v.sha256 for v in checked.verdicts if v.ok],
                                             p.class_prompt()]).encode()).hexdigest()
            store = Store(root, key)
            noise_sched = DDPMScheduler.from_config(sched_cfg)
            unet.eval()
            t0 = time.perf_counter()
            for s in range(p.steps):
                if store.has(s):
                    continue
                ctx.check_cancelled()
                b = make_batch(data, s, p.seed, p.batch_size, p.caption_dropout, T)
                dev = ctx.device
                noisy = noise_sched.add_noise(b.x0.to(dev), b.noise.to(dev), b.t.to(dev))
                store.save(s, boundary(unet, p.hollow, noisy, b.t.to(dev), b.ehs.to(dev)))
                ctx.progress(n_class + s + 1, total, f"pre-compute {s + 1}/{p.steps} · peak {peak_mb(ctx.device):.0f} MB")
            pre_s = time.perf_counter() - t0
            # training needs neither the hollow's weights nor the VAE / text encoder: drop them
            loaded.pipe = None
            pipe = None
            hollow_out(unet, p.hollow)
            release_memory()

        trainer = PersonalTrainer(unet, sched_cfg, method=p.method, rank=p.rank, density=p.density,
                                  targets=p.targets, lr=p.learning_rate, seed=p.seed, hollow=p.hollow,
                                  prior_weight=p.prior_weight)
        ckpt = state / f"checkpoint-k{p.hollow}.pt" if state is not None else None
        start, losses = 0, []
        if ckpt is not None and ckpt.is_file():
            start, losses = trainer.load_checkpoint(ckpt)
        done = n_class + pre_steps
        prompts = self._sample_prompts(p, world)
        t0 = time.perf_counter()
        for step in range(start, p.steps):
            ctx.check_cancelled()
            b = make_batch(data, step, p.seed, p.batch_size, p.caption_dropout, T)
            losses.append(trainer.step(b, store.load(step) if store is not None else None))
            pv = None
            if p.samples_every and (step + 1) % p.samples_every == 0 and step + 1 < p.steps:
                pv = self._preview(p, ctx, spec, trainer, pipe, prompts[(step // p.samples_every) % len(prompts)],
                                   guidance)
            if ckpt is not None and (step + 1) % p.checkpoint_every == 0 and step + 1 < p.steps:
                trainer.save_checkpoint(ckpt, step + 1, losses)
            ctx.progress(done + step + 1, total, f"train {step + 1}/{p.steps} · loss {losses[-1]:.4f} · "
                                                 f"peak {peak_mb(ctx.device):.0f} MB", pv)
        train_s = time.perf_counter() - t0
        train_peak = peak_mb(ctx.device)

        name = p.name or f"{p.subject_word}-{p.class_word.replace(' ', '-')}"
        meta = {"name": name, "method": p.method, "base_model": p.model, "base_model_hash": model_hash,
                "targets": p.targets, "rank": p.rank if p.method == "lora" else None,
                "density": p.density if p.method == "shira" else None, "trigger": p.subject_word,
                "subject_word": p.subject_word, "class_word": p.class_word, "hollow": p.hollow,
                "prior_preservation": p.prior_preservation, "steps": p.steps, "learning_rate": p.learning_rate,
                "images": checked.good, "seed": p.seed, "resolution": res, "engine_recipe": "personalize-v1",
                "adapted_modules": len(trainer.adapter_names())}
        out = ctx.work_dir / (_safe(name) + EXT[p.method])
        info = trainer.export(out, meta)
        ctx.progress(total, total, "transferring the adapter into the full U-Net and sampling")
        full = self._full_pipeline(spec, ctx, trainer, pipe, out, p.method)
        grid, grid_prompts = self._samples(full, prompts, p.seed, guidance, res, ctx.work_dir / f"{_safe(name)}-samples.png")
        curve = loss_plot(losses, ctx.work_dir / f"{_safe(name)}-loss.png", f"{name} training loss")
        result = {"adapter": name, "final_loss": losses[-1] if losses else None, "resumed_from": start,
                  "photos": summary, "good_photos": checked.good, "class_images": class_counts,
                  "hollow": p.hollow, "kept_param_fraction": round(kept, 4), "precompute_s": round(pre_s, 2),
                  "train_s": round(train_s, 2), "train_peak_mb": round(train_peak, 1),
                  "precompute_mb": round(store.nbytes() / 2**20, 2) if store is not None else 0.0,
                  "seconds": round(time.perf_counter() - t_start, 1)} | info
        adapter_meta = meta | info | {"final_loss": result["final_loss"],
                                      "provenance": {"subject_word": p.subject_word, "class_word": p.class_word,
                                                     "hollow": p.hollow, "prior_preservation": p.prior_preservation,
                                                     "photos": checked.good, "train_peak_mb": result["train_peak_mb"]}}
        sample_params = {"prompt": grid_prompts[0], "model": p.model, "steps": 20, "guidance_scale": guidance,
                         "seed": p.seed, "width": res, "height": res}
        arts = [Artifact(out, "adapter", "application/octet-stream", adapter_meta),
                Artifact(grid, "image", "image/png", {"prompt": grid_prompts[0], "prompts": grid_prompts,
                                                      "adapter": name, "seed": p.seed, "params": sample_params}),
                Artifact(curve, "image", "image/png", {"title": f"{name} loss curve", "adapter": name}),
                *photo_arts]
        return EngineResult(arts, result)

    # -- pieces ----------------------------------------------------------------------------------
    def _class_images(self, p: PersonalizeParams, ctx: EngineContext, pipe: Any, model_hash: str, res: int,
                      guidance: float, total: int) -> tuple[list[Any], dict[str, int]]:
        """Class images by the base model, cached per (model, class prompt, resolution): image i
        is always made from seed i, so a cache filled by an earlier job serves this one."""
        import torch
        from PIL import Image

        prompt = p.class_prompt()
        root = ctx.extras.get("personalize_cache_dir")
        root = Path(root) if root else (ctx.state_dir.parent / "class-images" if ctx.state_dir else ctx.work_dir / "class-images")
        slug = "".join(c if c.isalnum() else "-" for c in prompt)[:40]
        d = root / f"{model_hash[:16]}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}-{slug}-{res}"
        d.mkdir(parents=True, exist_ok=True)
        imgs, counts = [], {"generated": 0, "reused": 0}
        for i in range(p.class_images):
            f = d / f"{i:05d}.png"
            if f.is_file():
                try:
                    imgs.append(Image.open(f).convert("RGB"))
                    counts["reused"] += 1
                    continue
                except OSError:
                    f.unlink(missing_ok=True)  # a torn write from a killed run: make it again
            ctx.check_cancelled()
            with torch.no_grad():
                im = pipe(prompt, num_inference_steps=20, guidance_scale=guidance, height=res, width=res,
                          generator=torch.Generator().manual_seed(i), output_type="pil").images[0]
            tmp = d / f".{i:05d}.tmp.png"
            im.save(tmp)
            tmp.replace(f)
            imgs.append(im)
            counts["generated"] += 1
            ctx.progress(i + 1, total, f"class images {i + 1}/{p.class_images} ({counts['reused']} from cache)")
        return imgs, counts

    @staticmethod
    def _encode(pipe: Any, p: PersonalizeParams, images: list[Any], captions: list[str], class_imgs: list[Any]) -> Any:
        import numpy as np
        import torch

        from engines.personalize.train import Data

        def lat(ims: list[Any]) -> torch.Tensor:  # [N, C, h, w] scaled latents
            x = torch.stack([torch.from_numpy(np.asarray(im.resize(images[0].size), np.float32) / 127.5 - 1.0)
                             .permute(2, 0, 1) for im in ims]).to(pipe.device)
            z = torch.cat([pipe.vae.encode(x[i:i + 8]).latent_dist.mean for i in range(0, len(x), 8)])
            return (z * pipe.vae.config.scaling_factor).float().cpu()

        def text(prompts: list[str]) -> torch.Tensor:  # [N, L, D]
            tok = pipe.tokenizer(prompts, padding="max_length", truncation=True,
                                 max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
            return pipe.text_encoder(tok.input_ids.to(pipe.device))[0].float().cpu()

        with torch.no_grad():
            return Data(lat(images), text(captions), lat(class_imgs) if class_imgs else None,
                        text([p.class_prompt()]) if class_imgs else None, text([""]))

    @staticmethod
    def _sample_prompts(p: PersonalizeParams, world: bool) -> list[str]:
        if world:
            from engines.personalize.demo import eval_contexts

            return [p.caption(c["context"]) for c in eval_contexts(4, seed=99)]
        return [p.caption(c) for c in SAMPLE_CONTEXTS]

    def _full_pipeline(self, spec: ModelSpec, ctx: EngineContext, trainer: Any, pipe: Any, adapter: Path,
                       method: str) -> Any:
        """The full U-Net with the adapter: the training pipeline itself (plain), or — the
        Hollowed-Net transfer — a fresh full pipeline with the exported adapter loaded by name."""
        from engines.personalize.train import apply_adapter_file, release_memory
        from engines.pipelines import load_pipeline

        if pipe is not None:
            pipe.unet.eval()
            return pipe
        trainer.unet = None  # the hollowed U-Net goes before the full one arrives
        release_memory()
        full = load_pipeline(spec, ctx.device, "float32").pipe
        apply_adapter_file(full.unet, adapter, method)
        full.unet.eval()
        return full

    def _preview(self, p: PersonalizeParams, ctx: EngineContext, spec: ModelSpec, trainer: Any, pipe: Any,
                 prompt: str, guidance: float) -> Path:
        """A sample of the subject in a new context with the adapter as it is now. Hollowed: the
        adapter is transferred into a transient full pipeline (on a GPU the training U-Net waits
        in host memory meanwhile, so the device peak stays that of inference)."""
        import torch

        from engines.personalize.train import apply_adapter_file, release_memory
        from engines.pipelines import load_pipeline

        dest = ctx.work_dir / "preview.png"
        gen = torch.Generator().manual_seed(p.seed)
        if pipe is not None:
            pipe.unet.eval()
            with torch.no_grad():
                pipe(prompt, num_inference_steps=20, guidance_scale=guidance, generator=gen).images[0].save(dest)
            return dest
        tmp = ctx.work_dir / ("preview-adapter" + EXT[p.method])
        trainer.export(tmp, {"preview": True})
        offload = ctx.device.startswith("cuda")
        if offload:
            trainer.unet.to("cpu")
            torch.cuda.empty_cache()
        try:
            full = load_pipeline(spec, ctx.device, "float32").pipe
            apply_adapter_file(full.unet, tmp, p.method)
            with torch.no_grad():
                full(prompt, num_inference_steps=20, guidance_scale=guidance, generator=gen).images[0].save(dest)
            del full
        finally:
            release_memory()
            if offload:
                trainer.unet.to(ctx.device)
        return dest

    @staticmethod
    def _samples(pipe: Any, prompts: list[str], seed: int, guidance: float, res: int, dest: Path) -> tuple[Path, list[str]]:
        import torch
        from PIL import Image

        ims = []
        with torch.no_grad():
            for i, pr in enumerate(prompts):
                ims.append(pipe(pr, num_inference_steps=20, guidance_scale=guidance, height=res, width=res,
                                generator=torch.Generator().manual_seed(seed + i)).images[0])
        grid = Image.new("RGB", (res * len(ims), res))
        for i, im in enumerate(ims):
            grid.paste(im.resize((res, res)), (i * res, 0))
        if res < 256:  # world-sized images: upscale crisply so a preview is readable
            grid = grid.resize((grid.width * (256 // res), grid.height * (256 // res)), Image.NEAREST)
        grid.save(dest)
        return dest, prompts


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:80] or "personal"

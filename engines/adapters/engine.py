"""The ``adapter-train`` engine: train a LoRA, SHiRA or FouRA adapter on a user's images
(or a demo set from the embedded world), with loss curve, sample previews, cancel and
resume."""
from __future__ import annotations

import time
from typing import Any

from engines.adapters.params import AdapterTrainParams, FouraTrainParams, LoraTrainParams, ShiraTrainParams
from engines.base import Artifact, Engine, EngineContext, EngineResult
from engines.plots import loss_plot

MethodParams = LoraTrainParams | ShiraTrainParams | FouraTrainParams
EXT = {"lora": ".safetensors", "shira": ".shira.safetensors", "foura": ".foura.safetensors"}


class AdapterTrainEngine(Engine):
    name = "adapter-train"
    title = "Train adapter"
    description = "Train a LoRA, SHiRA or FouRA adapter from images and captions; resumable."
    params_model = AdapterTrainParams
    idempotent = True  # an interrupted run resumes from its last checkpoint
    model_params = ("model",)

    def run(self, p: AdapterTrainParams | MethodParams, ctx: EngineContext) -> EngineResult:
        import torch

        if isinstance(p, AdapterTrainParams):
            p = p.root  # the per-method model the union chose
        # Grad mode is per-thread global state: whatever ran before on this thread (a t2i job, a
        # bench) may have switched it off, and training must not depend on that.
        with torch.enable_grad():
            return self._run(p, ctx)

    def _run(self, p: MethodParams, ctx: EngineContext) -> EngineResult:
        import torch

        from engines.adapters.data import demo_dataset, load_dataset
        from engines.adapters.train import Trainer, encode, encode_negatives
        from engines.pipelines import load_pipeline

        ctx.progress(0, p.steps, "loading model")
        spec = ctx.model_spec(p.model)  # training builds a private copy; the worker's cache is untouched
        loaded = load_pipeline(spec, ctx.device, "float32")
        pipe = loaded.pipe
        items = demo_dataset(p.demo, p.trigger) if p.demo != "none" else \
            load_dataset(ctx.resolve_input(p.dataset), ctx.work_dir, p.caption_template, p.trigger)
        ctx.check_cancelled()
        with torch.no_grad():
            lat, ehs = encode(pipe, items)
        trainer = Trainer(pipe, p, ctx)
        if p.preserve > 0:
            trainer.neg_ehs = encode_negatives(pipe, [c for _, c in items], p.trigger, p.seed)
        state = ctx.state_dir
        ckpt = state / "checkpoint.pt" if state is not None else None
        start, losses = 0, []
        if p.method == "shira":
            if ckpt is not None and ckpt.is_file():
                trainer.masks = torch.load(ckpt, map_location="cpu", weights_only=False)["masks"]
                _register_mask_hooks(trainer)
            else:
                trainer.make_shira_masks(lat, ehs)
        if ckpt is not None and ckpt.is_file():
            start, losses = trainer.load_checkpoint(ckpt)
        sample_prompt = p.sample_prompt or items[0][1]
        preview = ctx.work_dir / "sample.png"
        t0 = time.perf_counter()
        for step in range(start, p.steps):
            ctx.check_cancelled()
            losses.append(trainer.step(lat, ehs, step))
            pv = None
            if p.sample_every and (step + 1) % p.sample_every == 0 and step + 1 < p.steps:
                pv = _sample(pipe, sample_prompt, p.seed, preview)
            if ckpt is not None and (step + 1) % p.checkpoint_every == 0 and step + 1 < p.steps:
                trainer.save_checkpoint(ckpt, step + 1, losses)
            ctx.progress(step + 1, p.steps, f"step {step + 1}/{p.steps} loss {losses[-1]:.4f}", pv)
        name = p.name or f"{p.method}-{p.trigger or p.demo or 'adapter'}"
        meta = {"name": name, "method": p.method, "base_model": p.model, "base_model_hash": loaded.model_hash,
                "targets": p.targets, "rank": getattr(p, "rank", None), "density": getattr(p, "density", None),
                "trigger": p.trigger,
                "steps": p.steps, "learning_rate": p.learning_rate, "images": len(items), "seed": p.seed,
                "preserve": p.preserve}
        out = ctx.work_dir / (_safe(name) + EXT[p.method])
        info = trainer.export(out, meta)
        curve = loss_plot(losses, ctx.work_dir / f"{_safe(name)}-loss.png")
        sample = _sample(pipe, sample_prompt, p.seed, ctx.work_dir / f"{_safe(name)}-sample.png")
        arts = [Artifact(out, "adapter", "application/octet-stream", meta | info | {"final_loss": losses[-1]}),
                Artifact(curve, "image", "image/png", {"title": f"{name} loss curve", "adapter": name}),
                Artifact(sample, "image", "image/png", {"prompt": sample_prompt, "adapter": name})]
        return EngineResult(arts, {"adapter": name, "final_loss": losses[-1], "resumed_from": start,
                                   "seconds": round(time.perf_counter() - t0, 1)} | info)


def _register_mask_hooks(trainer: Any) -> None:
    import torch

    for name, lin in trainer.layers.items():
        dense = torch.zeros(lin.weight.numel(), dtype=torch.bool)
        dense[trainer.masks[name]] = True
        lin.weight.register_hook(lambda g, m=dense.view_as(lin.weight): g * m)


def _sample(pipe: Any, prompt: str, seed: int, dest: Any) -> Any:
    import torch

    pipe.unet.eval()
    with torch.no_grad():
        img = pipe(prompt, num_inference_steps=20, generator=torch.Generator().manual_seed(seed),
                   output_type="pil").images[0]
    img.save(dest)
    return dest


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:80] or "adapter"



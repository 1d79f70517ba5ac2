"""Adapter training (LoRA, SHiRA, FouRA) on a diffusers U-Net: cached latents and text
embeddings, noise-prediction loss, cancel per step, checkpoints in ``ctx.state_dir`` so an
interrupted job resumes where it stopped.

Every step's randomness derives from (seed, step), so a resumed run continues exactly
as the uninterrupted one would have.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from engines.adapters.params import FouraTrainParams, LoraTrainParams, ShiraTrainParams
from engines.base import EngineContext, EngineError


def _tensor_images(items: list[tuple[Image.Image, str]], size: int) -> torch.Tensor:
    """[N, 3, size, size] in [-1, 1], centre-cropped."""
    import numpy as np

    out = []
    for im, _ in items:
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size),
                                                                                             Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


@torch.no_grad()
def encode(pipe: Any, items: list[tuple[Image.Image, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """latents [N, C, h, w] (scaled) and text embeddings [N, L, D]."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    x = _tensor_images(items, size).to(pipe.device, pipe.vae.dtype)
    lat = torch.cat([pipe.vae.encode(x[i:i + 16]).latent_dist.mean for i in range(0, len(x), 16)])
    lat = lat * pipe.vae.config.scaling_factor
    tok = pipe.tokenizer([c for _, c in items], padding="max_length", truncation=True,
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    ehs = pipe.text_encoder(tok.input_ids.to(pipe.device))[0]
    return lat.float(), ehs.float()


def seeded_init(linears: dict[str, torch.nn.Linear], seed: int) -> None:
    """Redraw every randomly initialised adapter weight from a CPU generator seeded by ``seed``.

    peft and ``nn.Linear`` draw their init from torch's global RNG, whose state depends on
    whatever ran before in the process, so two runs of the same command trained from different
    starting points. Same law as the default (kaiming-uniform a=√5, i.e. U(±1/√fan_in)) for
    weights and biases; zero-initialised factors (LoRA B, FouRA up) stay zero. Drawn on the CPU
    in name order, so the start is the same on every device.
    """
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    with torch.no_grad():
        for name in sorted(linears):
            lin = linears[name]
            if not lin.weight.requires_grad or not bool(lin.weight.any()):
                continue
            bound = 1.0 / max(lin.in_features, 1) ** 0.5
            lin.weight.copy_((torch.rand(lin.weight.shape, generator=g) * 2 - 1) * bound)
            if lin.bias is not None and lin.bias.requires_grad:
                lin.bias.copy_((torch.rand(lin.bias.shape, generator=g) * 2 - 1) * bound)


def made_up_words(n: int, seed: int, avoid: set[str]) -> list[str]:
    """``n`` distinct pronounceable non-words (e.g. "tovame"), seeded; none in ``avoid``."""
    g = torch.Generator().manual_seed(seed * 104729 + 3)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    out: list[str] = []
    while len(out) < n:
        k = int(torch.randint(2, 4, (1,), generator=g))  # syllables
        w = "".join(cons[int(torch.randint(len(cons), (1,), generator=g))] +
                    vows[int(torch.randint(len(vows), (1,), generator=g))] for _ in range(k))
        if w not in avoid and w not in out:
            out.append(w)
    return out


@torch.no_grad()
def encode_negatives(pipe: Any, captions: list[str], trigger: str, seed: int, k: int = 4) -> torch.Tensor:
    """Text embeddings [N, k, L, D] of each caption with its trigger swapped for k made-up words
    (mix-ready training: on these the adapter must reproduce the base model)."""
    pat = re.compile(rf"\b{re.escape(trigger)}\b")
    missing = [c for c in captions if not pat.search(c)]
    if missing:
        raise EngineError(f"preserve needs the trigger {trigger!r} in every caption; missing in {missing[0]!r}")
    words = made_up_words(k * len(captions), seed, {trigger.lower()} | set(" ".join(captions).lower().split()))
    neg = [pat.sub(words[i * k + j], c) for i, c in enumerate(captions) for j in range(k)]
    tok = pipe.tokenizer(neg, padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt")
    ids = tok.input_ids.to(pipe.device)
    ehs = torch.cat([pipe.text_encoder(ids[i:i + 64])[0] for i in range(0, len(ids), 64)]).float()  # [N*k, L, D]
    return ehs.view(len(captions), k, *ehs.shape[1:])


class Trainer:
    def __init__(self, pipe: Any, p: LoraTrainParams | ShiraTrainParams | FouraTrainParams,
                 ctx: EngineContext) -> None:
        from diffusers import DDPMScheduler

        self.pipe, self.p, self.ctx = pipe, p, ctx
        self.unet = pipe.unet
        self.noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.unet.requires_grad_(False)
        self.masks: dict[str, torch.Tensor] = {}  # SHiRA: flat indices per layer
        self.w0: dict[str, torch.Tensor] = {}
        self.layers: dict[str, Any] = {}
        self.neg_ehs: torch.Tensor | None = None  # [N, k, L, D] when p.preserve > 0 (set by the engine)
        self.params = self._attach()
        if not self.params:
            raise EngineError(f"no layer of this model matches targets {p.targets}")
        seeded_init(self._adapter_linears(), p.seed)
        self.opt = torch.optim.AdamW(self.params, lr=p.learning_rate, weight_decay=0.0)

    # -- adapters ----------------------------------------------------------------------------
    def _adapter_linears(self) -> dict[str, torch.nn.Linear]:
        """The adapter's own trainable Linear layers (LoRA A/B, FouRA down/up/gate MLP) by name."""
        if self.p.method == "shira":
            return {}
        return {n: m for n, m in self.unet.named_modules()
                if isinstance(m, torch.nn.Linear) and any(q.requires_grad for q in m.parameters(recurse=False))}

    def _attach(self) -> list[torch.nn.Parameter]:
        p = self.p
        if p.method == "lora":
            from peft import LoraConfig

            self.unet.add_adapter(LoraConfig(r=p.rank, lora_alpha=p.rank, target_modules=p.targets,
                                             init_lora_weights=True), adapter_name="studio_train")
            return [q for n, q in self.unet.named_parameters() if "lora_" in n and q.requires_grad]
        if p.method == "foura":
            from engines.adapters.foura import inject

            self.layers = inject(self.unet, p.targets, rank=p.rank)
            return [q for lyr in self.layers.values() for n, q in lyr.named_parameters()
                    if not n.startswith("base.") and q.requires_grad]
        from engines.adapters.shira import target_linears

        self.layers = target_linears(self.unet, p.targets)
        for name, lin in self.layers.items():
            self.w0[name] = lin.weight.detach().clone()
            lin.weight.requires_grad_(True)
        return [lin.weight for lin in self.layers.values()]

    def make_shira_masks(self, lat: torch.Tensor, ehs: torch.Tensor) -> None:
        """Pick each layer's trainable entries; gradient/SNIP masks use a short calibration pass."""
        from engines.adapters.shira import make_mask_indices

        grads: dict[str, torch.Tensor] = {}
        if self.p.mask_type in ("gradient", "snip"):
            for k in range(4):
                loss = self.loss(lat, ehs, step=-1 - k)
                loss.backward()
            grads = {n: lin.weight.grad.detach().clone() for n, lin in self.layers.items()}
            self.opt.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(self.p.seed)
        for name, lin in self.layers.items():
            idx = make_mask_indices(lin.weight, self.p.density, self.p.mask_type, grads.get(name), g)
            self.masks[name] = idx
            dense = torch.zeros(lin.weight.numel(), dtype=torch.bool)
            dense[idx] = True
            dense = dense.view_as(lin.weight).to(lin.weight.device)
            lin.weight.register_hook(lambda grad, m=dense: grad * m)  # gradient masking = SHiRA training

    # -- one step ------------------------------------------------------------------------------
    def loss(self, lat: torch.Tensor, ehs: torch.Tensor, step: int) -> torch.Tensor:
        """Noise-prediction MSE on one batch drawn from (seed, step): images, noise, timesteps and,
        with ``preserve``, which rows get a made-up word (target: the base model's prediction)."""
        g = torch.Generator().manual_seed(self.p.seed * 1_000_003 + step)
        n = lat.shape[0]
        b = min(self.p.batch_size, max(n, 1))
        idx = torch.randint(0, n, (b,), generator=g)  # [B]
        x0, c = lat[idx], ehs[idx]  # [B, C, h, w], [B, L, D]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (b,), generator=g)
        n_neg = 0
        if self.neg_ehs is not None and self.p.preserve > 0:
            n_neg = max(1, min(b - 1, round(b * self.p.preserve))) if b > 1 else 0
            pick = torch.randint(0, self.neg_ehs.shape[1], (n_neg,), generator=g)
            c = torch.cat([c[:b - n_neg], self.neg_ehs[idx[b - n_neg:], pick]])  # last n_neg rows: made-up words
        dev = self.unet.device
        x0, c, noise, t = x0.to(dev), c.to(dev), noise.to(dev), t.to(dev)
        noisy = self.noise_sched.add_noise(x0, noise, t)
        target = noise if self.noise_sched.config.prediction_type == "epsilon" else \
            self.noise_sched.get_velocity(x0, noise, t)
        if n_neg:
            target = torch.cat([target[:b - n_neg], self._base_pred(noisy[b - n_neg:], t[b - n_neg:],
                                                                     c[b - n_neg:]).float()])
        pred = self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=c.to(self.unet.dtype)).sample
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def _base_pred(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The U-Net's output with the adapter switched off (the mix-ready target) [B, C, h, w]."""
        args = (x.to(self.unet.dtype), t)
        kw = {"encoder_hidden_states": c.to(self.unet.dtype)}
        if self.p.method == "lora":
            self.unet.disable_adapters()
            try:
                return self.unet(*args, **kw).sample
            finally:
                self.unet.enable_adapters()
        if self.p.method == "foura":
            for lyr in self.layers.values():
                lyr.scale = 0.0
            try:
                return self.unet(*args, **kw).sample
            finally:
                for lyr in self.layers.values():
                    lyr.scale = 1.0
        from torch.func import functional_call

        return functional_call(self.unet, {f"{n}.weight": w for n, w in self.w0.items()}, args, kw).sample

    def step(self, lat: torch.Tensor, ehs: torch.Tensor, step: int) -> float:
        self.unet.train()
        loss = self.loss(lat, ehs, step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, step: int, losses: list[float]) -> None:
        state = {"step": step, "losses": losses, "opt": self.opt.state_dict(),
                 "params": [q.detach().cpu() for q in self.params], "masks": self.masks,
                 # FouRA: the gate statistics its frozen mask is computed from (exact resume)
                 "foura_gates": {n: lyr.gate_stats() for n, lyr in self.layers.items()}
                 if self.p.method == "foura" else {}}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path) -> tuple[int, list[float]]:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file in the data dir
        with torch.no_grad():
            for q, v in zip(self.params, state["params"]):
                q.copy_(v.to(q.device, q.dtype))
        self.opt.load_state_dict(state["opt"])
        for name, stats in state.get("foura_gates", {}).items():
            self.layers[name].load_gate_stats(stats)
        return int(state["step"]), list(state["losses"])

    # -- export ------------------------------------------------------------------------------------
    def export(self, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
        p = self.p
        if p.method == "lora":
            from engines.adapters.lora_io import export_kohya

            n = export_kohya(self.unet, path, "studio_train", {"studio": meta})
            return {"layers": n, "format": "kohya"}
        if p.method == "shira":
            from engines.adapters.shira import ShiraAdapter

            layers = {}
            for name, lin in self.layers.items():
                idx = self.masks[name]
                delta = (lin.weight.detach() - self.w0[name]).flatten()[idx]
                layers[name] = (idx, delta.cpu())
            ShiraAdapter(layers, meta | {"density": p.density, "mask": p.mask_type}).save(path)
            return {"layers": len(layers), "format": "studio-shira-v1", "params": sum(len(i) for i, _ in layers.values())}
        from safetensors.torch import save_file

        tensors = {}
        for name, lyr in self.layers.items():
            lyr.freeze_gate()
            for k, v in lyr.state_dict().items():
                if not k.startswith("base."):
                    tensors[f"{name}.{k}"] = v.detach().contiguous().cpu()
        save_file(tensors, str(path), metadata={"format": "studio-foura-v1", "method": "foura",
                                                "rank": str(p.rank), "studio": json.dumps(meta)})
        return {"layers": len(self.layers), "format": "studio-foura-v1"}

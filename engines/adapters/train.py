"""Adapter training (LoRA, SHiRA, FouRA) on a diffusers U-Net: cached latents and text
embeddings, noise-prediction loss, cancel per step, checkpoints in ``ctx.state_dir`` so an
interrupted job resumes where it stopped.

Every step's randomness derives from (seed, step), so a resumed run continues exactly
as the uninterrupted one would have.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from engines.adapters.params import AdapterTrainParams
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


class Trainer:
    def __init__(self, pipe: Any, p: AdapterTrainParams, ctx: EngineContext) -> None:
        from diffusers import DDPMScheduler

        self.pipe, self.p, self.ctx = pipe, p, ctx
        self.unet = pipe.unet
        self.noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.unet.requires_grad_(False)
        self.masks: dict[str, torch.Tensor] = {}  # SHiRA: flat indices per layer
        self.w0: dict[str, torch.Tensor] = {}
        self.layers: dict[str, Any] = {}
        self.params = self._attach()
        if not self.params:
            raise EngineError(f"no layer of this model matches targets {p.targets}")
        self.opt = torch.optim.AdamW(self.params, lr=p.learning_rate, weight_decay=0.0)

    # -- adapters ----------------------------------------------------------------------------
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
        g = torch.Generator().manual_seed(self.p.seed * 1_000_003 + step)
        n = lat.shape[0]
        idx = torch.randint(0, n, (min(self.p.batch_size, max(n, 1)),), generator=g)
        x0, c = lat[idx], ehs[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (len(idx),), generator=g)
        dev = self.unet.device
        x0, c, noise, t = x0.to(dev), c.to(dev), noise.to(dev), t.to(dev)
        noisy = self.noise_sched.add_noise(x0, noise, t)
        target = noise if self.noise_sched.config.prediction_type == "epsilon" else \
            self.noise_sched.get_velocity(x0, noise, t)
        pred = self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=c.to(self.unet.dtype)).sample
        return F.mse_loss(pred.float(), target.float())

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
                 "params": [q.detach().cpu() for q in self.params], "masks": self.masks}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path) -> tuple[int, list[float]]:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file in the data dir
        with torch.no_grad():
            for q, v in zip(self.params, state["params"]):
                q.copy_(v.to(q.device, q.dtype))
        self.opt.load_state_dict(state["opt"])
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

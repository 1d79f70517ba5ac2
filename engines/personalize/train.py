"""The personal-adapter trainer: one code path for plain and Hollowed-Net training.

A step's rows (which photo, which class image, timestep, noise, whether the caption is dropped)
derive from (seed, step) alone, so the pre-compute pass and the training pass see the same
rows, and a resumed run continues exactly as the uninterrupted one would have. Loss: DreamBooth's
noise-prediction MSE on the photos plus ``prior_weight`` × the same on class images.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from engines.base import EngineError


@dataclass
class Batch:
    x0: torch.Tensor  # [B, C, h, w] clean latents (photos first, then class images)
    ehs: torch.Tensor  # [B, L, D] text states (per row: the photo's caption, the class prompt or "")
    t: torch.Tensor  # [B] timesteps
    noise: torch.Tensor  # [B, C, h, w]
    n_inst: int  # rows [0, n_inst) are photos, the rest class images


@dataclass
class Data:
    """Everything a step draws from: encoded photos, class images and prompts."""

    lat: torch.Tensor  # [N, C, h, w]
    ehs: torch.Tensor  # [N, L, D] each photo's caption
    class_lat: torch.Tensor | None  # [M, C, h, w] or None without prior preservation
    class_ehs: torch.Tensor | None  # [1, L, D]
    uncond: torch.Tensor  # [1, L, D] the empty prompt


def make_batch(data: Data, step: int, seed: int, batch_size: int, dropout: float, num_train_timesteps: int) -> Batch:
    """Rows of one step, drawn from (seed, step) on the CPU (the same on every device)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    n = data.lat.shape[0]
    idx = torch.randint(0, n, (batch_size,), generator=g)  # [b]
    x0, ehs = [data.lat[idx]], [data.ehs[idx]]
    if data.class_lat is not None and data.class_ehs is not None:
        cidx = torch.randint(0, data.class_lat.shape[0], (batch_size,), generator=g)
        x0.append(data.class_lat[cidx])
        ehs.append(data.class_ehs.expand(batch_size, -1, -1))
    x = torch.cat(x0)  # [B, C, h, w]
    e = torch.cat(ehs).clone()  # [B, L, D]
    rows = x.shape[0]
    drop = torch.rand(rows, generator=g) < dropout  # [B] caption dropout keeps CFG working
    e[drop] = data.uncond[0]
    t = torch.randint(0, num_train_timesteps, (rows,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    return Batch(x, e, t, noise, batch_size)


class PersonalTrainer:
    """LoRA or SHiRA on the target Linears the U-Net (full, or already hollowed) still has."""

    def __init__(self, unet: torch.nn.Module, sched_config: dict[str, Any], *, method: str, rank: int,
                 density: float, targets: list[str], lr: float, seed: int, hollow: int, prior_weight: float = 1.0) -> None:
        from diffusers import DDPMScheduler

        self.unet, self.method, self.hollow, self.seed = unet, method, hollow, seed
        self.rank, self.density, self.prior_weight = rank, density, prior_weight
        self.sched = DDPMScheduler.from_config(sched_config)
        self.unet.requires_grad_(False)
        self.masks: dict[str, torch.Tensor] = {}
        self.w0: dict[str, torch.Tensor] = {}
        self.layers: dict[str, torch.nn.Linear] = {}
        self.params = self._attach(targets)
        if not self.params:
            what = "the kept outer blocks" if hollow else "this model"
            raise EngineError(f"no layer of {what} matches targets {targets}"
                              + (f"; use a smaller hollow than {hollow}" if hollow else ""))
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)

    def _attach(self, targets: list[str]) -> list[torch.nn.Parameter]:
        from engines.adapters.shira import target_linears

        self.layers = {n: m for n, m in target_linears(self.unet, targets).items()}
        if not self.layers:
            return []
        if self.method == "lora":
            from peft import LoraConfig

            from engines.adapters.train import seeded_init

            # exact module names: the transfer re-creates the same adapter on the full U-Net
            self.unet.add_adapter(LoraConfig(r=self.rank, lora_alpha=self.rank, target_modules=sorted(self.layers),
                                             init_lora_weights=True), adapter_name="personal")
            lins = {n: m for n, m in self.unet.named_modules()
                    if isinstance(m, torch.nn.Linear) and any(q.requires_grad for q in m.parameters(recurse=False))}
            seeded_init(lins, self.seed)
            return [q for n, q in self.unet.named_parameters() if "lora_" in n and q.requires_grad]
        from engines.adapters.shira import make_mask_indices

        g = torch.Generator().manual_seed(self.seed)
        for name in sorted(self.layers):
            lin = self.layers[name]
            self.w0[name] = lin.weight.detach().clone()
            lin.weight.requires_grad_(True)
            idx = make_mask_indices(lin.weight, self.density, "random", None, g)  # [K] flat indices
            self.masks[name] = idx
            dense = torch.zeros(lin.weight.numel(), dtype=torch.bool)
            dense[idx] = True
            lin.weight.register_hook(lambda grad, m=dense.view_as(lin.weight).to(lin.weight.device): grad * m)
        return [self.layers[n].weight for n in sorted(self.layers)]

    # -- one step ------------------------------------------------------------------------------
    def loss(self, b: Batch, h: torch.Tensor | None = None) -> torch.Tensor:
        """MSE on the photos + prior_weight × MSE on class rows; ``h`` [B, C_k, H_k, W_k]: the
        stored hollow output of these rows (hollowed training)."""
        from engines.personalize.hollow import hollow_forward

        dev = next(iter(self.params)).device
        x0, noise, t, e = b.x0.to(dev), b.noise.to(dev), b.t.to(dev), b.ehs.to(dev)
        noisy = self.sched.add_noise(x0, noise, t)  # [B, C, h, w]
        target = noise if self.sched.config.prediction_type == "epsilon" else self.sched.get_velocity(x0, noise, t)
        if self.hollow:
            if h is None:
                raise RuntimeError("hollowed training needs the stored activations")
            pred = hollow_forward(self.unet, self.hollow, noisy, t, e, h.to(dev))
        else:
            pred = self.unet(noisy, t, encoder_hidden_states=e).sample
        err = (pred.float() - target.float()) ** 2  # [B, C, h, w]
        loss = err[:b.n_inst].mean()
        if err.shape[0] > b.n_inst and self.prior_weight > 0:
            loss = loss + self.prior_weight * err[b.n_inst:].mean()
        return loss

    def step(self, b: Batch, h: torch.Tensor | None = None) -> float:
        self.unet.train()
        loss = self.loss(b, h)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.item())

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, step: int, losses: list[float]) -> None:
        state = {"step": step, "losses": losses, "opt": self.opt.state_dict(),
                 "params": [q.detach().cpu() for q in self.params]}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path) -> tuple[int, list[float]]:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file in the state dir
        if len(state["params"]) != len(self.params):
            raise EngineError("the checkpoint does not match this run's adapter; delete the job's state to restart")
        with torch.no_grad():
            for q, v in zip(self.params, state["params"]):
                q.copy_(v.to(q.device, q.dtype))
        self.opt.load_state_dict(state["opt"])
        return int(state["step"]), list(state["losses"])

    # -- the result ----------------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        """Module names the adapter touches (the same in the hollowed and the full U-Net)."""
        return sorted(self.layers)

    def export(self, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """kohya LoRA or Studio SHiRA file; module names are those of the full U-Net."""
        if self.method == "lora":
            from engines.adapters.lora_io import export_kohya

            n = export_kohya(self.unet, path, "personal", {"studio": meta})
            return {"layers": n, "format": "kohya"}
        from engines.adapters.shira import ShiraAdapter

        layers = {}
        for name, lin in self.layers.items():
            idx = self.masks[name]
            layers[name] = (idx, (lin.weight.detach() - self.w0[name].to(lin.weight.device)).flatten()[idx].cpu())
        ShiraAdapter(layers, meta | {"density": self.density, "mask": "random"}).save(path)
        return {"layers": len(layers), "format": "studio-shira-v1"}


def apply_adapter_file(unet: torch.nn.Module, path: Path, method: str) -> list[str]:
    """Load an exported personal adapter into a full U-Net (the transfer step); returns the
    adapted module names. LoRA through peft with the file's own module names, SHiRA by adding
    the stored values at their indices."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if method == "shira":
        from engines.adapters.shira import ShiraAdapter

        a = ShiraAdapter.load(path, unet)
        mods = dict(unet.named_modules())
        with torch.no_grad():
            for name, (idx, val) in a.layers.items():
                w = mods[name].weight
                w.view(-1).index_add_(0, idx.to(w.device), val.to(w.device, w.dtype))
        return sorted(a.layers)
    from peft import LoraConfig

    by_key = {n.replace(".", "_"): n for n, _ in unet.named_modules()}
    names = sorted({by_key[k[len("lora_unet_"):].rsplit(".", 2)[0]] for k in tensors
                    if k.startswith("lora_unet_") and k.endswith(".lora_down.weight")})
    if not names:
        raise EngineError(f"{path.name} has no U-Net LoRA layers")
    first = next(k for k in tensors if k.endswith(".lora_down.weight"))
    r = tensors[first].shape[0]
    unet.add_adapter(LoraConfig(r=r, lora_alpha=r, target_modules=names, init_lora_weights=True), adapter_name="personal")
    mods = dict(unet.named_modules())
    with torch.no_grad():
        for name in names:
            key = "lora_unet_" + name.replace(".", "_")
            m = mods[name]
            alpha = float(tensors[f"{key}.alpha"]) if f"{key}.alpha" in tensors else r
            m.lora_A["personal"].weight.copy_(tensors[f"{key}.lora_down.weight"])
            m.lora_B["personal"].weight.copy_(tensors[f"{key}.lora_up.weight"] * (alpha / r) / m.scaling["personal"])
    return names


def peak_mb(device: str) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, else the process's peak RSS (VmHWM)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise), so dropping the
    hollow's weights shows in RSS too."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=1))
    return path


Progress = Callable[[int, int, str], None]

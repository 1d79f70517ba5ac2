"""Hollowed Net (Cho et al., NeurIPS 2024): train on the outer U-Net only, with the deep middle
pre-computed to disk, so training needs about the memory of inference.

With ``k`` hollow levels the mid block, the ``k`` innermost down blocks and the ``k`` innermost
up blocks are removed. Skip bookkeeping (diffusers): every down block pushes one skip per resnet
plus one for its downsampler (the innermost block has none), every up block pops one per resnet
(``layers_per_block + 1``). The removed down blocks push ``k·L + k − 1`` skips and the removed
up blocks pop ``k·(L + 1)``: the one extra is the downsampler output of the last kept down
block — the hollow's own input — so no skip that a kept up block needs is produced inside the
hollow, and the only tensor to store per row is the hollow's output: the output of
``up_blocks[k-1]``, which is the input of the first kept up block.

The stored tensors come from the un-adapted U-Net (the paper accepts this train/inference
mismatch); gradients reach the kept down blocks through their skip connections.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.base import EngineError


class RemovedBlock(nn.Module):
    """Stands where a hollowed block was (keeps every kept module's name); calling it is a bug."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.removed = name

    def forward(self, *a: Any, **kw: Any) -> Any:
        raise RuntimeError(f"{self.removed} was removed by Hollowed-Net and must not run")


class _Stop(Exception):
    pass


def check_supported(unet: nn.Module, k: int) -> None:
    """SD1.x/SD2.x-style U-Nets (optionally with text-pooled embeddings); k within the depth."""
    cfg = unet.config
    if cfg.addition_embed_type not in (None, "text"):
        raise EngineError(f"personalize supports SD1.x/SD2.x-style models; this U-Net uses "
                          f"addition_embed_type={cfg.addition_embed_type!r} (e.g. SDXL)")
    if getattr(unet, "class_embedding", None) is not None:
        raise EngineError("personalize does not support class-conditioned U-Nets")
    n = len(unet.down_blocks)
    if k < 0 or k > n - 1:
        raise EngineError(f"hollow={k}: this U-Net has {n} levels, so hollow can be 0..{n - 1}")


def removed_names(unet: nn.Module, k: int) -> list[str]:
    n = len(unet.down_blocks)
    return [f"down_blocks.{i}" for i in range(n - k, n)] + ["mid_block"] + [f"up_blocks.{i}" for i in range(k)]


@torch.no_grad()
def boundary(unet: nn.Module, k: int, noisy: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor) -> torch.Tensor:
    """The hollow's output for these rows from the full frozen U-Net: the output of
    ``up_blocks[k-1]`` [B, C_k, H_k, W_k]. The forward stops there (the outer up blocks, the
    costliest part at high resolution, are not run)."""
    box: dict[str, torch.Tensor] = {}

    def grab(_m: nn.Module, _a: Any, out: torch.Tensor) -> None:
        box["h"] = out
        raise _Stop

    hd = unet.up_blocks[k - 1].register_forward_hook(grab)
    try:
        unet(noisy, t, encoder_hidden_states=ehs)
    except _Stop:
        pass
    finally:
        hd.remove()
    return box["h"]


def hollow_out(unet: nn.Module, k: int) -> list[str]:
    """Remove the hollow's blocks from ``unet`` in place (their weights are freed once nothing
    else holds them); kept modules keep their names. Returns the removed names."""
    check_supported(unet, k)
    n = len(unet.down_blocks)
    for i in range(n - k, n):
        unet.down_blocks[i] = RemovedBlock(f"down_blocks.{i}")
    unet.mid_block = RemovedBlock("mid_block")
    for i in range(k):
        unet.up_blocks[i] = RemovedBlock(f"up_blocks.{i}")
    return removed_names(unet, k)


def _embed(unet: nn.Module, sample: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Time (+ text-pooled) embedding [B, E] and processed text states, as the U-Net's own forward."""
    t_emb = unet.get_time_embed(sample=sample, timestep=t)
    emb = unet.time_embedding(t_emb, None)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=ehs, added_cond_kwargs={})
    if aug is not None:
        emb = emb + aug
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    ehs = unet.process_encoder_hidden_states(encoder_hidden_states=ehs, added_cond_kwargs={})
    return emb, ehs


def hollow_forward(unet: nn.Module, k: int, noisy: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor,
                   h: torch.Tensor) -> torch.Tensor:
    """The U-Net's output [B, C, H, W] with the hollow replaced by its stored output ``h``.

    Runs only conv_in, the kept down blocks, the kept up blocks and conv_out (works on a full or
    a hollowed U-Net alike; on a full one it never touches the hollow's blocks)."""
    if unet.config.center_input_sample:
        noisy = 2 * noisy - 1.0
    n = len(unet.down_blocks)
    forward_upsample_size = any(d % (2 ** unet.num_upsamplers) != 0 for d in noisy.shape[-2:])
    emb, ehs = _embed(unet, noisy, t, ehs)
    sample = unet.conv_in(noisy)  # [B, C0, H, W]
    skips: tuple[torch.Tensor, ...] = (sample,)
    for blk in list(unet.down_blocks)[: n - k]:
        if getattr(blk, "has_cross_attention", False):
            sample, res = blk(hidden_states=sample, temb=emb, encoder_hidden_states=ehs)
        else:
            sample, res = blk(hidden_states=sample, temb=emb)
        skips += res
    kept_up = list(unet.up_blocks)[k:]
    need = sum(len(b.resnets) for b in kept_up)
    if len(skips) < need:
        raise RuntimeError(f"hollow bookkeeping: {len(skips)} skips for {need} consumed")
    skips = skips[:need]  # the last kept skip fed the hollow (consumed by its up blocks)
    sample = h.to(sample.dtype)
    for j, blk in enumerate(kept_up):
        is_final = k + j == len(unet.up_blocks) - 1
        res, skips = skips[-len(blk.resnets):], skips[: -len(blk.resnets)]
        size = skips[-1].shape[2:] if (not is_final and forward_upsample_size) else None
        if getattr(blk, "has_cross_attention", False):
            sample = blk(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=ehs,
                         upsample_size=size)
        else:
            sample = blk(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)


def kept_fraction(unet: nn.Module, k: int) -> float:
    """Share of the U-Net's parameters that stay in memory during hollowed training."""
    total = sum(p.numel() for p in unet.parameters())
    gone = sum(p.numel() for name in removed_names(unet, k) for p in unet.get_submodule(name).parameters())
    return (total - gone) / total


class Store:
    """Pre-computed hollow outputs on disk, one safetensors file per training step, written
    atomically; ``key`` (model, photos, recipe) guards against reusing another run's tensors."""

    def __init__(self, root: Path, key: str, dtype: torch.dtype = torch.float16) -> None:
        import json
        import shutil

        self.root, self.dtype = root, dtype
        stamp = root / "key.json"
        if root.is_dir() and (not stamp.is_file() or json.loads(stamp.read_text()).get("key") != key):
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"key": key}))

    def path(self, step: int) -> Path:
        return self.root / f"{step:06d}.safetensors"

    def has(self, step: int) -> bool:
        return self.path(step).is_file()

    def save(self, step: int, h: torch.Tensor) -> None:
        import os

        from safetensors.torch import save_file

        tmp = self.root / f".{step:06d}.tmp"
        save_file({"h": h.detach().to("cpu", self.dtype).contiguous()}, str(tmp))
        os.replace(tmp, self.path(step))

    def load(self, step: int) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.path(step)))["h"].float()

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.safetensors"))

"""LoRA files: recognise key formats, and export U-Net LoRAs in kohya format.

Import goes through diffusers' ``load_lora_weights``, which reads diffusers/PEFT keys and
converts kohya (A1111/ComfyUI) keys. Export writes what kohya sd-scripts writes for SD
U-Nets — ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha`` — so A1111, ComfyUI and diffusers read what the Studio trains.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FORMATS = ("kohya", "diffusers", "peft", "studio-shira", "studio-foura")


def read_header(path: Path) -> tuple[list[str], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for garbage
        raise ValueError(f"{Path(path).name} is not a readable safetensors file: {e}") from None


def detect_format(keys: list[str], meta: dict[str, str]) -> str:
    """Which adapter layout a safetensors file uses (ValueError if none)."""
    fmt = meta.get("format", "")
    if fmt.startswith("studio-shira"):
        return "studio-shira"
    if fmt.startswith("studio-foura"):
        return "studio-foura"
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft" if not any(k.startswith(("unet.", "text_encoder")) for k in keys) else "diffusers"
    if any(".lora.down." in k or ".lora_linear_layer." in k for k in keys):
        return "diffusers"
    raise ValueError("no LoRA/SHiRA/FouRA keys found (expected kohya lora_unet_*, PEFT lora_A/lora_B, "
                     "or a Studio SHiRA/FouRA file)")


def export_kohya(unet: torch.nn.Module, path: Path, adapter_name: str = "default",
                 metadata: dict[str, Any] | None = None) -> int:
    """Write the U-Net's PEFT LoRA ``adapter_name`` in kohya format; returns the layer count."""
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, mod in unet.named_modules():
        if not isinstance(mod, LoraLayer) or adapter_name not in getattr(mod, "lora_A", {}):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        down = mod.lora_A[adapter_name].weight.detach()  # [r, in] (or conv [r, in, k, k])
        up = mod.lora_B[adapter_name].weight.detach()  # [out, r]
        r = down.shape[0]
        alpha = mod.scaling[adapter_name] * r  # kohya scale = alpha / r
        tensors[f"{key}.lora_down.weight"] = down.contiguous().cpu()
        tensors[f"{key}.lora_up.weight"] = up.contiguous().cpu()
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    if not tensors:
        raise ValueError(f"the U-Net has no LoRA adapter named {adapter_name!r}")
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(r), "format": "pt"}
    meta |= {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file(tensors, str(path), metadata=meta)
    return len(tensors) // 3

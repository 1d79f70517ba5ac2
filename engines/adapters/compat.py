"""Does an adapter file fit a base model? And peft SHiRA folders → Studio SHiRA files.

Both work from the base U-Net's safetensors *header* (names and shapes, no weights loaded),
so an import is checked in milliseconds even against SD-size models.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

Shapes = dict[str, tuple[int, ...]]  # module path -> weight shape


def unet_weight_shapes(model_dir: Path) -> Shapes:
    """Module path -> weight shape for every ``*.weight`` in ``<model_dir>/unet/*.safetensors``."""
    from safetensors import safe_open

    files = sorted((Path(model_dir) / "unet").glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no unet/*.safetensors to check adapters against")
    out: Shapes = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                if k.endswith(".weight"):
                    out[k[: -len(".weight")]] = tuple(h.get_slice(k).get_shape())
    return out


def _io(shape: tuple[int, ...]) -> tuple[int, int]:
    """(out, in) of a Linear [out, in] or conv [out, in, k, k] weight."""
    return shape[0], shape[1]


def _low_rank_factor(fmt: str, key: str, kohya: dict[str, str]) -> tuple[str | None, bool]:
    """(base layer path, is the down/A factor) for a low-rank factor key of a U-Net layer in a
    kohya / diffusers / PEFT LoRA or Studio FouRA file; (None, False) for any other key."""
    if fmt == "studio-foura" and key.endswith((".down.weight", ".up.weight")):
        return key.rsplit(".", 2)[0], key.endswith(".down.weight")
    if fmt == "kohya" and key.startswith("lora_unet_") and key.endswith((".lora_down.weight", ".lora_up.weight")):
        stem = key[len("lora_unet_"):].rsplit(".", 2)[0]
        return kohya.get(stem, stem), ".lora_down." in key
    if fmt in ("peft", "diffusers") and re.search(r"\.lora_[AB]\.(\w+\.)?weight$", key) \
            and not key.startswith(("text_encoder", "te.", "te1.", "te2.")):
        layer = re.sub(r"\.lora_[AB]\.(\w+\.)?weight$", "", key)
        return re.sub(r"^(unet\.|base_model\.model\.)", "", layer), ".lora_A." in key
    return None, False


def check_adapter(path: Path, fmt: str, shapes: Shapes) -> int:
    """Raise ValueError naming the first layer that is missing or mis-shaped in the base
    U-Net; returns the number of U-Net layers checked. Text-encoder parts are not checked."""
    from safetensors import safe_open

    kohya = {k.replace(".", "_"): k for k in shapes}
    n = 0
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())

        def shape(k: str) -> tuple[int, ...]:
            return tuple(f.get_slice(k).get_shape())

        for k in keys:
            shira = fmt == "studio-shira" and k.endswith(".idx")
            layer, down = (k[:-4], False) if shira else _low_rank_factor(fmt, k, kohya)
            if layer is None:
                continue
            if layer not in shapes:
                raise ValueError(f"layer {layer} does not exist in the base model's U-Net")
            if shira:
                idx = f.get_tensor(k)
                if len(idx) and int(idx.max()) >= int(torch.tensor(shapes[layer]).prod()):
                    raise ValueError(f"layer {layer}: indices beyond its {shapes[layer]} weight")
                n += 1
                continue
            o, i = _io(shapes[layer])
            s = shape(k)
            want = (s[0], i) if down else (o, s[1])  # down/A: [r, in]; up/B: [out, r]
            if s[:2] != want:
                raise ValueError(f"{k}: shape {list(s)} does not fit the base layer {list(shapes[layer])}")
            n += 1
    if n == 0 and fmt in ("kohya", "peft", "diffusers", "studio-shira", "studio-foura"):
        raise ValueError("the file adapts no U-Net layer of this base model")
    return n


def read_peft_folder(src: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, tensors) from a peft ``save_pretrained`` folder or a .zip of one."""
    from safetensors.torch import load, load_file

    if src.is_dir():
        cfg_path, st_path = src / "adapter_config.json", src / "adapter_model.safetensors"
        if not cfg_path.is_file() or not st_path.is_file():
            raise ValueError("a peft adapter needs adapter_config.json and adapter_model.safetensors")
        return json.loads(cfg_path.read_text()), load_file(str(st_path))
    try:
        with zipfile.ZipFile(src) as z:
            names = {Path(n).name: n for n in z.namelist() if not n.endswith("/")}
            if "adapter_config.json" not in names or "adapter_model.safetensors" not in names:
                raise ValueError("the zip must hold a peft adapter: adapter_config.json and adapter_model.safetensors")
            for n in ("adapter_config.json", "adapter_model.safetensors"):
                if z.getinfo(names[n]).file_size > 4 << 30:
                    raise ValueError(f"{n} is too large")
            cfg = json.loads(z.read(names["adapter_config.json"]))
            tensors = load(z.read(names["adapter_model.safetensors"]))
    except zipfile.BadZipFile as e:
        raise ValueError(f"not a valid zip: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"adapter_config.json is not JSON: {e}") from None
    return cfg, tensors


def peft_shira_to_studio(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], shapes: Shapes) -> Any:
    """Rebuild a peft SHiRA adapter's indices and return a Studio ``ShiraAdapter``.

    Values are ``<layer>.shira_weight`` (r·(m+n) per layer). Current peft also saves
    ``<layer>.shira_indices`` ([2, K] rows/cols, same order): used when present, whatever the mask.
    Files without them rely on the mask function: the built-in ``random`` mask is a seeded
    ``randperm`` of the m·n entries cut to r·(m+n), read back in row-major order — rebuilt here
    exactly; custom mask functions cannot be rebuilt, so such files are refused.
    """
    from engines.adapters.shira import ShiraAdapter

    if str(cfg.get("peft_type", "")).upper() != "SHIRA":
        raise ValueError(f"adapter_config.json says peft_type {cfg.get('peft_type')!r}, not SHIRA")
    r, seed = int(cfg["r"]), cfg.get("random_seed")
    has_idx = any(k.endswith(".shira_indices") for k in tensors)
    if not has_idx and cfg.get("mask_type", "random") != "random":
        raise ValueError(f"peft SHiRA mask_type {cfg.get('mask_type')!r} cannot be rebuilt from the file "
                         "(it has no shira_indices; only the built-in 'random' mask can be rebuilt)")
    layers = {}
    for k, val in tensors.items():
        if not k.endswith(".shira_weight"):
            continue
        layer = re.sub(r"^(base_model\.model\.|unet\.)", "", k[: -len(".shira_weight")])
        if layer not in shapes or len(shapes[layer]) != 2:
            raise ValueError(f"layer {layer} is not a Linear layer of the base model's U-Net")
        m, n = shapes[layer]
        if val.ndim != 1 or len(val) != r * (m + n):
            raise ValueError(f"layer {layer}: {tuple(val.shape)} values, expected r·(m+n) = {r * (m + n)}")
        rc = tensors.get(k[: -len("shira_weight")] + "shira_indices")  # [2, K] (row, col)
        if rc is not None:
            if rc.shape != (2, len(val)) or int(rc[0].max()) >= m or int(rc[1].max()) >= n or int(rc.min()) < 0:
                raise ValueError(f"layer {layer}: shira_indices {tuple(rc.shape)} do not fit its {(m, n)} weight")
            idx = rc[0].long() * n + rc[1].long()
        else:
            g = torch.Generator()
            if seed is not None:
                g.manual_seed(int(seed))
            idx = torch.randperm(m * n, generator=g)[: r * (m + n)].sort().values  # row-major = peft's order
        layers[layer] = (idx, val.float() * float(cfg.get("scaling", 1.0) or 1.0))
    if not layers:
        raise ValueError("no shira_weight tensors in adapter_model.safetensors")
    return ShiraAdapter(layers, {"imported_from": "peft-shira", "peft_r": r, "random_seed": seed,
                                 "targets": sorted({k.rsplit(".", 1)[-1] for k in layers})})

"""Loading Stable-Diffusion-family pipelines: the one home every engine uses.

t2i, adapter-train and the coming personalize / video / relight engines all load models
here, so local-only loading, dtype rules, the model hash and the size a worker cache
charges for a pipeline are decided once.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import EngineError, ModelNotFound, ModelSpec

__all__ = ["LoadedPipeline", "load_pipeline", "model_hash", "make_scheduler", "default_guidance", "module_bytes"]

@dataclass
class LoadedPipeline:
    """A pipeline cached per worker, with what is costly to recompute per job.

    ``adapters`` holds the adapter state of this pipeline (engines.adapters.apply); ``extras``
    holds other per-pipeline caches (img2img view, preview decoder, Clockwork adaptors).
    """

    pipe: Any
    spec: ModelSpec
    model_hash: str
    base_scheduler: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.spec.kind == "embedded":
            return "embedded-world"
        return self.spec.path.stem if self.spec.kind == "single_file" else self.spec.path.name

    def nbytes(self) -> int:
        """What this entry holds in memory: every component's parameters and buffers plus the
        adapter state (what a byte-budgeted cache charges for it)."""
        seen: set[int] = set()
        total = sum(module_bytes(c, seen) for c in getattr(self.pipe, "components", {}).values())
        for v in self.extras.values():
            total += module_bytes(v, seen)
        if self.adapters is not None:
            total += int(self.adapters.nbytes())
        return total


def module_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensors of a torch module (shared storages counted once)."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, dict):
        return sum(module_bytes(v, seen) for v in obj.values())
    if not isinstance(obj, torch.nn.Module):
        return 0
    total = 0
    for t in list(obj.parameters()) + list(obj.buffers()):
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def default_guidance(model_path: Any) -> float:
    """The embedded world model was trained and evaluated at CFG 4; SD-family models use 7."""
    return 4.0 if (Path(model_path) / "world_train.json").is_file() else 7.0


def model_hash(spec: ModelSpec) -> str:
    """sha256 of the weights: the file for single files (A1111's 'Model hash' is its first 10
    hex digits), the U-Net weights for folders."""
    if spec.sha256:
        return spec.sha256
    if spec.kind == "single_file":
        files = [spec.path]
    else:
        files = sorted((spec.path / "unet").glob("*.safetensors")) or sorted((spec.path / "unet").glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def load_pipeline(spec: ModelSpec, device: str, dtype: str) -> LoadedPipeline:
    """A diffusers folder (local files only) or a single-file checkpoint, on ``device``.
    Errors are one-line ``ModelNotFound``/``EngineError``; nothing is ever downloaded."""
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    torch_dtype = _torch_dtype(dtype)
    if device == "cpu" and torch_dtype == torch.float16:
        torch_dtype = torch.float32  # fp16 convs are not implemented/slow on CPU
    try:
        if spec.kind == "single_file":
            from engines.pipelines.single_file import load_single_file

            pipe = load_single_file(spec.path, torch_dtype)
        else:
            index = json.loads((spec.path / "model_index.json").read_text())
            kw: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
            if "safety_checker" in index:
                kw |= {"safety_checker": None, "requires_safety_checker": False}
            pipe = DiffusionPipeline.from_pretrained(str(spec.path), **kw)
    except (OSError, ValueError, EnvironmentError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if spec.kind == "single_file":
            raise ModelNotFound(f"cannot load {spec.path.name}: {msg} (single files load with the Studio's shipped "
                                "SD1.x/SD2.x/SDXL configs; other architectures need a diffusers folder)") from None
        raise ModelNotFound(f"cannot load model at {spec.path}: {msg}") from None
    if not isinstance(getattr(pipe, "unet", None), UNet2DConditionModel):
        raise EngineError(f"{type(pipe).__name__} is not a U-Net Stable Diffusion pipeline")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe=pipe, spec=spec, model_hash=model_hash(spec), base_scheduler=dict(pipe.scheduler.config))


def make_scheduler(name: str, base: dict[str, Any]) -> Any:
    """A fresh scheduler by A1111-style name, configured from the model's own scheduler config."""
    import diffusers as d

    table: dict[str, tuple[Any, dict[str, Any]]] = {
        "DPM++ 2M": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                      "use_karras_sigmas": False}),
        "DPM++ 2M Karras": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                             "use_karras_sigmas": True}),
        "Euler": (d.EulerDiscreteScheduler, {}),
        "Euler a": (d.EulerAncestralDiscreteScheduler, {}),
        "DDIM": (d.DDIMScheduler, {}),
        "UniPC": (d.UniPCMultistepScheduler, {}),
        "LCM": (d.LCMScheduler, {}),
    }
    if name == "model default":
        cls = getattr(d, base.get("_class_name", "PNDMScheduler"))
        return cls.from_config(base)
    cls, kw = table[name]
    return cls.from_config(base, **kw)

"""SHiRA: sparse high-rank adapters and their rapid switching in fused mode.

An adapter is, per target weight W [out, in], a set of flat indices and values: the
fused weight is W0 + Σ_a α_a·S_a with S_a non-zero only at its indices (1–2 % of
entries). Switching never does dense merges: the switcher remembers W0 at every index it
touched, restores those entries exactly (no accumulated drift, even in bf16), then
scatter-adds the new adapters' values. Several adapters mix by summing their deltas.

Masks are sized by density p (K = round(p·m·n) entries per layer), chosen by one of:
random, weight-magnitude, gradient, SNIP (|W ⊙ ∇W|) or structured (rows + columns + diagonal).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

MASK_TYPES = ("random", "weight", "gradient", "snip", "structured")
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")


def target_linears(model: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> dict[str, nn.Linear]:
    """Linear layers whose qualified name ends with one of ``targets`` (SHiRA is Linear-only)."""
    targets = tuple(targets)
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            out[name] = m
    return out


def make_mask_indices(weight: torch.Tensor, density: float, mask_type: str = "random", grad: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat indices [K] of the entries to train, K = round(density · numel)."""
    m, n = weight.shape
    k = max(1, min(weight.numel(), round(density * weight.numel())))
    w = weight.detach().float().flatten()
    if mask_type == "random":
        idx = torch.randperm(w.numel(), generator=generator)[:k]
    elif mask_type == "weight":
        idx = w.abs().topk(k).indices
    elif mask_type in ("gradient", "snip"):
        if grad is None:
            raise ValueError(f"{mask_type} masks need accumulated gradients (calibration pass)")
        score = grad.detach().float().flatten().abs()
        if mask_type == "snip":
            score = score * w.abs()
        idx = score.topk(k).indices
    elif mask_type == "structured":
        # a few whole rows and columns plus the diagonal, trimmed/padded to exactly k entries
        r = max(1, int(k / (m + n)))
        g = generator
        rows = torch.randperm(m, generator=g)[:r]
        cols = torch.randperm(n, generator=g)[:r]
        mask = torch.zeros(m, n, dtype=torch.bool)
        mask[rows, :] = True
        mask[:, cols] = True
        d = torch.arange(min(m, n))
        mask[d, d] = True
        idx = mask.flatten().nonzero().squeeze(1)
        if len(idx) > k:
            idx = idx[torch.randperm(len(idx), generator=g)[:k]]
        elif len(idx) < k:
            rest = (~mask.flatten()).nonzero().squeeze(1)
            idx = torch.cat([idx, rest[torch.randperm(len(rest), generator=g)[:k - len(idx)]]])
    else:
        raise ValueError(f"unknown mask type {mask_type!r}; one of {', '.join(MASK_TYPES)}")
    return idx.sort().values


@dataclass
class ShiraAdapter:
    """Per-layer (flat index, value) pairs plus metadata."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (idx [K] int64, val [K])
    meta: dict[str, Any] = field(default_factory=dict)

    def n_params(self) -> int:
        return sum(len(i) for i, _ in self.layers.values())

    def save(self, path: Path) -> None:
        """safetensors: ``<layer>.idx`` int32 and ``<layer>.val`` fp16; metadata says method/density/targets."""
        from safetensors.torch import save_file

        tensors = {}
        for name, (idx, val) in self.layers.items():
            tensors[f"{name}.idx"] = idx.to(torch.int32).contiguous()
            tensors[f"{name}.val"] = val.detach().to(torch.float16).contiguous()
        meta = {"format": "studio-shira-v1", "method": "shira"} | {k: json.dumps(v) for k, v in self.meta.items()}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path, model: nn.Module | None = None) -> "ShiraAdapter":
        """Load and, given the base ``model``, check every layer exists and every index fits."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "studio-shira-v1":
                raise ValueError(f"{Path(path).name} is not a Studio SHiRA adapter")
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
        names = sorted({k.rsplit(".", 1)[0] for k in keys})
        layers = {}
        mods = dict(model.named_modules()) if model is not None else {}
        for name in names:
            if f"{name}.idx" not in tensors or f"{name}.val" not in tensors:
                raise ValueError(f"layer {name}: needs both .idx and .val")
            idx, val = tensors[f"{name}.idx"].long(), tensors[f"{name}.val"]
            if idx.shape != val.shape or idx.ndim != 1:
                raise ValueError(f"layer {name}: idx/val shapes differ")
            if model is not None:
                m = linear_of(mods.get(name))
                if m is None:
                    raise ValueError(f"layer {name} is not a Linear layer of this base model")
                if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= m.weight.numel()):
                    raise ValueError(f"layer {name}: indices outside its {tuple(m.weight.shape)} weight")
            layers[name] = (idx, val)
        extra = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "method")}
        return cls(layers, extra)


def random_adapter(model: nn.Module, density: float, scale: float = 1e-2, seed: int = 0,
                   targets: Iterable[str] = DEFAULT_TARGETS, mask_type: str = "random") -> ShiraAdapter:
    """An adapter with random values (benchmarks and tests)."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, lin in target_linears(model, targets).items():
        idx = make_mask_indices(lin.weight, density, mask_type, generator=g)
        layers[name] = (idx, torch.randn(len(idx), generator=g) * scale)
    return ShiraAdapter(layers, {"density": density, "mask": mask_type})


def linear_of(module: nn.Module | None) -> nn.Linear | None:
    """The Linear holding the real weight: the module itself, or its peft ``base_layer`` when
    a LoRA wraps it (so SHiRA and LoRA can act on the same layer without nesting tuners)."""
    if isinstance(module, nn.Linear):
        return module
    base = getattr(module, "base_layer", None)
    return base if isinstance(base, nn.Linear) else None


class FusedSwitcher:
    """Keeps a model's weights fused with the active SHiRA mix; switches by scatter.

    ``apply([(adapter, weight), ...])`` restores the original values at every index the
    previous mix touched (``index_copy_`` from a saved copy), then scatter-adds the new mix.
    Cost is O(touched entries), independent of layer size.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (idx, original values)
        self.active: list[tuple[ShiraAdapter, float]] = []

    @torch.no_grad()
    def restore(self) -> None:
        for name, (idx, orig) in self.saved.items():
            self._weight(name).view(-1).index_copy_(0, idx, orig)
        self.saved.clear()
        self.active = []

    @torch.no_grad()
    def apply(self, mix: list[tuple[ShiraAdapter, float]]) -> None:
        self.restore()
        per_layer: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for adapter, w in mix:
            for name, (idx, val) in adapter.layers.items():
                per_layer.setdefault(name, []).append((idx, val, w))
        for name, parts in per_layer.items():
            flat = self._weight(name).view(-1)
            dev = flat.device
            idx_all = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts]).unique()
            idx_all = idx_all.to(dev)
            self.saved[name] = (idx_all, flat.index_select(0, idx_all))  # index_select copies
            for idx, val, w in parts:
                v = val.to(dev, flat.dtype)
                flat.index_add_(0, idx.to(dev), v if w == 1.0 else v * w)
        self.active = list(mix)

    def _weight(self, name: str) -> torch.Tensor:
        lin = linear_of(self.modules.get(name))
        if lin is None:
            raise KeyError(f"no Linear layer {name!r} in this model")
        return lin.weight

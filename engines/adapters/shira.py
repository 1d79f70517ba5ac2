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


@dataclass
class LowRankDelta:
    """A fused dense adapter (FouRA with a frozen gate): ΔW = A @ B per layer.

    Stored as the two factors, r·(out+in) numbers per layer instead of out·in (the switcher
    forms the dense ΔW only while it writes a layer).
    """

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A [out, r], B [r, in])
    meta: dict[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.layers.values())


def adapter_nbytes(adapter: Any) -> int:
    """Memory held by a loaded sparse or low-rank adapter."""
    if isinstance(adapter, LowRankDelta):
        return adapter.nbytes()
    return sum(i.nbytes + v.nbytes for i, v in adapter.layers.values())


class FusedSwitcher:
    """Keeps a model's weights fused with the active SHiRA/FouRA mix; switches cheaply and exactly.

    ``apply([(adapter, weight), ...])`` first restores the original weights, then writes the
    new mix. Sparse-only layers save W0 at the touched indices (``index_select``) and restore
    them with ``index_copy_``: O(touched entries). A layer with a dense (low-rank) part gets
    W1 = W0 + Δ in the weight's dtype; restoring computes W1 - Δ with the same Δ, which
    equals W0 bit for bit except where rounding interfered, and only those entries (usually
    a small fraction) are saved, so exact restore never needs a copy of the whole weight.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        # name -> ("sparse", idx, original values) | ("dense", idx of inexact entries, their originals)
        self.saved: dict[str, tuple[str, torch.Tensor, torch.Tensor]] = {}
        self.active: list[tuple[Any, float]] = []

    def nbytes(self) -> int:
        return sum(i.nbytes + v.nbytes for _, i, v in self.saved.values())

    @torch.no_grad()
    def restore(self) -> None:
        per_layer = self._per_layer(self.active)
        for name, (kind, idx, orig) in self.saved.items():
            flat = self._weight(name).view(-1)
            if kind == "dense":
                flat.sub_(self._dense_delta(flat, per_layer[name]))
            flat.index_copy_(0, idx, orig)
        self.saved.clear()
        self.active = []

    @torch.no_grad()
    def apply(self, mix: list[tuple[Any, float]]) -> None:
        self.restore()
        for name, parts in self._per_layer(mix).items():
            flat = self._weight(name).view(-1)
            dev = flat.device
            if any(isinstance(p[0], tuple) for p in parts):  # a dense part: write W0 + Δ
                delta = self._dense_delta(flat, parts)
                w0 = flat.clone()
                flat.add_(delta)
                back = flat - delta
                bad = (back != w0).nonzero().squeeze(1)  # [n_inexact]
                self.saved[name] = ("dense", bad, w0.index_select(0, bad))
                del w0, back, delta
                continue
            idx_all = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts]).unique()
            idx_all = idx_all.to(dev)
            self.saved[name] = ("sparse", idx_all, flat.index_select(0, idx_all))  # index_select copies
            for idx, val, w in parts:
                v = val.to(dev, flat.dtype)
                flat.index_add_(0, idx.to(dev), v if w == 1.0 else v * w)
        self.active = list(mix)

    @staticmethod
    def _per_layer(mix: list[tuple[Any, float]]) -> dict[str, list[tuple[Any, Any, float]]]:
        """name -> [(idx, val, w)] for sparse parts, [((A, B), None, w)] for low-rank parts."""
        per_layer: dict[str, list[tuple[Any, Any, float]]] = {}
        for adapter, w in mix:
            low_rank = isinstance(adapter, LowRankDelta)
            for name, (x, y) in adapter.layers.items():
                per_layer.setdefault(name, []).append(((x, y), None, w) if low_rank else (x, y, w))
        return per_layer

    @staticmethod
    def _dense_delta(flat: torch.Tensor, parts: list[tuple[Any, Any, float]]) -> torch.Tensor:
        """Σ w·ΔW of one layer, flat [numel] in the weight's dtype; deterministic, so restore
        recomputes exactly what apply added."""
        acc = torch.zeros(flat.numel(), dtype=torch.float32, device=flat.device)
        for x, y, w in parts:
            if isinstance(x, tuple):
                a, b = x  # [out, r], [r, in]
                acc.add_((a.to(flat.device, torch.float32) @ b.to(flat.device, torch.float32)).view(-1), alpha=w)
            else:
                acc.index_add_(0, x.to(flat.device), y.to(flat.device, torch.float32) * w)
        return acc.to(flat.dtype)

    def _weight(self, name: str) -> torch.Tensor:
        lin = linear_of(self.modules.get(name))
        if lin is None:
            raise KeyError(f"no Linear layer {name!r} in this model")
        return lin.weight

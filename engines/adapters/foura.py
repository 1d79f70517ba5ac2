"""FouRA: low-rank adaptation in a frequency (DCT) basis with an adaptive rank gate.

For a Linear layer with input z [.., N]:  y = W0 z + F⁻¹( B · α · g ⊙ (A · F z) ), where F is
an orthonormal DCT-II along the channel axis, A [r, N] and B [N_out, r] are the low-rank
factors (B zero-initialised), and g ∈ {0,1}^r is the rank gate. The gate is input- and
timestep-dependent: a small MLP scores the low-rank activations z_lr = A·F z, an entropy-like
statistic of the normalised scores passes a sigmoid, and a straight-through hard threshold at
0.5 binarises it, so the effective rank changes per input at inference.

``freeze_gate()`` records the mean gate over recent inputs as a fixed mask; a frozen-gate
FouRA is a fixed linear map and fuses into W like LoRA (``delta_weight``).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn


def dct_matrix(n: int, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix D [n, n]: X = D x; the inverse is D.T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype or torch.float32)


class FouraLinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` with a FouRA branch."""

    def __init__(self, base: nn.Linear, rank: int = 16, alpha: float = 1.0, gate: bool = True,
                 gate_hidden: int = 16) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        n_in, n_out = base.in_features, base.out_features
        self.rank = rank
        self.alpha = alpha
        self.register_buffer("dct_in", dct_matrix(n_in), persistent=False)  # [N_in, N_in]
        self.register_buffer("dct_out", dct_matrix(n_out), persistent=False)  # [N_out, N_out]
        self.down = nn.Linear(n_in, rank, bias=False)  # A, acts on F z
        self.up = nn.Linear(rank, n_out, bias=False)  # B, output in the frequency domain
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.use_gate = gate
        self.gate_mlp = nn.Sequential(nn.Linear(rank, gate_hidden), nn.SiLU(), nn.Linear(gate_hidden, rank)) \
            if gate else None
        self.register_buffer("frozen_mask", torch.empty(0), persistent=True)  # [r] once frozen
        self.scale = 1.0  # user weight when mixing
        self._gate_sum: torch.Tensor | None = None
        self._gate_n = 0
        self.last_gate_density = 1.0

    @property
    def frozen(self) -> bool:
        return self.frozen_mask.numel() == self.rank

    def gate(self, z_lr: torch.Tensor) -> torch.Tensor:
        """z_lr [..., r] → binary gate [..., r] (straight-through: gradients flow to the MLP)."""
        if self.frozen:
            return self.frozen_mask.to(z_lr.dtype).expand_as(z_lr)
        s = self.gate_mlp(z_lr)  # [..., r] per-rank scores
        p = torch.softmax(s, -1)
        h = -(p * torch.log(p + 1e-9))  # per-rank entropy contribution
        soft = torch.sigmoid((h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + 1e-6) + s)
        hard = (soft > 0.5).to(z_lr.dtype)
        g = hard + soft - soft.detach()
        with torch.no_grad():
            flat = hard.reshape(-1, self.rank)
            self.last_gate_density = float(flat.mean())
            self._gate_sum = flat.sum(0) if self._gate_sum is None else self._gate_sum + flat.sum(0)
            self._gate_n += flat.shape[0]
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # [..., N_out]
        if self.scale == 0.0:
            return y
        xf = x @ self.dct_in.T.to(x.dtype)  # [..., N_in] DCT along channels
        z = self.down(xf)  # [..., r]
        if self.use_gate:
            z = z * self.gate(z)
        d = self.up(z) * (self.alpha * self.scale)  # [..., N_out] frequency domain
        return y + d @ self.dct_out.to(x.dtype)  # inverse DCT (D.T applied as right-multiply by D)

    def gate_stats(self) -> tuple[torch.Tensor | None, int]:
        """(per-rank count of inputs the gate was on for, number of inputs) since the start: what
        ``freeze_gate`` decides from, so a resumable trainer checkpoints it."""
        return (None if self._gate_sum is None else self._gate_sum.detach().cpu().clone()), self._gate_n

    def load_gate_stats(self, stats: tuple[torch.Tensor | None, int]) -> None:
        s, n = stats
        self._gate_sum = None if s is None else s.to(self.down.weight.device)
        self._gate_n = int(n)

    @torch.no_grad()
    def freeze_gate(self, threshold: float = 0.5) -> torch.Tensor:
        """Fix the gate to the ranks that fired on at least ``threshold`` of recent inputs."""
        if not self.use_gate or self._gate_sum is None:
            mask = torch.ones(self.rank)
        else:
            mask = (self._gate_sum / max(self._gate_n, 1) >= threshold).float()
        self.frozen_mask = mask.to(self.down.weight.device)
        return mask

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """ΔW [N_out, N_in] of a frozen-gate (or gateless) FouRA: D_outᵀ B diag(g) A D_in."""
        if self.use_gate and not self.frozen:
            raise RuntimeError("an input-dependent gate cannot be fused; freeze_gate() first")
        g = self.frozen_mask if self.frozen else torch.ones(self.rank, device=self.down.weight.device)
        a = self.down.weight * g[:, None]  # [r, N_in]
        return (self.dct_out.T @ self.up.weight @ a @ self.dct_in) * (self.alpha * self.scale)


def inject(model: nn.Module, targets: Iterable[str], rank: int = 16, alpha: float = 1.0,
           gate: bool = True) -> dict[str, FouraLinear]:
    """Replace target Linear layers by FouRA wrappers; returns them by qualified name."""
    targets = tuple(targets)
    done = {}
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and any(full == t or full.endswith("." + t) for t in targets):
                wrapped = FouraLinear(child, rank, alpha, gate).to(child.weight.device)  # new parts are built on the CPU
                setattr(mod, child_name, wrapped)
                done[full] = wrapped
    return done


def fuse(layers: dict[str, FouraLinear]) -> None:
    """Add each frozen-gate FouRA's ΔW into its base weight and turn the branch off."""
    for lyr in layers.values():
        lyr.base.weight.data += lyr.delta_weight().to(lyr.base.weight.dtype)
        lyr.scale = 0.0


def load_fused_factors(path: Any, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """ΔW = A @ B per layer (A [out, r], B [r, in]) from a saved frozen-gate FouRA file
    (``studio-foura-v1``), checked against ``model``'s layer shapes. The frequency-domain
    factors are folded into A and B, so fused FouRA costs r·(out+in) numbers per layer."""
    from safetensors import safe_open

    from engines.adapters.shira import linear_of

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "studio-foura-v1":
            raise ValueError("not a Studio FouRA adapter")
        t = {k: f.get_tensor(k) for k in f.keys()}
    mods = dict(model.named_modules())
    out = {}
    for name in sorted({k.rsplit(".", 2)[0] for k in t if k.endswith(("down.weight", "up.weight"))}):
        lin = linear_of(mods.get(name))
        if lin is None:
            raise ValueError(f"layer {name} is not a Linear layer of this base model")
        down, up = t[f"{name}.down.weight"].float(), t[f"{name}.up.weight"].float()  # [r, in], [out, r]
        if down.shape[1] != lin.in_features or up.shape[0] != lin.out_features:
            raise ValueError(f"layer {name}: adapter shape does not fit {tuple(lin.weight.shape)}")
        mask = t.get(f"{name}.frozen_mask")
        g = mask.float() if mask is not None and mask.numel() == down.shape[0] else torch.ones(down.shape[0])
        d_in, d_out = dct_matrix(lin.in_features), dct_matrix(lin.out_features)
        out[name] = ((d_out.T @ up).contiguous(), ((down * g[:, None]) @ d_in).contiguous())  # [out, r], [r, in]
    if not out:
        raise ValueError("FouRA file has no layers")
    return out


def load_fused_deltas(path: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """Dense ΔW [out, in] per layer (tests and analysis; the switcher uses the factors)."""
    return {n: a @ b for n, (a, b) in load_fused_factors(path, model).items()}

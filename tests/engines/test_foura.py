"""FouRA on real Linear layers: DCT orthonormality, identity at init, gate, frozen-gate fusion."""
from __future__ import annotations

import torch

from engines.adapters.foura import FouraLinear, dct_matrix, fuse, inject


def test_dct_is_orthonormal() -> None:
    d = dct_matrix(40)
    assert torch.allclose(d @ d.T, torch.eye(40), atol=1e-5)


def test_zero_init_is_identity_and_training_changes_output() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(32, 24)
    f = FouraLinear(base, rank=8)
    x = torch.randn(5, 32)
    assert torch.allclose(f(x), base(x))
    opt = torch.optim.Adam([p for p in f.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randn(5, 24)
    for _ in range(50):
        loss = (f(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.allclose(f(x), base(x))
    assert base.weight.grad is None  # the base stays frozen
    assert f.gate_mlp[0].weight.grad is not None  # the gate learns through the straight-through estimator


def test_gate_is_input_dependent_and_frozen_gate_fuses_exactly() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    layers = inject(model, ["0", "2"], rank=6)
    assert set(layers) == {"0", "2"}
    for lyr in layers.values():
        torch.nn.init.normal_(lyr.up.weight, std=0.1)
    xs = torch.randn(64, 16)
    masks = set()
    for x in xs:
        layers["0"](x[None])
        masks.add(layers["0"].last_gate_density)
    assert len(masks) > 1  # effective rank varies with the input
    for lyr in layers.values():
        lyr.freeze_gate()
    unfused = model(xs)
    fuse(layers)
    fused = model(xs)
    assert torch.allclose(unfused, fused, atol=1e-5)


def test_gate_stats_round_trip_gives_the_same_frozen_mask() -> None:
    """What a resumable trainer checkpoints: restoring the statistics into a fresh layer and
    feeding both the same later inputs freezes the same mask."""
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 16)
    a = FouraLinear(base, rank=8)
    with torch.no_grad():
        a.up.weight.normal_()
    first, later = torch.randn(20, 16), torch.randn(20, 16)
    a(first)
    stats = a.gate_stats()
    assert stats[1] == 20 and stats[0].shape == (8,)
    b = FouraLinear(base, rank=8)
    b.load_state_dict(a.state_dict())
    b.load_gate_stats(stats)
    a(later), b(later)
    assert torch.equal(a.gate_stats()[0], b.gate_stats()[0]) and a.gate_stats()[1] == b.gate_stats()[1] == 40
    assert torch.equal(a.freeze_gate(), b.freeze_gate())
    fresh = FouraLinear(base, rank=8)
    assert fresh.gate_stats() == (None, 0)
    fresh.load_gate_stats((None, 0))
    assert torch.equal(fresh.freeze_gate(), torch.ones(8))  # no statistics: every rank stays on

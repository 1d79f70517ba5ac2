"""SHiRA masks, storage and fused switching on real diffusers modules at tiny size."""
from __future__ import annotations

import pytest
import torch

from engines.adapters.shira import (MASK_TYPES, FusedSwitcher, ShiraAdapter, make_mask_indices, random_adapter,
                                    target_linears)


@pytest.fixture
def unet():  # noqa: ANN201
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8).eval()


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_masks_have_the_requested_density(mask_type) -> None:  # noqa: ANN001
    w = torch.randn(64, 96)
    idx = make_mask_indices(w, 0.02, mask_type, grad=torch.randn(64, 96), generator=torch.Generator().manual_seed(0))
    assert len(idx) == round(0.02 * 64 * 96) and len(idx.unique()) == len(idx)
    assert int(idx.max()) < w.numel()
    if mask_type == "weight":
        assert w.flatten().abs()[idx].min() >= w.flatten().abs().kthvalue(w.numel() - len(idx)).values


def test_switching_is_exact_and_mixes_sum(unet, tmp_path) -> None:  # noqa: ANN001
    lins = target_linears(unet)
    assert lins and all(isinstance(m, torch.nn.Linear) for m in lins.values())
    before = {n: m.weight.detach().clone() for n, m in lins.items()}
    a = random_adapter(unet, 0.02, seed=1)
    b = random_adapter(unet, 0.02, seed=2)
    sw = FusedSwitcher(unet)
    for _ in range(50):  # many switches: no drift
        sw.apply([(a, 1.0)])
        sw.apply([(b, 0.5)])
    name = next(iter(lins))
    idx_b, val_b = b.layers[name]
    delta = (lins[name].weight.detach() - before[name]).flatten()
    assert torch.allclose(delta[idx_b], 0.5 * val_b, atol=1e-6)
    assert int((delta != 0).sum()) <= len(idx_b)
    sw.apply([(a, 1.0), (b, 1.0)])  # mix: deltas add, overlaps included
    idx_a, val_a = a.layers[name]
    expect = torch.zeros_like(delta)
    expect.index_add_(0, idx_a, val_a)
    expect.index_add_(0, idx_b, val_b)
    assert torch.allclose((lins[name].weight.detach() - before[name]).flatten(), expect, atol=1e-6)
    sw.restore()
    assert all(torch.equal(m.weight, before[n]) for n, m in lins.items())
    path = tmp_path / "a.safetensors"
    a.save(path)
    again = ShiraAdapter.load(path, unet)
    assert again.n_params() == a.n_params() and again.meta["density"] == 0.02


def test_load_rejects_adapters_for_another_model(unet, tmp_path) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    name = next(iter(target_linears(unet)))
    save_file({f"{name}.idx": torch.tensor([10**9], dtype=torch.int32), f"{name}.val": torch.zeros(1)}, str(bad),
              metadata={"format": "studio-shira-v1"})
    with pytest.raises(ValueError, match="outside"):
        ShiraAdapter.load(bad, unet)
    save_file({"x.weight": torch.zeros(2)}, str(bad))
    with pytest.raises(ValueError, match="not a Studio SHiRA"):
        ShiraAdapter.load(bad, unet)


def _low_rank(unet, seed: int, rank: int = 4, scale: float = 0.05):  # noqa: ANN001, ANN202
    from engines.adapters.shira import LowRankDelta

    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, lin in target_linears(unet).items():
        out_f, in_f = lin.weight.shape
        layers[name] = (torch.randn(out_f, rank, generator=g) * scale, torch.randn(rank, in_f, generator=g) * scale)
    return LowRankDelta(layers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_low_rank_switching_restores_bit_exact_without_copying_weights(unet, dtype) -> None:  # noqa: ANN001
    """FouRA-style dense deltas mixed with SHiRA: after many switches the weights are the
    originals bit for bit, and the switcher saved far fewer numbers than the weights hold."""
    unet = unet.to(dtype)
    lins = target_linears(unet)
    before = {n: m.weight.detach().clone() for n, m in lins.items()}
    dense_a, dense_b = _low_rank(unet, 1), _low_rank(unet, 2)
    sparse = random_adapter(unet, 0.02, seed=3)
    sw = FusedSwitcher(unet)
    saved_max = 0
    for i in range(20):
        sw.apply([(dense_a, 1.0)] if i % 3 == 0 else [(dense_b, 0.7), (sparse, 1.0)] if i % 3 == 1 else [(sparse, 1.0)])
        saved_max = max(saved_max, sum(len(i) for _, i, _ in sw.saved.values()))
        if i % 3 == 0:  # the dense delta really is in the weights
            name = next(iter(lins))
            a, b = dense_a.layers[name]
            got = (lins[name].weight.detach().float() - before[name].float())
            assert torch.allclose(got, (a @ b), atol=0.02 if dtype == torch.bfloat16 else 1e-5)
    sw.restore()
    assert all(torch.equal(m.weight, before[n]) for n, m in lins.items())
    total = sum(m.weight.numel() for m in lins.values())
    assert saved_max < 0.5 * total  # only entries that rounding made inexact are saved
    assert dense_a.nbytes() < 0.5 * sum(m.weight.nbytes for m in lins.values())

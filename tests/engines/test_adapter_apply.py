"""Adapter application on a cached pipeline: a byte budget, LRU eviction, LoRAs unloaded
from the pipeline when evicted, FouRA held as low-rank factors, and the weights back to the
originals when the mix is emptied."""
from __future__ import annotations

from pathlib import Path

import torch

from engines.adapters.apply import AdapterUse, apply_adapters
from engines.adapters.lora_io import export_kohya
from engines.adapters.shira import LowRankDelta, linear_of, random_adapter, target_linears
from engines.base import ModelSpec
from engines.pipelines import load_pipeline


def _lora(tiny_model: Path, dest: Path, seed: int) -> Path:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False),
                     adapter_name="x")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    export_kohya(unet, dest, "x")
    return dest


def _foura(tiny_model: Path, dest: Path) -> Path:
    from safetensors.torch import save_file

    unet = load_pipeline(ModelSpec("m", "diffusers", tiny_model), "cpu", "float32").pipe.unet
    g = torch.Generator().manual_seed(9)
    t = {}
    for name, lin in target_linears(unet).items():
        t[f"{name}.down.weight"] = torch.randn(4, lin.in_features, generator=g) * 0.1
        t[f"{name}.up.weight"] = torch.randn(lin.out_features, 4, generator=g) * 0.1
        t[f"{name}.frozen_mask"] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    save_file(t, str(dest), metadata={"format": "studio-foura-v1", "method": "foura", "rank": "4"})
    return dest


def test_budget_evicts_lru_and_unloads_loras(tiny_model: Path, tmp_path: Path) -> None:
    loaded = load_pipeline(ModelSpec("m", "diffusers", tiny_model), "cpu", "float32")
    pipe = loaded.pipe
    w0 = {n: m.weight.detach().clone() for n, m in target_linears(pipe.unet).items()}
    loras = [_lora(tiny_model, tmp_path / f"l{i}.safetensors", i) for i in range(3)]
    shiras = []
    for i in range(3):
        f = tmp_path / f"s{i}.shira.safetensors"
        random_adapter(pipe.unet, 0.05, seed=i).save(f)
        shiras.append(f)
    foura = _foura(tiny_model, tmp_path / "f.foura.safetensors")

    _, _, undo = apply_adapters(loaded, [AdapterUse(loras[0], 1.0), AdapterUse(shiras[0], 1.0)])
    undo()
    state = loaded.adapters
    one_lora = next(iter(state.loras.values()))
    one_shira = next(iter(state.sparse.values()))[1]
    assert one_lora > 0 and one_shira > 0
    state.budget = one_lora * 2 + one_shira * 2 + (1 << 16)  # room for about two of each
    for i in range(3):
        _, _, undo = apply_adapters(loaded, [AdapterUse(loras[i], 0.5), AdapterUse(shiras[i], 0.5)])
        undo()
    assert state.nbytes() <= state.budget
    assert state.evicted >= 2
    names = set(pipe.unet.peft_config) if hasattr(pipe.unet, "peft_config") else set()
    assert names == set(state.loras)  # evicted LoRAs are gone from the pipeline too
    assert 1 <= len(state.loras) <= 2
    last = apply_adapters(loaded, [AdapterUse(loras[2], 1.0)])  # the most recent one is still loaded
    last[2]()
    assert len(state.loras) <= 2 and names == set(state.loras)

    _, _, undo = apply_adapters(loaded, [AdapterUse(foura, 1.0)])
    undo()
    held = [a for a, _ in state.sparse.values() if isinstance(a, LowRankDelta)]
    assert held, "FouRA is held as low-rank factors"
    dense = sum(pipe.unet.get_submodule(n).weight.nbytes if hasattr(pipe.unet.get_submodule(n), "weight") else 0
                for n in held[0].layers)
    assert held[0].nbytes() < dense

    _, _, undo = apply_adapters(loaded, [])  # empty mix: weights back to the originals
    undo()
    mods = dict(pipe.unet.named_modules())
    for n, w in w0.items():
        if n.endswith(("to_q", "to_v")):  # diffusers' unfuse_lora subtracts: ulp-level, not bit-exact
            assert torch.allclose(linear_of(mods[n]).weight, w, rtol=0, atol=1e-6), n
        else:  # SHiRA and FouRA go through the exact switcher
            assert torch.equal(linear_of(mods[n]).weight, w), n

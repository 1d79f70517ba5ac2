"""Adapter files against a base model: shape checks at import, and peft SHiRA conversion."""
from __future__ import annotations

import copy
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from engines.adapters.compat import check_adapter, peft_shira_to_studio, read_peft_folder, unet_weight_shapes
from engines.adapters.lora_io import detect_format, export_kohya, read_header
from engines.adapters.shira import FusedSwitcher, ShiraAdapter, random_adapter


def _unet(tiny_model: Path):  # noqa: ANN202
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_model / "unet").eval()


def _check(path: Path, tiny_model: Path) -> int:
    keys, meta = read_header(path)
    return check_adapter(path, detect_format(keys, meta), unet_weight_shapes(tiny_model))


def test_shape_check_accepts_fitting_files_and_names_the_bad_layer(tiny_model: Path, tmp_path: Path) -> None:
    from peft import LoraConfig

    unet = _unet(tiny_model)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]), adapter_name="x")
    good = tmp_path / "good.safetensors"
    n = export_kohya(unet, good, "x")
    assert _check(good, tiny_model) == 2 * n  # down and up of every layer
    shira = tmp_path / "s.shira.safetensors"
    random_adapter(_unet(tiny_model), 0.05).save(shira)
    assert _check(shira, tiny_model) > 0

    layer = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    shapes = unet_weight_shapes(tiny_model)
    out_f, in_f = shapes["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    bad = tmp_path / "bad.safetensors"
    save_file({f"{layer}.lora_down.weight": torch.zeros(2, in_f + 3), f"{layer}.lora_up.weight": torch.zeros(out_f, 2),
               f"{layer}.alpha": torch.tensor(2.0)}, str(bad))
    with pytest.raises(ValueError, match="attn1.to_q.lora_down.weight: shape"):
        _check(bad, tiny_model)
    missing = tmp_path / "missing.safetensors"
    save_file({"lora_unet_mid_block_nothing_here.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_mid_block_nothing_here.lora_up.weight": torch.zeros(4, 2)}, str(missing))
    with pytest.raises(ValueError, match="does not exist in the base model"):
        _check(missing, tiny_model)
    a = random_adapter(_unet(tiny_model), 0.05)
    name, (idx, val) = next(iter(a.layers.items()))
    a.layers[name] = (idx + 10**7, val)
    a.save(shira)
    with pytest.raises(ValueError, match="indices beyond"):
        _check(shira, tiny_model)


def _peft_shira(tiny_model: Path, seed: int = 5) -> tuple[dict, dict[str, torch.Tensor], torch.nn.Module]:
    """A peft SHiRA adapter with random values on a copy of the tiny U-Net; returns the merged copy."""
    from peft import ShiraConfig, get_peft_model_state_dict, inject_adapter_in_model

    model = copy.deepcopy(_unet(tiny_model))
    cfg = ShiraConfig(r=2, target_modules=["to_q", "to_k", "ff.net.2"], init_weights=False, random_seed=seed)
    torch.manual_seed(1)
    inject_adapter_in_model(cfg, model, adapter_name="default")
    tensors = get_peft_model_state_dict(model, adapter_name="default")
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    return cfg.to_dict() | {"peft_type": "SHIRA"}, {k: v.detach().clone() for k, v in tensors.items()}, model


@pytest.mark.parametrize("with_indices", [True, False])
def test_peft_shira_converts_to_the_same_merged_weights(tiny_model: Path, with_indices: bool) -> None:
    """With saved indices, or (older files) rebuilt from the seeded random mask."""
    cfg, tensors, merged = _peft_shira(tiny_model)
    if not with_indices:
        tensors = {k: v for k, v in tensors.items() if k.endswith(".shira_weight")}
    adapter = peft_shira_to_studio(json.loads(json.dumps(cfg, default=list)), tensors, unet_weight_shapes(tiny_model))
    unet = _unet(tiny_model)
    FusedSwitcher(unet).apply([(adapter, 1.0)])
    ref = dict(merged.named_parameters())
    for name, p in unet.named_parameters():
        stem, leaf = name.rsplit(".", 1)
        key = name if name in ref else f"{stem}.base_layer.{leaf}"
        torch.testing.assert_close(p, ref[key], rtol=0, atol=1e-6, msg=name)
    assert len(adapter.layers) == sum(k.endswith(".shira_weight") for k in tensors) > 0


def test_peft_shira_bad_inputs_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    cfg, tensors, _ = _peft_shira(tiny_model)
    shapes = unet_weight_shapes(tiny_model)
    values_only = {k: v for k, v in tensors.items() if k.endswith(".shira_weight")}
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        peft_shira_to_studio(cfg | {"mask_type": "custom"}, values_only, shapes)
    with pytest.raises(ValueError, match="expected r"):
        peft_shira_to_studio(cfg | {"r": 3}, tensors, shapes)
    with pytest.raises(ValueError, match="not SHIRA"):
        peft_shira_to_studio(cfg | {"peft_type": "LORA"}, tensors, shapes)
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("adapter_model.safetensors", save(tensors))
    with pytest.raises(ValueError, match="adapter_config.json"):
        read_peft_folder(z)


def peft_shira_zip(tiny_model: Path) -> bytes:
    cfg, tensors, _ = _peft_shira(tiny_model)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as f:
        f.writestr("my-shira/adapter_config.json", json.dumps(cfg, default=list))
        f.writestr("my-shira/adapter_model.safetensors", save(tensors))
    return buf.getvalue()


def test_library_import_checks_base_model_and_converts_peft_shira(services, tiny_model: Path,  # noqa: ANN001
                                                                  tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from studio.server import create_app

    shapes = unet_weight_shapes(tiny_model)
    out_f, in_f = shapes["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    layer = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    wrong = save({f"{layer}.lora_down.weight": torch.zeros(2, in_f * 2), f"{layer}.lora_up.weight": torch.zeros(out_f, 2),
                  f"{layer}.alpha": torch.tensor(2.0)})
    services.models.register("tiny", str(tiny_model))  # web clients name models, never server paths
    with TestClient(create_app(services, with_ui=False)) as c:
        before = len(list(services.settings.assets_dir.rglob("*")))
        r = c.post("/api/v1/adapters", files={"file": ("wrong.safetensors", wrong)}, data={"base_model": "tiny"})
        assert r.status_code == 400 and "does not fit the base layer" in r.json()["detail"], r.text
        z = peft_shira_zip(tiny_model)
        r = c.post("/api/v1/adapters", files={"file": ("peft-shira.zip", z)})
        assert r.status_code == 400 and "needs base_model" in r.json()["detail"], r.text
        r = c.post("/api/v1/adapters", files={"file": ("x.zip", z)}, data={"base_model": "/no/such/model"})
        assert r.status_code == 400 and "base_model" in r.json()["detail"], r.text
        assert len(list(services.settings.assets_dir.rglob("*"))) == before
        r = c.post("/api/v1/adapters", files={"file": ("peft-shira.zip", z)}, data={"base_model": "tiny"})
        assert r.status_code == 201, r.text
        a = r.json()
        assert a["method"] == "shira" and a["format"] == "studio-shira" and a["name"] == "peft-shira"
        assert a["provenance"]["converted_from"] == "peft-shira" and a["provenance"]["layers_checked"] > 0
        data = c.get(a["url"]).content
    (tmp_path / "got.safetensors").write_bytes(data)
    assert ShiraAdapter.load(tmp_path / "got.safetensors", _unet(tiny_model)).n_params() > 0

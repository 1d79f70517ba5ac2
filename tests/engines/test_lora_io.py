"""LoRA trained/injected through peft exports to kohya keys that diffusers reads back."""
from __future__ import annotations

import pytest
import torch

from engines.adapters.lora_io import detect_format, export_kohya, read_header


def test_kohya_export_round_trips_through_diffusers(tiny_model, tmp_path) -> None:  # noqa: ANN001
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="mine")

    def run(p) -> torch.Tensor:  # noqa: ANN001
        return torch.from_numpy(p("a red star", num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                                  output_type="np").images)

    with_lora = run(pipe)
    path = tmp_path / "mine.safetensors"
    n = export_kohya(pipe.unet, path, "mine", {"ss_tag_frequency": {"star": 1}})
    assert n > 0
    keys, meta = read_header(path)
    assert detect_format(keys, meta) == "kohya"
    assert all(k.startswith("lora_unet_") for k in keys)

    fresh = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    fresh.set_progress_bar_config(disable=True)
    plain = run(fresh)
    fresh.load_lora_weights(str(path), adapter_name="k")
    reloaded = run(fresh)
    assert not torch.allclose(plain, with_lora, atol=1e-4)
    assert torch.allclose(reloaded, with_lora, atol=1e-4)


def test_detect_format_rejects_non_adapters(tmp_path) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    p = tmp_path / "x.safetensors"
    save_file({"conv.weight": torch.zeros(1)}, str(p))
    with pytest.raises(ValueError, match="no LoRA"):
        detect_format(*read_header(p))
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_header(p)

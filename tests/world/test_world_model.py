"""The shipped default model is a StableDiffusionPipeline directory, exactly like SD1.5."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engines.world.paths import default_model_dir


@pytest.fixture(scope="module")
def pipe():  # noqa: ANN201
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(default_model_dir()), local_files_only=True)


def test_layout_and_size() -> None:
    d = default_model_dir()
    idx = json.loads((d / "model_index.json").read_text())
    assert idx["_class_name"] == "StableDiffusionPipeline"
    assert idx["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert idx["vae"] == ["diffusers", "AutoencoderKL"]
    assert idx["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert idx["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert idx["requires_safety_checker"] is False
    sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    assert sched["steps_offset"] == 1
    files = [f for f in d.rglob("*") if f.is_file()]
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".ckpt")]
    # one weights file per component; the Clockwork adaptor sits beside model_index.json
    assert sorted(f.parent.name for f in files if f.suffix == ".safetensors" and f.parent != d) == [
        "text_encoder", "unet", "vae"]
    assert sum(f.stat().st_size for f in files) <= 25 * 1024 * 1024


def test_generates_64px(pipe) -> None:  # noqa: ANN001
    import torch

    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    out = pipe("a red star in the center on a white background", num_inference_steps=2,
               guidance_scale=4.0, generator=gen, output_type="np").images
    assert out.shape == (1, 64, 64, 3)
    assert np.isfinite(out).all() and out.std() > 0.01
    assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())


def test_prompt_changes_the_image(pipe) -> None:  # noqa: ANN001
    import torch

    def run(p: str) -> np.ndarray:
        return pipe(p, num_inference_steps=4, guidance_scale=4.0, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images[0]

    a = run("a large red solid circle in the center on a white background")
    b = run("a large blue solid square in the center on a black background")
    assert np.abs(a - b).mean() > 0.05

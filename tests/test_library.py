"""Adapter library: jobs that train adapters fill it; imports are validated; t2i uses it by name."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from studio.wiring import build_runner


def test_training_job_enters_library_and_t2i_uses_it_by_name(services, tiny_model, tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    ds = tmp_path / "ds"
    ds.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (50 * i, 100, 200)).save(ds / f"{i}.png")
    runner = build_runner(services)
    job = services.jobs.submit("adapter-train", {"model": str(tiny_model), "dataset": str(ds), "method": "shira",
                                                 "trigger": "zq", "caption_template": "a {trigger}", "steps": 2,
                                                 "sample_every": 0, "name": "my-style"}, origin="cli", enqueue=False)
    assert runner.execute(job.id) == "completed", services.jobs.get(job.id).error
    (entry,) = services.library.list()
    assert entry["name"] == "my-style" and entry["method"] == "shira" and entry["trigger"] == "zq"
    assert entry["density"] == 0.02 and len(entry["previews"]) == 2 and entry["provenance"]["job_id"] == job.id
    gen = services.jobs.submit("t2i", {"model": str(tiny_model), "prompt": "a zq", "steps": 2,
                                       "adapters": [{"adapter": "my-style", "weight": 0.8}]}, enqueue=False)
    assert gen.params["adapters"][0]["adapter"] == entry["asset_id"]
    assert runner.execute(gen.id) == "completed", services.jobs.get(gen.id).error
    meta = services.jobs.get(gen.id).assets[0].meta
    assert 'Adapters: "my-style:0.8"' in meta["parameters"]


def test_import_validates_and_stores_nothing_on_bad_files(services) -> None:  # noqa: ANN001
    from studio.server import create_app

    lora = save({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
                 "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
                 "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)})
    with TestClient(create_app(services, with_ui=False)) as c:
        r = c.post("/api/v1/adapters", files={"file": ("style.safetensors", lora)}, data={"trigger": "sks"})
        assert r.status_code == 201, r.text
        assert r.json()["method"] == "lora" and r.json()["format"] == "kohya" and r.json()["trigger"] == "sks"
        assert c.post("/api/v1/adapters", files={"file": ("style.safetensors", lora)}).status_code == 409
        before = len(list(services.settings.assets_dir.rglob("*")))
        for name, data in [("x.safetensors", b"not safetensors"), ("m.safetensors", save({"conv.weight": torch.zeros(2)})),
                           ("a.ckpt", lora)]:
            r = c.post("/api/v1/adapters", files={"file": (name, data)})
            assert r.status_code == 400, (name, r.text)
        assert len(list(services.settings.assets_dir.rglob("*"))) == before
        assert [a["name"] for a in c.get("/api/v1/adapters").json()] == ["style"]

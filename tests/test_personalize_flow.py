"""The personal flow through the Studio's services, as the Personalize tab drives it: photos
uploaded as assets (a bad file is refused at upload), a photo check job with a verdict per photo,
then a hollowed training job whose adapter enters the library and is used by t2i by name."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.errors import StudioError
from studio.wiring import build_runner

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"


@pytest.fixture(autouse=True)
def one_thread():  # noqa: ANN201
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _png(im: Image.Image) -> io.BytesIO:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    buf.seek(0)
    return buf


def test_photos_checked_trained_and_in_the_library(services, tiny_model) -> None:  # noqa: ANN001
    with pytest.raises(StudioError):  # not an image: refused at upload, nothing stored
        services.assets.upload(io.BytesIO(b"not a photo"), "notes.jpg")
    rng = np.random.default_rng(1)
    ids = []
    for i in range(3):
        im = Image.new("RGB", (40, 40), tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.paste((20, 160, 150), (8 + i, 8, 30 + i, 30))
        ids.append(services.assets.upload(_png(im), f"me{i}.png").id)
    with open(PHOTOS / "coffee.jpg", "rb") as f:
        ids.append(services.assets.upload(f, "coffee.jpg").id)
    ids.append(ids[0])  # the same photo dropped twice
    runner = build_runner(services)
    photos = [{"image": i, "name": f"photo{k}.png"} for k, i in enumerate(ids)]
    check = services.jobs.submit("personalize", {"model": str(tiny_model), "photos": photos, "check_only": True},
                                 origin="cli", enqueue=False)
    assert runner.execute(check.id) == "completed", services.jobs.get(check.id).error
    meta = services.jobs.get(check.id).result_meta
    assert [p["ok"] for p in meta["photos"]] == [True, True, True, True, False]
    assert meta["photos"][4]["message"] == "duplicate of photo0.png" and meta["enough"]
    assert services.library.list() == []  # a check trains nothing
    job = services.jobs.submit("personalize", {"model": str(tiny_model), "photos": photos, "steps": 2, "hollow": 1,
                                               "subject_word": "zq", "class_word": "toy", "samples_every": 0,
                                               "targets": ["to_q", "to_v"], "name": "my-toy"},
                               origin="cli", enqueue=False)
    assert runner.execute(job.id) == "completed", services.jobs.get(job.id).error
    (entry,) = services.library.list()
    assert entry["name"] == "my-toy" and entry["method"] == "lora" and entry["trigger"] == "zq"
    assert entry["provenance"]["hollow"] == 1 and entry["provenance"]["class_word"] == "toy"
    assert entry["provenance"]["job_id"] == job.id and entry["base_model_hash"]
    assert len(entry["previews"]) == 3  # samples, loss curve, photo sheet
    grid = next(a for a in services.jobs.get(job.id).assets if a.kind == "image")
    assert grid.meta["params"]["prompt"].startswith("a photo of zq toy")  # what "Use in Generate" loads
    gen = services.jobs.submit("t2i", {"model": str(tiny_model), "prompt": "a photo of zq toy", "steps": 2,
                                       "adapters": [{"adapter": "my-toy", "weight": 1.0}]}, enqueue=False)
    assert runner.execute(gen.id) == "completed", services.jobs.get(gen.id).error

    # "Use in Generate": what the Personalize tab hands over fills prompt, model and the adapter
    import json

    from ui.tabs.generate import values_from_bridge

    adapter = next(a for a in services.jobs.get(job.id).assets if a.kind == "adapter")
    values, _ = values_from_bridge(services, json.dumps({"asset": grid.id,
                                                         "adapters": [{"adapter": adapter.id, "weight": 1.0}]}))
    assert values["prompt"] == grid.meta["params"]["prompt"] and values["model"] == str(tiny_model)
    assert values["adapters"] == [{"adapter": adapter.id, "weight": 1.0}]
    mixed = services.jobs.submit("t2i", {k: v for k, v in values.items() if v is not None} | {"steps": 2},
                                 enqueue=False)
    assert runner.execute(mixed.id) == "completed", services.jobs.get(mixed.id).error
    out = next(a for a in services.jobs.get(mixed.id).assets if a.kind == "image")
    again, _ = values_from_bridge(services, out.id)  # a gallery image brings its adapter mix back
    assert [u["adapter"] for u in again["adapters"]] == [adapter.id]
    for bad in ('{"asset": 1', '{"adapters": []}', '{"asset": "x", "adapters": [{"adapter": "a", "weight": "w"}]}'):
        with pytest.raises((ValueError, StudioError)):
            values_from_bridge(services, bad)


def test_personalize_tab_builds(services) -> None:  # noqa: ANN001
    from ui.app import build
    from ui.tabs.personalize import memory_note

    demo = build(services)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"pz-photos", "pz-verdicts", "pz-hollow", "pz-memory", "pz-start", "pz-use"} <= ids
    assert "16%" in memory_note(2) and "Plain" in memory_note(0)


def test_adapter_picker_edits_the_mix_without_dropping_handed_over_adapters() -> None:
    """Opening the Adapters section after "Use in Generate" must not wipe the personal adapter:
    the picker only adds what the user picks and removes what the user unpicks."""
    import json

    from ui.tabs.generate import mix_entries, pick_adapters

    handed = json.dumps([{"adapter": "pers", "weight": 0.8}])
    mix, before = pick_adapters([], handed, [])  # the picker reports an empty value: nothing changes
    assert json.loads(mix) == [{"adapter": "pers", "weight": 0.8}] and before == []
    mix, before = pick_adapters(["style"], mix, before)
    assert [e["adapter"] for e in json.loads(mix)] == ["pers", "style"]
    mix, before = pick_adapters(["style", "pers"], mix, before)  # picking one already mixed keeps its weight
    assert json.loads(mix)[0] == {"adapter": "pers", "weight": 0.8} and len(json.loads(mix)) == 2
    mix, before = pick_adapters(["pers"], mix, before)
    assert [e["adapter"] for e in json.loads(mix)] == ["pers"]
    assert mix_entries("not json") == [] and mix_entries('{"a": 1}') == [] and mix_entries(None) == []

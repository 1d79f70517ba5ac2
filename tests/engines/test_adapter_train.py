"""adapter-train on a tiny real SD pipeline: every method trains, exports a loadable file,
cancels within a step, and resumes exactly from its checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from engines.adapters.engine import AdapterTrainEngine
from engines.adapters.params import AdapterTrainParams
from engines.base import Cancelled, EngineContext, ModelSpec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:  # noqa: ANN001
    d = tmp_path_factory.mktemp("ds")
    for i, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        Image.new("RGB", (40, 40), c).save(d / f"img{i}.png")
        (d / f"img{i}.txt").write_text(f"a square number {i}")
    return d


def ctx_for(tmp: Path, state: Path, cancel_after: int | None = None, events: list | None = None) -> EngineContext:
    (tmp / "work").mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    seen: list = events if events is not None else []

    def cancelled() -> bool:
        return cancel_after is not None and len([e for e in seen if e.step > 0]) >= cancel_after

    return EngineContext(work_dir=tmp / "work", resolve_model=lambda ref: ModelSpec(ref, "diffusers", Path(ref)),
                         resolve_input=Path, report=seen.append, is_cancelled=cancelled, state_dir=state)


def params(model: Path, data: Path, **kw):  # noqa: ANN003, ANN201
    """The per-method params model (``.root`` of the union) for ``kw["method"]`` (default lora)."""
    base = {"model": str(model), "dataset": str(data), "steps": 4, "batch_size": 2, "sample_every": 0,
            "checkpoint_every": 2, "targets": ["to_q", "to_k", "to_v", "to_out.0"],
            "caption_template": "{caption}, {trigger}", "trigger": "sks"}
    own = {"density": 0.05} if kw.get("method") == "shira" else {"rank": 4}
    return AdapterTrainParams.model_validate(base | own | kw).root


@pytest.mark.parametrize("method", ["lora", "shira", "foura"])
def test_each_method_trains_and_exports(tiny_model, dataset, tmp_path, method) -> None:  # noqa: ANN001
    res = AdapterTrainEngine().run(params(tiny_model, dataset, method=method),
                                   ctx_for(tmp_path, tmp_path / "state"))
    adapter, curve, sample = res.artifacts
    assert adapter.kind == "adapter" and adapter.path.stat().st_size > 0
    assert adapter.meta["method"] == method and adapter.meta["trigger"] == "sks"
    assert Image.open(curve.path).size[0] > 100 and Image.open(sample.path).size == (32, 32)
    if method == "shira":
        from diffusers import UNet2DConditionModel

        from engines.adapters.shira import ShiraAdapter

        unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
        a = ShiraAdapter.load(adapter.path, unet)
        lin = dict(unet.named_modules())[next(iter(a.layers))]
        assert len(a.layers[next(iter(a.layers))][0]) == round(0.05 * lin.weight.numel())
        assert any(float(v.abs().sum()) > 0 for _, v in a.layers.values())  # it learned something
    if method == "lora":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
        pipe.load_lora_weights(str(adapter.path), adapter_name="x")  # kohya keys, read by diffusers


def test_bad_params_are_clear() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        AdapterTrainParams(model="m")
    with pytest.raises(ValueError, match="trigger"):
        AdapterTrainParams(model="m", demo="new-concept", caption_template="{trigger}")


def test_params_are_per_method() -> None:
    """A discriminated union on ``method``: each method takes its own fields and refuses the others'
    with an error naming the field; the flat schema says which fields belong to which methods."""
    from pydantic import ValidationError

    from engines.adapters.params import FouraTrainParams, LoraTrainParams, ShiraTrainParams

    demo = {"demo": "striped-style"}
    assert isinstance(AdapterTrainParams.model_validate(demo).root, LoraTrainParams)  # lora by default
    assert isinstance(AdapterTrainParams.model_validate(demo | {"method": "foura", "rank": 2}).root, FouraTrainParams)
    sh = AdapterTrainParams.model_validate(demo | {"method": "shira", "density": 0.1, "mask_type": "snip"})
    assert isinstance(sh.root, ShiraTrainParams) and sh.root.density == 0.1 and not hasattr(sh.root, "rank")
    assert sh.model_dump()["method"] == "shira" and "rank" not in sh.model_dump()
    assert AdapterTrainParams.model_validate(sh.model_dump()) == sh  # what a job stores validates again
    for bad, field, msg in ((demo | {"method": "lora", "density": 0.05}, "density", "only to shira"),
                            (demo | {"method": "foura", "mask_type": "snip"}, "mask_type", "only to shira"),
                            (demo | {"method": "shira", "rank": 4}, "rank", "only to lora, foura"),
                            (demo | {"method": "dora"}, "method", "lora"),
                            (demo | {"method": "shira", "density": 0.9}, "density", "less than or equal"),
                            (demo | {"rank": 4, "typo": 1}, "typo", "not permitted")):
        with pytest.raises(ValidationError) as e:
            AdapterTrainParams.model_validate(bad)
        errs = e.value.errors()
        assert [x["loc"] for x in errs] == [(field,)] and msg in errs[0]["msg"], errs
    schema = AdapterTrainParams.model_json_schema()
    props = schema["properties"]
    assert schema["x-discriminator"] == "method" and props["method"]["enum"] == ["lora", "shira", "foura"]
    assert props["rank"]["x-methods"] == ["lora", "foura"] and props["density"]["x-methods"] == ["shira"]
    assert props["mask_type"]["x-methods"] == ["shira"] and "x-methods" not in props["steps"]
    assert props["dataset"]["format"] == "studio-input"  # input-file detection still sees it


def test_cancel_then_resume_matches_an_uninterrupted_run(tiny_model, dataset, tmp_path) -> None:  # noqa: ANN001
    p = params(tiny_model, dataset, method="shira", steps=6, checkpoint_every=2)
    state = tmp_path / "state"
    with pytest.raises(Cancelled):
        AdapterTrainEngine().run(p, ctx_for(tmp_path / "a", state, cancel_after=3))
    assert (state / "checkpoint.pt").is_file()
    resumed = AdapterTrainEngine().run(p, ctx_for(tmp_path / "b", state))
    assert resumed.meta["resumed_from"] == 2
    straight = AdapterTrainEngine().run(p, ctx_for(tmp_path / "c", tmp_path / "fresh"))
    assert straight.meta["resumed_from"] == 0
    from safetensors.torch import load_file

    a, b = load_file(str(resumed.artifacts[0].path)), load_file(str(straight.artifacts[0].path))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)


def test_t2i_mixes_trained_adapters_and_switches_back_exactly(tiny_model, dataset, tmp_path) -> None:  # noqa: ANN001
    """Train one adapter per method, then generate with each, a LoRA+SHiRA mix, and none:
    the no-adapter image after all that is identical to the first one (exact restore)."""
    from engines.t2i.engine import T2IEngine
    from engines.t2i.params import T2IParams

    files = {}
    for method in ("lora", "shira", "foura"):
        res = AdapterTrainEngine().run(params(tiny_model, dataset, method=method, steps=3, learning_rate=5e-2),
                                       ctx_for(tmp_path / method, tmp_path / f"s-{method}"))
        files[method] = str(res.artifacts[0].path)
    cache: dict = {}
    counter = iter(range(100))

    def gen(adapters: list, mode: str = "fused") -> tuple[bytes, dict]:
        d = tmp_path / f"g{next(counter)}"
        p = T2IParams(model=str(tiny_model), prompt="a square, sks", steps=3, seed=3, preview_every=0,
                      adapters=adapters, adapter_mode=mode)
        ctx = EngineContext(work_dir=d, load_model=lambda ref, key, build: cache.setdefault(
            (ref, key), build(ModelSpec(ref, "diffusers", Path(ref)))), resolve_input=Path)
        d.mkdir(parents=True)
        r = T2IEngine().run(p, ctx)
        return Image.open(r.artifacts[0].path).tobytes(), r.meta | {"text": r.artifacts[0].meta["parameters"]}

    base, _ = gen([])
    outs = {}
    for method, f in files.items():
        outs[method], meta = gen([{"adapter": f, "weight": 1.0}])
        assert outs[method] != base, method
        assert "Adapters: " in meta["text"]
    lora_unfused, _ = gen([{"adapter": files["lora"], "weight": 1.0}], "unfused")
    mix, meta = gen([{"adapter": files["lora"], "weight": 0.7}, {"adapter": files["shira"], "weight": 1.0}])
    assert mix not in (base, outs["lora"], outs["shira"])
    again, meta = gen([])
    assert again == base  # SHiRA restored by index, LoRA unfused and disabled
    shira_again, meta = gen([{"adapter": files["shira"], "weight": 1.0}])
    assert shira_again == outs["shira"] and meta["adapter_switch_ms"] > 0
    import numpy as np

    a = np.frombuffer(lora_unfused, np.uint8).astype(int)
    b = np.frombuffer(outs["lora"], np.uint8).astype(int)
    assert np.abs(a - b).max() <= 2  # fused and unfused LoRA agree up to rounding


def test_composite_mix_adds_each_adapters_effect(tiny_model, dataset, tmp_path) -> None:  # noqa: ANN001
    """adapter_mode=composite: each adapter runs on its own and the effects are added. With a
    LoRA and a SHiRA, the mix's noise prediction is exactly ε_base + (ε_lora − ε_base) +
    (ε_shira − ε_base), from n + 1 passes per call; a weight-0 partner leaves the LoRA's own
    image; the pipeline is restored afterwards; Clockwork with it is refused up front."""
    import numpy as np
    import torch

    from engines.adapters.apply import AdapterUse, apply_adapters
    from engines.adapters.composite import CompositeMix
    from engines.pipelines import load_pipeline
    from engines.t2i.engine import T2IEngine
    from engines.t2i.params import T2IParams

    files = {}
    for method in ("lora", "shira"):
        res = AdapterTrainEngine().run(params(tiny_model, dataset, method=method, steps=3, learning_rate=5e-2),
                                       ctx_for(tmp_path / method, tmp_path / f"s-{method}"))
        files[method] = res.artifacts[0].path
    loaded = load_pipeline(ModelSpec(str(tiny_model), "diffusers", tiny_model), "cpu", "float32")
    unet = loaded.pipe.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, 8, 8, generator=g)
    ehs = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([500, 20])

    def eps(uses: list) -> torch.Tensor:
        _, _, undo = apply_adapters(loaded, uses, "unfused")
        try:
            return unet(x, t, ehs).sample
        finally:
            undo()

    uses = [AdapterUse(files["lora"], 0.8), AdapterUse(files["shira"], 1.0)]
    with torch.no_grad():
        base, e_lora, e_shira = eps([]), eps(uses[:1]), eps(uses[1:])
        with CompositeMix(loaded, uses) as mix:
            out = unet(x, t, ehs).sample
        assert mix.passes == 3 and [i["method"] for i in mix.info] == ["lora", "shira"]
        assert [i["mix_ready"] for i in mix.info] == [False, False]  # trained without preserve
        assert torch.allclose(out, base + (e_lora - base) + (e_shira - base), atol=1e-5)
        assert not torch.allclose(out, eps(uses), atol=1e-4)  # not the fused sum
        assert torch.equal(eps([]), base)  # nothing left applied

    cache: dict = {}

    def gen(adapters: list, mode: str) -> tuple[np.ndarray, dict]:
        d = tmp_path / f"g-{mode}-{len(adapters)}-{adapters[-1]['weight'] if adapters else 0}"
        d.mkdir(parents=True)
        p = T2IParams(model=str(tiny_model), prompt="a square, sks", steps=3, seed=3, preview_every=0,
                      adapters=adapters, adapter_mode=mode)
        ctx = EngineContext(work_dir=d, load_model=lambda ref, key, build: cache.setdefault(
            (ref, key), build(ModelSpec(ref, "diffusers", Path(ref)))), resolve_input=Path)
        r = T2IEngine().run(p, ctx)
        return np.asarray(Image.open(r.artifacts[0].path)).astype(int), r.artifacts[0].meta

    alone, _ = gen([{"adapter": str(files["lora"]), "weight": 1.0}], "unfused")
    with_zero, meta = gen([{"adapter": str(files["lora"]), "weight": 1.0},
                           {"adapter": str(files["shira"]), "weight": 0.0}], "composite")
    assert np.abs(alone - with_zero).max() <= 1 and "composite" in meta["parameters"]
    both, _ = gen([{"adapter": str(files["lora"]), "weight": 1.0},
                   {"adapter": str(files["shira"]), "weight": 1.0}], "composite")
    assert np.abs(both - alone).max() > 1
    with pytest.raises(ValueError, match="Clockwork"):
        T2IParams(prompt="x", clockwork="reuse", adapter_mode="composite",
                  adapters=[{"adapter": "a", "weight": 1.0}, {"adapter": "b", "weight": 1.0}])


def _weights(res) -> dict:  # noqa: ANN001
    from safetensors.torch import load_file

    return load_file(str(res.artifacts[0].path))


@pytest.mark.parametrize("method", ["lora", "shira", "foura"])
def test_same_seed_same_weights_whatever_ran_before(tiny_model, dataset, tmp_path, method) -> None:  # noqa: ANN001
    """Init (LoRA A, FouRA down/gate), masks, batches, noise and timesteps all come from the seed:
    two trainings give bit-identical files even when the global RNG was left in another state."""
    p = params(tiny_model, dataset, method=method, steps=3, learning_rate=1e-2, preserve=0.5)
    torch.manual_seed(123)
    a = _weights(AdapterTrainEngine().run(p, ctx_for(tmp_path / "a", tmp_path / "sa")))
    torch.manual_seed(456)
    torch.rand(1000)
    b = _weights(AdapterTrainEngine().run(p, ctx_for(tmp_path / "b", tmp_path / "sb")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = _weights(AdapterTrainEngine().run(params(tiny_model, dataset, method=method, steps=3, learning_rate=1e-2,
                                                 preserve=0.5, seed=1), ctx_for(tmp_path / "c", tmp_path / "sc")))
    assert any(not torch.equal(a[k], c[k]) for k in a if k in c)  # the seed does matter


def test_training_works_after_something_switched_grad_off(tiny_model, dataset, tmp_path) -> None:  # noqa: ANN001
    """The state leak behind 'element 0 of tensors does not require grad': a bench (or job) that
    turned grad mode off globally on this thread must not break the next training."""
    prev = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        res = AdapterTrainEngine().run(params(tiny_model, dataset, method="lora", steps=2),
                                       ctx_for(tmp_path, tmp_path / "state"))
        assert res.meta["final_loss"] > 0
        assert not torch.is_grad_enabled()  # and the caller's mode is left as it was
    finally:
        torch.set_grad_enabled(prev)


def test_made_up_words_are_seeded_and_avoid_given_words() -> None:
    from engines.adapters.train import made_up_words

    w = made_up_words(50, seed=3, avoid={"sks"})
    assert w == made_up_words(50, seed=3, avoid={"sks"}) and len(set(w)) == 50
    assert w != made_up_words(50, seed=4, avoid={"sks"})
    assert all(x.isalpha() and 4 <= len(x) <= 6 for x in w)
    assert w[0] not in made_up_words(50, seed=3, avoid={w[0]})


def test_preserve_needs_the_trigger_in_every_caption(tiny_model, dataset, tmp_path) -> None:  # noqa: ANN001
    from engines.base import EngineError

    with pytest.raises(ValueError, match="trigger"):
        AdapterTrainParams(model="m", dataset="d", preserve=0.5)
    p = params(tiny_model, dataset, caption_template="{caption}", preserve=0.5)  # captions lack "sks"
    with pytest.raises(EngineError, match="trigger 'sks' in every caption"):
        AdapterTrainEngine().run(p, ctx_for(tmp_path, tmp_path / "state"))


@pytest.mark.parametrize("method", ["lora", "shira", "foura"])
def test_preserve_target_is_the_untouched_base_model(tiny_model, dataset, tmp_path, method) -> None:  # noqa: ANN001
    """Mix-ready training's target for made-up-word rows is the base model with the adapter off:
    after a few large steps the adapter changes the output, yet the target still equals a fresh
    base U-Net's output; and adapter training leaves the adapter switched back on."""
    from diffusers import UNet2DConditionModel

    from engines.adapters.train import Trainer, encode, encode_negatives
    from engines.pipelines import load_pipeline

    p = params(tiny_model, dataset, method=method, learning_rate=5e-2, preserve=0.5)
    pipe = load_pipeline(ModelSpec(str(tiny_model), "diffusers", tiny_model), "cpu", "float32").pipe
    from engines.adapters.data import load_folder

    items = load_folder(dataset, p.caption_template, p.trigger)
    lat, ehs = encode(pipe, items)
    tr = Trainer(pipe, p, ctx_for(tmp_path, tmp_path / "state"))
    tr.neg_ehs = encode_negatives(pipe, [c for _, c in items], p.trigger, p.seed)
    assert tr.neg_ehs.shape == (len(items), 4, *ehs.shape[1:])
    if method == "shira":
        tr.make_shira_masks(lat, ehs)
    for s in range(3):
        tr.step(lat, ehs, s)
    base = UNet2DConditionModel.from_pretrained(tiny_model / "unet").eval()
    x, t, c = torch.randn(2, *lat.shape[1:]), torch.tensor([10, 700]), tr.neg_ehs[:2, 0]
    with torch.no_grad():
        want = base(x, t, encoder_hidden_states=c).sample
        got = tr._base_pred(x, t, c)
        adapted = pipe.unet(x, t, encoder_hidden_states=c).sample
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(adapted, want, atol=1e-4)  # the adapter is active again


def test_foura_cancel_then_resume_is_bit_identical(tiny_model, dataset, tmp_path) -> None:  # noqa: ANN001
    """FouRA's frozen gate mask comes from gate statistics gathered over the whole run: they are
    checkpointed, so an interrupted-and-resumed run exports exactly the uninterrupted run's tensors."""
    p = params(tiny_model, dataset, method="foura", steps=6, checkpoint_every=2, learning_rate=5e-2)
    state = tmp_path / "state"
    with pytest.raises(Cancelled):
        AdapterTrainEngine().run(p, ctx_for(tmp_path / "a", state, cancel_after=3))
    gates = torch.load(state / "checkpoint.pt", weights_only=False)["foura_gates"]
    assert gates and all(s.numel() == 4 and n > 0 for s, n in gates.values())  # rank 4, counted so far
    resumed = AdapterTrainEngine().run(p, ctx_for(tmp_path / "b", state))
    assert resumed.meta["resumed_from"] == 2
    straight = AdapterTrainEngine().run(p, ctx_for(tmp_path / "c", tmp_path / "fresh"))
    a, b = _weights(resumed), _weights(straight)
    assert a.keys() == b.keys() and any(k.endswith("frozen_mask") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mix_ready_read_from_every_adapter_layout(tmp_path: Path) -> None:
    """Composite mixing reports whether each adapter was trained mix-ready, whatever its file layout."""
    import json

    from safetensors.torch import save_file

    from engines.adapters.composite import mix_ready

    t = {"w": torch.zeros(2)}
    cases = {"studio-lora": ({"studio": json.dumps({"preserve": 0.5})}, True),
             "shira": ({"format": "studio-shira-v1", "preserve": "0.0"}, False),
             "foreign": ({"ss_network_dim": "4"}, None),
             "garbage": ({"studio": "{not json"}, None)}
    for name, (meta, want) in cases.items():
        save_file(t, str(tmp_path / f"{name}.safetensors"), metadata=meta)
        assert mix_ready(tmp_path / f"{name}.safetensors") is want, name
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 20)
    assert mix_ready(tmp_path / "bad.safetensors") is None

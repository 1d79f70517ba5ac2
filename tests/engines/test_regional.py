"""Regional prompting (engines/pipelines/regional.py) on a tiny real U-Net, and the t2i engine's
layout on the shipped embedded model (prompt read into objects, one region each)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.base import EngineContext, ModelSpec
from engines.t2i.engine import T2IEngine
from engines.t2i.params import T2IParams
from engines.pipelines.regional import Regional, mix_weights
from engines.world.paths import default_model_dir


@pytest.fixture(scope="module")
def unet(tiny_model: Path):  # noqa: ANN201
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(tiny_model / "unet")).eval()


def _call(unet, x, t, ehs):  # noqa: ANN001, ANN202
    return unet(x, t, encoder_hidden_states=ehs, return_dict=False)[0]


@torch.no_grad()
@pytest.mark.parametrize("guided", [True, False])
def test_each_region_gets_exactly_its_own_prompts_prediction(unet, guided) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    B, R, C, h = 2, 3, unet.config.in_channels, unet.config.sample_size
    L, D = 7, unet.config.cross_attention_dim
    emb = torch.randn(B, R, L, D)  # (B, R, L, D)
    region = torch.randint(0, R, (B, h, h))  # which region owns each latent pixel
    w = torch.nn.functional.one_hot(region, R).permute(0, 3, 1, 2).float()  # (B, R, h, w)
    x = torch.randn(B, C, h, h)
    uncond = torch.randn(B, L, D)
    xin = torch.cat([x, x]) if guided else x
    ehs = torch.cat([uncond, torch.randn(B, L, D)]) if guided else torch.randn(B, L, D)
    t = torch.tensor(500)
    with Regional(unet, emb, w) as reg:
        out = _call(unet, xin, t, ehs)
    assert reg.calls == 1 and out.shape == xin.shape
    cond = out[B:] if guided else out
    for b in range(B):
        for r in range(R):
            ref = _call(unet, x[b:b + 1], t, emb[b, r:r + 1])[0]  # (C, h, w)
            m = region[b] == r
            assert torch.allclose(cond[b][:, m], ref[:, m], atol=1e-5)
    if guided:  # the unconditional half is untouched
        assert torch.allclose(out[:B], _call(unet, x, t, uncond), atol=1e-5)
    # hooks are gone afterwards
    plain = _call(unet, xin, t, ehs)
    assert not torch.allclose(plain, out)


def test_wrong_batch_and_width_are_clear_errors(unet) -> None:  # noqa: ANN001
    D = unet.config.cross_attention_dim
    h = unet.config.sample_size
    with pytest.raises(ValueError, match="disagree"):
        Regional(unet, torch.zeros(2, 2, 3, D), torch.ones(2, 3, h, h))
    x = torch.zeros(3, unet.config.in_channels, h, h)
    with Regional(unet, torch.zeros(2, 2, 3, D), torch.ones(2, 2, h, h) / 2), \
            pytest.raises(RuntimeError, match="set up for 2 images"):
        _call(unet, x, torch.tensor(1), torch.zeros(3, 3, D))
    x = torch.zeros(2, unet.config.in_channels, h, h)
    with Regional(unet, torch.zeros(2, 2, 3, D + 1), torch.ones(2, 2, h, h) / 2), \
            pytest.raises(RuntimeError, match="width"):
        _call(unet, x, torch.tensor(1), torch.zeros(2, 3, D))


def test_mix_weights_sum_to_one_and_share_the_background() -> None:
    m = torch.zeros(2, 4, 4)
    m[0, 0, 0] = 1
    m[1, 3, 3] = 1
    w = mix_weights(m)  # (2, 4, 4)
    assert torch.allclose(w.sum(0), torch.ones(4, 4))
    assert w[0, 0, 0] > 0.99 and w[1, 3, 3] > 0.99
    assert torch.allclose(w[:, 1, 2], torch.full((2,), 0.5))  # background: every region's prompt alike


# -- the engine on the shipped embedded model -------------------------------------------------------
@pytest.fixture(scope="module")
def world_ctx(tmp_path_factory):  # noqa: ANN001, ANN201
    cache: dict = {}
    work = tmp_path_factory.mktemp("regional")

    def load(ref: str, key: str, build):  # noqa: ANN001, ANN202
        if (ref, key) not in cache:
            cache[(ref, key)] = build(ModelSpec(ref=ref, kind="diffusers", path=Path(ref)))
        return cache[(ref, key)]

    return EngineContext(work_dir=work, load_model=load)


def _run(ctx, **kw):  # noqa: ANN001, ANN003, ANN202
    base = {"model": str(default_model_dir()), "steps": 20, "seed": 11, "preview_every": 0}
    return T2IEngine().run(T2IParams(**(base | kw)), ctx)


def test_engine_draws_each_object_in_its_region_and_records_the_plan(world_ctx) -> None:  # noqa: ANN001
    from engines.world.objjudge import load_objjudge, read_scenes
    from engines.world.paths import judge_dir
    from engines.world.eval import pair_found
    from PIL import Image

    torch.set_num_threads(2)
    res = _run(world_ctx, prompt="Please show an orange circle placed to the right of a green square", batch_size=4)
    assert res.meta["layout"] == "auto" and res.meta["regional_images"] == 4
    plans = [a.meta["layout"] for a in res.artifacts]
    assert all(len(p["regions"]) == 2 and p["parsed"]["relations"] == [[0, "right of", 1]] for p in plans)
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(a.path).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
                     for a in res.artifacts])  # (4, 3, 64, 64)
    reads = read_scenes(load_objjudge(judge_dir()), x)
    ok = [pair_found(d, {"shape": "circle", "color": "orange"}, {"shape": "square", "color": "green"}, "right of")
          for _, d in reads]
    # measured ~0.9 on held-out wording (docs/embedded-world.md); the model alone scores 0 here
    assert sum(ok) >= 2, reads
    again = _run(world_ctx, prompt="Please show an orange circle placed to the right of a green square", batch_size=4)
    assert [a.path.read_bytes() for a in again.artifacts] == [a.path.read_bytes() for a in res.artifacts]


def test_layout_off_and_prompts_without_shapes_go_through_as_typed(world_ctx) -> None:  # noqa: ANN001
    res = _run(world_ctx, prompt="an orange circle and a green square", layout="off", steps=4)
    assert res.meta["layout"] == "off" and "layout" not in res.artifacts[0].meta
    res = _run(world_ctx, prompt="a photo of a cat", steps=4)
    assert res.meta["regional_images"] == 0 and res.artifacts[0].meta["layout"]["prompt"] == "a photo of a cat"
    res = _run(world_ctx, prompt="a star in red, please", steps=4)
    assert res.meta["regional_images"] == 0 and res.artifacts[0].meta["layout"]["prompt"] == "a red star"


def test_layout_runs_with_clockwork(world_ctx) -> None:  # noqa: ANN001
    res = _run(world_ctx, prompt="a pink heart above a blue ring", clockwork="adaptor", steps=8, batch_size=2)
    assert res.meta["regional_images"] == 2 and res.meta["clockwork_cheap_steps"] > 0


def test_regional_images_take_the_profiles_gentler_clock(world_ctx, tmp_path) -> None:  # noqa: ANN001
    """The clock that keeps single objects costs binding; a profile's ``layout`` sub-setting
    gives images drawn region by region their own (warm-up, period), and each image records
    the clock it ran under."""
    import json
    import os
    import shutil

    from engines.pipelines import load_pipeline
    from engines.t2i.metadata import read_png_metadata

    model = tmp_path / "sd"
    shutil.copytree(default_model_dir(), model)
    loaded = load_pipeline(ModelSpec(ref=str(model), kind="diffusers", path=model), "cpu", "float32")
    prof = {"model_hash": loaded.model_hash, "choices": {"DPM++ 2M": {"20": {"adaptor": {
        "period": 5, "depth": 0, "adaptor": "clockwork_adaptor_d0.safetensors",
        "layout": {"period": 3, "depth": 0, "warmup": 5, "adaptor": "clockwork_adaptor_d0.safetensors"}}}}}}
    (model / "clockwork_profile.json").write_text(json.dumps(prof))
    one = _run(world_ctx, model=str(model), prompt="a red star", clockwork="adaptor")
    assert one.meta["clockwork_cheap_steps"] == 16 and one.meta["clockwork_regional_images"] == 0
    assert read_png_metadata(one.artifacts[0].path)["studio"]["clockwork"]["period"] == 5  # (same work dir)
    two = _run(world_ctx, model=str(model), prompt="a red star left of a blue ring", clockwork="adaptor")
    # full at calls 0-4 (warm-up), then every 3rd: 5, 8, 11, 14, 17
    assert two.meta["clockwork_cheap_steps"] == 10 and two.meta["clockwork_regional_images"] == 1
    assert two.meta["clockwork_regional"] == {"mode": "adaptor", "period": 3, "depth": 0, "warmup": 5}
    assert read_png_metadata(two.artifacts[0].path)["studio"]["clockwork"] == {
        "mode": "adaptor", "period": 3, "depth": 0, "warmup": 5}
    fixed = _run(world_ctx, model=str(model), prompt="a red star left of a blue ring", clockwork="adaptor",
                 clock_period=4)
    assert fixed.meta["clockwork_cheap_steps"] == 15 and "clockwork_regional" not in fixed.meta  # the user's period
    # auto (the default) needs a setting measured to hold single objects ("holding")
    assert _run(world_ctx, model=str(model), prompt="a red star").meta["clockwork"] is None
    prof["choices"]["DPM++ 2M"]["20"]["adaptor"]["holding"] = {"period": 4, "depth": 0, "warmup": 0,
                                                                "adaptor": "clockwork_adaptor_d0.safetensors"}
    (model / "clockwork_profile.json").write_text(json.dumps(prof))  # read again by the loaded model
    os.utime(model / "clockwork_profile.json", ns=(2, 2))  # (a new mtime even on a coarse clock)
    auto = _run(world_ctx, model=str(model), prompt="a red star")
    assert auto.meta["clockwork"] == {"mode": "adaptor", "period": 4, "depth": 0, "warmup": 0}
    assert auto.meta["clockwork_cheap_steps"] == 15 and auto.meta["clockwork_regional_images"] == 0
    assert read_png_metadata(auto.artifacts[0].path)["studio"]["clockwork"]["auto"] is True
    assert "Clockwork: auto/4" in read_png_metadata(auto.artifacts[0].path)["parameters"]
    # ... and images drawn region by region the layout setting
    auto2 = _run(world_ctx, model=str(model), prompt="a red star left of a blue ring")
    assert auto2.meta["clockwork_regional"] == {"mode": "adaptor", "period": 3, "depth": 0, "warmup": 5}
    assert auto2.meta["clockwork_cheap_steps"] == 10 and auto2.meta["clockwork_regional_images"] == 1
    # ... and only where the profile measured one: fewer steps than any measured count, or a
    # profile whose quality-holding setting is "in full", run without Clockwork and say why
    short = _run(world_ctx, model=str(model), prompt="a red star", steps=8)
    assert short.meta["clockwork"] is None and short.meta["clockwork_cheap_steps"] == 0
    assert "DPM++ 2M at 8 steps" in short.meta["clockwork_auto_off"]
    # a layout setting "in full" runs regional images without reuse; a holding one, single ones
    prof["choices"]["DPM++ 2M"]["20"]["adaptor"]["layout"] = {"period": 1, "depth": 1, "warmup": 0}
    (model / "clockwork_profile.json").write_text(json.dumps(prof))
    os.utime(model / "clockwork_profile.json", ns=(3, 3))
    two_full = _run(world_ctx, model=str(model), prompt="a red star left of a blue ring")
    assert two_full.meta["clockwork_cheap_steps"] == 0 and two_full.meta["clockwork_regional"]["period"] == 1
    prof["choices"]["DPM++ 2M"]["20"]["adaptor"]["holding"] = {"period": 1, "depth": 1, "warmup": 0}
    (model / "clockwork_profile.json").write_text(json.dumps(prof))
    os.utime(model / "clockwork_profile.json", ns=(4, 4))
    full = _run(world_ctx, model=str(model), prompt="a red star")
    assert full.meta["clockwork_cheap_steps"] == 0 and "no quality-holding setting" in full.meta["clockwork_auto_off"]
    big = _run(world_ctx, model=str(model), prompt="a red star", steps=2, width=128, height=128)
    assert big.meta["clockwork"] is None and "native size" in big.meta["clockwork_auto_off"]
    off = _run(world_ctx, model=str(model), prompt="a red star", clockwork="off")
    assert off.meta["clockwork"] is None and "clockwork_auto_off" not in off.meta


def test_auto_clockwork_needs_a_measured_profile(tmp_path, world_ctx) -> None:  # noqa: ANN001
    import shutil

    model = tmp_path / "sd"
    shutil.copytree(default_model_dir(), model)
    (model / "clockwork_profile.json").unlink()
    res = _run(world_ctx, model=str(model), prompt="a red star", steps=4)
    assert res.meta["clockwork"] is None and res.meta["clockwork_cheap_steps"] == 0
    assert "no measured Clockwork profile" in res.meta["clockwork_auto_off"]


def test_models_without_a_grammar_ignore_layout(tiny_model, world_ctx) -> None:  # noqa: ANN001
    res = T2IEngine().run(T2IParams(model=str(tiny_model), prompt="a red square and a blue circle", steps=2,
                                    seed=1, preview_every=0), world_ctx)
    assert res.meta["layout"] == "off" and res.meta["regional_images"] == 0


def test_jobs_with_adapters_keep_the_prompt_as_typed(world_ctx) -> None:  # noqa: ANN001
    """An adapter's own words (a personal subject's name) would be dropped by a reworded prompt."""
    from engines.pipelines import load_pipeline

    ref = str(default_model_dir())
    loaded = world_ctx.model(ref, "t2i", lambda spec: load_pipeline(spec, world_ctx.device, world_ctx.dtype))
    p = T2IParams(model=ref, prompt="a zorb next to a red star", adapters=[{"adapter": "zorb.safetensors"}])
    assert not T2IEngine()._plan(loaded, p, world_ctx).layout
    assert T2IEngine()._plan(loaded, p.model_copy(update={"adapters": []}), world_ctx).layout


def test_layout_param_is_validated() -> None:
    from pydantic import ValidationError

    for bad in ("regional", "", None, 1, "AUTO"):
        with pytest.raises(ValidationError):
            T2IParams(model="embedded", prompt="a red star", layout=bad)
    assert T2IParams(model="embedded", prompt="a red star").layout == "auto"


def test_auto_runs_regional_images_in_full_without_a_measured_layout_setting(tmp_path, world_ctx) -> None:  # noqa: ANN001
    import json
    import shutil

    from engines.pipelines import load_pipeline

    model = tmp_path / "sd"
    shutil.copytree(default_model_dir(), model)
    loaded = load_pipeline(ModelSpec(ref=str(model), kind="diffusers", path=model), "cpu", "float32")
    (model / "clockwork_profile.json").write_text(json.dumps({"model_hash": loaded.model_hash, "choices": {
        "DPM++ 2M": {"20": {"adaptor": {"period": 5, "depth": 0, "adaptor": "clockwork_adaptor_d0.safetensors",
                                        "holding": {"period": 3, "depth": 0,
                                                    "adaptor": "clockwork_adaptor_d0.safetensors"}}}}}}))
    one = _run(world_ctx, model=str(model), prompt="a red star")
    assert one.meta["clockwork_cheap_steps"] == 13
    two = _run(world_ctx, model=str(model), prompt="a red star left of a blue ring")
    assert two.meta["clockwork_cheap_steps"] == 0 and two.meta["clockwork_regional"]["period"] == 1

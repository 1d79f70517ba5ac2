"""The t2i engine on a tiny real diffusers pipeline (random weights, saved to disk)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from engines.base import Cancelled, EngineContext, EngineError, ModelSpec
from engines.t2i.engine import T2IEngine
from engines.t2i.metadata import read_png_metadata
from engines.t2i.params import SCHEDULERS, T2IParams


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Path:
    return tiny_model


def make_ctx(tmp_path: Path, cache: dict, **kw) -> EngineContext:  # noqa: ANN003
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)

    def load(ref: str, key: str, build):  # noqa: ANN001, ANN202
        if (ref, key) not in cache:
            cache[(ref, key)] = build(ModelSpec(ref=ref, kind="diffusers", path=Path(ref)))
        return cache[(ref, key)]

    return EngineContext(work_dir=work, load_model=load, **kw)


@pytest.fixture(scope="module")
def cache() -> dict:
    return {}


def params(tiny: Path, **kw) -> T2IParams:  # noqa: ANN003
    base = {"model": str(tiny), "prompt": "a red star on a blue background", "steps": 4, "seed": 7, "preview_every": 0}
    return T2IParams(**(base | kw))


def test_generates_batches_with_provenance(tiny, cache, tmp_path) -> None:  # noqa: ANN001
    events = []
    res = T2IEngine().run(params(tiny, batch_size=2, batch_count=2, negative_prompt="blurry", preview_every=2),
                          make_ctx(tmp_path, cache, report=events.append))
    assert len(res.artifacts) == 4
    seeds = [a.meta["seed"] for a in res.artifacts]
    assert seeds == [7, 8, 9, 10]
    meta = read_png_metadata(str(res.artifacts[1].path))
    text = meta["parameters"]
    assert text.startswith("a red star on a blue background\nNegative prompt: blurry\nSteps: 4, Sampler: DPM++ 2M")
    assert "Seed: 8" in text and "Size: 32x32" in text and "Model hash: " in text
    assert meta["studio"]["params"]["prompt"] == "a red star on a blue background"
    assert meta["studio"]["model"]["hash"] == res.meta["model_hash"]
    steps = [e.step for e in events if e.total == 8]
    assert steps == sorted(steps) and steps[-1] == 8
    assert any(e.preview is not None and Path(e.preview).is_file() for e in events)


def test_same_seed_is_byte_identical_and_random_seed_is_recorded(tiny, cache, tmp_path) -> None:  # noqa: ANN001
    a = T2IEngine().run(params(tiny, seed=123), make_ctx(tmp_path / "a", cache))
    b = T2IEngine().run(params(tiny, seed=123), make_ctx(tmp_path / "b", cache))
    assert a.artifacts[0].path.read_bytes() == b.artifacts[0].path.read_bytes()
    c = T2IEngine().run(params(tiny, seed=124), make_ctx(tmp_path / "c", cache))
    assert a.artifacts[0].path.read_bytes() != c.artifacts[0].path.read_bytes()
    r = T2IEngine().run(params(tiny, seed=-1), make_ctx(tmp_path / "r", cache))
    used = r.meta["seed"]
    assert 0 <= used < 2**32 and r.artifacts[0].meta["params"]["seed"] == used
    again = T2IEngine().run(params(tiny, seed=used), make_ctx(tmp_path / "r2", cache))
    assert again.artifacts[0].path.read_bytes() == r.artifacts[0].path.read_bytes()


def test_cancel_stops_within_one_step(tiny, cache, tmp_path) -> None:  # noqa: ANN001
    seen = []

    def cancelled() -> bool:
        return len(seen) >= 2

    ctx = make_ctx(tmp_path, cache, report=lambda e: seen.append(e.step) if e.total == 20 else None,
                   is_cancelled=cancelled)
    with pytest.raises(Cancelled):
        T2IEngine().run(params(tiny, steps=20), ctx)
    assert max(seen) <= 3


@pytest.mark.parametrize("scheduler", [s for s in SCHEDULERS])
def test_every_scheduler_runs(tiny, cache, tmp_path, scheduler) -> None:  # noqa: ANN001
    res = T2IEngine().run(params(tiny, steps=3, scheduler=scheduler, guidance_scale=1.5 if scheduler == "LCM" else 7),
                          make_ctx(tmp_path, cache))
    assert Image.open(res.artifacts[0].path).size == (32, 32)


def test_img2img_and_size_checks(tiny, cache, tmp_path) -> None:  # noqa: ANN001
    init = tmp_path / "init.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(init)
    res = T2IEngine().run(params(tiny, steps=10, init_image=str(init), strength=0.5, width=48, height=48),
                          make_ctx(tmp_path, cache, resolve_input=Path))
    assert Image.open(res.artifacts[0].path).size == (48, 48)
    assert res.meta["steps_total"] == 5
    with pytest.raises(ValueError, match="multiple of 8"):
        params(tiny, width=33)
    with pytest.raises(ValueError, match="strength only applies"):
        params(tiny, strength=0.3)


class BlockCalls:
    """Counts forward calls of the compute layers (Conv2d / Linear) inside the U-Net's low-res
    blocks (the ones Clockwork skips on cheap steps) and inside its high-res blocks (which must
    run every step), plus the U-Net calls themselves. Clockwork replaces a skipped block's
    ``forward``, so hooks on the block would still fire: only its inner layers tell the truth."""

    def __init__(self, unet) -> None:  # noqa: ANN001
        import torch

        leaf = (torch.nn.Conv2d, torch.nn.Linear)
        first_down = list(getattr(unet.down_blocks[0], "downsamplers", None) or [])
        low = first_down + list(unet.down_blocks[1:]) + [unet.mid_block] + list(unet.up_blocks[:-1])
        low_ids = {id(m) for blk in low for m in blk.modules()}
        high = [unet.conv_in, unet.time_embedding, unet.down_blocks[0], unet.up_blocks[-1], unet.conv_out]
        self.counts = {"low": 0, "high": 0, "unet": 0}
        self.handles = [unet.register_forward_pre_hook(lambda *_: self._hit("unet"))]
        for tag, blocks in (("low", low), ("high", high)):
            for blk in blocks:
                for m in blk.modules():
                    if isinstance(m, leaf) and (tag == "low" or id(m) not in low_ids):
                        self.handles.append(m.register_forward_hook(lambda *_, t=tag: self._hit(t)))

    def _hit(self, tag: str) -> None:
        self.counts[tag] += 1

    def take(self) -> dict[str, int]:
        out, self.counts = self.counts, {"low": 0, "high": 0, "unet": 0}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def test_clockwork_reuse_runs_cheap_steps_and_adaptor_needs_training(tiny, cache, tmp_path) -> None:  # noqa: ANN001
    base = T2IEngine().run(params(tiny, steps=8), make_ctx(tmp_path / "a", cache))
    loaded = next(v for (ref, _), v in cache.items() if ref == str(tiny) and hasattr(v, "pipe"))
    calls = BlockCalls(loaded.pipe.unet)
    try:
        T2IEngine().run(params(tiny, steps=8), make_ctx(tmp_path / "a2", cache))
        full = calls.take()
        cw = T2IEngine().run(params(tiny, steps=8, clockwork="reuse", clock_period=2), make_ctx(tmp_path / "b", cache))
        clock = calls.take()
    finally:
        calls.remove()
    assert cw.meta["clockwork_cheap_steps"] == 4
    assert "Clockwork: reuse/2" in cw.artifacts[0].meta["parameters"]
    # it really skipped work: the low-res blocks ran on 4 of the 8 U-Net calls, the high-res part on all 8
    assert full["unet"] == clock["unet"] == 8 and full["low"] > 0 and full["low"] % 8 == 0
    assert clock["low"] == full["low"] // 8 * 4, (full, clock)
    assert clock["high"] == full["high"] > 0, (full, clock)
    assert Image.open(base.artifacts[0].path).tobytes() != Image.open(cw.artifacts[0].path).tobytes()
    with pytest.raises(EngineError, match="no Clockwork adaptor"):
        T2IEngine().run(params(tiny, steps=4, clockwork="adaptor"), make_ctx(tmp_path / "c", cache))


def test_missing_model_is_a_clear_error(tmp_path) -> None:  # noqa: ANN001
    from engines.base import ModelNotFound

    with pytest.raises(ModelNotFound):
        T2IEngine().run(params(tmp_path / "nope"), make_ctx(tmp_path, {}))


def test_clockwork_adaptor_distils_and_is_used(tiny, cache, tmp_path) -> None:  # noqa: ANN001
    import shutil

    from engines.t2i import clockwork_train as ct
    from engines.pipelines.clockwork import adaptor_for, save_adaptor
    from engines.pipelines import load_pipeline
    from engines.t2i.engine import adaptor_path

    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    loaded = load_pipeline(ModelSpec("m", "diffusers", model), "cpu", "float32")
    traj = ct.collect(loaded.pipe, ["a red star", "a blue ring", "a green heart", "a big cross"], steps=4,
                      guidance=4.0, batch=2)
    assert len(traj) == 2 and traj[0]["r_out"].shape[:2] == (4, 4)  # [steps, B*2 (CFG)]
    ad = adaptor_for(loaded.pipe.unet, hidden=16)
    losses = ct.train(ad, traj, iters=60, lr=3e-3)
    assert sum(losses[-10:]) / 10 < ct.identity_loss(traj)  # beats plain reuse on its training data
    save_adaptor(ad, adaptor_path(loaded.spec), {"iters": 60})
    reuse = T2IEngine().run(params(model, steps=6, clockwork="reuse"), make_ctx(tmp_path / "r", {}))
    from engines.pipelines.clockwork import ClockworkAdaptor

    used = []  # the adaptor the engine loads predicts r_out on each cheap step, and only then
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, *_: used.append(1) if isinstance(m, ClockworkAdaptor) else None)
    try:
        adapt = T2IEngine().run(params(model, steps=6, clockwork="adaptor"), make_ctx(tmp_path / "a", {}))
    finally:
        hook.remove()
    assert adapt.meta["clockwork_cheap_steps"] == 3 and len(used) == 3
    assert Image.open(adapt.artifacts[0].path).tobytes() != Image.open(reuse.artifacts[0].path).tobytes()


def test_reproduce_through_the_studio_is_byte_identical(services, tiny) -> None:  # noqa: ANN001
    from studio.wiring import build_runner

    runner = build_runner(services)
    job = services.jobs.submit("t2i", {"model": str(tiny), "prompt": "a star", "steps": 3, "seed": -1,
                                       "batch_size": 2, "preview_every": 0}, enqueue=False)
    assert runner.execute(job.id) == "completed"
    second = services.jobs.get(job.id).assets[1]
    again = services.jobs.reproduce(second.id)
    assert again.params["seed"] == second.meta["seed"] - 1  # the batch's resolved start seed
    assert runner.execute(again.id) == "completed"
    redo = services.jobs.get(again.id).assets[1]
    assert services.assets.path(redo.id).read_bytes() == services.assets.path(second.id).read_bytes()
    # a single-image job reproduces byte for byte, metadata included
    single = services.jobs.submit("t2i", {"model": str(tiny), "prompt": "a ring", "steps": 3, "preview_every": 0},
                                  enqueue=False)
    runner.execute(single.id)
    orig = services.jobs.get(single.id).assets[0]
    again = services.jobs.reproduce(orig.id)
    runner.execute(again.id)
    redo = services.jobs.get(again.id).assets[0]
    assert services.assets.path(redo.id).read_bytes() == services.assets.path(orig.id).read_bytes()


def test_sdxl_folder_picks_the_xl_pipeline_and_clockwork_works(tmp_path) -> None:  # noqa: ANN001
    from tests.tiny_sd import make_tiny_sdxl

    model = make_tiny_sdxl(tmp_path / "xl")
    cache: dict = {}
    res = T2IEngine().run(params(model, steps=4, scheduler="Euler a"), make_ctx(tmp_path / "a", cache))
    (loaded,) = cache.values()
    assert type(loaded.pipe).__name__ == "StableDiffusionXLPipeline"
    assert Image.open(res.artifacts[0].path).size == (32, 32)
    cw = T2IEngine().run(params(model, steps=4, clockwork="reuse"), make_ctx(tmp_path / "b", cache))
    assert cw.meta["clockwork_cheap_steps"] == 2


def test_choose_period_follows_the_measured_profile() -> None:
    from engines.pipelines.clockwork import choose_period

    prof = {"choices": {"DPM++ 2M": {"8": {"adaptor": {"period": 3}}, "20": {"adaptor": {"period": 4},
                                                                          "reuse": {"period": 2}}}}}
    assert choose_period(prof, "DPM++ 2M", 8, "adaptor") == 3
    assert choose_period(prof, "DPM++ 2M", 12, "adaptor") == 3  # largest measured count below
    assert choose_period(prof, "DPM++ 2M", 30, "adaptor") == 4
    assert choose_period(prof, "DPM++ 2M", 6, "adaptor") == 2  # never borrow from a longer schedule
    assert choose_period(prof, "DPM++ 2M", 8, "reuse") == 2  # reuse not measured at 8: default
    assert choose_period(prof, "Euler", 20, "adaptor") == 2  # other solver: default
    assert choose_period(None, "DPM++ 2M", 20, "adaptor") == 2
    bad = {"choices": {"DPM++ 2M": {"8": {"adaptor": {"period": 999}}}}}
    assert choose_period(bad, "DPM++ 2M", 8, "adaptor") == 2


def test_choose_setting_reads_depth_and_adaptor_file_and_refuses_paths() -> None:
    from engines.pipelines.clockwork import choose_setting

    prof = {"choices": {"DPM++ 2M": {"8": {"adaptor": {"period": 3, "adaptor": "cw_s8.safetensors"},
                                           "reuse": {"period": 2, "depth": 0}},
                                     "20": {"adaptor": {"period": 5, "adaptor": "../../etc/x.safetensors"}}}}}
    assert choose_setting(prof, "DPM++ 2M", 8, "adaptor") == {"period": 3, "depth": 1, "adaptor": "cw_s8.safetensors",
                                                              "warmup": 0}
    assert choose_setting(prof, "DPM++ 2M", 8, "reuse") == {"period": 2, "depth": 0, "adaptor": None, "warmup": 0}
    # a profile is a file beside the weights, but a name with a path in it is never followed
    assert choose_setting(prof, "DPM++ 2M", 20, "adaptor")["adaptor"] is None
    for bad in ("/abs.safetensors", ".hidden.safetensors", "a/b.safetensors", "x.bin", 3):
        p2 = {"choices": {"DPM++ 2M": {"8": {"adaptor": {"period": 2, "adaptor": bad}}}}}
        assert choose_setting(p2, "DPM++ 2M", 8, "adaptor")["adaptor"] is None
    assert choose_setting(None, "Euler", 8, "reuse") == {"period": None, "depth": 1, "adaptor": None, "warmup": 0}


def test_choose_setting_regional_takes_the_layout_sub_setting() -> None:
    from engines.pipelines.clockwork import choose_setting

    prof = {"choices": {"DPM++ 2M": {"20": {"adaptor": {"period": 5, "depth": 0, "adaptor": "d0.safetensors",
                                                        "layout": {"period": 3, "depth": 0, "warmup": 4,
                                                                   "adaptor": "d0.safetensors"}},
                                            "reuse": {"period": 4, "layout": {"period": 1}}}}}}
    assert choose_setting(prof, "DPM++ 2M", 20, "adaptor") == {"period": 5, "depth": 0, "adaptor": "d0.safetensors",
                                                               "warmup": 0}
    assert choose_setting(prof, "DPM++ 2M", 20, "adaptor", regional=True) == {
        "period": 3, "depth": 0, "adaptor": "d0.safetensors", "warmup": 4}
    assert choose_setting(prof, "DPM++ 2M", 25, "adaptor", regional=True)["warmup"] == 4  # borrowed from 20
    assert choose_setting(prof, "DPM++ 2M", 20, "reuse", regional=True)["period"] == 1  # regional: in full
    assert choose_setting(prof, "DPM++ 2M", 20, "reuse")["period"] == 4
    bad = {"choices": {"DPM++ 2M": {"20": {"adaptor": {"period": 5, "layout": {"warmup": 99, "period": 0}}}}}}
    assert choose_setting(bad, "DPM++ 2M", 20, "adaptor", regional=True) == {
        "period": None, "depth": 1, "adaptor": None, "warmup": 0}


def test_holding_setting_exists_only_where_one_was_measured() -> None:
    from engines.pipelines.clockwork import holding_setting

    prof = {"choices": {"DPM++ 2M": {"8": {"adaptor": {"period": 4, "adaptor": "s8.safetensors",
                                                       "layout": {"period": 3}}},
                                     "20": {"adaptor": {"period": 5, "depth": 0, "adaptor": "d0.safetensors",
                                                        "holding": {"period": 3, "depth": 0,
                                                                    "adaptor": "d0.safetensors"},
                                                        "layout": {"period": 2, "depth": 0,
                                                                   "adaptor": "d0.safetensors"}},
                                            "reuse": {"period": 4, "holding": {"period": 1}}}}}}
    assert holding_setting(prof, "DPM++ 2M", 20, "adaptor") == {"period": 3, "depth": 0, "adaptor": "d0.safetensors",
                                                                "warmup": 0}
    assert holding_setting(prof, "DPM++ 2M", 20, "adaptor", regional=True)["period"] == 2
    assert holding_setting(prof, "DPM++ 2M", 30, "adaptor")["period"] == 3  # more steps borrow from 20
    assert holding_setting(prof, "DPM++ 2M", 12, "adaptor") is None  # 8's entry holds nothing for one object
    assert holding_setting(prof, "DPM++ 2M", 12, "adaptor", regional=True)["period"] == 3
    assert holding_setting(prof, "DPM++ 2M", 4, "adaptor") is None  # nothing measured at ≤ 4 steps
    assert holding_setting(prof, "DPM++ 2M", 20, "reuse")["period"] == 1  # "in full": auto runs without
    assert holding_setting(prof, "Euler", 20, "adaptor") is None and holding_setting(None, "DPM++ 2M", 20, "reuse") is None
    hostile = {"choices": {"DPM++ 2M": {"20": {"adaptor": {"holding": {"period": "3; rm", "adaptor": "../x.safetensors"}}}}}}
    assert holding_setting(hostile, "DPM++ 2M", 20, "adaptor") == {"period": None, "depth": 1, "adaptor": None,
                                                                   "warmup": 0}


def test_clock_warmup_runs_the_first_steps_in_full() -> None:
    from diffusers import UNet2DConditionModel

    from engines.pipelines.clockwork import Clockwork

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8).eval()
    x, ehs = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16)
    with torch.no_grad(), Clockwork(unet, period=3, mode="reuse", warmup=4) as cw:
        for step in range(10):
            unet(x, 999 - step, encoder_hidden_states=ehs)
    # steps 0-3 warm-up, then full at 4 and 7, cheap at 5, 6, 8, 9
    assert (cw.full_steps, cw.cheap_steps) == (6, 4)
    with pytest.raises(ValueError, match="warmup"):
        Clockwork(unet, period=2, warmup=-1)


def test_empty_clock_period_uses_the_profile_of_these_weights(tiny, tmp_path) -> None:  # noqa: ANN001
    import json
    import shutil

    from engines.t2i.engine import profile_path

    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    cache: dict = {}
    run = T2IEngine().run(params(model, steps=8, clockwork="reuse"), make_ctx(tmp_path / "a", cache))
    assert run.meta["clockwork_cheap_steps"] == 4 and run.artifacts[0].meta["params"]["clock_period"] == 2
    h = next(v for v in cache.values() if hasattr(v, "pipe")).model_hash
    spec = ModelSpec("m", "diffusers", model)
    profile_path(spec).write_text(json.dumps({"model_hash": "other weights", "choices": {
        "DPM++ 2M": {"8": {"reuse": {"period": 4}}}}}))
    run = T2IEngine().run(params(model, steps=8, clockwork="reuse"), make_ctx(tmp_path / "b", {}))
    assert run.meta["clockwork_cheap_steps"] == 4  # a profile made for other weights is ignored
    profile_path(spec).write_text(json.dumps({"model_hash": h, "choices": {
        "DPM++ 2M": {"8": {"reuse": {"period": 4}}}}}))
    run = T2IEngine().run(params(model, steps=8, clockwork="reuse"), make_ctx(tmp_path / "c", {}))
    assert run.meta["clockwork_cheap_steps"] == 6 and "Clockwork: reuse/4" in run.artifacts[0].meta["parameters"]
    run = T2IEngine().run(params(model, steps=8, clockwork="reuse", clock_period=2), make_ctx(tmp_path / "d", {}))
    assert run.meta["clockwork_cheap_steps"] == 4  # an explicit period wins
    assert run.meta["clockwork_cut_depth"] == 1


def test_profile_picks_the_cut_and_the_adaptor_file_per_step_count(tiny, tmp_path) -> None:  # noqa: ANN001
    """A model can carry one adaptor per step count (and cut); the profile says which to use."""
    import json
    import shutil

    from engines.pipelines import load_pipeline
    from engines.pipelines.clockwork import ClockworkAdaptor, adaptor_for, save_adaptor
    from engines.t2i.engine import adaptor_path, profile_path

    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    spec = ModelSpec("m", "diffusers", model)
    loaded = load_pipeline(spec, "cpu", "float32")
    save_adaptor(adaptor_for(loaded.pipe.unet, hidden=8, depth=1), adaptor_path(spec))
    save_adaptor(adaptor_for(loaded.pipe.unet, hidden=8, depth=0), model / "cw_s8.safetensors")
    profile_path(spec).write_text(json.dumps({"model_hash": loaded.model_hash, "choices": {"DPM++ 2M": {
        "8": {"adaptor": {"period": 3, "adaptor": "cw_s8.safetensors"}, "reuse": {"period": 2, "depth": 0}},
        "12": {"adaptor": {"period": 2, "adaptor": "missing.safetensors"}}}}}))
    seen: list[int] = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, *_: seen.append(m.config["depth"]) if isinstance(m, ClockworkAdaptor) else None)
    try:
        cache: dict = {}
        run = T2IEngine().run(params(model, steps=8, clockwork="adaptor"), make_ctx(tmp_path / "a", cache))
        assert run.meta["clockwork_cheap_steps"] == 5 and run.meta["clockwork_cut_depth"] == 0
        assert seen and set(seen) == {0}  # the step count's own adaptor
        seen.clear()
        run = T2IEngine().run(params(model, steps=12, clockwork="adaptor"), make_ctx(tmp_path / "b", cache))
        assert run.meta["clockwork_cut_depth"] == 1 and set(seen) == {1}  # missing file: the default one
    finally:
        hook.remove()
    run = T2IEngine().run(params(model, steps=8, clockwork="reuse"), make_ctx(tmp_path / "c", cache))
    assert run.meta["clockwork_cut_depth"] == 0 and run.meta["clockwork_cheap_steps"] == 4


def test_deeper_cut_skips_only_the_deeper_blocks(tiny, cache) -> None:  # noqa: ANN001
    from engines.pipelines import load_pipeline
    from engines.pipelines.clockwork import Clockwork

    unet = load_pipeline(ModelSpec("m", "diffusers", tiny), "cpu", "float32").pipe.unet
    assert len(unet.down_blocks) == 3
    with pytest.raises(ValueError, match="depth 3"):
        Clockwork(unet, 2, depth=3)
    ran: list[str] = []
    hooks = [b.register_forward_hook(lambda m, *_, n=n: ran.append(n)) for n, b in
             [("up1", unet.up_blocks[-2].resnets[0]), ("up0", unet.up_blocks[-3].resnets[0])]]
    x, e = torch.randn(2, unet.config.in_channels, 8, 8), torch.randn(2, 5, unet.config.cross_attention_dim)
    with torch.no_grad(), Clockwork(unet, 4, depth=2) as cw:
        for t in (900, 800, 700, 600):
            unet(x, t, encoder_hidden_states=e)
    for h in hooks:
        h.remove()
    assert cw.full_steps == 1 and cw.cheap_steps == 3
    assert ran.count("up1") == 4  # level 1 runs every step at depth 2
    assert ran.count("up0") == 1  # the deeper level only on the full step


def test_chain_training_unrolls_the_adaptor(tiny) -> None:  # noqa: ANN001
    from engines.pipelines import load_pipeline
    from engines.t2i import clockwork_train as ct
    from engines.pipelines.clockwork import adaptor_for

    loaded = load_pipeline(ModelSpec("m", "diffusers", tiny), "cpu", "float32")
    traj = ct.collect(loaded.pipe, ["a red star", "a blue ring"], steps=6, guidance=4.0, batch=2)
    calls = []
    ad = adaptor_for(loaded.pipe.unet, hidden=8)
    h = ad.register_forward_hook(lambda *_: calls.append(1))
    losses = ct.train(ad, traj, iters=10, lr=1e-3, chain=3, seed=1)
    h.remove()
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert len(calls) > 10  # some batches unrolled more than one cheap step
    again = ct.train(adaptor_for(loaded.pipe.unet, hidden=8), traj, iters=10, lr=1e-3, chain=3, seed=1)
    assert len(again) == 10


def test_depth_zero_cut_recomputes_only_the_top_layer_and_matches_deepcache_branch_0(tiny) -> None:  # noqa: ANN001
    """Depth 0 is the cheapest cut: conv_in, the last layer of the last up block and the head.
    Training-free, it is exactly DeepCache's branch 0 (same layers cached, same image)."""
    from DeepCache import DeepCacheSDHelper

    from engines.pipelines import load_pipeline
    from engines.pipelines.clockwork import Clockwork, adaptor_for

    pipe = load_pipeline(ModelSpec("m", "diffusers", tiny), "cpu", "float32").pipe
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    ran: list[str] = []
    # leaf layers: a skipped module's own hooks still fire (only its forward is replaced)
    named = [("last", unet.up_blocks[-1].resnets[-1].conv1), ("top0", unet.up_blocks[-1].resnets[0].conv1),
             ("down0", unet.down_blocks[0].resnets[0].conv1), ("conv_in", unet.conv_in)]
    hooks = [m.register_forward_hook(lambda *_, n=n: ran.append(n)) for n, m in named]

    def image() -> torch.Tensor:
        return pipe("a red star", num_inference_steps=6, guidance_scale=4.0, height=32, width=32,
                    generator=torch.Generator().manual_seed(3), output_type="latent").images

    with torch.no_grad():
        with Clockwork(unet, 3, "reuse", depth=0) as cw:
            a = image()
        for h in hooks:
            h.remove()
        h = DeepCacheSDHelper(pipe=pipe)
        h.set_params(cache_interval=3, cache_branch_id=0)
        h.enable()
        try:
            b = image()
        finally:
            h.disable()
        base = image()
        ad = adaptor_for(unet, hidden=8, depth=0)
        assert ad.config["depth"] == 0 and ad.config["c_in"] == unet.conv_in.out_channels
        with Clockwork(unet, 3, "adaptor", ad) as cwa:  # a fresh adaptor starts as plain reuse
            c = image()
    assert (cw.full_steps, cw.cheap_steps) == (2, 4) and (cwa.full_steps, cwa.cheap_steps) == (2, 4)
    assert ran.count("last") == ran.count("conv_in") == 6
    assert ran.count("top0") == ran.count("down0") == 2
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, base)
    # distillation at depth 0: r_in is conv_in's full-resolution output
    from engines.t2i import clockwork_train as ct

    traj = ct.collect(pipe, ["a red star", "a blue ring"], steps=4, guidance=4.0, batch=2, depth=0)
    c0 = unet.conv_in.out_channels
    r_in, r_out = traj[0]["r_in"], traj[0]["r_out"]  # [steps, CFG batch, C, h, w], both at full res
    assert r_in.shape[:3] == (4, 4, c0) and r_out.shape[:3] == (4, 4, ad.config["c_out"])
    assert r_in.shape[-2:] == r_out.shape[-2:]
    losses = ct.train(ad, traj, iters=40, lr=3e-3, chain=2)
    assert sum(losses[-10:]) / 10 < ct.identity_loss(traj)


def test_depth_zero_adaptor_on_a_last_block_with_attention(tmp_path) -> None:  # noqa: ANN001
    """SD's last up block has attentions after its resnets: the cut caches the layer before the
    last resnet (an attention, whose output is a tuple) and the adaptor must keep that form."""
    from diffusers import UNet2DConditionModel

    from engines.pipelines.clockwork import Clockwork, adaptor_for, load_adaptor, r_out_block, save_adaptor

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8).eval()
    assert r_out_block(unet, 0) is unet.up_blocks[-1].attentions[1]  # resnet0, attn0, resnet1, attn1 | resnet2
    ad = adaptor_for(unet, hidden=8, depth=0)
    with torch.no_grad():
        for p in ad.up.parameters():
            p.normal_(0, 0.1)  # a non-identity adaptor, so its output really flows on
    save_adaptor(ad, tmp_path / "a.safetensors")
    ad = load_adaptor(tmp_path / "a.safetensors")
    x, e = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16)
    ran: list[int] = []
    hook = unet.up_blocks[-1].attentions[0].proj_in.register_forward_hook(lambda *_: ran.append(1))
    with torch.no_grad():
        ref = [unet(x, t, encoder_hidden_states=e).sample for t in (900, 800)]
        with Clockwork(unet, 2, "adaptor", ad) as cw:
            out = [unet(x, t, encoder_hidden_states=e).sample for t in (900, 800)]
    hook.remove()
    assert (cw.full_steps, cw.cheap_steps) == (1, 1) and len(ran) == 3  # 2 reference calls + 1 full step
    assert torch.equal(out[0], ref[0]) and out[1].shape == ref[1].shape and not torch.equal(out[1], ref[1])


@pytest.mark.parametrize("depth", [0, 1])
def test_eps_loss_runs_the_layers_after_the_cut_exactly(tiny, depth) -> None:  # noqa: ANN001
    """The ε term is only honest if the frozen tail turns the teacher's own r_out into the
    teacher's own ε; training with it must then lower the guided ε error below plain reuse."""
    from engines.pipelines import load_pipeline
    from engines.t2i import clockwork_train as ct
    from engines.pipelines.clockwork import adaptor_for

    pipe = load_pipeline(ModelSpec("m", "diffusers", tiny), "cpu", "float32").pipe
    pipe.set_progress_bar_config(disable=True)
    traj = ct.collect(pipe, ["a red star", "a blue ring"], steps=5, guidance=4.0, batch=2, depth=depth, tail=True)
    tr = traj[0]
    tail = ct.Tail(pipe.unet, depth)
    skips = [tr[f"skip{k}"][2].float() for k in range(len(pipe.unet.up_blocks[-1].resnets))]
    with torch.no_grad():
        eps = tail(tr["r_out"][2].float(), skips, tr["emb"][2])
    assert torch.allclose(eps, tr["eps"][2], atol=2e-2), (eps - tr["eps"][2]).abs().max()  # fp16-stored inputs

    def guided_err(est_fn) -> float:  # noqa: ANN001
        tot = 0.0
        with torch.no_grad():
            for s in range(1, 5):
                sk = [tr[f"skip{k}"][s].float() for k in range(len(skips))]
                e = tail(est_fn(s), sk, tr["emb"][s]) - tr["eps"][s]
                tot += float(ct._guided(e, 4, 4.0).pow(2).mean())
        return tot

    ad = adaptor_for(pipe.unet, hidden=16, depth=depth)
    ct.train(ad, traj, iters=80, lr=3e-3, tail=tail, eps_weight=1.0, seed=0)
    assert all(p.requires_grad for p in pipe.unet.parameters())  # the tail is unfrozen afterwards
    reuse = guided_err(lambda s: tr["r_out"][s - 1].float())
    learned = guided_err(lambda s: ad(tr["r_in"][s], tr["r_out"][s - 1].float(), tr["temb"][s], tr["text"][s]))
    assert learned < reuse, (learned, reuse)
    with pytest.raises(ValueError, match="tail=True"):
        ct.train(adaptor_for(pipe.unet, hidden=8, depth=depth),
                 ct.collect(pipe, ["a red star"], steps=3, guidance=4.0, batch=1, depth=depth),
                 iters=1, tail=tail)

"""personalize: photo checks (real photos and crafted attacks), Hollowed-Net exactness and
transfer, the hollowed loop never running the removed blocks, resume reusing pre-computed
tensors, cancel, prior-preservation cache — on tiny real diffusers models."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engines.base import Cancelled, EngineContext, EngineError, ModelSpec
from engines.personalize.engine import PersonalizeEngine
from engines.personalize.params import PersonalizeParams
from engines.personalize.photos import check_photos, iter_sources

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # noqa: ANN201
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core box spin ~30× slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:  # noqa: ANN003
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_bomb(w: int, h: int) -> bytes:
    """A valid-looking PNG claiming w×h pixels with a tiny body (decoding it would take GBs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def real() -> dict[str, Image.Image]:
    return {n: Image.open(PHOTOS / f"{n}.jpg").convert("RGB") for n in ("astronaut", "chelsea", "coffee")}


def test_real_photos_get_a_verdict_each(real) -> None:  # noqa: ANN001
    cat = real["chelsea"]  # 256×170
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: must be rotated 90° to view
    rgba = real["coffee"].convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:, :40, 3] = 0  # a transparent strip
    sixteen = Image.fromarray((np.asarray(real["astronaut"].convert("L"), np.uint16) * 257), "I;16")
    jpeg = _bytes(real["astronaut"], "JPEG", quality=90)
    sources = [
        ("astronaut.jpg", (PHOTOS / "astronaut.jpg").read_bytes()),
        ("cat-rotated.jpg", _bytes(cat, "JPEG", exif=exif)),
        ("coffee-alpha.png", _bytes(Image.fromarray(a, "RGBA"), "PNG")),
        ("cat-cmyk.jpg", _bytes(cat.convert("CMYK"), "JPEG")),
        ("astro-16bit.png", _bytes(sixteen, "PNG")),
        ("astronaut-again.png", _bytes(Image.open(PHOTOS / "astronaut.jpg"), "PNG")),  # same pixels, other file
        ("tiny.png", _bytes(real["coffee"].resize((12, 8)), "PNG")),
        ("notes.jpg", b"this is not an image at all"),
        ("truncated.jpg", jpeg[: len(jpeg) // 2]),
        ("bomb.png", _png_header_bomb(100_000, 100_000)),
        ("too-big.jpg", "file too large (900 MB)"),  # what iter_sources reports for oversized files
    ]
    checked = check_photos(sources, resolution=64)
    v = {x.name: x for x in checked.verdicts}
    assert len(checked.verdicts) == len(sources) and all(x.message for x in checked.verdicts)
    assert v["astronaut.jpg"].ok and v["astronaut.jpg"].message == "ok"
    assert v["cat-rotated.jpg"].ok and "EXIF orientation 6 applied" in v["cat-rotated.jpg"].message
    assert v["cat-rotated.jpg"].size == (170, 256)  # portrait after rotation
    assert v["coffee-alpha.png"].ok and "transparency flattened" in v["coffee-alpha.png"].message
    assert v["cat-cmyk.jpg"].ok and "CMYK converted" in v["cat-cmyk.jpg"].message
    assert v["astro-16bit.png"].ok and "16-bit converted" in v["astro-16bit.png"].message
    assert not v["astronaut-again.png"].ok and "duplicate of astronaut.jpg" in v["astronaut-again.png"].message
    assert not v["tiny.png"].ok and "too small" in v["tiny.png"].message
    assert not v["notes.jpg"].ok and "not an image" in v["notes.jpg"].message
    assert not v["truncated.jpg"].ok and "truncated" in v["truncated.jpg"].message
    assert not v["bomb.png"].ok and "decompression bomb" in v["bomb.png"].message
    assert not v["too-big.jpg"].ok
    assert checked.good == 5 and all(im.size == (64, 64) and im.mode == "RGB" for im in checked.images)
    # the flattened strip is white, not black
    assert np.asarray(checked.images[2])[:, 0].mean() > 200


def test_smart_crop_follows_the_subject() -> None:
    im = Image.new("RGB", (300, 100), (240, 240, 240))
    im.paste((200, 20, 20), (240, 30, 290, 80))  # subject at the right
    (photo,) = check_photos([("wide.png", _bytes(im, "PNG"))], 32, "smart").images
    assert np.asarray(photo)[..., 1].min() < 100  # the red subject is inside the crop
    (centre,) = check_photos([("wide.png", _bytes(im, "PNG"))], 32, "center").images
    assert np.asarray(centre)[..., 1].min() > 200  # a centre crop misses it


def test_zip_and_folder_sources_are_read_safely(tmp_path: Path, real) -> None:  # noqa: ANN001
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("../../escape.jpg", _bytes(real["chelsea"], "JPEG"))  # zip slip attempt
        f.writestr("/abs/coffee.jpg", _bytes(real["coffee"], "JPEG"))
        f.writestr("bomb.png", b"\0" * (4 << 20))  # compresses ~1000:1
        f.writestr("__MACOSX/._x.jpg", b"junk")
        f.writestr("caption.txt", "a photo")
    got = dict(iter_sources(z))
    assert set(got) == {"../../escape.jpg", "abs/coffee.jpg", "bomb.png"}
    assert "zip bomb" in got["bomb.png"]
    assert not (tmp_path.parent / "escape.jpg").exists() and not list(tmp_path.parent.glob("escape*"))
    checked = check_photos(list(got.items()), 64)
    assert [x.ok for x in checked.verdicts] == [True, True, False]
    # a size cap per file, from the header and again while reading
    big = dict(iter_sources(z, max_file_bytes=1000))
    assert all(isinstance(v, str) and "too large" in v for v in big.values())
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 50)
    assert [isinstance(v, str) for _, v in iter_sources(bad)] == [True]


# -- the engine on a tiny model -----------------------------------------------------------------

def ctx_for(tmp: Path, state: Path | None, cancel_when=None, events: list | None = None, **extras) -> EngineContext:  # noqa: ANN001, ANN003
    work = tmp / "work"
    work.mkdir(parents=True, exist_ok=True)
    if state is not None:
        state.mkdir(parents=True, exist_ok=True)
    seen: list = events if events is not None else []
    return EngineContext(work_dir=work, resolve_model=lambda ref: ModelSpec(ref, "diffusers", Path(ref)),
                         resolve_input=Path, report=seen.append,
                         is_cancelled=lambda: cancel_when is not None and cancel_when(seen), state_dir=state,
                         extras=extras)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:  # noqa: ANN001
    """Five 48-px 'photos' of one subject (a two-tone blob) on varied backgrounds."""
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(5):
        im = Image.new("RGB", (48, 48), tuple(int(c) for c in rng.integers(0, 255, 3)))
        x, y = (int(v) for v in rng.integers(4, 20, 2))
        im.paste((20, 160, 150), (x, y, x + 24, y + 24))
        im.paste((250, 160, 40), (x + 6, y + 12, x + 18, y + 22))
        im.save(d / f"p{i}.png")
    return d


def params(model: Path, photos: Path, **kw) -> PersonalizeParams:  # noqa: ANN003
    base = {"model": str(model), "photos_zip": str(photos), "steps": 4, "samples_every": 0, "checkpoint_every": 2,
            "targets": ["to_q", "to_k", "to_v", "to_out.0"], "rank": 4, "learning_rate": 1e-2, "hollow": 1,
            "subject_word": "zq", "class_word": "blob"}
    return PersonalizeParams(**(base | kw))


def test_bad_params_are_clear() -> None:
    with pytest.raises(ValueError, match="photos"):
        PersonalizeParams(model="m")
    with pytest.raises(ValueError, match="not both"):
        PersonalizeParams(model="m", demo=True, photos_zip="x.zip")
    with pytest.raises(ValueError, match="subject_word"):
        PersonalizeParams(model="m", demo=True, subject_word="two words")


def test_refuses_with_fewer_than_three_good_photos_and_lists_each(tiny_model, tmp_path, real) -> None:  # noqa: ANN001
    d = tmp_path / "few"
    d.mkdir()
    real["astronaut"].save(d / "a.jpg")
    real["coffee"].save(d / "b.jpg")
    (d / "c.jpg").write_bytes(b"garbage")
    (d / "dup.jpg").write_bytes((d / "a.jpg").read_bytes())
    with pytest.raises(EngineError, match=r"at least 3 good photos, got 2 good photos, 2 skipped \(c.jpg: not an image"):
        PersonalizeEngine().run(params(tiny_model, d), ctx_for(tmp_path, tmp_path / "s"))
    # check_only: the same verdicts as a result, nothing trained
    r = PersonalizeEngine().run(params(tiny_model, d, check_only=True), ctx_for(tmp_path / "c", None))
    assert r.meta["good"] == 2 and not r.meta["enough"]
    assert {p["name"]: p["ok"] for p in r.meta["photos"]} == {"a.jpg": True, "b.jpg": True, "c.jpg": False,
                                                              "dup.jpg": False}
    assert [a.kind for a in r.artifacts] == ["json", "image"]


def _unet(model: Path):  # noqa: ANN202
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(model / "unet").eval()


def _inputs(unet, seed: int = 0):  # noqa: ANN001, ANN202
    c = unet.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)  # [2, C, h, w]
    ehs = torch.randn(2, 5, c.cross_attention_dim, generator=g)  # [2, L, D]
    return x, torch.tensor([10, 700]), ehs


@pytest.mark.parametrize("k", [1, 2])
def test_hollow_forward_with_stored_middle_equals_the_full_unet(tiny_model, k) -> None:  # noqa: ANN001
    from engines.personalize.hollow import boundary, hollow_forward, hollow_out

    unet = _unet(tiny_model)
    x, t, ehs = _inputs(unet)
    with torch.no_grad():
        full = unet(x, t, encoder_hidden_states=ehs).sample
        h = boundary(unet, k, x, t, ehs)
        hollow_out(unet, k)
        out = hollow_forward(unet, k, x, t, ehs, h)
    assert torch.equal(out, full)
    with pytest.raises(RuntimeError, match="removed by Hollowed-Net"):
        unet(x, t, encoder_hidden_states=ehs)


def test_hollowed_training_never_runs_the_removed_blocks(tiny_model) -> None:  # noqa: ANN001
    from diffusers import DDPMScheduler

    from engines.personalize.hollow import boundary, hollow_out, removed_names
    from engines.personalize.train import Batch, PersonalTrainer

    unet = _unet(tiny_model)
    blocks = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)} | {"mid_block": unet.mid_block} | \
        {f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)}
    calls = dict.fromkeys(blocks, 0)
    for name, b in blocks.items():
        b.register_forward_hook(lambda *_a, n=name: calls.__setitem__(n, calls[n] + 1))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x, t, ehs = _inputs(unet)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    h = boundary(unet, 1, sched.add_noise(x, noise, t), t, ehs)  # pre-compute runs the full U-Net...
    assert calls["mid_block"] == 1
    calls = dict.fromkeys(blocks, 0)
    removed = hollow_out(unet, 1)
    assert removed == removed_names(unet, 1) == ["down_blocks.2", "mid_block", "up_blocks.0"]
    tr = PersonalTrainer(unet, dict(sched.config), method="lora", rank=2, density=0.02, targets=["to_q", "to_v"],
                         lr=1e-2, seed=0, hollow=1)
    assert tr.adapter_names() and all(not n.startswith(tuple(removed)) for n in tr.adapter_names())
    for _ in range(3):
        tr.step(Batch(x, ehs, t, noise, 2), h)
    assert {n: c for n, c in calls.items() if n in removed} == dict.fromkeys(removed, 0)  # ...training never
    assert all(c == 3 for n, c in calls.items() if n not in removed)


def test_hollowed_run_transfers_to_the_full_unet_and_resumes_from_stored_tensors(tiny_model, photo_dir,
                                                                                    tmp_path) -> None:  # noqa: ANN001
    from diffusers import StableDiffusionPipeline

    from engines.adapters.shira import target_linears

    p = params(tiny_model, photo_dir, steps=6)
    state = tmp_path / "state"
    ev: list = []
    with pytest.raises(Cancelled):  # killed during training, after the pre-compute
        PersonalizeEngine().run(p, ctx_for(tmp_path / "a", state, lambda e: any("train 3/" in x.message for x in e), ev))
    store = state / "hollow-k1"
    files = sorted(store.glob("0*.safetensors"))
    assert len(files) == 6 and (state / "checkpoint-k1.pt").is_file()
    stamp = {f.name: f.stat().st_mtime_ns for f in files}
    ev2: list = []
    r = PersonalizeEngine().run(p, ctx_for(tmp_path / "b", state, None, ev2))
    assert r.meta["resumed_from"] == 2
    assert not any(e.message.startswith("pre-compute") for e in ev2)  # every stored tensor was reused
    assert {f.name: f.stat().st_mtime_ns for f in sorted(store.glob("0*.safetensors"))} == stamp
    adapter = r.artifacts[0]
    assert adapter.kind == "adapter" and adapter.meta["hollow"] == 1 and adapter.meta["subject_word"] == "zq"
    # same module names: exactly the target layers of the kept blocks, as named in the full U-Net
    from safetensors import safe_open

    with safe_open(str(adapter.path), "pt") as f:
        keys = {k[len("lora_unet_"):].rsplit(".", 2)[0] for k in f.keys() if k.endswith("lora_down.weight")}
    full = _unet(tiny_model)
    kept = {n.replace(".", "_") for n in target_linears(full, ["to_q", "to_k", "to_v", "to_out.0"])
            if not n.startswith(("down_blocks.2", "mid_block", "up_blocks.0"))}
    assert keys == kept
    # the file loads into the full pipeline (diffusers' kohya reader) and changes its output
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)

    def img() -> np.ndarray:
        return pipe("a photo of zq blob", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").images[0]

    before = img()
    pipe.load_lora_weights(str(adapter.path), adapter_name="me")
    assert np.abs(img() - before).max() > 1e-4
    assert [a.kind for a in r.artifacts] == ["adapter", "image", "image", "json", "image"]
    assert r.meta["precompute_mb"] > 0 and r.meta["kept_param_fraction"] < 1


def test_plain_and_shira_and_prior_cache(tiny_model, photo_dir, tmp_path) -> None:  # noqa: ANN001
    cache = tmp_path / "cache"
    ev1: list = []
    r = PersonalizeEngine().run(params(tiny_model, photo_dir, hollow=0, steps=2, prior_preservation="on",
                                       class_images=4, samples_every=1), ctx_for(tmp_path / "a", tmp_path / "s1", None,
                                                                                 ev1, personalize_cache_dir=str(cache)))
    assert any(e.preview is not None and e.preview.is_file() for e in ev1)  # a sample preview while training
    assert r.meta["class_images"] == {"generated": 4, "reused": 0} and r.meta["precompute_mb"] == 0
    ev: list = []
    r2 = PersonalizeEngine().run(params(tiny_model, photo_dir, hollow=1, steps=2, prior_preservation="on",
                                        class_images=4, method="shira", seed=3, samples_every=1),
                                 ctx_for(tmp_path / "b", tmp_path / "s2", None, ev, personalize_cache_dir=str(cache)))
    assert r2.meta["class_images"] == {"generated": 0, "reused": 4}
    assert any(e.preview is not None for e in ev)  # hollowed: previewed through a transient full pipeline
    assert r2.artifacts[0].path.name.endswith(".shira.safetensors") and r2.meta["format"] == "studio-shira-v1"
    from engines.adapters.shira import ShiraAdapter

    a = ShiraAdapter.load(r2.artifacts[0].path, _unet(tiny_model))
    assert a.layers and not any(n.startswith(("down_blocks.2", "mid_block", "up_blocks.0")) for n in a.layers)


def test_cancel_stops_within_one_step_of_the_precompute(tiny_model, photo_dir, tmp_path) -> None:  # noqa: ANN001
    ev: list = []
    with pytest.raises(Cancelled):
        PersonalizeEngine().run(params(tiny_model, photo_dir, steps=50),
                                ctx_for(tmp_path, tmp_path / "s", lambda e: any("pre-compute 2/" in x.message for x in e), ev))
    assert not any("pre-compute 3/" in e.message for e in ev)
    assert len(list((tmp_path / "s" / "hollow-k1").glob("0*.safetensors"))) == 2


def test_too_deep_a_hollow_is_a_clear_error(tiny_model, photo_dir, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(EngineError, match="hollow can be 0..2"):
        PersonalizeEngine().run(params(tiny_model, photo_dir, hollow=3), ctx_for(tmp_path, tmp_path / "s"))
    with pytest.raises(EngineError, match="smaller hollow"):  # k=2 leaves no attention layer in the tiny U-Net
        PersonalizeEngine().run(params(tiny_model, photo_dir, hollow=2, steps=1), ctx_for(tmp_path / "b", tmp_path / "s2"))


def test_subject_metrics_tell_the_subject_from_world_objects() -> None:
    from engines.personalize.demo import demo_photos, eval_contexts, render_subject
    from engines.personalize.metrics import drift, subject_probe, subject_scores, to_tensor
    from engines.world import generator as g
    from engines.world.models import load_judge
    from engines.world.paths import judge_dir

    judge = load_judge(judge_dir())
    probe = subject_probe(judge)
    photos = demo_photos()
    ctxs = eval_contexts(4, avoid={(lab["position"], lab["background"]) for _, _, lab in photos})
    assert not {(c["position"], c["background"]) for c in ctxs} & {(lab["position"], lab["background"])
                                                                  for _, _, lab in photos}
    real = to_tensor([render_subject(c["position"], c["background"], seed=5) for c in ctxs])  # [4, 3, 64, 64]
    refs = to_tensor([render_subject(c["position"], c["background"]) for c in ctxs])
    world = torch.from_numpy(np.stack([g.make_sample(seed=321, index=i).image for i in range(4)])).permute(0, 3, 1, 2)
    world = world.float() / 255.0
    good = subject_scores(judge, real, refs, ctxs, probe)
    other = subject_scores(judge, world, refs, ctxs, probe)
    assert good["subject_fidelity"] > 0.9 > 0.1 > other["subject_fidelity"]
    assert good["prompt_fidelity"] >= 0.75  # the judge reads the asked context off real renders
    assert drift(real, real) == 0.0 and drift(real, world) > 0.05


def test_bench_intervals_pair_runs_by_seed_and_merge_refuses_mixed_settings(tmp_path: Path) -> None:
    import json

    from bench.personalize import interval, merge, summarize

    assert interval([0.5]) == {"mean": 0.5, "ci95": None, "n": 1, "values": [0.5]}
    iv = interval([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert iv["mean"] == 2.0 and iv["ci95"] == pytest.approx(4.303 / 3 ** 0.5, abs=1e-4)

    def row(sf: float, pf: float) -> dict[str, float]:
        return {"subject_fidelity": sf, "subject_similarity": 0.7, "prompt_fidelity": pf, "base_drift": 0.1}

    base = row(0.2, 0.9) | {"base_drift": 0.0}
    runs = {"plain/seed0": row(0.9, 0.8), "hollowed/seed0": row(0.7, 0.9),
            "plain/seed1": row(0.5, 0.6), "hollowed/seed1": row(0.6, 0.9)}
    s = summarize(runs, base)
    assert s["paired_seeds"] == [0, 1]
    # paired: (0.7 - 0.9, 0.6 - 0.5) per seed, not a difference of means of unmatched runs
    assert s["hollowed_minus_plain"]["subject_fidelity"]["values"] == [-0.2, 0.1]
    assert s["plain"]["subject_fidelity"]["mean"] == 0.7 and s["hollowed_minus_base"]["subject_fidelity"]["mean"] == 0.45

    def result(path: Path, lr: float, seed: int) -> str:
        q = {"model": "embedded", "steps": 300, "eval_seeds": [0, 1], "contexts": 8, "hollow": 1, "lr": lr,
             "batch_size": 2, "base": base, "runs": {f"{m}/seed{seed}": runs[f"{m}/seed{seed}"] for m in ("plain", "hollowed")}}
        path.write_text(json.dumps({"quality": q}))
        return str(path)

    a, b = result(tmp_path / "a.json", 5e-3, 0), result(tmp_path / "b.json", 5e-3, 1)
    assert merge([a, b])["quality"]["stats"] == s
    with pytest.raises(SystemExit, match="lr"):
        merge([a, result(tmp_path / "c.json", 1e-3, 1)])

    # each mode at its own rate (`--modes plain --lr 1e-3` and `--modes hollowed --lr 3e-3`): joined and paired
    def one_mode(path: Path, mode: str, lr: float) -> str:
        q = json.loads(Path(result(path, lr, 0)).read_text())["quality"]
        q["runs"] = {k: v for k, v in runs.items() if k.startswith(mode)}
        path.write_text(json.dumps({"quality": q}))
        return str(path)

    m = merge([one_mode(tmp_path / "p.json", "plain", 1e-3), one_mode(tmp_path / "h.json", "hollowed", 3e-3)])
    assert m["quality"]["lr"] == {"plain": 1e-3, "hollowed": 3e-3} and m["quality"]["stats"] == s
    with pytest.raises(SystemExit, match="lr"):  # one mode at two rates
        merge([one_mode(tmp_path / "p.json", "plain", 1e-3), one_mode(tmp_path / "p2.json", "plain", 3e-3)])


def test_empty_learning_rate_takes_the_measured_default_per_mode() -> None:
    from engines.personalize.params import PersonalizeParams

    assert PersonalizeParams(demo=True).learning_rate == 3e-3  # hollow 1, LoRA
    assert PersonalizeParams(demo=True, hollow=0).learning_rate == 1e-3
    assert PersonalizeParams(demo=True, method="shira").learning_rate == 1e-3
    assert PersonalizeParams(demo=True, hollow=2, learning_rate=2e-4).learning_rate == 2e-4
    with pytest.raises(ValueError):
        PersonalizeParams(demo=True, hollow="deep")

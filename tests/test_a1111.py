"""The AUTOMATIC1111-compatible API (/sdapi/v1) over real services, a real worker thread and the
tiny SD model. Request bodies marked RECORDED are the shapes real A1111 clients send: the
``webuiapi`` package's txt2img/img2img payloads (every key its methods put in the JSON body, with
their defaults) and the minimal examples of A1111's own API wiki."""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from storage.models import Asset, Job
from studio.a1111 import parse_infotext, png_text, studio_scheduler
from studio.auth import LOCAL, acting_as
from studio.errors import InvalidParams
from tests.conftest import wait_for

# -- RECORDED: webuiapi (mix1009/sdwebuiapi) WebUIApi.txt2img(...) body with its defaults ----------------
WEBUIAPI_TXT2IMG = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "a red star on a blue background", "styles": [], "seed": 1234, "subseed": -1, "subseed_strength": 0.0,
    "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 2, "n_iter": 1, "steps": 3, "cfg_scale": 7.0,
    "width": 32, "height": 32, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "negative_prompt": "blurry", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
    "s_noise": 1, "override_settings": {"sd_model_checkpoint": "tiny"}, "override_settings_restore_afterwards": True,
    "sampler_name": "Euler a", "sampler_index": "Euler a", "script_name": None, "script_args": [],
    "send_images": True, "save_images": False, "alwayson_scripts": {},
}
# -- RECORDED: webuiapi WebUIApi.img2img(images=[img], ...) body (init image as a data URL) ----------------
WEBUIAPI_IMG2IMG = {
    "init_images": ["<data-url>"], "resize_mode": 0, "denoising_strength": 0.5, "mask_blur": 4,
    "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
    "initial_noise_multiplier": 1, "prompt": "a ring", "styles": [], "seed": 77, "subseed": -1,
    "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1,
    "steps": 4, "cfg_scale": 7.0, "image_cfg_scale": 1.5, "width": 32, "height": 32, "restore_faces": False,
    "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0,
    "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
    "override_settings_restore_afterwards": True, "sampler_name": "DPM++ 2M", "sampler_index": "DPM++ 2M",
    "include_init_images": False, "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {"ControlNet": {"args": []}},  # what webuiapi adds when it detects ControlNet
}
# -- RECORDED: A1111 wiki "API" page examples ------------------------------------------------------------
WIKI_TXT2IMG = {"prompt": "puppy dog", "steps": 5}
WIKI_OPTIONS = {"sd_model_checkpoint": "tiny"}


def b64png(w: int = 32, h: int = 32, color=(200, 40, 40), text: dict | None = None) -> str:  # noqa: ANN001
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def bomb_png(w: int, h: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * (w + 1) * 16)) + \
        chunk(b"IEND", b"")


def count(services, model) -> int:  # noqa: ANN001
    with services.db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


@pytest.fixture
def worker(services):  # noqa: ANN001, ANN201
    """A worker thread: runs queued jobs through the real JobRunner (as the worker process does)."""
    from studio.wiring import build_runner

    runner = build_runner(services)
    stop = threading.Event()

    def loop() -> None:
        with acting_as(LOCAL):
            while not stop.is_set():
                for j in services.jobs.list(status="queued", limit=10):
                    runner.execute(j.id)
                stop.wait(0.02)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield runner
    stop.set()
    t.join(60)


@pytest.fixture
def client(services, tiny_model):  # noqa: ANN001, ANN201
    from studio.server import create_app

    services.models.register("tiny", str(tiny_model))
    with TestClient(create_app(services, with_ui=False)) as c:
        yield c


# -- unit: translation ----------------------------------------------------------------------------------
def test_sampler_and_schedule_mapping() -> None:
    assert studio_scheduler("DPM++ 2M", None) == "DPM++ 2M Karras"  # A1111: Automatic = Karras for DPM++ 2M
    assert studio_scheduler("DPM++ 2M", "Uniform") == "DPM++ 2M"
    assert studio_scheduler("DPM++ 2M", "karras") == "DPM++ 2M Karras"
    assert studio_scheduler("DPM++ 2M Karras", None) == "DPM++ 2M Karras"  # pre-1.9 name
    assert studio_scheduler("k_euler_a", None) == "Euler a"
    assert studio_scheduler(None, None) == "Euler"
    for name in ("DDIM", "UniPC", "LCM", "Euler"):
        assert studio_scheduler(name, "Automatic") == name
    with pytest.raises(InvalidParams, match="unknown sampler 'Heun'"):
        studio_scheduler("Heun", None)
    with pytest.raises(InvalidParams, match="no Karras schedule"):
        studio_scheduler("Euler", "Karras")
    with pytest.raises(InvalidParams, match="unknown schedule type"):
        studio_scheduler("Euler", "Exponential")


def test_infotext_parsing() -> None:
    text = 'a cat, blue\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, ' \
           'Seed: 5, Size: 512x768, Adapters: "a:1, b:0.5", Version: Studio'
    p = parse_infotext(text)
    assert p["Prompt"] == "a cat, blue" and p["Negative prompt"] == "dog" and p["Steps"] == "20"
    assert p["Size-1"] == "512" and p["Size-2"] == "768" and p["Adapters"] == "a:1, b:0.5"
    assert parse_infotext("just a prompt") == {"Prompt": "just a prompt", "Negative prompt": ""}


# -- lists, options -------------------------------------------------------------------------------------
def test_lists_and_options_never_show_server_paths(client, tiny_model) -> None:  # noqa: ANN001
    models = client.get("/sdapi/v1/sd-models")
    assert models.status_code == 200
    titles = [m["title"] for m in models.json()]
    assert titles[:2] == ["embedded", "tiny"]
    assert str(tiny_model) not in models.text and str(Path(tiny_model).parent) not in models.text
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"DPM++ 2M", "Euler a", "Euler", "DDIM", "UniPC", "LCM"} == {s["name"] for s in samplers}
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    assert [s["label"] for s in client.get("/sdapi/v1/schedulers").json()] == ["Automatic", "Uniform", "Karras"]
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "embedded"
    assert client.post("/sdapi/v1/options", json=WIKI_OPTIONS).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny [0123456789]"}).status_code == 200
    for bad in (str(tiny_model), "../tiny", "~/models/x.safetensors", "C:\\models\\x.safetensors", "nope"):
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": bad})
        assert r.status_code == 422, (bad, r.text)
        assert str(tiny_model) not in r.text
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny"  # unchanged by bad input
    # other options are accepted and ignored; the openapi lists the routes
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("txt2img", "img2img", "progress", "interrupt", "skip", "sd-models", "samplers", "schedulers",
              "loras", "options", "png-info"):
        assert f"/sdapi/v1/{p}" in paths


# -- generation -----------------------------------------------------------------------------------------
def test_webuiapi_txt2img_runs_as_a_studio_job_with_a1111_answer(client, services, worker) -> None:  # noqa: ANN001
    r = client.post("/sdapi/v1/txt2img", json=WEBUIAPI_TXT2IMG)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"} and isinstance(body["info"], str)
    info = json.loads(body["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235]
    assert info["all_prompts"] == [WEBUIAPI_TXT2IMG["prompt"]] * 2 and info["negative_prompt"] == "blurry"
    assert info["width"] == 32 and info["height"] == 32 and info["sampler_name"] == "Euler a"
    assert info["sd_model_name"] and len(info["infotexts"]) == 2
    assert body["parameters"]["prompt"] == WEBUIAPI_TXT2IMG["prompt"] and body["parameters"]["steps"] == 3
    assert len(body["images"]) == 2
    for k, b64 in enumerate(body["images"]):  # decoded as webuiapi does: base64 → PIL
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert im.size == (32, 32)
        params = im.text["parameters"]
        assert params.startswith("a red star on a blue background\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a")
        assert f"Seed: {1234 + k}" in params and "CFG scale: 7" in params
    # an ordinary Studio job: origin api, in the queue history and the gallery, with provenance
    job_id = info["studio"]["job_id"]
    with services.db.session() as s:
        job = s.get(Job, job_id)
        assert job.origin == "api" and job.status == "completed" and job.engine == "t2i"
        assert job.params["scheduler"] == "Euler a" and job.params["model"] == "tiny"
    gallery = {a.id for a in services.assets.list()}
    assert set(info["studio"]["asset_ids"]) <= gallery
    # png-info reads it back
    pi = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + body["images"][1]})
    assert pi.status_code == 200
    assert pi.json()["info"] == info["infotexts"][1]
    assert pi.json()["parameters"]["Seed"] == "1235" and pi.json()["parameters"]["Size-1"] == "32"
    assert "studio" in pi.json()["items"]
    # the wiki's minimal call uses the checkpoint chosen through /options and the model's native size
    assert client.post("/sdapi/v1/options", json=WIKI_OPTIONS).status_code == 200
    r = client.post("/sdapi/v1/txt2img", json=WIKI_TXT2IMG)
    assert r.status_code == 200, r.text
    (img,) = r.json()["images"]
    assert Image.open(io.BytesIO(base64.b64decode(img))).size == (32, 32)
    assert json.loads(r.json()["info"])["steps"] == 5


def test_webuiapi_img2img(client, services, worker) -> None:  # noqa: ANN001
    body = dict(WEBUIAPI_IMG2IMG, init_images=["data:image/png;base64," + b64png()],
                override_settings={"sd_model_checkpoint": "tiny"})
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    info = json.loads(out["info"])
    assert info["denoising_strength"] == 0.5 and info["all_seeds"] == [77]
    assert out["parameters"]["init_images"] is None
    (img,) = out["images"]
    text = Image.open(io.BytesIO(base64.b64decode(img))).text["parameters"]
    assert "Denoising strength: 0.5" in text and "Schedule type: Karras" in text
    with services.db.session() as s:
        job = s.get(Job, info["studio"]["job_id"])
        assert job.params["init_image"] and job.params["strength"] == 0.5
        assert s.get(Asset, job.params["init_image"]).kind == "image"  # the init image is an ordinary asset


# -- bad input: 422, nothing stored ---------------------------------------------------------------------
BAD = [
    ("txt2img", {"sampler_name": "Heun"}, "sampler_name"),
    ("txt2img", {"sampler_name": "Euler", "scheduler": "Karras"}, "scheduler"),
    ("txt2img", {"enable_hr": True}, "enable_hr"),
    ("txt2img", {"restore_faces": True}, "restore_faces"),
    ("txt2img", {"alwayson_scripts": {"ControlNet": {"args": [{"enabled": True}]}}}, "alwayson_scripts.ControlNet"),
    ("txt2img", {"width": 33}, "width"),
    ("txt2img", {"steps": 0}, "steps"),
    ("txt2img", {"n_iter": 1000}, "n_iter"),
    ("txt2img", {"cfg_scale": 99}, "cfg_scale"),
    ("txt2img", {"prompt": "x <lora:nowhere:0.5>"}, "prompt"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "/etc/passwd"}}, "override_settings.sd_model_checkpoint"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "../../models/tiny"}},
     "override_settings.sd_model_checkpoint"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "unknown-model"}},
     "override_settings.sd_model_checkpoint"),
    ("img2img", {"init_images": ["%%%not base64%%%"]}, "init_images.0"),
    ("img2img", {"init_images": [base64.b64encode(b"GIF89a not really").decode()]}, "init_images.0"),
    ("img2img", {"init_images": [base64.b64encode(b"hello, not an image").decode()]}, "init_images.0"),
    ("img2img", {"init_images": ["data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\ntruncated").decode()]},
     "init_images.0"),
    ("img2img", {"init_images": [base64.b64encode(bomb_png(50000, 50000)).decode()]}, "init_images.0"),
    ("img2img", {"init_images": ["<ok>"], "mask": "<ok>"}, "mask"),
    ("img2img", {"init_images": ["<ok>"], "denoising_strength": 1.5}, "denoising_strength"),
    ("img2img", {"init_images": ["<ok>"], "resize_mode": 2}, "resize_mode"),
    ("img2img", {"init_images": ["<ok>", "<ok>"]}, "init_images"),
]


@pytest.mark.parametrize(("route", "extra", "field"), BAD, ids=[f"{r}-{f}-{i}" for i, (r, _, f) in enumerate(BAD)])
def test_bad_input_is_422_naming_the_field_and_stores_nothing(client, services, route, extra,  # noqa: ANN001
                                                              field) -> None:  # noqa: ANN001
    ok = b64png()
    extra = {k: ([ok if x == "<ok>" else x for x in v] if isinstance(v, list) else (ok if v == "<ok>" else v))
             for k, v in extra.items()}
    body = {"prompt": "a star", "steps": 2, "override_settings": {"sd_model_checkpoint": "tiny"}} | extra
    r = client.post(f"/sdapi/v1/{route}", json=body)
    assert r.status_code == 422, r.text
    j = r.json()
    assert field in [e["field"] for e in j.get("errors", [])], j
    assert "/etc" not in r.text and str(services.settings.data_dir) not in r.text
    assert count(services, Job) == 0 and count(services, Asset) == 0


def test_oversized_and_malformed_bodies(client, services) -> None:  # noqa: ANN001
    from studio.server import create_app
    from studio.wiring import build

    small = build(services.settings.with_(max_upload_bytes=1 << 20), upgrade=False)  # cap: 4/3 MB + 1 MB
    big = base64.b64encode(b"\x00" * (2 * 1024 * 1024)).decode()
    with TestClient(create_app(small, with_ui=False)) as c:
        r = c.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [big]})
    assert r.status_code == 413  # the access layer's body cap, before the app reads it
    small.close()
    r = client.post("/sdapi/v1/png-info", json={"image": "not base64 at all!"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "image"
    r = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"\xff\xd8\xff plain jpeg").decode()})
    assert r.status_code == 422
    assert client.post("/sdapi/v1/txt2img", content=b"{not json").status_code == 422
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x" * 5000}).status_code == 422
    assert client.post("/sdapi/v1/txt2img", json={"override_settings": {"a": {"nested": 1}}}).status_code == 422
    # png-info never decodes pixels: a bomb's text chunks are read from its bytes alone
    assert png_text(bomb_png(50000, 50000)) == {}
    r = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(bomb_png(50000, 50000)).decode()})
    assert r.status_code == 200 and r.json()["info"] == ""
    assert count(services, Job) == 0 and count(services, Asset) == 0


# -- progress, preview and interrupt ------------------------------------------------------------------
def test_progress_preview_and_interrupt_from_another_request(client, services, worker) -> None:  # noqa: ANN001
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["current_image"] is None and idle["state"]["job_count"] == 0
    result: dict = {}
    body = {"prompt": "a long run", "steps": 150, "n_iter": 32, "width": 32, "height": 32, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "tiny"}}
    t = threading.Thread(target=lambda: result.setdefault("r", client.post("/sdapi/v1/txt2img", json=body)))
    t.start()

    def with_preview() -> dict | None:
        p = client.get("/sdapi/v1/progress").json()
        return p if p["current_image"] and p["state"]["sampling_step"] > 0 else None

    p = wait_for(with_preview, 120, 0.05, "a running job with a preview")
    assert 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 150 and p["state"]["job_count"] == 32
    assert p["eta_relative"] > 0 and p["textinfo"].startswith("step ")
    Image.open(io.BytesIO(base64.b64decode(p["current_image"]))).load()
    assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    t0 = time.monotonic()
    assert client.post("/sdapi/v1/interrupt").json() == {}
    t.join(60)
    assert not t.is_alive() and time.monotonic() - t0 < 30
    r = result["r"]
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert r.json()["images"] == [] and info["interrupted"] is True
    assert services.jobs.get(info["studio"]["job_id"]).status == "canceled"
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_accounts_scope_progress_interrupt_and_options(settings, tiny_model) -> None:  # noqa: ANN001
    """With accounts on, one user's A1111 calls never see or stop another's job (no worker: it stays queued)."""
    from studio.server import create_app
    from studio.wiring import build

    svc = build(settings.with_(auth="on"))
    try:
        svc.models.register("tiny", str(tiny_model))
        tokens = {}
        for name in ("alice", "bob"):
            u, _ = svc.auth.add_user(name, f"{name}-password-1")
            tokens[name] = {"Authorization": f"Bearer {svc.auth.create_token(u['id'], 't')[1]}"}
        with TestClient(create_app(svc, with_ui=False)) as c:
            assert c.get("/sdapi/v1/sd-models").status_code == 401
            r = c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}, headers=tokens["alice"])
            assert r.status_code == 200
            assert c.get("/sdapi/v1/options", headers=tokens["bob"]).json()["sd_model_checkpoint"] == "embedded"
            result: dict = {}
            t = threading.Thread(target=lambda: result.setdefault("r", c.post(
                "/sdapi/v1/txt2img", json={"prompt": "mine", "steps": 2}, headers=tokens["alice"])))
            t.start()
            p = wait_for(lambda: (lambda j: j if j["state"]["job"] else None)(
                c.get("/sdapi/v1/progress", headers=tokens["alice"]).json()), 30, 0.05, "alice's queued job")
            assert p["progress"] == 0 and p["state"]["job_count"] == 1
            assert c.get("/sdapi/v1/progress", headers=tokens["bob"]).json()["state"]["job"] == ""
            assert c.post("/sdapi/v1/interrupt", headers=tokens["bob"]).json() == {}
            assert c.post("/sdapi/v1/skip", headers=tokens["bob"]).json() == {}
            time.sleep(0.3)
            assert t.is_alive()  # bob stopped nothing
            assert c.post("/sdapi/v1/interrupt", headers=tokens["alice"]).json() == {}
            t.join(30)
            r = result["r"]
            assert r.status_code == 200 and r.json()["images"] == []
            info = json.loads(r.json()["info"])
            assert info["interrupted"] is True
            with svc.db.session() as s:
                job = s.get(Job, info["studio"]["job_id"])
                assert job.status == "canceled" and job.params["model"] == "tiny"
    finally:
        svc.close()


# -- a launched Studio (web + worker processes), driven like webuiapi drives A1111 ----------------------
def test_a1111_client_against_a_launched_studio(studio_server, tiny_model) -> None:  # noqa: ANN001
    """A requests.Session, as webuiapi uses: list models, pick one through /options, generate, watch
    progress and interrupt — over real HTTP, with the job run by the real worker process."""
    import shutil

    import requests

    dest = studio_server.data_dir / "models" / "tiny-sd"  # web clients name models inside the models dir
    if not dest.exists():
        shutil.copytree(tiny_model, dest)
    base = studio_server.url + "/sdapi/v1"
    s = requests.Session()
    assert "tiny-sd" in [m["title"] for m in s.get(f"{base}/sd-models", timeout=30).json()]
    assert s.post(f"{base}/options", json={"sd_model_checkpoint": "tiny-sd"}, timeout=30).status_code == 200
    assert s.get(f"{base}/options", timeout=30).json()["sd_model_checkpoint"] == "tiny-sd"
    payload = {k: v for k, v in WEBUIAPI_TXT2IMG.items() if k != "override_settings"} | {"override_settings": {}}
    r = s.post(f"{base}/txt2img", json=payload, timeout=300)
    assert r.status_code == 200, r.text
    images = [Image.open(io.BytesIO(base64.b64decode(i))) for i in r.json()["images"]]
    info = json.loads(r.json()["info"])
    assert len(images) == 2 and info["all_seeds"] == [1234, 1235]
    assert "Seed: 1235" in images[1].text["parameters"] and "Model: tiny-sd" in images[1].text["parameters"]
    # interrupt a long run from another connection
    result: dict = {}
    long = {"prompt": "a long run", "steps": 150, "n_iter": 32, "sampler_name": "Euler"}
    t = threading.Thread(target=lambda: result.setdefault(
        "r", requests.post(f"{base}/txt2img", json=long, timeout=300)))
    t.start()
    wait_for(lambda: s.get(f"{base}/progress", timeout=30).json()["state"]["sampling_step"] > 0, 120, 0.1,
             "the long run to start")
    assert s.post(f"{base}/interrupt", timeout=30).json() == {}
    t.join(60)
    assert not t.is_alive()
    assert result["r"].status_code == 200 and result["r"].json()["images"] == []
    assert json.loads(result["r"].json()["info"])["interrupted"] is True



def test_lora_prompt_tags_use_the_adapter_library(client, services, tmp_path) -> None:  # noqa: ANN001
    """`<lora:NAME:WEIGHT>` (A1111's extra-network syntax) puts a library adapter into the job's mix.
    (No worker: the job stays queued, its params are checked, then it is interrupted.)"""
    from storage.models import Adapter
    from studio.assets import new_id

    f = tmp_path / "my-style.safetensors"
    f.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    asset = services.assets.ingest_path(f, kind="adapter", mime="application/octet-stream", validate=False)
    with services.db.session() as s:
        s.add(Adapter(id=new_id(), name="my-style", method="lora", file_format="kohya", asset_id=asset.id))
    assert [x["name"] for x in client.get("/sdapi/v1/loras").json()] == ["my-style"]
    assert str(tmp_path) not in client.get("/sdapi/v1/loras").text
    body = {"prompt": "a zq <lora:my-style:0.8>", "steps": 2, "override_settings": {"sd_model_checkpoint": "tiny"}}
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("r", client.post("/sdapi/v1/txt2img", json=body)))
    t.start()
    p = wait_for(lambda: (lambda j: j if j["state"]["job"] else None)(client.get("/sdapi/v1/progress").json()),
                 30, 0.05, "the queued job")
    params = services.jobs.get(p["state"]["job"]).params
    assert params["prompt"] == "a zq" and params["adapters"] == [
        {"adapter": asset.id, "weight": 0.8, "name": "my-style"}]
    client.post("/sdapi/v1/interrupt")
    t.join(30)
    assert result["r"].status_code == 200 and json.loads(result["r"].json()["info"])["interrupted"] is True

"""An AUTOMATIC1111-compatible HTTP API subset under ``/sdapi/v1`` (see ``docs/a1111.md``).

Existing A1111 clients (client libraries, chat front-ends, editor plugins, batch scripts) talk to
the Studio unchanged. Every generation is an ordinary Studio ``t2i`` job submitted through
``JobService.submit(origin="api")`` — queued, run by the worker, stored in the gallery with its
provenance — and the synchronous A1111 call waits for that job and answers in A1111's shape.

Translation only: no second way to run a model. Requests are validated by pydantic models here
and by the engine's own params model (errors are renamed back to A1111's field names); a bad
request is a 422 and stores nothing. Models are named, never given as server paths.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import struct
import threading
import zlib
from datetime import datetime, timezone
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from storage.models import TERMINAL, Job
from studio.auth import viewer
from studio.errors import InvalidParams, StudioError, UploadRejected
from studio.jobs import validate_params

PREFIX = "/sdapi/v1"
POLL_S = 0.1

# -- samplers and schedulers ------------------------------------------------------------------
# A1111 (≥ 1.9) names a sampler and a schedule type separately; "Automatic" is the sampler's own
# default (Karras for DPM++ 2M). Each pair maps to one of the t2i engine's schedulers.
SAMPLERS: dict[str, dict[str, Any]] = {
    "DPM++ 2M": {"aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"},
                 "map": {"automatic": "DPM++ 2M Karras", "karras": "DPM++ 2M Karras", "uniform": "DPM++ 2M"}},
    "Euler a": {"aliases": ["k_euler_a", "k_euler_ancestral"], "options": {"uses_ensd": "True"},
                "map": {"automatic": "Euler a", "uniform": "Euler a"}},
    "Euler": {"aliases": ["k_euler"], "options": {},
              "map": {"automatic": "Euler", "uniform": "Euler"}},
    "DDIM": {"aliases": ["ddim"], "options": {"default_eta_is_0": "True", "uses_ensd": "True"},
             "map": {"automatic": "DDIM", "uniform": "DDIM"}},
    "UniPC": {"aliases": ["unipc"], "options": {}, "map": {"automatic": "UniPC", "uniform": "UniPC"}},
    "LCM": {"aliases": ["k_lcm"], "options": {}, "map": {"automatic": "LCM", "uniform": "LCM"}},
}
# sampler names from before A1111 1.9, where the schedule was part of the name
LEGACY_SAMPLERS = {"dpm++ 2m karras": ("DPM++ 2M", "karras"), "k_dpmpp_2m_ka": ("DPM++ 2M", "karras")}
SCHEDULERS = [("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras")]
DEFAULT_SAMPLER = "Euler"  # A1111's default (sampler_index="Euler")


def _sampler_key(name: str) -> str | None:
    low = name.strip().lower()
    for key, s in SAMPLERS.items():
        if low == key.lower() or low in s["aliases"]:
            return key
    return None


def studio_scheduler(sampler_name: str | None, scheduler: str | None) -> str:
    """A1111 (sampler, schedule type) → a t2i engine scheduler name, or InvalidParams."""
    name = (sampler_name or DEFAULT_SAMPLER).strip()
    sched = (scheduler or "automatic").strip().lower()
    key = _sampler_key(name)
    if key is None and name.lower() in LEGACY_SAMPLERS:
        key, legacy = LEGACY_SAMPLERS[name.lower()]
        if sched == "automatic":
            sched = legacy
    if key is None:
        raise InvalidParams([{"field": "sampler_name", "message": f"unknown sampler {name[:60]!r}; the Studio has: "
                              + ", ".join(SAMPLERS) + " (GET /sdapi/v1/samplers)"}])
    labels = {n: n for n, _ in SCHEDULERS} | {label.lower(): n for n, label in SCHEDULERS}
    if sched not in labels:
        raise InvalidParams([{"field": "scheduler", "message": f"unknown schedule type {scheduler!r:.60}; one of "
                              + ", ".join(label for _, label in SCHEDULERS) + " (GET /sdapi/v1/schedulers)"}])
    out = SAMPLERS[key]["map"].get(labels[sched])
    if out is None:
        ok = ", ".join(dict(SCHEDULERS)[s] for s in SAMPLERS[key]["map"])
        label = dict(SCHEDULERS)[labels[sched]]
        raise InvalidParams([{"field": "scheduler",
                              "message": f"sampler {key!r} has no {label} schedule in the Studio; use {ok}"}])
    return out


# -- request models ---------------------------------------------------------------------------
Scalar = Optional[str | int | float | bool]


class _Gen(BaseModel):
    """Fields A1111's txt2img and img2img share. Unknown fields are ignored, as A1111 does; fields
    for features the Studio lacks are accepted only with their neutral value (else 422)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    styles: list[str] = Field(default_factory=list, max_length=64)
    seed: int = Field(-1, ge=-(2**63), le=2**63)
    subseed: int = Field(-1, ge=-(2**63), le=2**63)
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = Field(None, max_length=100)
    sampler_index: Optional[str] = Field(None, max_length=100)
    scheduler: Optional[str] = Field(None, max_length=100)
    batch_size: int = Field(1, ge=-(2**31), le=2**31)
    n_iter: int = Field(1, ge=-(2**31), le=2**31)
    steps: int = Field(50, ge=-(2**31), le=2**31)
    cfg_scale: Optional[float] = Field(None, description="default: the model's own guidance (A1111: always 7)")
    width: Optional[int] = Field(None, ge=-(2**31), le=2**31, description="default: the model's native size")
    height: Optional[int] = Field(None, ge=-(2**31), le=2**31, description="default: the model's native size")
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Optional[float] = None
    denoising_strength: Optional[float] = None
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: dict[str, Scalar] = Field(default_factory=dict, max_length=64)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Optional[str] = Field(None, max_length=255)
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: bool = False
    comments: Optional[dict[str, Scalar]] = Field(None, max_length=64)
    script_name: Optional[str] = Field(None, max_length=200)
    script_args: list[Any] = Field(default_factory=list, max_length=64)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, max_length=32)
    infotext: Optional[str] = Field(None, max_length=8000)

    def unsupported(self) -> list[dict[str, str]]:
        """Requests for features the Studio does not have, each naming its field."""
        errs = []

        def no(field: str, what: str) -> None:
            errs.append({"field": field, "message": f"{what} is not supported by the Studio's A1111 API"})

        if self.restore_faces:
            no("restore_faces", "face restoration")
        if self.tiling:
            no("tiling", "tiling")
        if self.subseed_strength:
            no("subseed_strength", "variation seeds")
        if self.styles:
            no("styles", "prompt styles")
        if self.script_name:
            no("script_name", "scripts")
        if self.refiner_checkpoint and self.refiner_checkpoint.lower() not in ("none", ""):
            no("refiner_checkpoint", "a refiner")
        for name, s in self.alwayson_scripts.items():  # clients send {"ControlNet": {"args": []}} to mean "off"
            args = s.get("args", []) if isinstance(s, dict) else s
            if not isinstance(args, list) or any(a not in (False, None, {}, []) for a in args):
                no(f"alwayson_scripts.{str(name)[:40]}", "extensions (always-on scripts)")
        return errs


class Txt2ImgIn(_Gen):
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: str = Field("", max_length=4000)
    hr_negative_prompt: str = Field("", max_length=4000)
    firstphase_width: int = 0
    firstphase_height: int = 0

    def unsupported(self) -> list[dict[str, str]]:
        errs = super().unsupported()
        if self.enable_hr:
            errs.append({"field": "enable_hr", "message": "hires fix is not supported by the Studio's A1111 API"})
        return errs


class Img2ImgIn(_Gen):
    init_images: list[str] = Field(..., min_length=1, max_length=8)
    resize_mode: int = 0
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: Optional[int] = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: Optional[float] = None
    latent_mask: Optional[str] = None
    include_init_images: bool = False

    def unsupported(self) -> list[dict[str, str]]:
        errs = super().unsupported()
        if self.mask:
            errs.append({"field": "mask", "message": "inpainting (mask) is not supported by the Studio's A1111 API"})
        if self.resize_mode != 0:
            errs.append({"field": "resize_mode", "message": "only resize_mode 0 (just resize) is supported"})
        if len(self.init_images) > 1:
            errs.append({"field": "init_images",
                         "message": f"{len(self.init_images)} init images; the Studio takes one"})
        return errs


class PngInfoIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(..., min_length=1)


class OptionsIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    sd_model_checkpoint: Optional[str] = Field(None, max_length=300)

    @field_validator("sd_model_checkpoint")
    @classmethod
    def _strip(cls, v: Optional[str]) -> Optional[str]:
        return v.strip() if isinstance(v, str) else v


# -- field names: Studio → A1111 ----------------------------------------------------------------
FIELD_NAMES = {"guidance_scale": "cfg_scale", "batch_count": "n_iter", "strength": "denoising_strength",
               "init_image": "init_images", "scheduler": "sampler_name",
               "model": "override_settings.sd_model_checkpoint", "adapters": "prompt"}


def _rename(errors: list[dict[str, str]]) -> list[dict[str, str]]:
    out = []
    for e in errors:
        msg = e["message"].removeprefix("Value error, ")
        if e["field"] == "params":  # a cross-field check: name the field its message starts with
            m = re.match(r"(\w+)", msg)
            if m and m.group(1) in ("width", "height", "strength", "seed", "steps"):
                e = {"field": m.group(1), "message": msg}
        head, _, rest = e["field"].partition(".")
        name = FIELD_NAMES.get(head, head)
        out.append({"field": name if head in FIELD_NAMES else e["field"], "message": msg})
    return out


# -- base64 and PNG text -------------------------------------------------------------------------
DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.I)


def decode_b64(field: str, value: str, limit: int) -> bytes:
    """A1111 clients send raw base64 or a data URL; anything else (or too much) is a 422."""
    s = DATA_URL.sub("", value.strip(), count=1)
    s = re.sub(r"\s+", "", s)
    if len(s) > (limit + 2) // 3 * 4 + 4:
        raise InvalidParams([{"field": field, "message": f"image larger than the {limit} byte limit"}])
    try:
        raw = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParams([{"field": field, "message": "not valid base64 (raw or a data: URL)"}]) from None
    if not raw:
        raise InvalidParams([{"field": field, "message": "empty image"}])
    return raw


PNG_SIG = b"\x89PNG\r\n\x1a\n"


def is_image_bytes(raw: bytes) -> bool:
    """The formats the Studio's upload validation accepts, by magic number (it then checks them fully)."""
    return raw.startswith((PNG_SIG, b"\xff\xd8\xff", b"GIF87a", b"GIF89a")) or \
        (raw[:4] == b"RIFF" and raw[8:12] == b"WEBP")
MAX_TEXT = 1 << 20  # decompressed size cap for zTXt/iTXt chunks


def png_text(raw: bytes) -> dict[str, str] | None:
    """Text chunks of a PNG, read without decoding a single pixel (None: not a PNG)."""
    if not raw.startswith(PNG_SIG):
        return None
    out: dict[str, str] = {}
    pos = len(PNG_SIG)
    while pos + 8 <= len(raw) and len(out) < 64:
        n, ctype = struct.unpack(">I4s", raw[pos:pos + 8])
        data = raw[pos + 8:pos + 8 + n]
        pos += 12 + n
        try:
            if ctype == b"tEXt":
                k, _, v = data.partition(b"\x00")
                out[k.decode("latin-1")] = v.decode("latin-1")
            elif ctype == b"zTXt":
                k, _, v = data.partition(b"\x00")
                out[k.decode("latin-1")] = _inflate(v[1:]).decode("latin-1")
            elif ctype == b"iTXt":
                k, _, rest = data.partition(b"\x00")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\x00")
                _tkey, _, text = rest.partition(b"\x00")
                out[k.decode("latin-1")] = (_inflate(text) if compressed else text).decode("utf-8", "replace")
            elif ctype == b"IEND":
                break
        except (zlib.error, IndexError, UnicodeDecodeError):
            continue
    return out


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_TEXT)
    if d.unconsumed_tail:
        raise zlib.error("text chunk too large")
    return out


PARAM = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """A1111 infotext → the dict A1111's png-info returns (Prompt, Negative prompt, Steps, Size-1…)."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = PARAM.findall(last)
    if len(pairs) < 3:  # the last line is part of the prompt
        pairs, body = [], lines
    else:
        body = lines[:-1]
    prompt, neg, in_neg = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_neg = True
            line = line[len("Negative prompt:"):].strip()
        (neg if in_neg else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(neg)}
    for k, v in pairs:
        v = v.strip()
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            try:
                v = json.loads(v)
            except ValueError:
                pass
        m = re.fullmatch(r"(\d+)x(\d+)", v) if isinstance(v, str) else None
        if m:
            out[f"{k}-1"], out[f"{k}-2"] = m.group(1), m.group(2)
        else:
            out[k] = v
    return out


# -- LoRA prompt tags ---------------------------------------------------------------------------
LORA_TAG = re.compile(r"<lora:([^:>]{1,120})(?::(-?[\d.]+))?(?::[^>]*)?>", re.I)


# -- the routes ---------------------------------------------------------------------------------
def add_a1111_routes(app: FastAPI, services: Any) -> None:
    jobs, assets, models, settings = services.jobs, services.assets, services.models, services.settings
    checkpoints: dict[str, str] = {}  # per caller: sd_model_checkpoint set through POST /options
    lock = threading.Lock()

    def who() -> str:
        v = viewer()
        return v.user_id or v.username or "local"

    # -- models ------------------------------------------------------------------------------
    def model_names() -> list[str]:
        names = ["embedded"]
        for m in models.list() + models.in_folders():
            if m["name"] not in names:
                names.append(m["name"])
        return names

    def model_ref(name: str | None, field: str) -> str:
        """A checkpoint name (title as /sd-models lists it, optionally "name [hash]") → Studio ref."""
        if name is None or not str(name).strip():
            return current_checkpoint()
        raw = str(name).strip()
        base = re.sub(r"\s*\[[0-9a-fA-F]{6,64}\]$", "", raw)
        if any(c in base for c in "/\\\x00") or base.startswith(("~", ".")) or re.match(r"^[A-Za-z]:", base):
            raise InvalidParams([{"field": field, "message": "name a checkpoint from GET /sdapi/v1/sd-models; "
                                  "server paths are never accepted from web clients"}])
        names = model_names()
        for n in names:
            if base == n or base.lower() == n.lower():
                return n
        shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
        raise InvalidParams([{"field": field, "message": f"no checkpoint {base[:80]!r}; available: {shown}"}])

    def current_checkpoint() -> str:
        with lock:
            return checkpoints.get(who()) or models.default_ref or "embedded"

    def model_entry(name: str) -> dict[str, Any]:
        return {"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}

    # -- generation --------------------------------------------------------------------------
    def translate(req: _Gen, init_image: str | None) -> tuple[dict[str, Any], str]:
        errs = req.unsupported()
        if errs:
            raise InvalidParams(errs)
        model = model_ref(req.override_settings.get("sd_model_checkpoint"), "override_settings.sd_model_checkpoint")
        scheduler = studio_scheduler(req.sampler_name or req.sampler_index, req.scheduler)
        prompt, adapters = req.prompt, []
        if not req.disable_extra_networks:
            prompt, adapters = lora_tags(req.prompt)
        params: dict[str, Any] = {
            "model": model, "prompt": prompt.strip() or " ", "negative_prompt": req.negative_prompt,
            "steps": req.steps, "seed": req.seed, "batch_size": req.batch_size, "batch_count": req.n_iter,
            "scheduler": scheduler, "width": req.width, "height": req.height}
        if req.cfg_scale is not None:  # omitted: the engine uses the model's own default
            params["guidance_scale"] = req.cfg_scale
        if adapters:
            params["adapters"] = adapters
        if init_image is not None:
            params["init_image"] = init_image
            params["strength"] = 0.75 if req.denoising_strength is None else req.denoising_strength
        try:
            validate_params("t2i", params)
        except InvalidParams as e:
            raise InvalidParams(_rename(e.errors)) from None
        return params, model

    def lora_tags(prompt: str) -> tuple[str, list[dict[str, Any]]]:
        tags = LORA_TAG.findall(prompt)
        if not tags:
            return prompt, []
        library = {a["name"]: a for a in services.library.list()}
        out = []
        for name, weight in tags[:16]:
            a = library.get(name.strip())
            if a is None:
                raise InvalidParams([{"field": "prompt", "message": f"<lora:{name[:60]}> is not in the adapter "
                                      "library (GET /sdapi/v1/loras)"}])
            try:
                w = float(weight) if weight else 1.0
            except ValueError:
                raise InvalidParams([{"field": "prompt",
                                      "message": f"<lora:{name[:60]}:{weight[:20]}>: bad weight"}]) from None
            out.append({"adapter": a["id"], "weight": w, "name": a["name"]})
        return LORA_TAG.sub("", prompt), out

    async def generate(request: Request, req: _Gen, init_b64: str | None) -> Any:
        init_id = None
        if init_b64 is not None:
            translate(req, "pending")  # everything else is checked before the image is stored
            raw = decode_b64("init_images.0", init_b64, settings.max_upload_bytes)
            if not is_image_bytes(raw):  # checked before anything is stored
                raise InvalidParams([{"field": "init_images.0", "message": "not an image (PNG, JPEG, WebP or GIF)"}])
            try:
                asset = await run_in_threadpool(assets.upload, io.BytesIO(raw), "init_image.png")
            except UploadRejected as e:  # never echo a server path (the upload's temp file) to the client
                msg = re.sub(r"'?(/|[A-Za-z]:\\)[^'\s]*'?", "'init_images.0'", str(e))
                raise InvalidParams([{"field": "init_images.0", "message": msg}]) from None
            if asset.kind != "image":
                raise InvalidParams([{"field": "init_images.0", "message": f"not an image ({asset.mime})"}])
            init_id = asset.id
        params, model = translate(req, init_id)
        job = await run_in_threadpool(jobs.submit, "t2i", params, origin="api")
        while job.status not in TERMINAL:
            if await request.is_disconnected():  # the job goes on; its images land in the gallery
                return JSONResponse({"detail": "client went away"}, status_code=499)
            await asyncio.sleep(POLL_S)
            job = await run_in_threadpool(jobs.get, job.id)
        if job.status == "failed":
            err = job.error or {}
            status = 422 if err.get("type") == "invalid_params" else 500
            return JSONResponse({"error": err.get("type") or "EngineError", "detail": err.get("message") or "failed",
                                 "body": "", "errors": err.get("message") or ""}, status_code=status)
        images = await run_in_threadpool(lambda: [base64.b64encode(assets.path(a.id).read_bytes()).decode()
                                                  for a in job.assets if a.kind == "image"])
        echo = req.model_dump(mode="json")
        if isinstance(req, Img2ImgIn):
            if req.include_init_images:
                images.append(DATA_URL.sub("", req.init_images[0].strip(), count=1))
            echo["init_images"] = None
            echo["mask"] = None
        info = info_json(job, params, model, req)
        return {"images": images if req.send_images else [], "parameters": echo, "info": json.dumps(info)}

    def info_json(job: Any, params: dict[str, Any], model: str, req: _Gen) -> dict[str, Any]:
        used = [a.meta for a in job.assets if a.kind == "image"]
        used.sort(key=lambda m: m.get("index", 0))
        p = (used[0].get("params") if used else None) or job.params
        seed = int(job.result_meta.get("seed", p.get("seed", -1)))
        n = params["batch_size"] * params["batch_count"]
        seeds = [int(m.get("seed", seed + i)) for i, m in enumerate(used)] or [(seed + i) % 2**32 for i in range(n)]
        prompt = job.params.get("prompt", req.prompt)
        return {
            "prompt": req.prompt, "all_prompts": [req.prompt] * len(seeds), "negative_prompt": req.negative_prompt,
            "all_negative_prompts": [req.negative_prompt] * len(seeds), "seed": seed, "all_seeds": seeds,
            "subseed": seed, "all_subseeds": seeds, "subseed_strength": 0, "width": p.get("width"),
            "height": p.get("height"), "sampler_name": req.sampler_name or req.sampler_index or DEFAULT_SAMPLER,
            "scheduler": req.scheduler or "Automatic",
            "cfg_scale": req.cfg_scale if p.get("guidance_scale") is None else p["guidance_scale"],
            "steps": params["steps"],
            "batch_size": params["batch_size"], "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": job.result_meta.get("model", model), "sd_model_hash": (job.result_meta.get("model_hash")
                                                                                   or "")[:10] or None,
            "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": params.get("strength"), "extra_generation_params": {},
            "index_of_first_image": 0, "infotexts": [m.get("parameters", "") for m in used], "styles": [],
            "job_timestamp": _stamp(job.created_at), "clip_skip": 1, "is_using_inpainting_conditioning": False,
            "version": "Studio", "interrupted": job.status == "canceled",
            "studio": {"job_id": job.id, "status": job.status, "asset_ids": [a.id for a in job.assets],
                       "engine_prompt": prompt, "scheduler": params["scheduler"]}}

    @app.post(PREFIX + "/txt2img", tags=["a1111"])
    async def txt2img(request: Request, body: Txt2ImgIn) -> Any:
        return await generate(request, body, None)

    @app.post(PREFIX + "/img2img", tags=["a1111"])
    async def img2img(request: Request, body: Img2ImgIn) -> Any:
        return await generate(request, body, body.init_images[0])

    # -- progress and control ----------------------------------------------------------------
    def current_job() -> Any:
        """The caller's oldest running t2i job, else its oldest queued one (A1111's one "current" job)."""
        v = viewer()
        stmt = select(Job.id, Job.status).where(Job.engine == "t2i", Job.status.in_(("running", "queued")))
        if v.user_id is not None:
            stmt = stmt.where(Job.owner_id == v.user_id)
        elif not v.is_admin:
            return None
        with services.db.session() as s:
            rows = s.execute(stmt.order_by(Job.created_at).limit(200)).all()
        running = [r.id for r in rows if r.status == "running"]
        queued = [r.id for r in rows if r.status == "queued"]
        for jid in running + queued:
            try:
                return jobs.get(jid)
            except StudioError:
                continue
        return None

    def progress_of(skip_image: bool) -> dict[str, Any]:
        idle = {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0", "job_no": 0,
                "sampling_step": 0, "sampling_steps": 0}
        job = current_job()
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": idle, "current_image": None, "textinfo": None}
        p = job.params
        n_iter = int(p.get("batch_count", 1))
        per_pass = int(p.get("steps", 1))
        if p.get("init_image"):
            per_pass = max(1, min(int(per_pass * float(p.get("strength", 0.75))), per_pass))
        m = re.match(r"step (\d+)/(\d+)", job.message or "")
        step = int(m.group(1)) if m else 0
        frac = float(job.progress or 0.0)
        eta = 0.0
        if job.status == "running" and job.started_at and frac > 0:
            started = datetime.fromisoformat(job.started_at.rstrip("Z"))
            elapsed = (datetime.now(timezone.utc).replace(tzinfo=None) - started).total_seconds()
            eta = max(0.0, elapsed / frac - elapsed)
        state = idle | {"job": job.id, "job_count": n_iter, "job_timestamp": _stamp(job.created_at),
                        "job_no": min(n_iter - 1, max(0, step - 1) // per_pass) if step else 0,
                        "sampling_step": (step - 1) % per_pass + 1 if step else 0, "sampling_steps": per_pass,
                        "interrupted": "cancel" in (job.message or "")}
        image = None
        if not skip_image and job.has_preview:
            try:
                path = jobs.preview_path(job.id)
                if path is not None and path.is_file():
                    image = base64.b64encode(path.read_bytes()).decode()
            except (StudioError, OSError):
                image = None
        return {"progress": frac, "eta_relative": round(eta, 3), "state": state, "current_image": image,
                "textinfo": job.message or None}

    @app.get(PREFIX + "/progress", tags=["a1111"])
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        return progress_of(skip_current_image)

    def stop_current() -> dict[str, Any]:
        job = current_job()
        if job is not None:
            try:
                jobs.cancel(job.id)
            except StudioError:
                pass
        return {}

    @app.post(PREFIX + "/interrupt", tags=["a1111"])
    def interrupt() -> dict[str, Any]:
        return stop_current()

    @app.post(PREFIX + "/skip", tags=["a1111"])
    def skip() -> dict[str, Any]:
        return stop_current()  # the Studio cannot skip one image of a batch: the job stops

    # -- lists and options --------------------------------------------------------------------
    @app.get(PREFIX + "/sd-models", tags=["a1111"])
    def sd_models() -> list[dict[str, Any]]:
        return [model_entry(n) for n in model_names()]

    @app.post(PREFIX + "/refresh-checkpoints", tags=["a1111"])
    def refresh_checkpoints() -> None:
        return None  # the list is read fresh on every call

    @app.get(PREFIX + "/samplers", tags=["a1111"])
    def samplers() -> list[dict[str, Any]]:
        return [{"name": k, "aliases": s["aliases"], "options": s["options"]} for k, s in SAMPLERS.items()]

    @app.get(PREFIX + "/schedulers", tags=["a1111"])
    def schedulers() -> list[dict[str, Any]]:
        return [{"name": n, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for n, label in SCHEDULERS]

    @app.get(PREFIX + "/loras", tags=["a1111"])
    def loras() -> list[dict[str, Any]]:
        return [{"name": a["name"], "alias": a["name"], "path": a["name"],
                 "metadata": {"method": a["method"], "trigger": a["trigger"], "base_model": a["base_model"],
                              "asset_id": a["asset_id"]}} for a in services.library.list()]

    @app.get(PREFIX + "/scripts", tags=["a1111"])
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @app.get(PREFIX + "/upscalers", tags=["a1111"])
    def upscalers() -> list[dict[str, Any]]:
        return []

    @app.get(PREFIX + "/prompt-styles", tags=["a1111"])
    def prompt_styles() -> list[dict[str, Any]]:
        return []

    @app.get(PREFIX + "/sd-vae", tags=["a1111"])
    def sd_vae() -> list[dict[str, Any]]:
        return []

    def options_now() -> dict[str, Any]:
        ckpt = current_checkpoint()
        return {"sd_model_checkpoint": ckpt, "sd_checkpoint_hash": None, "sd_vae": "Automatic",
                "CLIP_stop_at_last_layers": 1, "samples_format": "png", "samples_save": True, "grid_save": False,
                "eta_noise_seed_delta": 0, "sd_checkpoints_limit": 1, "live_previews_enable": True,
                "show_progress_every_n_steps": 5, "enable_pnginfo": True}

    @app.get(PREFIX + "/options", tags=["a1111"])
    def get_options() -> dict[str, Any]:
        return options_now()

    @app.post(PREFIX + "/options", tags=["a1111"])
    def set_options(body: OptionsIn) -> None:
        if len(body.model_extra or {}) > 200:
            raise InvalidParams([{"field": "options", "message": "too many options (limit 200)"}])
        if body.sd_model_checkpoint is not None:
            name = model_ref(body.sd_model_checkpoint, "sd_model_checkpoint")
            with lock:
                checkpoints[who()] = name
        return None  # other options are accepted and ignored (see docs/a1111.md)

    @app.post(PREFIX + "/png-info", tags=["a1111"])
    def png_info(body: PngInfoIn) -> dict[str, Any]:
        raw = decode_b64("image", body.image, settings.max_upload_bytes)
        text = png_text(raw)
        if text is None:
            raise InvalidParams([{"field": "image", "message": "not a PNG (the Studio reads PNG text chunks only)"}])
        info = text.get("parameters", "")
        items = {k: v for k, v in text.items() if k != "parameters"}
        return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}


def _stamp(iso: str | None) -> str:
    if not iso:
        return "0"
    try:
        return datetime.fromisoformat(iso.rstrip("Z")).strftime("%Y%m%d%H%M%S")
    except ValueError:
        return "0"

"""The t2i engine: any SD-family diffusers pipeline, schedulers, seeds, previews,
cancel per step, provenance in every PNG, optional img2img and Clockwork."""
from __future__ import annotations

import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import Artifact, Cancelled, Engine, EngineContext, EngineError, EngineResult, ModelNotFound, ModelSpec
from engines.t2i.metadata import a1111_parameters, pnginfo
from engines.t2i.params import T2IParams

VERSION = "Studio 0.1"
ADAPTOR_FILE = "clockwork_adaptor.safetensors"


def default_guidance(model_path: Any) -> float:
    """The embedded world model was trained and evaluated at CFG 4; SD-family models use 7."""
    from pathlib import Path

    return 4.0 if (Path(model_path) / "world_train.json").is_file() else 7.0


@dataclass
class LoadedPipeline:
    """A pipeline cached per worker, with what is costly to recompute per job."""

    pipe: Any
    spec: ModelSpec
    model_hash: str
    base_scheduler: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    preview_factors: Any = None
    img2img: Any = None
    adaptors: dict[str, Any] = field(default_factory=dict)
    switcher: Any = None  # SHiRA/FouRA fused mix, kept across jobs so a switch is one scatter
    loras: set[str] = field(default_factory=set)  # LoRA adapter names loaded into the pipeline
    sparse_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.path.stem if self.spec.kind == "single_file" else self.spec.path.name if \
            self.spec.kind != "embedded" else "embedded-world"


# -- loading -------------------------------------------------------------------------------
def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def model_hash(spec: ModelSpec) -> str:
    """sha256 of the weights: the file for single files (A1111's 'Model hash' is its first 10
    hex digits), the U-Net weights for folders."""
    if spec.sha256:
        return spec.sha256
    if spec.kind == "single_file":
        files = [spec.path]
    else:
        files = sorted((spec.path / "unet").glob("*.safetensors")) or sorted((spec.path / "unet").glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def load_pipeline(spec: ModelSpec, device: str, dtype: str) -> LoadedPipeline:
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    torch_dtype = _torch_dtype(dtype)
    if device == "cpu" and torch_dtype == torch.float16:
        torch_dtype = torch.float32  # fp16 convs are not implemented/slow on CPU
    try:
        if spec.kind == "single_file":
            from engines.t2i.single_file import load_single_file

            pipe = load_single_file(spec.path, torch_dtype)
        else:
            index = json.loads((spec.path / "model_index.json").read_text())
            kw: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
            if "safety_checker" in index:
                kw |= {"safety_checker": None, "requires_safety_checker": False}
            pipe = DiffusionPipeline.from_pretrained(str(spec.path), **kw)
    except (OSError, ValueError, EnvironmentError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if spec.kind == "single_file":
            raise ModelNotFound(f"cannot load {spec.path.name}: {msg} (single files load with the Studio's shipped "
                                "SD1.x/SD2.x/SDXL configs; other architectures need a diffusers folder)") from None
        raise ModelNotFound(f"cannot load model at {spec.path}: {msg}") from None
    if not isinstance(getattr(pipe, "unet", None), UNet2DConditionModel):
        raise EngineError(f"{type(pipe).__name__} is not a U-Net Stable Diffusion pipeline")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe=pipe, spec=spec, model_hash=model_hash(spec), base_scheduler=dict(pipe.scheduler.config))


def torch_module() -> type:
    import torch

    return torch.nn.Module


# -- schedulers ----------------------------------------------------------------------------
def make_scheduler(name: str, base: dict[str, Any]) -> Any:
    import diffusers as d

    table: dict[str, tuple[Any, dict[str, Any]]] = {
        "DPM++ 2M": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                      "use_karras_sigmas": False}),
        "DPM++ 2M Karras": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                             "use_karras_sigmas": True}),
        "Euler": (d.EulerDiscreteScheduler, {}),
        "Euler a": (d.EulerAncestralDiscreteScheduler, {}),
        "DDIM": (d.DDIMScheduler, {}),
        "UniPC": (d.UniPCMultistepScheduler, {}),
        "LCM": (d.LCMScheduler, {}),
    }
    if name == "model default":
        cls = getattr(d, base.get("_class_name", "PNDMScheduler"))
        return cls.from_config(base)
    cls, kw = table[name]
    return cls.from_config(base, **kw)


def apply_adapters(loaded: LoadedPipeline, params: T2IParams, ctx: EngineContext) -> tuple[list, float, Any]:
    """Put the job's adapter mix on the cached pipeline; returns (info, switch ms, undo).

    LoRA goes through diffusers/peft (``load_lora_weights`` once per file, ``set_adapters``,
    ``fuse_lora`` in fused mode, undone after the job). SHiRA and frozen-gate FouRA are
    edits of the base Linear weights by the index-exact switcher, which stays applied
    until the next job changes the mix, so switching between SHiRA adapters costs one
    scatter. Because they edit the Linear under a LoRA wrapper directly, LoRA and SHiRA can
    share layers (peft itself refuses to nest SHiRA inside LoRA).
    """
    import hashlib
    import time

    from engines.adapters.lora_io import detect_format, read_header
    from engines.adapters.shira import FusedSwitcher, ShiraAdapter

    pipe = loaded.pipe
    t0 = time.perf_counter()
    loras: list[tuple[str, float]] = []
    sparse: list[tuple[Any, float]] = []
    info: list[dict[str, Any]] = []
    for use in params.adapters:
        path = Path(ctx.resolve_input(use.adapter))
        try:
            keys, meta = read_header(path)
            fmt = detect_format(keys, meta)
        except ValueError as e:
            raise EngineError(f"adapter {use.adapter}: {e}") from None
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        label = use.name or _file_label(meta) or path.stem[:10]
        try:
            if fmt in ("kohya", "diffusers", "peft"):
                name = f"a{key}"
                if name not in loaded.loras:
                    pipe.load_lora_weights(str(path), adapter_name=name)
                    loaded.loras.add(name)
                loras.append((name, use.weight))
                method = "lora"
            else:
                if key not in loaded.sparse_cache:
                    if fmt == "studio-shira":
                        loaded.sparse_cache[key] = ShiraAdapter.load(path, pipe.unet)
                    else:
                        import torch

                        from engines.adapters.foura import load_fused_deltas

                        deltas = load_fused_deltas(path, pipe.unet)
                        loaded.sparse_cache[key] = ShiraAdapter(
                            {n: (torch.arange(d.numel()), d.flatten()) for n, d in deltas.items()})
                sparse.append((loaded.sparse_cache[key], use.weight))
                method = "shira" if fmt == "studio-shira" else "foura"
        except (ValueError, KeyError, RuntimeError) as e:
            raise EngineError(f"adapter {label} does not fit this model: {str(e).splitlines()[0]}") from None
        info.append({"adapter": use.adapter, "name": label, "method": method, "weight": use.weight})
    if sparse or loaded.switcher is not None:
        if loaded.switcher is None:
            loaded.switcher = FusedSwitcher(pipe.unet)
        if sparse or loaded.switcher.active:
            loaded.switcher.apply(sparse)
    fused = False
    if loras:
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in loras], adapter_weights=[w for _, w in loras])
        if params.adapter_mode == "fused":
            pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0, adapter_names=[n for n, _ in loras])
            fused = True
    elif loaded.loras:
        pipe.disable_lora()
    switch_ms = (time.perf_counter() - t0) * 1000

    def undo() -> None:
        if fused:
            pipe.unfuse_lora(components=["unet", "text_encoder"])
        if loras:
            pipe.disable_lora()

    return info, switch_ms, undo


def _file_label(meta: dict[str, str]) -> str:
    """An adapter's own name from its safetensors metadata, if it carries one."""
    for raw in (meta.get("studio"), meta.get("name")):
        try:
            v = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            v = raw
        if isinstance(v, dict) and v.get("name"):
            return str(v["name"])
        if isinstance(v, str) and v:
            return v
    return ""


def adaptor_path(spec: ModelSpec) -> Path:
    """Where a model's Clockwork adaptor lives: inside a folder model, beside a single file."""
    if spec.path.is_dir():
        return spec.path / ADAPTOR_FILE
    return spec.path.with_suffix(".clockwork.safetensors")


# -- the engine ----------------------------------------------------------------------------
class T2IEngine(Engine):
    name = "t2i"
    title = "Generate"
    description = "Text-to-image with any Stable-Diffusion-family model (embedded model by default)."
    params_model = T2IParams
    idempotent = True
    model_params = ("model",)

    def run(self, params: T2IParams, ctx: EngineContext) -> EngineResult:
        import torch

        ctx.progress(0, 1, "loading model")
        loaded: LoadedPipeline = ctx.model(params.model, "t2i", lambda spec: load_pipeline(spec, ctx.device, ctx.dtype))
        with loaded.lock, torch.inference_mode():
            return self._generate(loaded, params, ctx)

    def _generate(self, loaded: LoadedPipeline, params: T2IParams, ctx: EngineContext) -> EngineResult:
        import torch

        if params.guidance_scale is None:  # the model's own default, recorded as used
            params = params.model_copy(update={"guidance_scale": default_guidance(loaded.spec.path)})
        pipe = loaded.pipe
        f = pipe.vae_scale_factor
        native = pipe.unet.config.sample_size * f
        width, height = params.width or native, params.height or native
        if width % f or height % f:
            raise EngineError(f"width and height must be multiples of {f} for this model (got {width}x{height})")
        pipe.scheduler = make_scheduler(params.scheduler, loaded.base_scheduler)
        run_pipe = pipe
        init = None
        if params.init_image:
            from diffusers import AutoPipelineForImage2Image
            from PIL import Image

            if loaded.img2img is None:
                loaded.img2img = AutoPipelineForImage2Image.from_pipe(pipe)
                loaded.img2img.set_progress_bar_config(disable=True)
            run_pipe = loaded.img2img
            run_pipe.scheduler = pipe.scheduler
            try:
                init = Image.open(ctx.resolve_input(params.init_image)).convert("RGB").resize((width, height))
            except OSError as e:
                raise EngineError(f"cannot read init_image: {e}") from None
        steps_per_pass = max(1, min(int(params.steps * params.strength), params.steps)) if init else params.steps
        total = steps_per_pass * params.batch_count
        seed = params.seed if params.seed >= 0 else secrets.randbelow(2**32)
        used = params.model_dump(mode="json") | {"seed": seed, "width": width, "height": height}
        preview_path = ctx.work_dir / "preview.png"
        adaptor = self._adaptor(loaded, ctx) if params.clockwork == "adaptor" else None
        adapter_info, switch_ms, undo = apply_adapters(loaded, params, ctx)
        try:
            return self._loop(loaded, params, ctx, run_pipe, init, width, height, steps_per_pass, total, seed, used,
                              preview_path, adaptor, switch_ms, adapter_info)
        finally:
            undo()

    def _loop(self, loaded: LoadedPipeline, params: T2IParams, ctx: EngineContext, run_pipe: Any, init: Any,
              width: int, height: int, steps_per_pass: int, total: int, seed: int, used: dict[str, Any],
              preview_path: Path, adaptor: Any, switch_ms: float, adapter_info: list) -> EngineResult:
        import torch

        pipe = loaded.pipe
        artifacts: list[Artifact] = []
        done = 0
        cheap = 0
        for b in range(params.batch_count):
            ctx.check_cancelled()
            seeds = [(seed + b * params.batch_size + k) % 2**32 for k in range(params.batch_size)]
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

            def on_step(_p: Any, i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
                ctx.check_cancelled()  # raises Cancelled out of the pipeline: stops within one step
                step = done + i + 1
                pv = None
                if params.preview_every and (i + 1) % params.preview_every == 0 and i + 1 < steps_per_pass:
                    pv = self._preview(loaded, kw["latents"][0], preview_path, ctx.device)
                ctx.progress(step, total, f"step {step}/{total}", pv)
                return kw

            call: dict[str, Any] = dict(prompt=[params.prompt] * params.batch_size,
                                        negative_prompt=[params.negative_prompt] * params.batch_size,
                                        num_inference_steps=params.steps, guidance_scale=params.guidance_scale,
                                        generator=gens, callback_on_step_end=on_step, output_type="pil")
            if init is not None:
                call |= {"image": init, "strength": params.strength}
            else:
                call |= {"height": height, "width": width}
            try:
                if params.clockwork != "off":
                    from engines.t2i.clockwork import Clockwork

                    with Clockwork(run_pipe.unet, params.clock_period, params.clockwork, adaptor) as cw:
                        images = run_pipe(**call).images
                    cheap += cw.cheap_steps
                else:
                    images = run_pipe(**call).images
            except Cancelled:
                raise
            except torch.OutOfMemoryError as e:
                raise EngineError(f"out of memory at {width}x{height}, batch {params.batch_size}: lower the size "
                                  f"or batch ({str(e).splitlines()[0]})") from None
            done += steps_per_pass
            for k, (img, s) in enumerate(zip(images, seeds)):
                idx = b * params.batch_size + k
                studio_meta = {"params": used, "seed": s, "index": idx, "model": {
                    "ref": params.model, "kind": loaded.spec.kind, "name": loaded.name, "hash": loaded.model_hash},
                    "device": ctx.device, "dtype": str(pipe.unet.dtype).replace("torch.", ""), "version": VERSION,
                    "adapters": adapter_info}
                text = a1111_parameters(used, s, img.width, img.height, loaded.name, loaded.model_hash, VERSION,
                                        adapter_info)
                path = ctx.work_dir / f"{seed}-{idx:03d}.png"
                img.save(path, pnginfo=pnginfo(text, studio_meta))
                artifacts.append(Artifact(path, "image", "image/png", {
                    "prompt": params.prompt, "negative_prompt": params.negative_prompt, "seed": s, "index": idx,
                    "params": used, "model_hash": loaded.model_hash, "parameters": text}))
        return EngineResult(artifacts, {"seed": seed, "images": len(artifacts), "model": loaded.name,
                                        "model_hash": loaded.model_hash, "clockwork_cheap_steps": cheap,
                                        "steps_total": total, "adapter_switch_ms": round(switch_ms, 2)})

    @staticmethod
    def _preview(loaded: LoadedPipeline, latents: Any, dest: Path, device: str) -> Path:
        from engines.t2i.preview import fit_factors, latents_to_image, load_taesd, taesd_image

        if loaded.preview_factors is None:
            taesd = load_taesd(loaded.pipe, device)
            loaded.preview_factors = taesd if taesd is not None else fit_factors(loaded.pipe.vae, latents.shape[0],
                                                                                  device)
        if isinstance(loaded.preview_factors, torch_module()):
            taesd_image(loaded.preview_factors, latents, loaded.pipe.vae.config.scaling_factor).save(dest)
        else:
            latents_to_image(latents, loaded.preview_factors).save(dest)
        return dest

    @staticmethod
    def _adaptor(loaded: LoadedPipeline, ctx: EngineContext) -> Any:
        from engines.t2i.clockwork import load_adaptor

        if "default" not in loaded.adaptors:
            path = adaptor_path(loaded.spec)
            if not path.is_file():
                raise EngineError(f"no Clockwork adaptor trained for this model ({path} is missing); use "
                                  "clockwork=reuse or train one with `studio train-clockwork`")
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                trained_for = json.loads((f.metadata() or {}).get("model_hash", '""'))
            if trained_for and trained_for != loaded.model_hash:
                raise EngineError("the Clockwork adaptor was trained for another version of this model; retrain it "
                                  "with `studio train-clockwork` or use clockwork=reuse")
            loaded.adaptors["default"] = load_adaptor(path, ctx.device, loaded.pipe.unet.dtype)
        return loaded.adaptors["default"]

"""The t2i engine: any SD-family diffusers pipeline, schedulers, seeds, previews,
cancel per step, provenance in every PNG, optional img2img and Clockwork."""
from __future__ import annotations

import json
import secrets
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.base import Artifact, Cancelled, Engine, EngineContext, EngineError, EngineResult, ModelSpec
from engines.pipelines import LoadedPipeline, default_guidance, load_pipeline, make_scheduler
from engines.t2i.metadata import a1111_parameters, pnginfo
from engines.t2i.params import T2IParams
from engines.world.compose import speaks_world

VERSION = "Studio 0.1"
ADAPTOR_FILE = "clockwork_adaptor.safetensors"


PROFILE_FILE = "clockwork_profile.json"


def adaptor_path(spec: ModelSpec) -> Path:
    """Where a model's Clockwork adaptor lives: inside a folder model, beside a single file."""
    if spec.path.is_dir():
        return spec.path / ADAPTOR_FILE
    return spec.path.with_suffix(".clockwork.safetensors")


def profile_path(spec: ModelSpec) -> Path:
    """Where a model's measured Clockwork choices live (written by ``studio bench clockwork``)."""
    if spec.path.is_dir():
        return spec.path / PROFILE_FILE
    return spec.path.with_suffix(".clockwork.json")


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
        from engines.adapters.apply import AdapterUse, apply_adapters

        plan = self._plan(loaded, params, ctx)
        uses = [AdapterUse(Path(ctx.resolve_input(u.adapter)), u.weight, u.name, u.adapter) for u in params.adapters]
        if params.adapter_mode == "composite" and len(uses) > 1:
            import time

            from engines.adapters.composite import CompositeMix

            t0 = time.perf_counter()
            with CompositeMix(loaded, uses) as mix:
                return self._loop(loaded, plan, ctx, mix.info, (time.perf_counter() - t0) * 1000)
        adapter_info, switch_ms, undo = apply_adapters(loaded, uses, params.adapter_mode,
                                                       ctx.extras.get("adapter_cache_bytes"))
        try:
            return self._loop(loaded, plan, ctx, adapter_info, switch_ms)
        finally:
            undo()

    def _plan(self, loaded: LoadedPipeline, params: T2IParams, ctx: EngineContext) -> "_Plan":
        """Resolve defaults, sizes, scheduler, img2img and the Clockwork adaptor for one job."""
        if params.guidance_scale is None:  # the model's own default, recorded as used
            params = params.model_copy(update={"guidance_scale": default_guidance(loaded.spec.path)})
        pipe = loaded.pipe
        f = pipe.vae_scale_factor
        native = pipe.unet.config.sample_size * f
        width, height = params.width or native, params.height or native
        if width % f or height % f:
            raise EngineError(f"width and height must be multiples of {f} for this model (got {width}x{height})")
        pipe.scheduler = make_scheduler(params.scheduler, loaded.base_scheduler)
        run_pipe, init = pipe, None
        if params.init_image:
            from diffusers import AutoPipelineForImage2Image
            from PIL import Image

            if "img2img" not in loaded.extras:
                loaded.extras["img2img"] = AutoPipelineForImage2Image.from_pipe(pipe)
                loaded.extras["img2img"].set_progress_bar_config(disable=True)
            run_pipe = loaded.extras["img2img"]
            run_pipe.scheduler = pipe.scheduler
            try:
                init = Image.open(ctx.resolve_input(params.init_image)).convert("RGB").resize((width, height))
            except OSError as e:
                raise EngineError(f"cannot read init_image: {e}") from None
        steps_per_pass = max(1, min(int(params.steps * params.strength), params.steps)) if init else params.steps
        seed = params.seed if params.seed >= 0 else secrets.randbelow(2**32)
        clock, regional_clock = None, None
        layout = params.layout == "auto" and not params.adapters and self._speaks_world(loaded)
        mode, auto, auto_off = params.clockwork, None, None
        if mode == "auto":
            mode, auto, auto_off = self._auto_mode(loaded, ctx, params, (width, height) != (native, native))
        user_period = params.clock_period is not None  # a period the user set holds for every image
        if mode != "off":
            # auto: each kind of image under the profile's setting measured to hold its quality
            # (``holding`` for one object, ``layout`` for images drawn region by region); an
            # explicit mode: the faster single-object setting, with the layout one for regional
            # images, which lose binding under it (studio bench layout)
            choice = dict(auto[0]) if auto else self._clock_choice(loaded, params, mode)
            if user_period:
                choice |= {"period": params.clock_period, "warmup": 0}
            else:
                params = params.model_copy(update={"clock_period": choice["period"] or 2})
            clock = self._clock(loaded, ctx, mode, choice)
            if layout and not user_period:
                regional = auto[1] if auto else self._clock_choice(loaded, params, mode, regional=True)
                if regional != choice:
                    regional_clock = self._clock(loaded, ctx, mode, regional)
        return _Plan(params=params, run_pipe=run_pipe, init=init, width=width, height=height,
                     steps_per_pass=steps_per_pass, total=steps_per_pass * params.batch_count, seed=seed,
                     used=params.model_dump(mode="json") | {"seed": seed, "width": width, "height": height},
                     preview_path=ctx.work_dir / "preview.png", clock=clock,
                     # adapters teach words of their own (a personal subject's name) that a reworded
                     # prompt would drop: with adapters the prompt goes through as typed
                     layout=layout, regional_clock=regional_clock, clock_auto_off=auto_off)

    def _loop(self, loaded: LoadedPipeline, plan: "_Plan", ctx: EngineContext, adapter_info: list,
              switch_ms: float) -> EngineResult:
        import torch

        params, pipe = plan.params, loaded.pipe
        artifacts: list[Artifact] = []
        done = 0
        cheap = 0
        regional = 0  # images drawn region by region (layout)
        regional_clocked = 0  # ... of them under the profile's regional clock
        for b in range(params.batch_count):
            ctx.check_cancelled()
            seeds = [(plan.seed + b * params.batch_size + k) % 2**32 for k in range(params.batch_size)]
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

            def on_step(_p: Any, i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
                ctx.check_cancelled()  # raises Cancelled out of the pipeline: stops within one step
                step = done + i + 1
                pv = None
                if params.preview_every and (i + 1) % params.preview_every == 0 and i + 1 < plan.steps_per_pass:
                    pv = self._preview(loaded, kw["latents"][0], plan.preview_path, ctx.device)
                ctx.progress(step, plan.total, f"step {step}/{plan.total}", pv)
                return kw

            prompts, region_ctx, layouts = [params.prompt] * params.batch_size, nullcontext(), [None] * len(seeds)
            clock = plan.clock
            if plan.layout:  # the world model: prompt read into objects, one region each (engines.world.compose)
                from engines.world.compose import prepare

                prompts, region_ctx, plans = prepare(pipe, prompts, seeds, plan.height, plan.width)
                layouts = [p.as_dict() for p in plans]
                n_regional = sum(len(p.regions) >= 2 for p in plans)
                regional += n_regional
                if n_regional and plan.regional_clock is not None:
                    clock = plan.regional_clock  # one clock per batch call: the regional one wins
                    regional_clocked += n_regional
            call: dict[str, Any] = dict(prompt=prompts,
                                        negative_prompt=[params.negative_prompt] * params.batch_size,
                                        num_inference_steps=params.steps, guidance_scale=params.guidance_scale,
                                        generator=gens, callback_on_step_end=on_step, output_type="pil")
            if plan.init is not None:
                call |= {"image": plan.init, "strength": params.strength}
            else:
                call |= {"height": plan.height, "width": plan.width}
            try:
                with region_ctx:  # its pre-hook comes first, so Clockwork sees the widened batch
                    if clock is not None:
                        from engines.pipelines.clockwork import Clockwork

                        with Clockwork(plan.run_pipe.unet, clock.period, clock.mode, clock.adaptor,
                                       depth=clock.depth, warmup=clock.warmup) as cw:
                            images = plan.run_pipe(**call).images
                        cheap += cw.cheap_steps
                    else:
                        images = plan.run_pipe(**call).images
            except Cancelled:
                raise
            except torch.OutOfMemoryError as e:
                raise EngineError(f"out of memory at {plan.width}x{plan.height}, batch {params.batch_size}: lower the size "
                                  f"or batch ({str(e).splitlines()[0]})") from None
            done += plan.steps_per_pass
            for k, (img, s) in enumerate(zip(images, seeds)):
                idx = b * params.batch_size + k
                studio_meta = {"params": plan.used, "seed": s, "index": idx, "model": {
                    "ref": params.model, "kind": loaded.spec.kind, "name": loaded.name, "hash": loaded.model_hash},
                    "device": ctx.device, "dtype": str(pipe.unet.dtype).replace("torch.", ""), "version": VERSION,
                    "adapters": adapter_info}
                if layouts[k] is not None:
                    studio_meta["layout"] = layouts[k]
                if clock is not None:  # the clock this image ran under (regional images differ)
                    studio_meta["clockwork"] = clock.describe() | ({"auto": True} if params.clockwork == "auto" else {})
                text = a1111_parameters(plan.used, s, img.width, img.height, loaded.name, loaded.model_hash, VERSION,
                                        adapter_info)
                path = ctx.work_dir / f"{plan.seed}-{idx:03d}.png"
                img.save(path, pnginfo=pnginfo(text, studio_meta))
                artifacts.append(Artifact(path, "image", "image/png", {
                    "prompt": params.prompt, "negative_prompt": params.negative_prompt, "seed": s, "index": idx,
                    "params": plan.used, "model_hash": loaded.model_hash, "parameters": text,
                    **({"layout": layouts[k]} if layouts[k] is not None else {})}))
        return EngineResult(artifacts, {"seed": plan.seed, "images": len(artifacts), "model": loaded.name,
                                        "model_hash": loaded.model_hash, "clockwork_cheap_steps": cheap,
                                        "clockwork_cut_depth": plan.clock.depth if plan.clock else None,
                                        "clockwork": plan.clock.describe() if plan.clock else None,
                                        **({"clockwork_auto_off": plan.clock_auto_off} if plan.clock_auto_off else {}),
                                        "layout": "auto" if plan.layout else "off", "regional_images": regional,
                                        **({"clockwork_regional": plan.regional_clock.describe(),
                                            "clockwork_regional_images": regional_clocked}
                                           if plan.regional_clock is not None else {}),
                                        "steps_total": plan.total, "adapter_switch_ms": round(switch_ms, 2)})

    @staticmethod
    def _preview(loaded: LoadedPipeline, latents: Any, dest: Path, device: str) -> Path:
        from engines.t2i.preview import fit_factors, latents_to_image, load_taesd, taesd_image

        import torch

        if "preview" not in loaded.extras:
            taesd = load_taesd(loaded.pipe, device)
            loaded.extras["preview"] = taesd if taesd is not None else fit_factors(loaded.pipe.vae, latents.shape[0],
                                                                                    device)
        decoder = loaded.extras["preview"]
        if isinstance(decoder, torch.nn.Module):
            taesd_image(decoder, latents, loaded.pipe.vae.config.scaling_factor).save(dest)
        else:
            latents_to_image(latents, decoder).save(dest)
        return dest

    @staticmethod
    def _speaks_world(loaded: LoadedPipeline) -> bool:
        """Does the model ship the world's prompt grammar? (read once per loaded model)"""
        if "world_grammar" not in loaded.extras:
            loaded.extras["world_grammar"] = loaded.spec.path.is_dir() and speaks_world(loaded.spec.path)
        return loaded.extras["world_grammar"]

    @staticmethod
    def _clock_choice(loaded: LoadedPipeline, params: T2IParams, mode: str, regional: bool = False) -> dict[str, Any]:
        """The Clockwork setting the model's profile measured best for this sampler, step count
        and mode — period, cut depth, adaptor file, warm-up (a profile made for other weights is
        ignored); period 2 at depth 1 with the model's default adaptor without one. ``regional``:
        the setting for images drawn region by region, where the profile has one."""
        from engines.pipelines.clockwork import choose_setting

        return choose_setting(T2IEngine._profile(loaded), params.scheduler, params.steps, mode, regional=regional)

    @staticmethod
    def _profile(loaded: LoadedPipeline) -> dict[str, Any] | None:
        """The model's measured Clockwork profile (None: none, unreadable, or made for other weights).
        Read again when the file changes, so a profile written by a bench while the model is loaded
        takes effect with the next job."""
        path = profile_path(loaded.spec)
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None
        cached = loaded.extras.get("clockwork_profile")
        if cached is None or cached[0] != stamp:
            prof = None
            if stamp is not None:
                try:
                    prof = json.loads(path.read_text())
                except (OSError, ValueError):
                    prof = None
            if not isinstance(prof, dict) or prof.get("model_hash") != loaded.model_hash:
                prof = None
            loaded.extras["clockwork_profile"] = cached = (stamp, prof)
        return cached[1]

    @classmethod
    def _auto_mode(cls, loaded: LoadedPipeline, ctx: EngineContext, params: T2IParams,
                   other_size: bool) -> tuple[str, tuple[dict[str, Any], dict[str, Any]] | None, str | None]:
        """clockwork=auto: (mode, (setting for one object, setting for regional images), None)
        from ``auto_setting``, else ("off", None, why). Only what a profile measured qualifies:
        the same weights (no adapters), the native size, txt2img's full schedule, a sampler and
        step count the profile covers, and settings chosen to hold quality (``studio bench
        layout --write-profile``)."""
        from engines.pipelines.clockwork import auto_setting

        if other_size:
            return "off", None, "the Clockwork profile was measured at the model's native size"
        if params.adapters:
            return "off", None, "adapters change the weights the Clockwork profile was measured on"
        if params.init_image:
            return "off", None, "img2img runs a partial schedule the Clockwork profile did not measure"
        prof = cls._profile(loaded)
        if prof is None:
            return "off", None, ("no measured Clockwork profile for these weights (studio bench clockwork / "
                                 "studio bench layout --write-profile)")

        def adaptor_ok(name: str | None) -> bool:
            try:
                cls._adaptor(loaded, ctx, name)
                return True
            except EngineError:
                return False

        picked = auto_setting(prof, params.scheduler, params.steps, adaptor_ok)
        if picked is None:
            return "off", None, (f"the Clockwork profile has no quality-holding setting for {params.scheduler} "
                                 f"at {params.steps} steps")
        return picked[0], picked[1:], None

    @classmethod
    def _clock(cls, loaded: LoadedPipeline, ctx: EngineContext, mode: str, choice: dict[str, Any]) -> "_Clock":
        """A profile choice (``choose_setting``) as the job runs it; an adaptor's own depth wins."""
        adaptor = cls._adaptor(loaded, ctx, choice.get("adaptor")) if mode == "adaptor" else None
        return _Clock(mode, choice["period"] or 2, int(adaptor.config["depth"]) if adaptor is not None
                      else int(choice["depth"]), int(choice["warmup"]), adaptor)

    @staticmethod
    def _adaptor(loaded: LoadedPipeline, ctx: EngineContext, name: str | None = None) -> Any:
        """The model's Clockwork adaptor, or the named one beside it (the profile's choice for
        this step count); a named file that is missing falls back to the default adaptor."""
        from engines.pipelines.clockwork import load_adaptor

        cache = loaded.extras.setdefault("clockwork", {})
        path = adaptor_path(loaded.spec)
        if name and (path.parent / name).is_file():
            path = path.parent / name
        if path.name not in cache:
            if not path.is_file():
                raise EngineError(f"no Clockwork adaptor trained for this model ({path} is missing); use "
                                  "clockwork=reuse or train one with `studio train-clockwork`")
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                trained_for = json.loads((f.metadata() or {}).get("model_hash", '""'))
            if trained_for and trained_for != loaded.model_hash:
                raise EngineError("the Clockwork adaptor was trained for another version of this model; retrain it "
                                  "with `studio train-clockwork` or use clockwork=reuse")
            cache[path.name] = load_adaptor(path, ctx.device, loaded.pipe.unet.dtype)
        return cache[path.name]


@dataclass(frozen=True)
class _Clock:
    """One Clockwork setting as a job runs it."""

    mode: str  # "reuse" or "adaptor" (auto resolved)
    period: int
    depth: int
    warmup: int
    adaptor: Any  # the adaptor module (its own depth wins), or None for reuse

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "period": self.period, "depth": self.depth, "warmup": self.warmup}


@dataclass(frozen=True)
class _Plan:
    """Everything one t2i job resolved before the denoising loop."""

    params: T2IParams
    run_pipe: Any  # the txt2img pipeline or its img2img view
    init: Any  # PIL init image for img2img, else None
    width: int
    height: int
    steps_per_pass: int
    total: int  # steps over all batches (progress)
    seed: int
    used: dict[str, Any]  # params as used (seed, size, guidance resolved): provenance
    preview_path: Path
    clock: _Clock | None = None  # the Clockwork setting (None: Clockwork off)
    layout: bool = False  # read the prompt into objects and draw them region by region (world models)
    regional_clock: _Clock | None = None  # the Clockwork setting for images drawn region by region
    clock_auto_off: str | None = None  # why clockwork=auto resolved to off

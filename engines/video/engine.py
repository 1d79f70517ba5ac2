"""The ``video-edit`` engine: instruction-based editing of a clip with an InstructPix2Pix-format
model, frame by frame (streaming), optionally steadied by cross-frame attention to key frames.
H.264 mp4 out at the source frame rate / stride, audio carried over, a poster frame."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engines.base import Artifact, Engine, EngineContext, EngineError, EngineResult, ModelNotFound, ModelSpec
from engines.video.params import VideoEditParams


# What ``model="embedded"`` runs when ``cfg_model="auto"``: "distilled" = the CFG-distilled student
# (engines/world/weights/ip2p_cfg, one U-Net pass per step), "teacher" = the three-pass model.
# The teacher: the shipped student's held-out edit_success is 12.5 points below the teacher's at
# s_T 3 / s_I 2.5 (0.17 vs 0.30; docs/video.md), outside the 10 points that would make it the
# default. ``cfg_model="distilled"`` picks it.
EMBEDDED_DEFAULT = "teacher"


VARIANTS = ("teacher", "distilled", "one-step")


def embedded_spec(variant: str = "teacher") -> ModelSpec:
    """The embedded world's edit model. ``embedded`` names the t2i model everywhere else (the
    Studio resolves it to that folder); for this engine it means the InstructPix2Pix model
    trained from it (``engines.video.train_ip2p``: ``variant="teacher"``), its CFG-distilled
    student (``engines.video.distill_cfg``: ``variant="distilled"``) or the one-step student
    (``engines.video.distill_onestep``: ``variant="one-step"``)."""
    from engines.video.cfg import cfg_model_dir
    from engines.video.distill_onestep import onestep_model_dir
    from engines.world.paths import ip2p_model_dir

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, not {variant!r}")
    path, cmd = {"distilled": (cfg_model_dir(), "python -m engines.video.distill_cfg --install"),
                 "one-step": (onestep_model_dir(), "python -m engines.video.distill_onestep --install"),
                 "teacher": (ip2p_model_dir(), "python -m engines.video.train_ip2p --install")}[variant]
    if not (path / "model_index.json").is_file():
        raise ModelNotFound(f"the embedded edit model ({variant}) is not built at {path}; run `{cmd}`")
    return ModelSpec(ref="embedded", kind="embedded", path=path)


def load_ip2p(spec: Any, device: str, dtype: str, variant: str = "teacher") -> Any:
    """A LoadedPipeline holding an InstructPix2Pix pipeline (U-Net input = noisy latent + image
    latent, 2 × the VAE's latent channels: 8 for SD), or a clear error. ``variant`` picks the
    embedded model (teacher or distilled) when ``spec`` is the embedded spec. A CFG-distilled
    student (its U-Net has a guidance embedding, ``class_embed_type="projection"``, and its folder
    a ``cfg_distill.json``) comes back as a :class:`engines.video.cfg.CFGDistilledIP2PPipeline`:
    same call, one U-Net pass per step; a one-step student (``"one_step": true`` in that json) as
    a :class:`engines.video.distill_onestep.OneStepIP2PPipeline`: one U-Net pass per frame."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from engines.pipelines import load_pipeline
    from engines.video import cfg as C
    from engines.video.distill_onestep import as_one_step_pipeline, is_one_step

    if spec.kind == "embedded" and spec.path != embedded_spec(variant).path:
        spec = embedded_spec(variant)
    loaded = load_pipeline(spec, device, dtype)
    pipe = loaded.pipe
    want = 2 * pipe.vae.config.latent_channels
    if pipe.unet.config.in_channels != want:
        raise EngineError(f"{loaded.name} is not an InstructPix2Pix model: its U-Net takes "
                          f"{pipe.unet.config.in_channels} input channels (an edit model takes {want}: noise + image)")
    if not isinstance(pipe, StableDiffusionInstructPix2PixPipeline):
        pipe = StableDiffusionInstructPix2PixPipeline(**{k: v for k, v in pipe.components.items() if k in (
            "vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor",
            "image_encoder")}, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        loaded.pipe = pipe
    if C.is_student_unet(pipe.unet):
        cfg = C.read_config(spec.path) if spec.kind != "single_file" else None
        if cfg is None:
            raise EngineError(f"{loaded.name}: its U-Net takes a class/guidance embedding but the folder has no "
                              f"{C.CONFIG_NAME} (a CFG-distilled student needs it)")
        loaded.pipe = as_one_step_pipeline(pipe, cfg) if is_one_step(cfg) else C.as_cfg_pipeline(pipe, cfg)
    return loaded


def pipeline_kind(pipe: Any) -> str:
    """"teacher", "distilled" (CFG-distilled, one pass per step) or "one-step" (one pass per frame)."""
    from engines.video.cfg import CFGDistilledIP2PPipeline
    from engines.video.distill_onestep import OneStepIP2PPipeline

    if isinstance(pipe, OneStepIP2PPipeline):
        return "one-step"
    return "distilled" if isinstance(pipe, CFGDistilledIP2PPipeline) else "teacher"


_KIND_WORDS = {"teacher": "not CFG-distilled (no guidance embedding)",
               "distilled": "a CFG-distilled student (one pass per step)",
               "one-step": "a one-step student (one pass per frame)"}


def _weights_stamp(path: Path) -> int:
    return max((f.stat().st_mtime_ns for f in path.glob("*/*.safetensors")), default=0)


def _frame_size(w: int, h: int, short: int) -> tuple[int, int]:
    """(width, height) with the short side ``short``, both multiples of 8."""
    if w <= h:
        nw, nh = short, round(h * short / w)
    else:
        nw, nh = round(w * short / h), short
    return max(8, nw // 8 * 8), max(8, nh // 8 * 8)


class VideoEditEngine(Engine):
    name = "video-edit"
    title = "Edit video"
    description = "Edit a clip by instruction (InstructPix2Pix-format model), temporally steadied by key frames."
    params_model = VideoEditParams
    idempotent = True
    model_params = ("model",)

    def run(self, p: VideoEditParams, ctx: EngineContext) -> EngineResult:
        from PIL import Image

        from engines.video import io as vio
        from engines.video.edit import FrameEditor

        src = Path(ctx.resolve_input(p.video))
        try:
            info = vio.probe(src, max_side=int(ctx.extras.get("video_max_side", vio.MAX_SIDE)),
                             max_seconds=float(ctx.extras.get("video_max_seconds", vio.MAX_SECONDS)))
        except vio.VideoError as e:
            raise EngineError(str(e)) from None
        ctx.progress(0, 1, "loading model")
        variant = EMBEDDED_DEFAULT if p.cfg_model == "auto" else p.cfg_model
        key = "ip2p"
        if p.model == "embedded":  # cached per variant and version of its weights (retrained → reloaded)
            key = f"ip2p:{variant}:{_weights_stamp(embedded_spec(variant).path)}"
        loaded = ctx.model(p.model, key, lambda spec: load_ip2p(spec, ctx.device, ctx.dtype, variant))
        kind = pipeline_kind(loaded.pipe)
        if p.cfg_model != "auto" and kind != p.cfg_model:
            raise EngineError(f"cfg_model={p.cfg_model!r}, but {loaded.name} is {_KIND_WORDS[kind]}; "
                              "use cfg_model='auto'")
        steps = 1 if kind == "one-step" else p.steps  # a one-step student runs one step whatever is asked
        pipe = loaded.pipe
        short = p.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        if short % 8:
            raise EngineError(f"resolution must be a multiple of 8 (got {short})")
        size = _frame_size(info.width, info.height, short)
        total = max(1, min(p.max_frames, -(-info.frames // p.stride) if info.frames else p.max_frames))
        out_path = ctx.work_dir / "edited.mp4"
        poster = ctx.work_dir / "poster.png"
        preview = ctx.work_dir / "preview.png"
        fps = info.fps / p.stride
        editor = FrameEditor(pipe, p.instruction, text_guidance=p.text_guidance, image_guidance=p.image_guidance,
                             steps=steps, consistency=p.consistency, keyframe_every=p.keyframe_every, seed=p.seed,
                             check=ctx.check_cancelled)
        with loaded.lock, editor:
            writer = vio.Writer(out_path, size, fps, audio_from=src if info.has_audio and p.stride == 1 else None)
            t0 = time.perf_counter()
            n = 0
            try:
                for frame in vio.read_frames(src, size=size, stride=p.stride, max_frames=p.max_frames):
                    img = editor.edit(frame)
                    writer.write(img)
                    n += 1
                    pv = None
                    if n == 1:
                        Image.fromarray(img).save(poster)
                    if n == 1 or n % 8 == 0:
                        Image.fromarray(img).save(preview)
                        pv = preview
                    ctx.progress(n, max(total, n), f"frame {n}/{max(total, n)}", pv)
            except vio.VideoError as e:
                writer.abort()
                raise EngineError(str(e)) from None
            except BaseException:  # cancelled or failed: no partial video is left behind
                writer.abort()
                raise
            writer.close()
        seconds = time.perf_counter() - t0
        meta = {"instruction": p.instruction, "frames": n, "fps": fps, "size": list(size), "audio": info.has_audio,
                "consistency": p.consistency, "model": loaded.name, "cfg_distilled": kind != "teacher",
                "cfg_model": kind, "one_step": kind == "one-step", "steps": steps, "steps_requested": p.steps,
                "unet_passes_per_step": editor.unet_passes_per_step,
                "unet_passes_per_frame": editor.unet_passes_per_step * steps, "model_hash": loaded.model_hash,
                "edit_fps": round(n / max(seconds, 1e-9), 3)}
        return EngineResult([Artifact(out_path, "video", "video/mp4", meta),
                             Artifact(poster, "image", "image/png", {"poster_of": "edited.mp4"})], meta)

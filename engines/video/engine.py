"""The ``video-edit`` engine: instruction-based editing of a clip with an InstructPix2Pix-format
model, frame by frame (streaming), optionally steadied by cross-frame attention to key frames.
H.264 mp4 out at the source frame rate / stride, audio carried over, a poster frame."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engines.base import Artifact, Cancelled, Engine, EngineContext, EngineError, EngineResult
from engines.video.params import VideoEditParams


def load_ip2p(spec: Any, device: str, dtype: str) -> Any:
    """A LoadedPipeline holding an InstructPix2Pix pipeline (8-channel U-Net input), or a clear error."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from engines.pipelines import load_pipeline

    loaded = load_pipeline(spec, device, dtype)
    pipe = loaded.pipe
    if pipe.unet.config.in_channels != 8:
        raise EngineError(f"{loaded.name} is not an InstructPix2Pix model: its U-Net takes "
                          f"{pipe.unet.config.in_channels} input channels (an edit model takes 8: noise + image)")
    if not isinstance(pipe, StableDiffusionInstructPix2PixPipeline):
        pipe = StableDiffusionInstructPix2PixPipeline(**{k: v for k, v in pipe.components.items() if k in (
            "vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor",
            "image_encoder")}, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        loaded.pipe = pipe
    return loaded


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
        import numpy as np
        import torch
        from PIL import Image

        from engines.video import io as vio
        from engines.video.attention import KeyFrameStore, install, uninstall

        src = Path(ctx.resolve_input(p.video))
        try:
            info = vio.probe(src, max_side=int(ctx.extras.get("video_max_side", vio.MAX_SIDE)),
                             max_seconds=float(ctx.extras.get("video_max_seconds", vio.MAX_SECONDS)))
        except vio.VideoError as e:
            raise EngineError(str(e)) from None
        ctx.progress(0, 1, "loading model")
        loaded = ctx.model(p.model, "ip2p", lambda spec: load_ip2p(spec, ctx.device, ctx.dtype))
        pipe = loaded.pipe
        short = p.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        if short % 8:
            raise EngineError(f"resolution must be a multiple of 8 (got {short})")
        size = _frame_size(info.width, info.height, short)
        total = max(1, min(p.max_frames, -(-info.frames // p.stride) if info.frames else p.max_frames))
        out_path = ctx.work_dir / "edited.mp4"
        poster = ctx.work_dir / "poster.png"
        preview = ctx.work_dir / "preview.png"
        store = KeyFrameStore()
        fps = info.fps / p.stride
        with loaded.lock, torch.inference_mode():
            old = install(pipe.unet, store) if p.consistency == "keyframes" else None
            writer = vio.Writer(out_path, size, fps, audio_from=src if info.has_audio and p.stride == 1 else None)
            t0 = time.perf_counter()
            n = 0
            try:
                for i, frame in enumerate(vio.read_frames(src, size=size, stride=p.stride, max_frames=p.max_frames)):
                    ctx.check_cancelled()
                    if old is not None:
                        key = i == 0 or (p.keyframe_every and i % p.keyframe_every == 0)
                        if key:
                            store.reset()
                        store.mode, store.step = ("record" if key else "use"), 0

                    def on_step(_p: Any, s: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
                        ctx.check_cancelled()
                        store.step = s + 1
                        return kw

                    gen = torch.Generator(device="cpu").manual_seed(p.seed)  # the same noise for every frame
                    out = pipe(prompt=p.instruction, image=Image.fromarray(frame), num_inference_steps=p.steps,
                               guidance_scale=p.text_guidance, image_guidance_scale=p.image_guidance, generator=gen,
                               callback_on_step_end=on_step, output_type="np").images[0]  # [H, W, 3] in [0, 1]
                    img = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
                    writer.write(img)
                    n += 1
                    pv = None
                    if n == 1:
                        Image.fromarray(img).save(poster)
                    if n == 1 or n % 8 == 0:
                        Image.fromarray(img).save(preview)
                        pv = preview
                    ctx.progress(n, max(total, n), f"frame {n}/{max(total, n)}", pv)
            except Cancelled:
                writer.abort()
                raise
            except vio.VideoError as e:
                writer.abort()
                raise EngineError(str(e)) from None
            except BaseException:
                writer.abort()
                raise
            finally:
                store.reset()
                store.mode = "off"
                if old is not None:
                    uninstall(pipe.unet, old)
            writer.close()
        seconds = time.perf_counter() - t0
        meta = {"instruction": p.instruction, "frames": n, "fps": fps, "size": list(size), "audio": info.has_audio,
                "consistency": p.consistency, "model": loaded.name, "model_hash": loaded.model_hash,
                "edit_fps": round(n / max(seconds, 1e-9), 3)}
        return EngineResult([Artifact(out_path, "video", "video/mp4", meta),
                             Artifact(poster, "image", "image/png", {"poster_of": "edited.mp4"})], meta)

"""The ``hdri`` engine (text → 360° HDR panorama) and the ``relight`` engine (a portrait photo
or clip relit by an environment map)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Artifact, Cancelled, Engine, EngineContext, EngineError, EngineResult, ModelNotFound
from engines.relight.params import HDRIParams, RelightParams


def _stamp(path: Path) -> int:
    return max((f.stat().st_mtime_ns for f in path.glob("*") if f.is_file()), default=0)


def light_summary(env: np.ndarray) -> dict[str, Any]:
    """The map's dominant light in words and numbers (what a user checks against the prompt)."""
    from engines.relight import envworld as W
    from engines.relight import metrics as M
    from engines.relight.sphere import to_angles

    d = M.dominant_direction(env)
    el, az = (math.degrees(float(v)) for v in to_angles(d))
    rgb = M.light_color(env, d)
    return {"direction": [round(float(v), 4) for v in d], "elevation_deg": round(el, 1), "azimuth_deg": round(az, 1),
            "where": W.where(d), "rgb": [round(float(v), 4) for v in rgb / max(float(rgb.max()), 1e-9)],
            "dynamic_range": round(M.dynamic_range(env), 1)}


def env_artifacts(env: np.ndarray, work: Path, stem: str = "environment") -> tuple[list[Artifact], dict[str, Any]]:
    """.hdr + .exr + tone-mapped and mirror-ball previews + SH coefficients for a map."""
    from PIL import Image

    from engines.relight import hdr_io, preview
    from engines.relight.sphere import project_sh

    from engines.relight.environments import shrink

    sh = project_sh(shrink(env)).astype(np.float32)  # [9, 3] nits
    meta = {"width": int(env.shape[1]), "height": int(env.shape[0]), "sh": [[round(float(v), 6) for v in row] for row in sh],
            "light": light_summary(env)}
    hdr, exr = work / f"{stem}.hdr", work / f"{stem}.exr"
    hdr_io.write_hdr(hdr, env)
    hdr_io.write_exr(exr, env)
    pano, ball = work / f"{stem}_preview.png", work / f"{stem}_ball.png"
    Image.fromarray(preview.tonemap(env)).save(pano)
    ball_lin = preview.mirror_ball(env, 192)
    Image.fromarray(preview.tonemap(ball_lin)).save(ball)
    return [Artifact(hdr, "hdr", "image/vnd.radiance", meta | {"format": "hdr"}),
            Artifact(exr, "hdr", "image/x-exr", meta | {"format": "exr"}),
            Artifact(pano, "image", "image/png", {"role": "panorama_preview", "sh": meta["sh"], "light": meta["light"]}),
            Artifact(ball, "image", "image/png", {"role": "mirror_ball"})], meta


def _light_placement(model: Any, p: HDRIParams) -> tuple[Any, dict[str, Any] | None]:
    """(direction override for ``generate`` or None, where the main light was put — for the
    job's metadata). Azimuth/elevation given in the params override the prompt's, one or both."""
    from engines.relight.sphere import from_angles, to_angles

    has_prior = getattr(model, "prior", None) is not None
    override = p.light_azimuth is not None or p.light_elevation is not None
    if override and not has_prior:
        raise EngineError("this HDRI model cannot place the light at a given direction (it has no light layout); "
                          "leave light_azimuth/light_elevation empty")
    d = model.light_direction(p.prompt, p.seed) if has_prior else None
    if not override:
        return None, _angles(d, "prompt") if d is not None else None
    el, az = (math.degrees(float(v)) for v in to_angles(d)) if d is not None else (30.0, 0.0)
    el = p.light_elevation if p.light_elevation is not None else el
    az = p.light_azimuth if p.light_azimuth is not None else az
    d = from_angles(math.radians(el), math.radians(az))
    return d, _angles(d, "params")


def _angles(d: Any, source: str) -> dict[str, Any]:
    from engines.relight.sphere import to_angles

    el, az = (round(math.degrees(float(v)), 1) for v in to_angles(d))
    return {"azimuth_deg": az, "elevation_deg": el, "from": source}


class HDRIEngine(Engine):
    name = "hdri"
    title = "Text → HDR environment"
    description = "A 360° HDR environment map (equirectangular, PQ-domain diffusion) from a description of the light."
    params_model = HDRIParams
    idempotent = True
    model_params = ("model",)

    def run(self, p: HDRIParams, ctx: EngineContext) -> EngineResult:
        try:
            from engines.relight import hdri_model as HM
        except ImportError as e:  # pragma: no cover - ships with the Studio
            raise EngineError(f"the HDRI model code is missing: {e}") from None
        folder = HM.DEFAULT_DIR if p.model == "embedded" else Path(ctx.model_spec(p.model).path)
        if not folder.is_dir() or not any(folder.iterdir()):
            raise ModelNotFound(f"no HDRI model at {folder}; train one with `python -m engines.relight.train_hdri`")
        ctx.progress(0, p.steps, "loading model")
        model = ctx.model("embedded", f"hdri:{folder}:{_stamp(folder)}", lambda spec: HM.load(folder, ctx.device))

        def cancelled() -> bool:
            return ctx.is_cancelled()

        spot, placed = _light_placement(model, p)
        t0 = time.perf_counter()
        try:
            env = model.generate(p.prompt, p.negative_prompt, seed=p.seed, steps=p.steps, guidance_scale=p.guidance_scale,
                                 width=p.width, exposure=p.exposure,
                                 progress=lambda i, n: ctx.progress(i, n, f"step {i}/{n}"), is_cancelled=cancelled,
                                 light_direction=spot)
        except Exception as e:
            if ctx.is_cancelled() or type(e).__name__ in ("GenerationCancelled", "Cancelled"):
                raise Cancelled() from None
            raise
        seconds = time.perf_counter() - t0
        arts, meta = env_artifacts(env, ctx.work_dir)
        meta |= {"prompt": p.prompt, "seed": p.seed, "steps": p.steps, "seconds": round(seconds, 3),
                 "unknown_words": list(model.unknown_words(p.prompt)), "light_placed": placed}
        for a in arts:
            a.meta.update({k: meta[k] for k in ("prompt", "seed")})
        return EngineResult(arts, meta)


class RelightEngine(Engine):
    name = "relight"
    title = "Relight a portrait"
    description = "Relight a photo or clip of a person by an environment map (segmentation + normals + SH light)."
    params_model = RelightParams
    idempotent = True

    def run(self, p: RelightParams, ctx: EngineContext) -> EngineResult:
        from PIL import Image, ImageOps

        from engines.relight import environments as E
        from engines.relight.portrait import PortraitModelError, PortraitModels, normals_to_rgb
        from engines.relight.relighter import Relighter, env_coeffs

        src = Path(ctx.resolve_input(p.portrait))
        if p.environment:
            try:
                env = E.load_map(Path(ctx.resolve_input(p.environment)))
            except Exception as e:
                raise EngineError(f"cannot read the environment map: {str(e).splitlines()[0][:200]}") from None
            env_name = "upload"
        else:
            env, env_name = E.builtin(p.builtin), p.builtin
        coeffs = env_coeffs(env)
        try:
            models = ctx.model("embedded", "portrait-tflite", lambda spec: PortraitModels()) if ctx.load_model \
                else PortraitModels()
        except PortraitModelError as e:
            raise EngineError(str(e)) from None
        relighter = Relighter(models, coeffs, p.yaw, p.strength, p.mode, 0.0)
        meta: dict[str, Any] = {"environment": env_name, "yaw": p.yaw, "strength": p.strength, "mode": p.mode,
                                "sh": [[round(float(v), 6) for v in row] for row in coeffs]}
        head = open(src, "rb").read(16)
        is_video = head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or (
            head[:6] in (b"GIF87a", b"GIF89a") and _gif_frames(src) > 1)
        work = ctx.work_dir
        if not is_video:
            ctx.progress(0, 1, "relighting")
            try:
                with Image.open(src) as im:
                    im = ImageOps.exif_transpose(im)
                    im.thumbnail((p.max_side, p.max_side))
                    rgb = np.asarray(im.convert("RGB"))
            except Exception as e:
                raise EngineError(f"cannot read the portrait: {str(e).splitlines()[0][:200]}") from None
            out, g = relighter.frame(rgb)
            paths = {k: work / f"{k}.png" for k in ("relit", "matte", "normals")}
            Image.fromarray(out).save(paths["relit"])
            Image.fromarray((g.matte * 255 + 0.5).astype(np.uint8)).save(paths["matte"])
            Image.fromarray(normals_to_rgb(g.normals)).save(paths["normals"])
            meta |= {"face_found": g.face is not None, "size": [int(rgb.shape[1]), int(rgb.shape[0])]}
            (work / "relight.json").write_text(json.dumps(meta))
            ctx.progress(1, 1, "done", paths["relit"])
            return EngineResult([Artifact(paths["relit"], "image", "image/png", meta),
                                 Artifact(paths["matte"], "image", "image/png", {"role": "matte"}),
                                 Artifact(paths["normals"], "image", "image/png", {"role": "normals"})], meta)
        return self._video(p, ctx, src, relighter, meta)

    def _video(self, p: RelightParams, ctx: EngineContext, src: Path, relighter: Any, meta: dict[str, Any]) -> EngineResult:
        from PIL import Image

        from engines.relight.portrait import normals_to_rgb
        from engines.video import io as vio

        try:
            info = vio.probe(src, max_side=int(ctx.extras.get("video_max_side", vio.MAX_SIDE)),
                             max_seconds=float(ctx.extras.get("video_max_seconds", vio.MAX_SECONDS)))
        except vio.VideoError as e:
            raise EngineError(str(e)) from None
        s = min(1.0, p.max_side / max(info.width, info.height))
        size = (max(2, round(info.width * s) // 2 * 2), max(2, round(info.height * s) // 2 * 2))
        relighter.smoothing = p.temporal_smoothing
        relighter.__post_init__()
        total = max(1, min(p.max_frames, info.frames or p.max_frames))
        work = ctx.work_dir
        out_path, poster, preview = work / "relit.mp4", work / "poster.png", work / "preview.png"
        writer = vio.Writer(out_path, size, info.fps, audio_from=src if info.has_audio else None)
        n, t0, g = 0, time.perf_counter(), None
        try:
            for frame in vio.read_frames(src, size=size, max_frames=p.max_frames):
                ctx.check_cancelled()
                out, g = relighter.frame(frame)
                writer.write(out)
                n += 1
                pv = None
                if n == 1:
                    Image.fromarray(out).save(poster)
                    Image.fromarray(frame).save(work / "source_frame.png")  # the browser preview re-shades this
                    Image.fromarray((g.matte * 255 + 0.5).astype(np.uint8)).save(work / "matte.png")
                    Image.fromarray(normals_to_rgb(g.normals)).save(work / "normals.png")
                if n == 1 or n % 10 == 0:
                    Image.fromarray(out).save(preview)
                    pv = preview
                ctx.progress(n, max(total, n), f"frame {n}/{max(total, n)}", pv)
        except vio.VideoError as e:
            writer.abort()
            raise EngineError(str(e)) from None
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if n == 0:
            raise EngineError("the clip has no frames")
        seconds = time.perf_counter() - t0
        meta |= {"frames": n, "fps": info.fps, "size": list(size), "audio": info.has_audio,
                 "relight_fps": round(n / max(seconds, 1e-9), 2), "temporal_smoothing": p.temporal_smoothing}
        return EngineResult([Artifact(out_path, "video", "video/mp4", meta),
                             Artifact(poster, "image", "image/png", {"poster_of": "relit.mp4", "role": "poster"}),
                             Artifact(work / "source_frame.png", "image", "image/png", {"role": "source_frame"}),
                             Artifact(work / "matte.png", "image", "image/png", {"role": "matte"}),
                             Artifact(work / "normals.png", "image", "image/png", {"role": "normals"})], meta)


def _gif_frames(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except Exception:
        return 1
